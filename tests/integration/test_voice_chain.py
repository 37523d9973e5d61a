"""The voice demo chain end to end on the real models, through the runtime:
question.wav in (as 20 ms frames at 48 kHz, a browser's rate), the transcript,
a streamed reply and its audio out; the reply audio, transcribed back, says what
the reply text says. Then a barge-in: speaking again while the bot answers
aborts the first reply's request in the vLLM engine. And a question with a 300 ms
pause in the middle ("What is the capital of ... France?"): the chain speculates
at the pause, the rest of the question abandons that turn, and the reply that goes
out answers the whole question (nothing of the half is sent).

And the callers of issue 20, who pause 0.9-1 s mid-sentence ("My account number is
... four five six seven.", "I want to order um ... a large pizza with mushrooms."):
the end-of-turn model and the words hold the turn, so the one reply answers the
whole sentence.

One runtime (one vLLM engine, ~30 s to start) serves every test.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from chains import AudioFrame, ConfirmTurn, Interrupt, SpeculativeTurn, Text, TextDelta, Utterance
from nodes import PiperTTS, VLLMChat, WhisperSTT
from nodes.audio import float_to_pcm, resample
from nodes.turn import ABANDONED
from tests.integration.hosting import hosted_runtime

from .conftest import ROOT, to_float, words


def load_voice_chain() -> Any:
    spec = importlib.util.spec_from_file_location("chains_demo_voice", ROOT / "demos" / "voice.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.voice


def frames_48k(pcm: bytes, rate: int, silence_s: float = 1.0) -> list[AudioFrame]:
    pad = np.zeros(int(silence_s * rate), dtype=np.float32)
    x = resample(np.concatenate([pad, to_float(pcm), pad]), rate, 48000)
    data = float_to_pcm(x)
    return [AudioFrame(pcm=data[i : i + 1920], sample_rate=48000) for i in range(0, len(data), 1920)]


# vLLM starts in ~25-55 s (and converts SmolLM2 once, ~25 s): more than a short --timeout allows.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module: a vLLM engine belongs to the loop that first
    used it, and the runtime lives across both tests."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def runtime(loop) -> Iterator[Any]:
    """The runtime, hosted by one task from start to shutdown (its task group must
    be entered and left by the same task); the tests run sessions beside it."""
    with hosted_runtime(loop, load_voice_chain()) as rt:
        yield rt


def instance_of(rt: Any, node: str) -> Any:
    (inst,) = rt.models(node)
    return inst


def chat_of(rt: Any) -> VLLMChat:
    return instance_of(rt, "VLLMChat")


def final_transcripts(outs: list[Any]) -> list[str]:
    return [
        o.value.text
        for o in outs
        if o.name == "transcript" and not (isinstance(o.value, TextDelta) and not o.value.final)
    ]


def test_question_in_spoken_answer_out(runtime, loop, question) -> None:
    pcm, rate = question

    async def go() -> list[Any]:
        async def audio() -> AsyncIterator[AudioFrame]:
            for f in frames_48k(pcm, rate):
                yield f

        return [o async for o in runtime.stream(audio())]

    outs = loop.run_until_complete(go())
    errors = [o.value for o in outs if o.name == "error"]
    assert not errors, errors
    transcript = final_transcripts(outs)
    assert len(transcript) == 1 and {"capital", "france"} <= words(transcript[0]), transcript
    reply = "".join(o.value.text for o in outs if o.name == "reply")
    assert "paris" in reply.lower(), reply
    audio = [o.value for o in outs if o.name == "audio"]
    assert audio and len({f.sample_rate for f in audio}) == 1
    spoken = b"".join(f.pcm for f in audio)
    heard = WhisperSTT().instantiate()([Utterance(pcm=spoken, sample_rate=audio[0].sample_rate)])[0].text
    said = words(reply)
    assert len(words(heard) & said) >= 0.6 * len(said), (reply, heard)


def test_barge_in_aborts_the_reply_in_the_engine(runtime, loop, question) -> None:
    pcm, rate = question
    chat = chat_of(runtime)
    aborted_before = chat.aborted

    async def go() -> list[Any]:
        replying = asyncio.Event()

        async def audio() -> AsyncIterator[AudioFrame]:
            for f in frames_48k(pcm, rate):
                yield f
            await asyncio.wait_for(replying.wait(), 60)  # the bot is answering...
            for f in frames_48k(pcm, rate, silence_s=0.2):  # ...and the user speaks again
                yield f

        outs = []
        async for o in runtime.stream(audio()):
            outs.append(o)
            if o.name == "reply":
                replying.set()
        return outs

    outs = loop.run_until_complete(go())
    assert not [o.value for o in outs if o.name == "error"]
    assert final_transcripts(outs) and any(isinstance(o.value, Interrupt) for o in outs if o.name == "events")
    assert chat.aborted > aborted_before, "the first reply was not aborted"
    assert chat.unfinished() == 0
    assert not loop.run_until_complete(chat.engine_busy())
    epochs = sorted({o.epoch for o in outs if o.name == "reply"})
    assert len(epochs) >= 2  # the second turn was answered too


def test_a_pause_mid_sentence_gets_a_reply_to_the_whole_question(runtime, loop) -> None:
    tts: PiperTTS = instance_of(runtime, "PiperTTS")
    a, b = tts.synthesize("What is the capital of", 16000), tts.synthesize("France?", 16000)

    def trim(x: np.ndarray) -> np.ndarray:
        loud = np.nonzero(np.abs(x) > 0.02)[0]
        return x[loud[0] : loud[-1] + 1]

    paused = np.concatenate([trim(a), np.zeros(int(0.3 * 16000)), trim(b)]).astype(np.float32)

    async def go() -> list[Any]:
        async def audio() -> AsyncIterator[AudioFrame]:
            for f in frames_48k(float_to_pcm(paused), 16000, silence_s=1.5):
                yield f

        return [o async for o in runtime.stream(audio())]

    outs = loop.run_until_complete(go())
    assert not [o.value for o in outs if o.name == "error"]
    events = [o for o in outs if o.name == "events"]
    abandoned = {
        o.epoch - 1 for o in events if isinstance(o.value, Interrupt) and o.value.reason == ABANDONED
    }
    # (a speculative turn waits for the words of the pause's snapshot, which the audio,
    # sent faster than real time here, outruns: one started in the pause is abandoned)
    assert any(isinstance(o.value, SpeculativeTurn) for o in events)
    assert any(isinstance(o.value, ConfirmTurn) for o in events)
    assert not [o for o in outs if o.epoch in abandoned and o.name != "events"], "the half was answered"
    (transcript,) = final_transcripts(outs)
    assert {"capital", "france"} <= words(transcript), transcript
    assert len({o.epoch for o in outs if o.name == "reply"}) == 1
    reply = "".join(o.value.text for o in outs if o.name == "reply")
    assert "paris" in reply.lower(), reply
    assert all(isinstance(o.value, Text | TextDelta) for o in outs if o.name == "transcript")


@pytest.mark.parametrize(
    ("first", "rest", "pause_ms", "heard", "then"),
    [
        ("My account number is", "four five six seven.", 900, "number", {"seven", "4567"}),
        ("I want to order um", "a large pizza with mushrooms.", 1000, "order", {"pizza"}),
    ],
)
def test_a_long_pause_mid_sentence_does_not_get_half_answered(
    runtime, loop, first, rest, pause_ms, heard, then
) -> None:
    """Sent at the pace a caller speaks (the words of the first half are back before
    the pause ends, as in a call), one turn: the whole sentence, answered once."""
    from benchmarks.turnset import VOICES, Synth

    a, b = Synth().split(first, rest, VOICES[0])
    paused = np.concatenate([a, np.zeros(int(pause_ms * 16)), b]).astype(np.float32)

    async def go() -> list[Any]:
        async def audio() -> AsyncIterator[AudioFrame]:
            t0 = loop.time()
            for i, f in enumerate(frames_48k(float_to_pcm(paused), 16000, silence_s=2.0)):
                await asyncio.sleep(max(0.0, t0 + i * 0.04 - loop.time()))  # 40 ms frames
                yield f

        return [o async for o in runtime.stream(audio())]

    outs = loop.run_until_complete(go())
    assert not [o.value for o in outs if o.name == "error"]
    (transcript,) = final_transcripts(outs)  # one turn: the whole sentence
    assert heard in words(transcript) and then & words(transcript), transcript
    abandoned = {
        o.epoch - 1
        for o in outs
        if o.name == "events" and isinstance(o.value, Interrupt) and o.value.reason == ABANDONED
    }
    assert not [o for o in outs if o.epoch in abandoned and o.name != "events"], "an abandoned turn was sent"
    assert len({o.epoch for o in outs if o.name in ("reply", "audio")}) == 1
