"""PCM16 helpers: validation, framing, streaming resampling, wav files."""

from __future__ import annotations

import itertools
import math
import wave
from array import array
from pathlib import Path

import pytest

from transport.audio import (
    Resampler,
    duration_ms,
    pcm_problem,
    peak,
    read_wav,
    resample,
    samples,
    silence,
    split_frames,
    to_bytes,
    tone,
    write_wav,
)


def test_pcm_problems_are_named():
    assert pcm_problem(b"\x00\x00") is None
    assert "empty" in (pcm_problem(b"") or "")
    assert "odd-length" in (pcm_problem(b"\x00\x00\x00") or "")
    assert "exceeds" in (pcm_problem(b"\x00" * 10, max_bytes=8) or "")


def test_tone_silence_frames():
    t = tone(100, 16000, 440)
    assert duration_ms(t, 16000) == pytest.approx(100)
    assert 7900 <= peak(t) <= 8000
    assert peak(silence(20, 16000)) == 0
    fr = split_frames(t, 16000)
    assert len(fr) == 5 and all(len(f) == 640 for f in fr)
    assert len(split_frames(t[:700], 16000)) == 2


def _dominant_freq(pcm: bytes, rate: int) -> float:
    """Zero crossings per second / 2: enough to check a pure tone's pitch."""
    x = samples(pcm)
    crossings = sum(1 for a, b in itertools.pairwise(x) if (a < 0) != (b < 0))
    return crossings / 2 / (len(x) / rate)


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (16000, 48000), (22050, 16000), (16000, 24000)])
def test_resampling_keeps_length_and_pitch(src: int, dst: int):
    clip = tone(500, src, 440)
    out = resample(clip, src, dst)
    assert abs(len(out) // 2 - 500 * dst // 1000) <= 2
    assert _dominant_freq(out, dst) == pytest.approx(440, rel=0.02)


def test_streaming_resampler_matches_one_shot():
    clip = tone(400, 48000, 300)
    whole = resample(clip, 48000, 16000)
    r = Resampler(48000, 16000)
    pieces = b"".join(r.process(f) for f in split_frames(clip, 48000))
    # frame by frame gives the same samples (no clicks at the frame edges)
    n = min(len(whole), len(pieces)) // 2
    a, b = samples(whole)[:n], samples(pieces)[:n]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1
    assert abs(len(whole) - len(pieces)) <= 4


def test_identity_resampler():
    r = Resampler(16000, 16000)
    assert r.process(b"\x01\x00") == b"\x01\x00"
    with pytest.raises(ValueError):
        Resampler(0, 16000)


def test_wav_round_trip_and_stereo_mixdown(tmp_path: Path):
    pcm = tone(50, 16000)
    write_wav(tmp_path / "a.wav", pcm, 16000)
    assert read_wav(tmp_path / "a.wav") == (pcm, 16000)
    left = samples(tone(20, 8000, 200))
    stereo = array("h")
    for v in left:
        stereo.extend((v, v))
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(to_bytes(stereo))
    mono, rate = read_wav(tmp_path / "s.wav")
    assert rate == 8000 and samples(mono) == left
    (tmp_path / "bad.wav").write_bytes(b"RIFFnope")
    with pytest.raises(ValueError, match="not a readable wav"):
        read_wav(tmp_path / "bad.wav")


def test_samples_are_signed_little_endian():
    assert list(samples(b"\x01\x00\xff\xff\x00\x80")) == [1, -1, -32768]
    assert math.isclose(duration_ms(b"\x00" * 320, 16000), 10.0)
