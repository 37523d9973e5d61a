"""The end-of-turn model and preemptive generation in the VAD's turn taking
(nodes.turn.TurnTaking), on scripted speech probabilities, scripted model verdicts
and scripted transcripts posted on the session's board at chosen windows:

- the model's verdict at the first silence decides when the speculative turn is
  confirmed: at once when finished, at ``eot_max_ms`` when not, ``min_silence_ms``
  in between; words that trail off hold the turn whatever the model says;
- a speculative turn starts from an interim transcript that covers the utterance,
  and is confirmed only after the transcript of the whole utterance agrees (a hit),
  or redone from that transcript when it does not (a miss);
- without a covering interim it starts from the whole utterance, transcribed once,
  64 ms into the silence;
- ``SmartTurnModel.probability`` batches concurrent callers into one model call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import numpy as np
import pytest

from nodes.heard import Heard, Preempted, Snapshot, TurnBoard, trails_off
from nodes.smartturn import SAMPLES, SmartTurnModel, last_8s
from nodes.turn import ABANDONED, TurnTaking

WINDOW = 512  # 32 ms
SPEECH, SILENCE = 0.9, 0.0


def script(*parts: tuple[float, int]) -> list[float]:
    return [p for p, n in parts for _ in range(n)]


class Model:
    """A scripted end-of-turn model: each call returns the next verdict."""

    def __init__(self, *verdicts: float):
        self.verdicts = list(verdicts)
        self.calls: list[int] = []  # audio length (windows) of each call

    async def __call__(self, audio: np.ndarray) -> float:
        self.calls.append(len(audio) // WINDOW)
        return self.verdicts.pop(0)


def run(
    tt: TurnTaking,
    probs: list[float],
    board: TurnBoard | None = None,
    posts: Callable[[int, list[Any]], None] | None = None,
) -> list[tuple[int, Any]]:
    """(window index, output) for every output; ``posts(i, outs)`` runs before window i
    (as Whisper's transcripts would reach the board)."""
    out: list[tuple[int, Any]] = []
    at = [0]

    async def windows() -> AsyncIterator[tuple[np.ndarray, float]]:
        for i, p in enumerate(probs):
            at[0] = i
            if posts is not None:
                posts(i, [o for _, o in out])
            yield np.full(WINDOW, 0.1 if p >= 0.5 else 0.0, dtype=np.float32), p

    async def go() -> None:
        async for o in tt.turns(windows(), board):
            out.append((at[0], o))

    asyncio.run(go())
    return out


def kinds(outs: list[tuple[int, Any]]) -> list[str]:
    return [type(o).__name__ for _, o in outs]


def windows_of(u: Any) -> int:
    return len(u.pcm) // 2 // WINDOW


def at_of(outs: list[tuple[int, Any]], kind: str) -> int:
    return next(i for i, o in outs if type(o).__name__ == kind)


SPEC = {
    "min_silence_ms": 480,
    "speculative": True,
    "first_silence_ms": 160,
    "eot_min_ms": 288,
    "eot_max_ms": 960,
}
FIRST = 5 + 20 + 5 - 1  # the window of the first silence after 5 silent + 20 speech windows


@pytest.mark.parametrize(
    ("verdict", "confirm_after"),
    [(0.95, 5), (0.2, 30), (0.8, 15)],  # windows of silence: at once, eot_max_ms, min_silence_ms
)
def test_the_model_verdict_decides_when_the_turn_is_confirmed(verdict: float, confirm_after: int) -> None:
    model = Model(verdict)
    tt = TurnTaking(**SPEC, turn_model=model, turn_done=0.9, turn_hold=0.5)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 20), (SILENCE, 40)))
    assert kinds(outs) == ["SpeechStarted", "Interrupt", "SpeculativeTurn", "Utterance", "ConfirmTurn"]
    assert at_of(outs, "SpeculativeTurn") == FIRST
    assert at_of(outs, "ConfirmTurn") == 5 + 20 + confirm_after - 1
    assert len(model.calls) == 1 and tt.model_runs == 1  # once per pause by default
    assert model.calls[0] >= 25  # the pad, the speech and the silence so far


def test_not_finished_holds_through_a_pause_and_the_caller_goes_on() -> None:
    model = Model(0.1, 0.99)
    tt = TurnTaking(**SPEC, turn_model=model, turn_done=0.9, turn_hold=0.5)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 20), (SILENCE, 25), (SPEECH, 10), (SILENCE, 20)))
    abandon = [o for _, o in outs if getattr(o, "reason", None) == ABANDONED]
    assert len(abandon) == 1  # the pause of 800 ms never confirmed the first half
    assert kinds(outs).count("ConfirmTurn") == 1
    assert at_of(outs, "ConfirmTurn") == 5 + 20 + 25 + 10 + 5 - 1  # the whole question: at once


def test_words_that_trail_off_hold_the_turn_whatever_the_model_says() -> None:
    board = TurnBoard()
    board.turn = 1
    board.post("Can you book a table for", 1)  # a final transcript of the utterance so far
    tt = TurnTaking(**SPEC, adaptive=True, turn_model=Model(0.99), turn_done=0.9, turn_hold=0.5)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 20), (SILENCE, 40)), board)
    assert at_of(outs, "ConfirmTurn") == 5 + 20 + 30 - 1  # eot_max_ms (960 ms)
    assert trails_off("I want to order um") and trails_off("well,") and not trails_off("Paris.")


def test_rechecks_run_the_model_again_as_the_silence_grows() -> None:
    model = Model(0.3, 0.3, 0.95)  # hold, hold, finished
    tt = TurnTaking(**SPEC, turn_model=model, turn_done=0.9, turn_hold=0.5, turn_every_ms=192)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 20), (SILENCE, 40)))
    assert len(model.calls) == 3
    assert at_of(outs, "ConfirmTurn") == FIRST + 2 * 6  # the third check, 2 x 192 ms later


PRE = {**SPEC, "interim_ms": 320, "preemptive": True, "settle_ms": 64, "cover_ms": 250}


def posting(board: TurnBoard, posts: list[tuple[int, int, str]]) -> Callable[[int, list[Any]], None]:
    """At window ``when``, posts ``text`` as the transcript of the snapshot ``which``
    (an index into the snapshots yielded so far), as Whisper's would come back."""

    def post(i: int, outs: list[Any]) -> None:
        snaps = [o for o in outs if isinstance(o, Snapshot)]
        for when, which, text in posts:
            if i == when:
                board.post(text, snaps[which].turn, snaps[which].duration_ms)

    return post


# 5 silent windows, then 20 of speech (windows 5-24): interim snapshots at 16 and 26
# windows of utterance (the 6 windows of pad count: windows 14 and 24). The silence
# starts at window 25; the turn may start 64 ms (2 windows) into it, at window 26.
FULL = "What is the capital of France?"
TALK = script((SILENCE, 5), (SPEECH, 20), (SILENCE, 40))


def test_a_covering_interim_starts_the_reply_and_the_final_transcript_confirms_it() -> None:
    board = TurnBoard()
    tt = TurnTaking(**PRE)
    # the second interim, in flight as the silence starts (so no pause snapshot), is back at 26
    post = posting(board, [(20, 0, "What is the"), (26, 1, FULL), (40, 2, FULL)])
    outs = run(tt, TALK, board, post)
    names = kinds(outs)
    start = names.index("SpeculativeTurn")
    heard, check = outs[start + 1][1], outs[start + 2][1]
    # the check goes in the new turn (before SpeculativeTurn the runtime drops it as stale)
    assert isinstance(check, Snapshot) and check.settled
    assert isinstance(heard, Heard) and heard.text == FULL and heard.pcm == b""
    assert outs[start][0] == 26  # 64 ms into the silence, without waiting for a transcription
    verdict = next(o for _, o in outs if isinstance(o, Preempted))
    assert verdict.hit and at_of(outs, "Preempted") == 40
    assert at_of(outs, "ConfirmTurn") >= 40  # never before the final transcript agreed
    assert "Utterance" not in names  # nothing transcribed twice
    assert (tt.preempted, tt.preempt_hits, tt.preempt_misses) == (1, 1, 0)


def test_a_final_transcript_with_other_words_redoes_the_turn_from_them() -> None:
    board = TurnBoard()
    tt = TurnTaking(**PRE)
    post = posting(board, [(20, 0, "What is the"), (26, 1, "What is the capital of"), (40, 2, FULL)])
    outs = run(tt, TALK, board, post)
    names = kinds(outs)
    i = names.index("Preempted")
    assert names[i : i + 4] == ["Preempted", "Interrupt", "SpeculativeTurn", "Heard"]
    assert not outs[i][1].hit and outs[i + 1][1].reason == ABANDONED
    assert outs[i + 3][1].text == FULL
    assert names[-1] == "ConfirmTurn" and names.count("ConfirmTurn") == 1
    assert (tt.preempt_hits, tt.preempt_misses) == (0, 1)


def test_the_turn_starts_at_the_settle_from_the_pause_snapshots_audio() -> None:
    """The pause's first silent window sends the utterance so far to the STT; at the
    settle the turn starts from that same audio (the STT answers it from that pass)."""
    board = TurnBoard()
    tt = TurnTaking(**PRE)
    # the second interim does not come back; the pause's snapshot (the third) at 36
    post = posting(board, [(20, 0, "What is the"), (36, 2, FULL)])
    outs = run(tt, TALK, board, post)
    names = kinds(outs)
    gap = [(i, o) for i, o in outs if isinstance(o, Snapshot)][2]
    assert gap[0] == 25 and gap[1].settled and windows_of(gap[1]) == 26  # up to its first silent window
    start = names.index("SpeculativeTurn")
    assert outs[start][0] == 26  # the settle: no waiting on the snapshot's words
    utterance = outs[start + 1][1]
    assert type(utterance).__name__ == "Utterance" and utterance.pcm == gap[1].pcm
    assert "Preempted" not in names and tt.preempted == 0
    assert names.count("Snapshot") == 3 and names.count("ConfirmTurn") == 1


def test_the_pause_snapshot_back_before_the_settle_starts_the_turn_at_once() -> None:
    board = TurnBoard()
    tt = TurnTaking(**PRE)
    post = posting(board, [(20, 0, "What is the"), (25, 1, "What is the capital"), (26, 2, FULL)])
    outs = run(tt, TALK, board, post)
    start = at_of(outs, "SpeculativeTurn")
    assert start == 26
    assert [type(o).__name__ for i, o in outs if i == start][-1] == "Heard"


def test_speaking_again_while_the_pause_snapshot_is_out_starts_no_turn() -> None:
    """A pause shorter than the settle: its snapshot's words become an interim (nothing
    is started or abandoned); the next pause sends a snapshot of its own."""
    board = TurnBoard()
    tt = TurnTaking(**PRE)
    talk = script((SILENCE, 5), (SPEECH, 20), (SILENCE, 1), (SPEECH, 10), (SILENCE, 40))
    # the pause's snapshot (the third) comes back at 30 as an interim; the second pause
    # sends its own at 36, and the turn starts at its settle
    post = posting(board, [(20, 0, "What is the"), (25, 1, "What is"), (30, 2, "What is the")])
    outs = run(tt, talk, board, post)
    names = kinds(outs)
    snaps = [(i, o) for i, o in outs if isinstance(o, Snapshot)]
    expected = [(9, False), (20, False), (25, True), (35, False), (36, True)]
    assert [(i, o.settled) for i, o in snaps] == expected
    assert at_of(outs, "SpeculativeTurn") == 37
    assert "Interrupt" not in names[names.index("SpeechStarted") + 2 :]  # nothing abandoned
    assert names.count("SpeculativeTurn") == 1 and tt.abandoned == 0


def test_preemption_needs_speculation_and_interim_transcripts() -> None:
    with pytest.raises(ValueError, match="preemptive"):
        TurnTaking(preemptive=True, speculative=True)
    with pytest.raises(ValueError, match="turn_hold"):
        TurnTaking(turn_done=0.3, turn_hold=0.6)


class FakeSmartTurn(SmartTurnModel):
    """SmartTurnModel's batching over a scripted predict (no ONNX file)."""

    def __init__(self) -> None:  # (the real one loads the ONNX file)
        self.max_batch, self.max_wait_s = 8, 0.01
        self.runs = self.clips = 0
        self._pending = []
        self._lock = None
        self.batches: list[int] = []

    def predict(self, clips: list[np.ndarray]) -> list[float]:
        self.batches.append(len(clips))
        return [float(c[0]) for c in clips]


def test_concurrent_sessions_share_one_model_call() -> None:
    model = FakeSmartTurn()
    got: dict[int, float] = {}

    async def one(i: int) -> None:
        got[i] = await model.probability(np.full(100, i / 10, dtype=np.float32))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
        await one(7)  # alone, later: a batch of its own

    anyio.run(main)
    assert model.batches == [3, 1]
    assert got == pytest.approx({0: 0.0, 1: 0.1, 2: 0.2, 7: 0.7})


def test_the_model_hears_the_last_8_seconds_padded_in_front() -> None:
    short = last_8s(np.ones(100, dtype=np.float32))
    assert len(short) == SAMPLES and short[-100:].all() and not short[:-100].any()
    long = last_8s(np.arange(SAMPLES + 5, dtype=np.float32))
    assert len(long) == SAMPLES and long[0] == 5
