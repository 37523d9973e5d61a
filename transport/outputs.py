"""From a session's chain outputs to client protocol messages, with per-turn figures.

The mapping goes by output name and payload type, as the README tells the
client: ``AudioFrame`` goes out as binary audio (resampled to the rate announced
in ``ready``), an output named ``transcript`` as transcript events, ``Text`` and
``TextDelta`` as text events, ``ErrorEvent`` as ``error``, control events as
``event`` (a chat's ``ToolCall`` / ``ToolResult`` as ``tool_call`` / ``tool_result``,
a failed tool also as ``error`` with the tool's name as ``node``), anything else as
a generic ``output`` carrying the value as JSON.

A turn is the group of outputs caused by one input (they share its origin time).
It ends when the chain says so (``EndOfTurn``), when a new transcript arrives after
the previous turn's reply, at an interrupt, or at the end of the session; then
one ``metrics`` message summarises it.

These figures are voice figures: a session that has shown no sign of voice (no audio
out, no transcript, no VAD timing mark) is a text chain's, and gets no ``metrics``
messages (a text client reads its outputs, not a voice latency breakdown); a caller
that knows may say so with ``OutputMapper(rate, voice=...)``.

Voice turns get a latency breakdown. An interim transcript (a non-final
``TextDelta`` on ``transcript``) goes out with ``final: false`` and neither opens
nor closes a turn. A control event with a ``silence_ms`` field (the VAD's
``TurnTiming`` mark, nodes/turn.py) dates the end of the user's speech that long
before it, and decides the end of the turn when its ``end_of_turn`` is true; a
``ConfirmTurn`` decides it for a speculative turn (counted as a hit), and an
``Interrupt`` with reason ``speculation_abandoned`` counts a miss (its turn never
had outputs: nothing to close). A ``Preempted`` verdict (nodes/turn.py; known here by
its name and ``hit`` field, the transport does not import nodes) counts a preemption
hit or miss for the turn it judged. These marks are gathered until the next turn opens
and go into its ``metrics``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from chains.messages import (
    AudioFrame,
    ConfirmTurn,
    Control,
    EndOfTurn,
    ErrorEvent,
    Interrupt,
    Text,
    TextDelta,
    ToolResult,
)
from chains.outputs import ERROR, EVENTS, TRANSCRIPT
from transport.audio import Resampler
from transport.protocol import Error, Event, Metrics, OutputMsg, TextOut, Transcript

Outgoing = bytes | msgspec.Struct
ABANDONED = "speculation_abandoned"  # an Interrupt's reason when a speculative turn is dropped
PREEMPTED = "preempted"  # the event_name of nodes.turn's verdict on a preemptive start


def event_name(ev: Any) -> str:
    """``SpeechStarted`` -> ``speech_started``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(ev).__name__).lower()


class _Marks:
    """Voice timing of one user turn, gathered from events before its outputs."""

    __slots__ = ("end_of_turn", "hits", "interim", "misses", "pre_hits", "pre_misses", "speech_end")

    def __init__(self) -> None:
        self.speech_end: float | None = None
        self.end_of_turn: float | None = None
        self.hits = self.misses = self.interim = 0
        self.pre_hits = self.pre_misses = 0


class _Turn:
    __slots__ = ("audio_ms", "epoch", "first", "last", "marks", "n", "origin", "seen_reply")

    def __init__(self, origin: float, epoch: int, marks: _Marks):
        self.origin = origin
        self.epoch = epoch
        self.first: dict[str, float] = {}
        self.last = origin
        self.n = 0
        self.audio_ms = 0.0
        self.seen_reply = False
        self.marks = marks


class OutputMapper:
    """Per-connection state of the mapping: resamplers per audio output, the open turn."""

    def __init__(self, out_rate: int, voice: bool | None = None):
        self.out_rate = out_rate
        self._fixed_voice = voice
        self.voice = bool(voice)  # None: decided by what the session produces
        self._resamplers: dict[str, Resampler] = {}
        self._turn: _Turn | None = None
        self._marks = _Marks()  # for the next turn
        self.turns = 0

    # --- outputs ----------------------------------------------------------------------
    def map(self, name: str, value: Any, origin: float, epoch: int, now: float) -> list[Outgoing]:
        if name == ERROR:
            if isinstance(value, ErrorEvent):
                return [Error(code=value.code, message=value.message, node=value.node)]
            return [Error(code="node_error", message=str(value))]
        if name == EVENTS:
            return self._event(value, epoch, now)
        if name == TRANSCRIPT and isinstance(value, TextDelta) and not value.final:
            self._marks.interim += 1  # an interim transcript: shown, not a turn's output
            return [Transcript(text=value.text, final=False)]
        msgs: list[Outgoing] = []
        turn = self._turn
        if turn is not None and (
            epoch != turn.epoch or (name == TRANSCRIPT and turn.seen_reply and origin != turn.origin)
        ):
            msgs.extend(self.close_turn(now))
            turn = None
        if turn is None:
            turn = self._turn = _Turn(origin, epoch, self._marks)
            self._marks = _Marks()
        turn.n += 1
        turn.last = now
        if self._fixed_voice is None and (name == TRANSCRIPT or isinstance(value, AudioFrame)):
            self.voice = True
        if isinstance(value, AudioFrame):
            pcm = self._audio(name, value)
            turn.audio_ms += value.duration_ms  # (the resampler may hold some back for now)
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

    def _event(self, ev: Any, epoch: int, now: float) -> list[Outgoing]:
        if not isinstance(ev, Control):
            return [OutputMsg(name=EVENTS, data=_jsonable(ev))]
        data = msgspec.to_builtins(ev) if ev.__struct_fields__ else None
        msgs: list[Outgoing] = [Event(event=event_name(ev), data=data)]
        if isinstance(ev, ToolResult) and ev.error is not None:  # a tool that failed is an error too
            msgs.append(Error(code=ev.code or "tool_error", message=ev.error, node=ev.name))
        silence = getattr(ev, "silence_ms", None)
        if isinstance(silence, int | float):
            if self._fixed_voice is None:
                self.voice = True
            self._marks.speech_end = now - silence / 1000.0
            if getattr(ev, "end_of_turn", False):
                self._marks.end_of_turn = now
        elif event_name(ev) == PREEMPTED and isinstance(getattr(ev, "hit", None), bool):
            # a hit judges the turn started from the interim words (open now, or held);
            # a miss, the turn it was redone as (not opened yet)
            turn = self._turn
            marks = turn.marks if turn is not None and turn.epoch == epoch else self._marks
            if ev.hit:
                marks.pre_hits += 1
            else:
                marks.pre_misses += 1
        elif isinstance(ev, ConfirmTurn):
            # its held outputs went out just before it: they opened the turn it confirms
            turn = self._turn
            marks = turn.marks if turn is not None and turn.epoch == epoch else self._marks
            marks.hits += 1
            if marks.end_of_turn is None:
                marks.end_of_turn = now
        elif isinstance(ev, Interrupt) and ev.reason == ABANDONED:
            self._marks.misses += 1  # the abandoned turn never had outputs
        elif isinstance(ev, Interrupt):
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
        if turn is None or turn.n == 0 or not self.voice:
            return []
        self.turns += 1

        def ms(t: float | None) -> float | None:
            return None if t is None else round(1000.0 * (t - turn.origin), 2)

        m = turn.marks
        breakdown = None
        if m.speech_end is not None:
            at = {
                "end_of_turn": m.end_of_turn,
                "transcript": turn.first.get("transcript"),
                "first_token": turn.first.get("text"),
                "first_audio": turn.first.get("audio"),
            }
            breakdown = {k: round(1000.0 * (t - m.speech_end), 1) for k, t in at.items() if t is not None}
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
                breakdown=breakdown,
                speculative_hits=m.hits,
                speculative_misses=m.misses,
                interim_transcripts=m.interim,
                preempt_hits=m.pre_hits,
                preempt_misses=m.pre_misses,
            )
        ]


def _jsonable(value: Any) -> Any:
    """The value as JSON-able builtins (repr as the last resort)."""
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


__all__ = ["ABANDONED", "ERROR", "EVENTS", "TRANSCRIPT", "OutputMapper", "event_name"]
