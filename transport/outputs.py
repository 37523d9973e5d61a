"""From a session's chain outputs to client protocol messages, with per-turn figures.

The mapping goes by output name and payload type, as DESIGN.md promises the
client: ``AudioFrame`` goes out as binary audio (resampled to the rate announced
in ``ready``), an output named ``transcript`` as transcript events, ``Text`` and
``TextDelta`` as text events, ``ErrorEvent`` as ``error``, control events as
``event``, anything else as a generic ``output`` carrying the value as JSON.

A turn is the group of outputs caused by one input (they share its origin time).
It ends when the chain says so (``EndOfTurn``), when a new transcript arrives after
the previous turn's reply, at an interrupt, or at the end of the session; then
one ``metrics`` message summarises it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from chains.messages import AudioFrame, Control, EndOfTurn, ErrorEvent, Interrupt, Text, TextDelta
from chains.outputs import ERROR, EVENTS
from transport.audio import Resampler
from transport.protocol import Error, Event, Metrics, OutputMsg, TextOut, Transcript

TRANSCRIPT = "transcript"

Outgoing = bytes | msgspec.Struct


def event_name(ev: Any) -> str:
    """``SpeechStarted`` -> ``speech_started``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(ev).__name__).lower()


class _Turn:
    __slots__ = ("audio_ms", "epoch", "first", "last", "n", "origin", "seen_reply")

    def __init__(self, origin: float, epoch: int):
        self.origin = origin
        self.epoch = epoch
        self.first: dict[str, float] = {}
        self.last = origin
        self.n = 0
        self.audio_ms = 0.0
        self.seen_reply = False


class OutputMapper:
    """Per-connection state of the mapping: resamplers per audio output, the open turn."""

    def __init__(self, out_rate: int):
        self.out_rate = out_rate
        self._resamplers: dict[str, Resampler] = {}
        self._turn: _Turn | None = None
        self.turns = 0

    # --- outputs ----------------------------------------------------------------------
    def map(self, name: str, value: Any, origin: float, epoch: int, now: float) -> list[Outgoing]:
        if name == ERROR:
            if isinstance(value, ErrorEvent):
                return [Error(code=value.code, message=value.message, node=value.node)]
            return [Error(code="node_error", message=str(value))]
        if name == EVENTS:
            return self._event(value, now)
        msgs: list[Outgoing] = []
        turn = self._turn
        if turn is not None and (
            epoch != turn.epoch or (name == TRANSCRIPT and turn.seen_reply and origin != turn.origin)
        ):
            msgs.extend(self.close_turn(now))
            turn = None
        if turn is None:
            turn = self._turn = _Turn(origin, epoch)
        turn.n += 1
        turn.last = now
        if isinstance(value, AudioFrame):
            pcm = self._audio(name, value)
            turn.audio_ms += 1000.0 * (len(pcm) // 2) / self.out_rate
            self._first(turn, "audio", now)
            turn.seen_reply = True
            if pcm:
                msgs.append(pcm)
            return msgs
        if name == TRANSCRIPT:
            self._first(turn, "transcript", now)
            text = getattr(value, "text", None)
            if isinstance(text, str):
                final = value.final if isinstance(value, TextDelta) else True
                msgs.append(Transcript(text=text, final=final))
                return msgs
        turn.seen_reply = True
        if isinstance(value, TextDelta):
            self._first(turn, "text", now)
            msgs.append(TextOut(text=value.text, name=name, final=value.final))
        elif isinstance(value, Text):
            self._first(turn, "text", now)
            msgs.append(TextOut(text=value.text, name=name, final=True))
        else:
            msgs.append(OutputMsg(name=name, data=_jsonable(value)))
        return msgs

    def _audio(self, name: str, frame: AudioFrame) -> bytes:
        if frame.sample_rate == self.out_rate:
            return frame.pcm
        r = self._resamplers.get(name)
        if r is None or r.src != frame.sample_rate:
            r = self._resamplers[name] = Resampler(frame.sample_rate, self.out_rate)
        return r.process(frame.pcm)

    def _event(self, ev: Any, now: float) -> list[Outgoing]:
        if not isinstance(ev, Control):
            return [OutputMsg(name=EVENTS, data=_jsonable(ev))]
        data = msgspec.to_builtins(ev) if ev.__struct_fields__ else None
        msgs: list[Outgoing] = [Event(event=event_name(ev), data=data)]
        if isinstance(ev, Interrupt):
            msgs.extend(self.close_turn(now, interrupted=True))
        elif isinstance(ev, EndOfTurn):
            msgs.extend(self.close_turn(now))
        return msgs

    @staticmethod
    def _first(turn: _Turn, kind: str, now: float) -> None:
        if kind not in turn.first:
            turn.first[kind] = now

    # --- turns ------------------------------------------------------------------------
    def close_turn(self, now: float, interrupted: bool = False) -> list[Outgoing]:
        """Close the open turn (if it produced anything) and summarise it."""
        turn = self._turn
        self._turn = None
        if turn is None or turn.n == 0:
            return []
        self.turns += 1

        def ms(t: float | None) -> float | None:
            return None if t is None else round(1000.0 * (t - turn.origin), 2)

        return [
            Metrics(
                turn=self.turns,
                first_transcript_ms=ms(turn.first.get("transcript")),
                first_text_ms=ms(turn.first.get("text")),
                first_audio_ms=ms(turn.first.get("audio")),
                last_output_ms=ms(turn.last),
                audio_ms=round(turn.audio_ms, 1),
                outputs=turn.n,
                interrupted=interrupted,
            )
        ]


def _jsonable(value: Any) -> Any:
    """The value as JSON-able builtins (repr as the last resort)."""
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


__all__ = ["ERROR", "EVENTS", "TRANSCRIPT", "OutputMapper", "event_name"]
