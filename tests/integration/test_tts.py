"""PiperTTS on the real joe voice: it speaks, at the rate asked for, and Whisper
hears back what it said."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from chains import AudioFrame, Text, Utterance
from nodes import PiperTTS, WhisperSTT

from .conftest import words


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS().instantiate()


def speak(tts: PiperTTS, text: str) -> list[AudioFrame]:
    async def go() -> list[AudioFrame]:
        return [f async for f in tts(Text(text=text))]

    return asyncio.run(go())


def test_speaks_a_sentence_in_frames(tts) -> None:
    frames = speak(tts, "Paris is the capital of France.")
    assert frames and all(f.sample_rate == 22050 for f in frames)
    total_ms = sum(f.duration_ms for f in frames)
    assert 1000 < total_ms < 5000
    assert max(f.duration_ms for f in frames) <= 40.1
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2")
    assert np.abs(pcm).max() > 1000  # not silence


def test_empty_sentence_gives_no_audio(tts) -> None:
    assert speak(tts, "   ") == []


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_resamples_to_the_requested_rate(rate) -> None:
    tts = PiperTTS(sample_rate=rate).instantiate()
    frames = speak(tts, "Hello there.")
    assert {f.sample_rate for f in frames} == {rate}
    native = PiperTTS().instantiate().synthesize("Hello there.")
    seconds = sum(len(f.pcm) // 2 for f in frames) / rate
    assert abs(seconds - len(native) / 22050) < 0.01


def test_whisper_hears_what_piper_said(tts) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    audio = tts.synthesize(text, 16000)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    (heard,) = WhisperSTT().instantiate()([Utterance(pcm=pcm, sample_rate=16000)])
    assert words(heard.text) == words(text), heard.text
