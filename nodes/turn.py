"""Turn-taking pieces shared by the voice nodes: interim snapshots of an utterance,
the VAD's timing mark, the adaptive end-of-turn rule, and the per-session board
through which the words heard so far reach the VAD.

Why a board: the VAD decides when the turn ends, and the words it would like to
know (does the utterance end like a finished question, or on a trailing "and"?)
come out of Whisper, downstream of it. A chain is a DAG, so they cannot flow back
along an edge. ``transcripts`` (the node that passes final transcripts on to the
LLM and drops interim ones) posts every transcript it sees on a small object kept
in the session's ``meta`` (the one dict every node of a session shares), and the
VAD reads it at its next audio frame. Without ``transcripts`` in the chain the
board stays empty and the VAD uses its fixed end-of-turn silence.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

import chains
from chains import (
    ConfirmTurn,
    Control,
    Interrupt,
    SpeculativeTurn,
    SpeechStarted,
    Text,
    TextDelta,
    Utterance,
)
from nodes.audio import float_to_pcm

BOARD_KEY = "nodes.turn.board"
ABANDONED = "speculation_abandoned"  # the Interrupt reason when a speculative turn is dropped


class Snapshot(Utterance, frozen=True):
    """The utterance so far while the user still speaks: transcribed for an interim
    transcript only (never answered). ``turn`` counts the VAD's utterances."""

    turn: int = 0


class Interim(TextDelta, frozen=True):
    """The interim transcript of ``Snapshot`` ``turn`` (``final`` stays False): sent to
    the client as ``transcript`` with ``final: false``. ``audio_ms``: how much of the
    utterance it heard."""

    turn: int = 0
    audio_ms: float = 0.0


class TurnTiming(Control, frozen=True):
    """The VAD's mark of where the user's speech ended: ``silence_ms`` of silence had
    been heard when it was emitted. ``end_of_turn`` is true when the turn is decided
    (no speculation), false for the mark before a speculative turn. The transport
    dates the end of speech from it for the per-turn latency breakdown."""

    silence_ms: float
    end_of_turn: bool = False


class TurnBoard:
    """What the VAD and ``transcripts`` of one session share: the VAD's current
    utterance number and the latest words heard for it."""

    __slots__ = ("posts", "text", "text_ms", "text_turn", "turn")

    def __init__(self) -> None:
        self.turn = 0  # the utterance the VAD is in (or last was in)
        self.text = ""
        self.text_turn = -1  # which utterance ``text`` belongs to
        self.text_ms: float | None = None  # how much of it ``text`` heard (None: all of it)
        self.posts = 0  # how many transcripts were posted (the VAD waits for its snapshot's)

    def post(self, text: str, turn: int | None = None, audio_ms: float | None = None) -> None:
        """Record words heard for ``turn`` (None: the VAD's current utterance), from its
        first ``audio_ms`` (None: a transcript of the whole utterance so far)."""
        turn = self.turn if turn is None else turn
        self.posts += 1
        if turn >= self.text_turn:
            self.text, self.text_turn, self.text_ms = text, turn, audio_ms

    def words(self, turn: int, spoken_ms: float | None = None, stale_ms: float = 300) -> str | None:
        """The latest words heard of utterance ``turn`` (None when none yet); with
        ``spoken_ms`` (how long the utterance's speech went on), None when they come
        from a snapshot that missed more than ``stale_ms`` of it: a snapshot cut
        mid-sentence ("... the capital of") says nothing about how the speech ended."""
        if self.text_turn != turn:
            return None
        if spoken_ms is not None and self.text_ms is not None and spoken_ms - self.text_ms > stale_ms:
            return None
        return self.text


def board() -> TurnBoard | None:
    """This session's board (None when called outside a running session)."""
    try:
        meta = chains.context().meta
    except RuntimeError:
        return None
    b = meta.get(BOARD_KEY)
    if b is None:
        b = meta[BOARD_KEY] = TurnBoard()
    return b


# Words after which a speaker usually goes on: a pause after them is a pause, not an end.
_CONTINUATIONS = """
    and so but or because um uh er erm like the a an of to with for in on at from my your
    his her their our is are was were if then which that who whose where when than as
"""
CONTINUATIONS = frozenset(_CONTINUATIONS.split())
_WORD = re.compile(r"[A-Za-z']+")


def end_of_turn_ms(text: str | None, base_ms: float, min_ms: float, max_ms: float) -> float:
    """The silence that ends a turn whose words so far are ``text``.

    ``max_ms`` after a trailing continuation word, comma, dash or ellipsis ("and",
    "so", "um", "the capital of..."); ``min_ms`` when the words end like a finished
    question or sentence; ``base_ms`` otherwise (and when nothing was heard yet).
    The result always lies within [min_ms, max_ms]."""
    lo, hi = min(min_ms, max_ms), max(min_ms, max_ms)
    base = min(max(base_ms, lo), hi)
    t = (text or "").strip()
    if not t:
        return base
    words = _WORD.findall(t.lower())
    last = words[-1] if words else ""
    if t.endswith((",", "-", "\u2014", "...", "\u2026", ";", ":")) or last in CONTINUATIONS:
        return hi
    if t.endswith(("?", "!")) or (t.endswith(".") and len(words) >= 2):  # ("Paris." may go on)
        return lo
    return base


VADOutput = Utterance | SpeechStarted | Interrupt | SpeculativeTurn | ConfirmTurn | TurnTiming


class TurnTaking:
    """The VAD's turn-taking state machine over (window, speech probability) pairs,
    apart from any model so that tests can script the probabilities. See
    nodes/vad.py for what each option does; times are in ms, ``rate`` and
    ``window`` in samples."""

    def __init__(
        self,
        threshold: float = 0.5,
        min_silence_ms: float = 500,
        min_speech_ms: float = 160,
        pad_ms: float = 200,
        max_speech_s: float = 28,
        interrupt: bool = True,
        speculative: bool = False,
        first_silence_ms: float = 160,
        interim_ms: float = 0,
        adaptive: bool = False,
        eot_min_ms: float = 300,
        eot_max_ms: float = 1000,
        marks: bool = False,
        rate: int = 16000,
        window: int = 512,
    ):
        if first_silence_ms <= 0 or min_silence_ms <= 0:
            raise ValueError("SileroVAD first_silence_ms and min_silence_ms must be > 0")
        if adaptive and not 0 < eot_min_ms <= min_silence_ms <= eot_max_ms:
            raise ValueError(
                "SileroVAD adaptive end of turn wants 0 < eot_min_ms <= min_silence_ms <= eot_max_ms, "
                f"got {eot_min_ms}, {min_silence_ms}, {eot_max_ms}"
            )
        self.rate, self.window = rate, window
        self.threshold = threshold
        self.neg_threshold = max(0.01, threshold - 0.15)
        self.min_silence_ms = float(min_silence_ms)
        self.min_speech = int(min_speech_ms * rate / 1000)
        self.pad_windows = max(1, int(pad_ms * rate / 1000) // window)
        self.max_speech = int(max_speech_s * rate)
        self.interrupt = interrupt
        self.speculative = speculative
        self.first_silence = int(first_silence_ms * rate / 1000)
        self.interim = int(interim_ms * rate / 1000)
        self.adaptive = adaptive
        self.eot_min_ms = float(eot_min_ms)
        self.eot_max_ms = float(eot_max_ms)
        self.marks = marks
        self.speculated = self.confirmed_turns = self.abandoned = 0

    def end_of_turn(self, words: str | None) -> int:
        """Samples of silence that end the turn, given the words heard so far."""
        ms = self.min_silence_ms
        if self.adaptive:
            ms = end_of_turn_ms(words, ms, self.eot_min_ms, self.eot_max_ms)
        return int(ms * self.rate / 1000)

    async def turns(
        self, windows: AsyncIterator[tuple[np.ndarray, float]], hints: TurnBoard | None = None
    ) -> AsyncIterator[VADOutput]:
        """Turn events and utterances from (window, speech probability) pairs; the
        words heard come from ``hints`` (default: the session's board)."""
        hints = hints or board()
        turn = 0
        before: deque[np.ndarray] = deque(maxlen=self.pad_windows + 1)  # windows before speech
        speech: list[np.ndarray] = []  # windows of the current utterance (from its pad)
        speaking = confirmed = False
        voiced = silence = 0  # samples
        spec = 0  # windows in the speculative utterance (0: no speculative turn open)
        snap_at = 0  # speech length (samples) at the last snapshot
        snap_posts = -1  # the board's post count when the last snapshot went (-1: none awaited)

        def utterance(n: int | None = None) -> Utterance:
            return Utterance(pcm=float_to_pcm(np.concatenate(speech[:n])), sample_rate=self.rate)

        async for window, p in windows:
            if not speaking:
                before.append(window)
                if p >= self.threshold:
                    speaking, confirmed = True, False
                    speech, voiced, silence = list(before), self.window, 0
                    before.clear()
                    turn += 1
                    snap_at, snap_posts = 0, -1
                    if hints is not None:
                        hints.turn = turn
                continue
            speech.append(window)
            if p >= self.threshold:
                if spec:  # the user goes on: the speculative turn was wrong
                    spec = 0
                    self.abandoned += 1
                    yield Interrupt(reason=ABANDONED)
                voiced, silence = voiced + self.window + silence, 0
            elif p < self.neg_threshold:
                silence += self.window
            # (between the two thresholds: neither more speech nor more silence)
            if not confirmed and voiced >= self.min_speech:
                confirmed = True
                yield SpeechStarted()
                if self.interrupt:
                    yield Interrupt(reason="user speech")
            if not confirmed:
                if silence >= self.end_of_turn(None):  # a blip too short to be speech: forget it
                    speaking, speech, voiced, silence = False, [], 0, 0
                continue
            spoken_ms = 1000 * (len(speech) * self.window - silence) / self.rate
            words = hints.words(turn, spoken_ms) if hints is not None else None
            if self.interim and not spec and silence == 0:
                grown = len(speech) * self.window - snap_at
                awaited = hints is not None and hints.posts == snap_posts
                # one snapshot in flight at a time (a lost one is given up after two periods)
                if grown >= self.interim and (not awaited or grown >= 2 * self.interim):
                    snap_at = len(speech) * self.window
                    snap_posts = hints.posts if hints is not None else -1
                    yield Snapshot(pcm=utterance().pcm, sample_rate=self.rate, turn=turn)
            eot = self.end_of_turn(words)
            if self.speculative and not spec and self.first_silence <= silence < eot:
                spec = len(speech)
                self.speculated += 1
                if self.marks:
                    yield TurnTiming(silence_ms=1000 * silence / self.rate)
                yield SpeculativeTurn(reason="first silence")
                yield utterance(spec)
            elif silence >= eot:
                if spec:
                    self.confirmed_turns += 1
                    yield ConfirmTurn()  # the speculative utterance is the turn: nothing re-emitted
                else:
                    if self.marks:
                        yield TurnTiming(silence_ms=1000 * silence / self.rate, end_of_turn=True)
                    yield utterance()
                speaking = confirmed = False
                speech, voiced, silence, spec = [], 0, 0, 0
            elif not spec and len(speech) * self.window >= self.max_speech:
                yield utterance()  # a long turn goes on: no new barge-in for its next part
                speech, snap_at = [], 0
        if speaking and confirmed:
            if spec:  # the audio ended in the pause: the speculative turn stands
                self.confirmed_turns += 1
                yield ConfirmTurn()
            else:
                if self.marks:
                    yield TurnTiming(silence_ms=1000 * silence / self.rate, end_of_turn=True)
                yield utterance()


@chains.node
def transcripts(heard: Text | TextDelta) -> Text | None:
    """Pass final transcripts on (to the LLM); drop interim ones. Both are posted on
    the session's ``TurnBoard`` for the VAD's adaptive end of turn."""
    b = board()
    if isinstance(heard, TextDelta) and not heard.final:
        if b is not None:
            b.post(heard.text, getattr(heard, "turn", None), getattr(heard, "audio_ms", None))
        return None
    if b is not None:
        b.post(heard.text)
    return heard if isinstance(heard, Text) else Text(text=heard.text)


__all__ = [
    "ABANDONED",
    "BOARD_KEY",
    "CONTINUATIONS",
    "Interim",
    "Snapshot",
    "TurnBoard",
    "TurnTaking",
    "TurnTiming",
    "VADOutput",
    "board",
    "end_of_turn_ms",
    "transcripts",
]
