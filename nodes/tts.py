"""PiperTTS: Piper with the bundled en_US "joe" voice, speaking each sentence as it
comes and streaming its audio in 20 ms-ish frames, resampled to the rate the
session asked for (``chains.context().meta["output_sample_rate"]``, else the
node's ``sample_rate``, else the voice's own 22050 Hz)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

import chains
from chains import AudioFrame, Text
from nodes.audio import float_to_pcm, resample

FRAME_MS = 40


@chains.node(concurrency=2)
class PiperTTS:
    def __init__(self, sample_rate: int | None = None):
        from piper import PiperVoice

        from nodes.resolve import piper_voice_paths

        model, config = piper_voice_paths()
        self.voice = PiperVoice.load(str(model), config_path=str(config))
        self.voice_rate = int(self.voice.config.sample_rate)
        self.sample_rate = sample_rate

    @classmethod
    def chains_models(cls, *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import piper_refs

        return piper_refs()

    def synthesize(self, text: str) -> np.ndarray:
        chunks = [c.audio_int16_array for c in self.voice.synthesize(text)]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0

    async def __call__(self, sentence: Text) -> AsyncIterator[AudioFrame]:
        if not sentence.text.strip():
            return
        try:
            meta_rate = chains.context().meta.get("output_sample_rate")
        except RuntimeError:
            meta_rate = None
        rate = int(meta_rate or self.sample_rate or self.voice_rate)
        audio = await asyncio.to_thread(self.synthesize, sentence.text)
        if rate != self.voice_rate:
            audio = resample(audio, self.voice_rate, rate)
        step = rate * FRAME_MS // 1000
        for i in range(0, len(audio), step):
            yield AudioFrame(pcm=float_to_pcm(audio[i : i + step]), sample_rate=rate)
