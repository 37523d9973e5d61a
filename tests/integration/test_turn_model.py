"""Smart Turn v3.2 (nodes/smartturn.py) on real speech: the question of question.wav
heard to its end is a finished turn, a sentence stopped after "um" is not, by the
demo's thresholds (demos/voice.py: finished at P >= turn_done, held under
turn_hold), through the model alone and through the VAD's turn taking on the real
Silero probabilities. Whisper passes a ``Heard`` utterance's words on untranscribed,
beside an utterance it does transcribe in the same batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from benchmarks.turnset import VOICES, Synth
from chains import Text, Utterance
from nodes import SileroVAD, WhisperSTT
from nodes.heard import Heard
from nodes.smartturn import SmartTurnModel
from nodes.turn import TurnTaking

from .conftest import ROOT, to_float, words

RATE = 16000
DEMO = ROOT / "demos" / "voice.py"


def demo_thresholds() -> dict[str, float]:
    """turn_done and turn_hold as demos/voice.py ships them (read from its source, so
    that importing it does not build the chain)."""
    import ast

    tree = ast.parse(DEMO.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TURN_TAKING":
            cfg = ast.literal_eval(node.value)
            return {"turn_done": cfg["turn_done"], "turn_hold": cfg["turn_hold"]}
    raise AssertionError("no TURN_TAKING in demos/voice.py")


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    return SmartTurnModel()


@pytest.fixture(scope="module")
def unfinished() -> np.ndarray:
    """Piper (joe) saying "I want to order um a large pizza with mushrooms." cut after
    "um": the first part keeps the melody of a sentence that goes on."""
    first, _ = Synth().split("I want to order um", "a large pizza with mushrooms.", VOICES[0])
    return first


def silence(ms: float) -> np.ndarray:
    return np.zeros(int(ms * RATE / 1000), dtype=np.float32)


def speech_of(pcm: bytes) -> np.ndarray:
    x = to_float(pcm)
    loud = np.nonzero(np.abs(x) > 0.02)[0]
    return x[loud[0] : loud[-1] + 1]


def test_a_finished_question_and_a_sentence_left_after_um(model, question, unfinished) -> None:
    th = demo_thresholds()
    pcm, rate = question
    assert rate == RATE
    done = np.concatenate([silence(200), speech_of(pcm), silence(200)])
    going = np.concatenate([silence(200), unfinished, silence(200)])
    p_done, p_going = model.predict([done, going])  # one batch
    assert p_done >= th["turn_done"], p_done
    assert p_going < th["turn_hold"], p_going
    assert model.predict([going]) == pytest.approx([p_going], abs=1e-4)  # batch-independent


def test_the_turn_taking_confirms_the_question_at_once_and_holds_the_half(
    model, question, unfinished
) -> None:
    """Through Silero and the state machine with the model: the question's speculative
    turn is confirmed at the first silence; the half sentence is held to eot_max_ms."""
    vad = SileroVAD().instantiate()
    th = demo_thresholds()

    def run(audio: np.ndarray) -> list[tuple[float, str]]:
        tt = TurnTaking(
            speculative=True, first_silence_ms=160, min_silence_ms=500, eot_min_ms=300, eot_max_ms=1600,
            turn_model=model.probability, **th,
        )  # fmt: skip
        at = [0.0]

        async def windows() -> AsyncIterator[tuple[np.ndarray, float]]:
            state = vad.new_state()
            for i in range(0, len(audio) - 511, 512):
                at[0] = (i + 512) / RATE
                w = audio[i : i + 512]
                yield w, vad.probability(w, state)

        async def go() -> list[tuple[float, str]]:
            return [(at[0], type(o).__name__) async for o in tt.turns(windows(), hints=None)]

        return asyncio.run(go())

    pcm, _ = question
    q = speech_of(pcm)
    outs = run(np.concatenate([silence(300), q, silence(1000)]))
    end = (len(silence(300)) + len(q)) / RATE
    confirm = [t for t, k in outs if k == "ConfirmTurn"]
    spec = [t for t, k in outs if k == "SpeculativeTurn"]
    assert len(confirm) == 1 and confirm == spec[-1:], outs  # confirmed at the first silence
    assert confirm[0] - end < 0.5
    half = run(np.concatenate([silence(300), unfinished, silence(2000)]))
    end = (len(silence(300)) + len(unfinished)) / RATE
    (held,) = [t for t, k in half if k == "ConfirmTurn"]
    assert held - end >= 1.2, half  # held to eot_max_ms (1.6 s of silence), not confirmed at once


def test_whisper_passes_heard_words_on_beside_a_transcription(question) -> None:
    stt: Any = WhisperSTT(model="tiny.en").instantiate()
    pcm, rate = question
    out = stt(
        [Heard(pcm=b"", sample_rate=RATE, text="Is the sun a star?"), Utterance(pcm=pcm, sample_rate=rate)]
    )
    assert [type(o) for o in out] == [Text, Text]
    assert out[0].text == "Is the sun a star?"
    assert {"capital", "france"} <= words(out[1].text), out[1].text
