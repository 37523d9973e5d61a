"""The voice demo chain end to end on the real models, through the runtime:
question.wav in (as 20 ms frames at 48 kHz, a browser's rate), the transcript,
a streamed reply and its audio out; the reply audio, transcribed back, says what
the reply text says. Then a barge-in: speaking again while the bot answers
aborts the first reply's request in the vLLM engine.

One runtime (one vLLM engine, ~30 s to start) serves both tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

import chains
from chains import AudioFrame, Interrupt, Utterance
from nodes import VLLMChat, WhisperSTT
from nodes.audio import float_to_pcm, resample

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
    ready: asyncio.Future[Any] = loop.create_future()
    stop = asyncio.Event()

    async def host() -> None:
        try:
            async with chains.running(load_voice_chain()) as rt:
                ready.set_result(rt)
                await stop.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            raise

    task = loop.create_task(host())
    rt = loop.run_until_complete(ready)
    try:
        yield rt
    finally:
        loop.call_soon_threadsafe(stop.set)
        loop.run_until_complete(task)


def chat_of(rt: Any) -> VLLMChat:
    (inst,) = [i for st in rt.stages for i in st.replicas.instances if type(i).__name__ == "VLLMChat"]
    return inst


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
    transcript = [o.value.text for o in outs if o.name == "transcript"]
    assert len(transcript) == 1 and {"capital", "france"} <= words(transcript[0]), transcript
    reply = "".join(o.value.text for o in outs if o.name == "reply")
    assert reply.strip(), "no reply"
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
    assert [o.value.text for o in outs if o.name == "transcript"] and any(
        isinstance(o.value, Interrupt) for o in outs if o.name == "events"
    )
    assert chat.aborted > aborted_before, "the first reply was not aborted"
    assert chat.unfinished() == 0
    assert not loop.run_until_complete(chat.engine_busy())
    epochs = sorted({o.epoch for o in outs if o.name == "reply"})
    assert len(epochs) >= 2  # the second turn was answered too
