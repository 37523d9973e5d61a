"""The VAD's turn-taking state machine, apart from any model so that tests can script
the speech probabilities (and the end-of-turn model's verdicts).

Which silence ends a turn, from the cheapest signal to the best one:

- a fixed ``min_silence_ms``;
- the words heard so far (``adaptive``, nodes/heard.py ``end_of_turn_ms``): shorter
  after a finished question, longer after a trailing "and";
- an end-of-turn model on the audio (``turn_model``, Smart Turn v3.2 in
  nodes/smartturn.py): run at the first silence (and again every ``turn_every_ms``
  of silence when that is set: measured on benchmarks/turnset.py's set, the model's
  P(complete) of an unfinished sentence rises as the pause grows, so rechecks cut
  more callers off: off by default), its probability that the turn is complete ends the turn at once when
  it is at least ``turn_done``, holds it up to ``eot_max_ms`` of silence when it is
  under ``turn_hold``, and leaves ``min_silence_ms`` in between. It hears how the
  sentence ended, which a words rule cannot, and before Whisper has transcribed it.
  With ``adaptive`` too, words that trail off ("... for", "um", a comma) hold the turn
  to ``eot_max_ms`` whatever the model says (measured: on the set, the model alone cut
  half the paused sentences off; with the words, 2 %).

Where the reply's latency goes, and what starts it early:

- speculative turns (``speculative``): at ``first_silence_ms`` of silence the turn
  starts (STT, LLM, TTS) with its outputs held by the runtime; ``ConfirmTurn`` at the
  end of turn releases them; the user speaking again abandons it
  (``Interrupt(reason=ABANDONED)``: the runtime discards it, nothing is sent);
- interim snapshots (``interim_ms``): the utterance so far, transcribed for the
  client while the user speaks;
- preemptive generation (``preemptive``, with both above): the first silent window
  of a pause sends the utterance so far to the STT (a settled ``Snapshot``: all of its
  speech), and the speculative turn starts ``settle_ms`` into the silence (not at
  ``first_silence_ms``): from that snapshot's words when they are back (a ``Heard``
  utterance the STT passes on untranscribed), else from the same audio, which the STT
  answers from the snapshot's pass (the new turn drops the snapshot's own transcript:
  its epoch ends). Nothing waits on a transcript: a client that stops sending audio
  after its question still gets its turn. When the latest interim transcript already
  heard all but ``cover_ms`` of the speech, the turn starts from those words instead
  (the LLM starts at once) and the utterance goes to the STT as a check snapshot; the
  turn is never confirmed before the check came back, and when its words differ the
  turn is redone from them (``Interrupt(ABANDONED)``, a new ``SpeculativeTurn``).
  ``Preempted`` marks each verdict (hit or miss). Interim and pause snapshots use only
  the STT's spare capacity: ``INTERIM_SLOTS`` interims in flight over every session
  (``PAUSE_SLOTS`` with pause snapshots). With ``adaptive`` and a ``turn_model``, a
  "finished" verdict waits for the utterance's words (their veto) up to
  ``min_silence_ms``.

With ``marks``, ``TurnTiming`` dates the end of speech before each turn. Counters over
every session: ``speculated``, ``confirmed_turns``, ``abandoned``, ``preempted``,
``preempt_hits``, ``preempt_misses``, ``model_runs``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import numpy as np

from chains import ConfirmTurn, Interrupt, SpeculativeTurn, SpeechStarted, Utterance
from nodes.audio import float_to_pcm
from nodes.heard import (
    ABANDONED,
    BOARD_KEY,
    CONTINUATIONS,
    Heard,
    Interim,
    Preempted,
    Snapshot,
    TurnBoard,
    TurnTiming,
    board,
    end_of_turn_ms,
    trails_off,
    transcripts,
    word_list,
)

VADOutput = Utterance | SpeechStarted | Interrupt | SpeculativeTurn | ConfirmTurn | TurnTiming | Preempted
TurnModel = Callable[[np.ndarray], Awaitable[float]]  # 16 kHz audio of the turn -> P(complete)
CHECK_WAIT_MS = 1500  # past eot_max_ms, a check that has not come back is given up
INTERIM_SLOTS = 1  # interim snapshots in flight over every session (the STT's spare capacity)
PAUSE_SLOTS = 2  # with a pause's own snapshot
SNAPSHOT_LOST_MS = 3000  # an unanswered snapshot is counted lost (the STT may queue for seconds)


class _Pause:
    """What one pause in the user's speech has learnt (all reset when they speak)."""

    __slots__ = ("check_ms", "gap", "next_check", "p", "preheard")

    def __init__(self, first_check: int) -> None:
        self.p: float | None = None  # the end-of-turn model's latest probability
        self.next_check = first_check  # silence (samples) at which to run the model next
        self.check_ms: float | None = None  # the settle snapshot's length (ms): its words are final
        self.preheard: str | None = None  # words the open speculative turn started from, unchecked
        self.gap = 0  # windows of the utterance in the snapshot taken as the pause began


class InFlight:
    """Interim and pause snapshots in flight over every session of one VAD node: one
    object, shared by the copies of its ``TurnTaking`` that Realtime sessions tune."""

    __slots__ = ("snapshots",)

    def __init__(self) -> None:
        self.snapshots = 0


class _Sent:
    """One session's snapshots the STT has not answered yet, counted in their
    ``TurnTaking``'s ``in_flight`` over every session: interim transcripts use only
    the STT's spare capacity, so final ones never queue behind other callers' interims."""

    __slots__ = ("out", "owner")

    def __init__(self, owner: TurnTaking) -> None:
        self.owner = owner
        self.out: dict[tuple[int, float], int] = {}  # (turn, audio ms) -> window it went at

    def add(self, hints: TurnBoard | None, turn: int, audio_ms: float, now: int) -> None:
        if hints is not None:  # (without a board no answer is seen: nothing is counted)
            self.out[(turn, audio_ms)] = now
            self.owner.in_flight.snapshots += 1

    def update(self, hints: TurnBoard | None, now: int, lost: bool = False) -> None:
        """Forget those answered, given up (``SNAPSHOT_LOST_MS``), or ``lost``: an epoch
        ended, so the runtime drops their transcripts."""
        if not self.out:  # (every window of every session asks)
            return
        for key, at in list(self.out.items()):
            answered = hints is not None and hints.interim(*key) is not None
            if lost or answered or now - at > self.owner.snapshot_lost:
                del self.out[key]
                self.owner.in_flight.snapshots -= 1

    def close(self) -> None:
        self.owner.in_flight.snapshots -= len(self.out)
        self.out.clear()


class TurnTaking:
    """Turn events and utterances from (window, speech probability) pairs. See
    nodes/vad.py for what each option does; times are in ms, ``rate`` and ``window``
    in samples."""

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
        turn_model: TurnModel | None = None,
        turn_done: float = 0.5,
        turn_hold: float = 0.5,
        turn_every_ms: float = 0,
        preemptive: bool = False,
        settle_ms: float = 64,
        cover_ms: float = 250,
        rate: int = 16000,
        window: int = 512,
    ):
        if first_silence_ms <= 0 or min_silence_ms <= 0:
            raise ValueError("SileroVAD first_silence_ms and min_silence_ms must be > 0")
        if (adaptive or turn_model is not None) and not 0 < eot_min_ms <= min_silence_ms <= eot_max_ms:
            raise ValueError(
                "SileroVAD adaptive end of turn wants 0 < eot_min_ms <= min_silence_ms <= eot_max_ms, "
                f"got {eot_min_ms}, {min_silence_ms}, {eot_max_ms}"
            )
        if not 0 <= turn_hold <= turn_done <= 1:
            raise ValueError(
                f"SileroVAD wants 0 <= turn_hold <= turn_done <= 1, got {turn_hold}, {turn_done}"
            )
        if preemptive and not (speculative and interim_ms > 0):
            raise ValueError("SileroVAD preemptive generation needs speculative=True and interim_ms > 0")
        ms = rate / 1000
        self.rate, self.window = rate, window
        self.threshold = threshold
        self.neg_threshold = max(0.01, threshold - 0.15)
        self.min_silence_ms = float(min_silence_ms)
        self.min_speech = int(min_speech_ms * ms)
        self.pad_windows = max(1, int(pad_ms * ms) // window)
        self.max_speech = int(max_speech_s * rate)
        self.interrupt = interrupt
        self.speculative = speculative
        self.first_silence = int(first_silence_ms * ms)
        self.interim = int(interim_ms * ms)
        self.adaptive = adaptive
        self.eot_min_ms = float(eot_min_ms)
        self.eot_max_ms = float(eot_max_ms)
        self.marks = marks
        self.turn_model = turn_model
        self.turn_done, self.turn_hold = turn_done, turn_hold
        self.turn_every = int(turn_every_ms * ms) if turn_every_ms > 0 else None  # None: first silence only
        self.preemptive = preemptive
        self.settle = max(window, int(settle_ms * ms))
        self.cover_ms = float(cover_ms)
        self.speculated = self.confirmed_turns = self.abandoned = 0
        self.preempted = self.preempt_hits = self.preempt_misses = self.model_runs = 0
        self.in_flight = InFlight()  # (a copy.copy of this machine shares it)
        self.snapshot_lost = int(SNAPSHOT_LOST_MS * ms) // window  # windows

    def end_of_turn(self, words: str | None, p: float | None = None) -> int:
        """Samples of silence that end the turn, given the words heard so far and the
        end-of-turn model's latest probability (None: not run)."""
        hi = int(self.eot_max_ms * self.rate / 1000)
        if p is not None:
            if self.adaptive and trails_off(words):
                return hi  # the words say the sentence goes on, whatever the melody
            if p >= self.turn_done:
                if self.adaptive and words is None:  # wait for the words (their veto), not past the base
                    return int(self.min_silence_ms * self.rate / 1000)
                return 0  # the model heard a finished turn: now (it runs from the first silence on)
            if p < self.turn_hold:
                return hi
        ms = self.min_silence_ms
        if self.adaptive:
            ms = end_of_turn_ms(words, ms, self.eot_min_ms, self.eot_max_ms)
        return int(ms * self.rate / 1000)

    def _judge(self, pause: _Pause, final: str) -> list[VADOutput]:
        """The check of a preemptive start came back with ``final``: a hit, or a miss
        and the turn redone from the final words."""
        started, pause.preheard = pause.preheard or "", None
        if word_list(started) == word_list(final):
            self.preempt_hits += 1
            return [Preempted(hit=True, interim=started, final=final)]
        self.preempt_misses += 1
        self.abandoned += 1
        self.speculated += 1
        return [
            Preempted(hit=False, interim=started, final=final),
            Interrupt(reason=ABANDONED),
            SpeculativeTurn(reason="final transcript differs"),
            Heard(pcm=b"", sample_rate=self.rate, text=final),
        ]

    async def turns(
        self, windows: AsyncIterator[tuple[np.ndarray, float]], hints: TurnBoard | None = None
    ) -> AsyncIterator[VADOutput]:
        """Turn events and utterances from (window, speech probability) pairs; the
        words heard come from ``hints`` (default: the session's board)."""
        sent = _Sent(self)
        try:
            async for out in self._turns(windows, hints or board(), sent):
                yield out
        finally:
            sent.close()  # its snapshots no longer hold the STT's spare capacity

    async def _turns(
        self, windows: AsyncIterator[tuple[np.ndarray, float]], hints: TurnBoard | None, sent: _Sent
    ) -> AsyncIterator[VADOutput]:
        ms = self.rate / 1000
        turn = 0
        before: deque[np.ndarray] = deque(maxlen=self.pad_windows + 1)  # windows before speech
        speech: list[np.ndarray] = []  # windows of the current utterance (from its pad)
        speaking = confirmed = False
        voiced = silence = 0  # samples
        spec = 0  # windows in the speculative utterance (0: no speculative turn open)
        snap_at = 0  # speech length (samples) at the last snapshot
        snap_posts = -1  # the board's post count when the last snapshot went (-1: none awaited)
        pause = _Pause(self.first_silence)

        def utterance(n: int | None = None) -> Utterance:
            return Utterance(pcm=float_to_pcm(np.concatenate(speech[:n])), sample_rate=self.rate)

        def timing(end: bool = False) -> list[VADOutput]:
            if not self.marks:
                return []
            return [
                TurnTiming(
                    silence_ms=silence / ms,
                    end_of_turn=end,
                    preheard=pause.preheard is not None,
                    probability=pause.p,
                )
            ]

        seen = 0  # windows
        async for window, p in windows:
            seen += 1
            if not speaking:
                before.append(window)
                if p >= self.threshold:
                    speaking, confirmed = True, False
                    speech, voiced, silence = list(before), self.window, 0
                    before.clear()
                    turn += 1
                    snap_at, snap_posts = 0, -1
                    pause = _Pause(self.first_silence)
                    if hints is not None:
                        hints.turn = turn
                continue
            speech.append(window)
            if p >= self.threshold:
                if spec:  # the user goes on: the speculative turn was wrong
                    spec = 0
                    self.abandoned += 1
                    sent.update(hints, seen, lost=True)
                    yield Interrupt(reason=ABANDONED)
                voiced, silence = voiced + self.window + silence, 0
                pause = _Pause(self.first_silence)
            elif p < self.neg_threshold:
                silence += self.window
            # (between the two thresholds: neither more speech nor more silence)
            if not confirmed and voiced >= self.min_speech:
                confirmed = True
                yield SpeechStarted()
                if self.interrupt:
                    sent.update(hints, seen, lost=True)
                    yield Interrupt(reason="user speech")
            if not confirmed:
                if silence >= self.end_of_turn(None):  # a blip too short to be speech: forget it
                    speaking, speech, voiced, silence = False, [], 0, 0
                continue
            spoken_ms = (len(speech) * self.window - silence) / ms
            words = hints.words(turn, spoken_ms) if hints is not None else None
            sent.update(hints, seen)
            if self.interim and not spec and silence == 0 and self.in_flight.snapshots < INTERIM_SLOTS:
                grown = len(speech) * self.window - snap_at
                awaited = hints is not None and hints.posts == snap_posts
                # one snapshot in flight at a time (a lost one is given up after two periods)
                if grown >= self.interim and (not awaited or grown >= 2 * self.interim):
                    snap_at = len(speech) * self.window
                    snap_posts = hints.posts if hints is not None else -1
                    snap = Snapshot(pcm=utterance().pcm, sample_rate=self.rate, turn=turn)
                    sent.add(hints, turn, snap.duration_ms, seen)
                    yield snap
            if (
                self.preemptive
                and hints is not None
                and not spec
                and not pause.gap
                and silence == self.window
                and p < self.neg_threshold
                and self.in_flight.snapshots < PAUSE_SLOTS
            ):  # the pause's first window: the STT hears all the speech now
                snap_at, snap_posts = len(speech) * self.window, hints.posts
                pause.gap = len(speech)
                gap = Snapshot(pcm=utterance(pause.gap).pcm, sample_rate=self.rate, turn=turn, settled=True)
                sent.add(hints, turn, gap.duration_ms, seen)
                yield gap
            eot_max = int(self.eot_max_ms * ms)
            if self.turn_model is not None and pause.next_check <= silence < eot_max:
                pause.p = await self.turn_model(np.concatenate(speech))
                pause.next_check = silence + self.turn_every if self.turn_every else 1 << 62
                self.model_runs += 1
            eot = self.end_of_turn(words, pause.p)
            final = None
            if pause.check_ms is not None and hints is not None:
                final = hints.interim(turn, pause.check_ms)
            given_up = silence >= eot_max + CHECK_WAIT_MS * ms  # a check that never came back
            start_at = self.settle if self.preemptive else self.first_silence
            if self.speculative and not spec and silence >= start_at:
                # Its transcript is the final one (only silence follows). With the pause's
                # snapshot it is that audio: the STT answers it from that pass, even when
                # the turn starting here drops the snapshot's own transcript (its epoch ends).
                start: Utterance = utterance(pause.gap or None)
                gap_words = None
                if pause.gap and hints is not None:
                    gap_words = hints.interim(turn, pause.gap * self.window / ms)
                heard_ms = hints.text_ms if hints is not None else None  # of the latest words
                near = heard_ms is not None and heard_ms >= spoken_ms - self.cover_ms
                covered = self.preemptive and words and near
                check: Snapshot | None = None
                if gap_words is not None:  # no pass over the whole utterance: it was the gap's
                    start = Heard(pcm=b"", sample_rate=self.rate, text=gap_words, turn=turn)
                elif covered:  # an interim heard nearly all of it: the reply starts now
                    check = Snapshot(pcm=start.pcm, sample_rate=self.rate, turn=turn, settled=True)
                    pause.check_ms, pause.preheard = check.duration_ms, words
                    self.preempted += 1
                    start = Heard(pcm=b"", sample_rate=self.rate, text=words or "", turn=turn)
                spec = len(speech)
                snap_posts = -1  # a snapshot still in flight belongs to the turn that ends here
                sent.update(hints, seen, lost=True)
                self.speculated += 1
                for out in timing():
                    yield out
                yield SpeculativeTurn(reason="first silence")
                yield start  # before the check: a session's items come out of the STT in order
                if check is not None:  # in the new turn: sent before it, the runtime drops it as stale
                    yield check  # the transcript that confirms or redoes it
            if spec and pause.preheard is not None:
                if final is not None:
                    for out in self._judge(pause, final):
                        yield out
                elif given_up:  # no verdict: redo the turn from the whole utterance
                    pause.preheard = None
                    self.abandoned += 1
                    yield Interrupt(reason=ABANDONED)
                    yield SpeculativeTurn(reason="no final transcript")
                    yield utterance(spec)
            if silence >= eot and pause.preheard is None and (spec or not self.speculative):
                if spec:
                    self.confirmed_turns += 1
                    yield ConfirmTurn()  # the speculative utterance is the turn: nothing re-emitted
                else:
                    for out in timing(end=True):
                        yield out
                    yield utterance()
                speaking = confirmed = False
                speech, voiced, silence, spec = [], 0, 0, 0
                pause = _Pause(self.first_silence)
            elif not spec and len(speech) * self.window >= self.max_speech:
                yield utterance()  # a long turn goes on: no new barge-in for its next part
                speech, snap_at = [], 0
        if speaking and confirmed:
            if spec:  # the audio ended in the pause: the speculative turn stands, once checked
                waited = 0.0
                while pause.preheard is not None and waited < CHECK_WAIT_MS / 1000:
                    final = hints.interim(turn, pause.check_ms or -1) if hints is not None else None
                    if final is not None:
                        for out in self._judge(pause, final):
                            yield out
                        break
                    await anyio.sleep(0.02)
                    waited += 0.02
                self.confirmed_turns += 1
                yield ConfirmTurn()
            else:
                for out in timing(end=True):
                    yield out
                yield utterance()


__all__ = [
    "ABANDONED",
    "BOARD_KEY",
    "CONTINUATIONS",
    "SNAPSHOT_LOST_MS",
    "Heard",
    "Interim",
    "Preempted",
    "Snapshot",
    "TurnBoard",
    "TurnModel",
    "TurnTaking",
    "TurnTiming",
    "VADOutput",
    "board",
    "end_of_turn_ms",
    "transcripts",
]
