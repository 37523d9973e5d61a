"""The VAD's turn taking (nodes.turn.TurnTaking) on scripted speech probabilities:
speculative end of turn (the speculative utterance is the turn, never re-emitted;
the user going on abandons it), interim snapshots while the user speaks, and the
adaptive end-of-turn silence, which stays within its bounds whatever the words."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
import pytest

from chains import ConfirmTurn, Interrupt, SpeculativeTurn, SpeechStarted, Utterance
from nodes import tuning
from nodes.turn import (
    ABANDONED,
    CONTINUATIONS,
    SNAPSHOT_LOST_MS,
    Snapshot,
    TurnBoard,
    TurnTaking,
    TurnTiming,
    end_of_turn_ms,
)

RATE, WINDOW = 16000, 512  # one window: 32 ms
SPEECH, SILENCE = 0.9, 0.0


def script(*parts: tuple[float, int]) -> list[float]:
    """(probability, windows) runs, e.g. 20 windows of speech then 10 of silence."""
    return [p for p, n in parts for _ in range(n)]


def run(tt: TurnTaking, probs: list[float], hints: TurnBoard | None = None) -> list[tuple[int, Any]]:
    """(index of the window at which it was yielded, output) for every output."""
    out: list[tuple[int, Any]] = []
    at = [0]

    async def windows() -> AsyncIterator[tuple[np.ndarray, float]]:
        for i, p in enumerate(probs):
            at[0] = i
            yield np.full(WINDOW, 0.1 if p >= 0.5 else 0.0, dtype=np.float32), p

    async def go() -> None:
        async for o in tt.turns(windows(), hints):
            out.append((at[0], o))

    asyncio.run(go())
    return out


def windows_of(u: Utterance) -> int:
    return len(u.pcm) // 2 // WINDOW


def kinds(outs: list[tuple[int, Any]]) -> list[str]:
    return [type(o).__name__ for _, o in outs]


def test_without_speculation_the_utterance_comes_at_the_end_of_turn_silence() -> None:
    tt = TurnTaking(min_silence_ms=480, marks=True)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 20), (SILENCE, 20)))
    assert kinds(outs) == ["SpeechStarted", "Interrupt", "TurnTiming", "Utterance"]
    at, _ = outs[-1]
    assert at == 5 + 20 + 15 - 1  # 480 ms = 15 windows of silence
    timing = outs[2][1]
    assert timing.end_of_turn and timing.silence_ms == pytest.approx(480)


def test_a_confirmed_speculative_turn_is_yielded_once_at_the_first_silence() -> None:
    tt = TurnTaking(min_silence_ms=480, speculative=True, first_silence_ms=160, marks=True)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 20), (SILENCE, 20)))
    assert kinds(outs) == [
        "SpeechStarted",
        "Interrupt",
        "TurnTiming",
        "SpeculativeTurn",
        "Utterance",
        "ConfirmTurn",
    ]
    spec_at, utt = outs[4]
    confirm_at, _ = outs[5]
    assert spec_at == 5 + 20 + 5 - 1  # after 160 ms (5 windows) of silence
    assert confirm_at == 5 + 20 + 15 - 1  # the same 480 ms end of turn as without speculation
    assert [o for _, o in outs].count(utt) == 1  # the final utterance is not re-emitted
    assert not outs[2][1].end_of_turn
    assert (tt.speculated, tt.confirmed_turns, tt.abandoned) == (1, 1, 0)


def test_speaking_again_abandons_the_speculative_turn_and_the_next_one_has_it_all() -> None:
    tt = TurnTaking(min_silence_ms=480, speculative=True, first_silence_ms=160)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 20), (SILENCE, 9), (SPEECH, 10), (SILENCE, 20)))
    assert kinds(outs) == [
        "SpeechStarted",
        "Interrupt",
        "SpeculativeTurn",
        "Utterance",
        "Interrupt",
        "SpeculativeTurn",
        "Utterance",
        "ConfirmTurn",
    ]
    first, second = outs[3][1], outs[6][1]
    abandon = outs[4][1]
    assert abandon.reason == ABANDONED and outs[4][0] == 5 + 20 + 9  # at the first voiced window
    assert windows_of(second) > windows_of(first) + 10  # the whole utterance, pause included
    assert (tt.speculated, tt.confirmed_turns, tt.abandoned) == (2, 1, 1)


def test_audio_ending_in_the_pause_confirms_the_speculative_turn() -> None:
    tt = TurnTaking(min_silence_ms=480, speculative=True, first_silence_ms=160)
    outs = run(tt, script((SPEECH, 20), (SILENCE, 8)))
    assert kinds(outs)[-3:] == ["SpeculativeTurn", "Utterance", "ConfirmTurn"]


def test_interim_snapshots_grow_and_come_before_the_turn() -> None:
    tt = TurnTaking(min_silence_ms=480, interim_ms=320)  # every 10 windows of speech
    outs = run(tt, script((SILENCE, 5), (SPEECH, 35), (SILENCE, 20)))
    snaps = [o for _, o in outs if isinstance(o, Snapshot)]
    sizes = [windows_of(s) for s in snaps]
    assert len(sizes) >= 3  # 35 windows of speech (and the pad before it)
    assert all(b - a == 10 for a, b in itertools.pairwise(sizes))  # one per 320 ms of speech
    assert kinds(outs)[-1] == "Utterance" and all(s.turn == 1 for s in snaps)
    assert windows_of(outs[-1][1]) > sizes[-1]


def test_one_snapshot_at_a_time_while_its_words_are_awaited() -> None:
    board = TurnBoard()
    tt = TurnTaking(min_silence_ms=480, interim_ms=320)
    outs = run(tt, script((SILENCE, 5), (SPEECH, 110), (SILENCE, 20)), hints=board)
    # nobody posts words: after the first, one more only once it counts as lost (3 s)
    snaps = [at for at, o in outs if isinstance(o, Snapshot)]
    assert len(snaps) == 2 and snaps[1] - snaps[0] > SNAPSHOT_LOST_MS // 32


def test_interim_snapshots_share_the_stt_over_every_session() -> None:
    """Two callers on one turn-taking machine: while one's interim snapshot is out, the
    other's waits (interims use the STT's spare capacity, not the final passes')."""
    tt = TurnTaking(min_silence_ms=480, interim_ms=320)
    a, b = TurnBoard(), TurnBoard()
    talk = script((SILENCE, 5), (SPEECH, 40), (SILENCE, 20))
    got: dict[str, list[tuple[int, Any]]] = {"a": [], "b": []}

    async def caller(name: str, board: TurnBoard, answer_at: int | None) -> None:
        async def windows() -> AsyncIterator[tuple[np.ndarray, float]]:
            for i, p in enumerate(talk):
                snaps = [o for _, o in got[name] if isinstance(o, Snapshot)]
                if answer_at is not None and i == answer_at:
                    board.post("words", snaps[0].turn, snaps[0].duration_ms)
                yield np.full(WINDOW, 0.1 if p >= 0.5 else 0.0, dtype=np.float32), p
                await asyncio.sleep(0)  # the two callers' windows interleave

        i = 0
        async for o in tt.turns(windows(), board):
            got[name].append((i, o))
            i += 1

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "a", a, 20)
            tg.start_soon(caller, "b", b, None)

    asyncio.run(both())
    a_snaps = [o for _, o in got["a"] if isinstance(o, Snapshot)]
    b_snaps = [o for _, o in got["b"] if isinstance(o, Snapshot)]
    assert len(a_snaps) >= 1 and len(a_snaps) + len(b_snaps) == 2  # a's answer freed one slot
    assert tt.in_flight.snapshots == 0  # every session ended: none counted


def test_a_tuned_copy_shares_the_count_of_snapshots_in_flight() -> None:
    """A Realtime session turns on a copy of the node's machine (its own knobs): its
    interims still count against the STT's spare capacity with everyone else's."""
    tt = TurnTaking(min_silence_ms=480, interim_ms=320)
    own = copy.copy(tt)
    tuning.tune(own, {"silence_duration_ms": 700})
    run(own, script((SILENCE, 5), (SPEECH, 20)), hints=TurnBoard())  # its snapshot never answered
    assert own.in_flight is tt.in_flight and tt.in_flight.snapshots == 0  # released when it ended


def test_no_snapshot_and_no_turn_for_a_click() -> None:
    tt = TurnTaking(min_silence_ms=480, interim_ms=64, speculative=True)
    assert run(tt, script((SILENCE, 5), (SPEECH, 2), (SILENCE, 30))) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is the capital of France?", 300),
        ("Tell me a joke.", 300),
        ("Wow!", 300),
        ("What is the capital of", 1000),
        ("I'd like to know, um", 1000),
        ("and so", 1000),
        ("The weather in Paris,", 1000),
        ("What is the capital of.", 1000),  # Whisper's period on a cut-off phrase
        ("Paris", 500),
        ("", 500),
        (None, 500),
    ],
)
def test_end_of_turn_follows_the_words(text: str | None, expected: float) -> None:
    assert end_of_turn_ms(text, 500, 300, 1000) == expected


@pytest.mark.parametrize("base", [0, 200, 500, 2000])
@pytest.mark.parametrize(("lo", "hi"), [(300, 1000), (1000, 300), (500, 500)])
def test_end_of_turn_stays_within_its_bounds(base: float, lo: float, hi: float) -> None:
    rng = np.random.default_rng(7)
    vocab = [*CONTINUATIONS, "paris", "france", "yes", "?", ".", ",", "!", "...", "-", ""]
    for _ in range(300):
        text = " ".join(rng.choice(vocab, size=int(rng.integers(0, 6))))
        assert min(lo, hi) <= end_of_turn_ms(text, base, lo, hi) <= max(lo, hi), text


def test_adaptive_end_of_turn_waits_longer_after_and_shorter_after_a_question() -> None:
    def turn_end(words: str) -> int:
        class Board(TurnBoard):  # keeps the words for turn 1 whatever the VAD does
            def words(self, turn: int, *args: object) -> str | None:
                return words

        tt = TurnTaking(min_silence_ms=480, adaptive=True, eot_min_ms=288, eot_max_ms=960)
        outs = run(tt, script((SPEECH, 20), (SILENCE, 40)), hints=Board())
        (at,) = [at for at, o in outs if isinstance(o, Utterance)]
        return at - 20 + 1  # windows of silence it waited

    assert turn_end("What is the capital of France?") == 9  # 288 ms
    assert turn_end("What is the capital of") == 30  # 960 ms
    assert turn_end("Paris") == 15  # 480 ms


def test_words_of_a_snapshot_that_missed_the_end_of_the_speech_are_not_used() -> None:
    board = TurnBoard()
    board.post("What is the capital of", 1, audio_ms=600)
    assert board.words(1, spoken_ms=800) == "What is the capital of"  # heard nearly all of it
    assert board.words(1, spoken_ms=1500) is None  # the speech went on for 900 ms after it
    board.post("What is the capital of France?", 1)  # the (speculative) turn's own transcript
    assert board.words(1, spoken_ms=1500) == "What is the capital of France?"
    assert board.words(2) is None


def test_adaptive_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="eot_min_ms <= min_silence_ms <= eot_max_ms"):
        TurnTaking(min_silence_ms=500, adaptive=True, eot_min_ms=600, eot_max_ms=900)


def test_the_vocabulary_of_the_outputs() -> None:
    tt = TurnTaking(speculative=True, marks=True)
    outs = [o for _, o in run(tt, script((SPEECH, 20), (SILENCE, 20)))]
    assert all(
        isinstance(o, SpeechStarted | Interrupt | TurnTiming | SpeculativeTurn | Utterance | ConfirmTurn)
        for o in outs
    )
