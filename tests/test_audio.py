"""chains.audio: the one set of PCM16, WAV and resampling rules that file mode, the
transport and the audio nodes share."""

from __future__ import annotations

import math
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

import chains
from chains.audio import (
    AudioError,
    PcmResampler,
    StreamResampler,
    Windower,
    check_rate,
    duration_ms,
    float_to_pcm,
    frames,
    join,
    mix_to_mono,
    pcm_problem,
    pcm_to_float,
    peak,
    read_wav,
    read_wav_frames,
    resample,
    resample_pcm,
    samples,
    silence,
    split_frames,
    to_bytes,
    tone,
    write_wav,
    write_wav_frames,
)
from chains.messages import AudioFrame


def _write(path: Path, raw: bytes, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _dominant_freq(pcm: bytes, rate: int) -> float:
    """Zero crossings per second / 2: enough to check a pure tone's pitch."""
    x = samples(pcm).astype(np.int32)
    crossings = int(np.count_nonzero((x[:-1] < 0) != (x[1:] < 0)))
    return crossings / 2 / (len(x) / rate)


def _level(pcm: bytes) -> float:
    x = pcm_to_float(pcm)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


# --- checks and conversions ----------------------------------------------------------------------
def test_problems_are_named() -> None:
    assert pcm_problem(b"\x00\x00") is None
    assert "empty" in (pcm_problem(b"") or "")
    assert "odd-length" in (pcm_problem(b"\x00\x00\x00") or "")
    assert "exceeds" in (pcm_problem(b"\x00" * 10, max_bytes=8) or "")
    with pytest.raises(AudioError, match="odd-length PCM16 audio: 3 bytes"):
        samples(b"\x00\x00\x00")
    with pytest.raises(AudioError, match="odd-length"):
        pcm_to_float(b"\x01")
    for bad in (0, -16000, 16000.5, "16000", True, 10**7):
        with pytest.raises(AudioError, match="sample rate"):
            check_rate(bad)
    assert check_rate(np.int64(16000)) == 16000


def test_audio_error_is_a_chains_error_and_a_value_error() -> None:
    assert issubclass(AudioError, chains.ChainsError) and issubclass(AudioError, ValueError)


def test_samples_are_signed_little_endian_and_round_trip() -> None:
    assert list(samples(b"\x01\x00\xff\xff\x00\x80")) == [1, -1, -32768]
    assert to_bytes([1, -1, -32768]) == b"\x01\x00\xff\xff\x00\x80"
    assert math.isclose(duration_ms(b"\x00" * 320, 16000), 10.0)
    x = np.array([0.0, 0.5, -0.5, 2.0, -2.0], np.float32)
    assert list(samples(float_to_pcm(x))) == [0, 16383, -16383, 32767, -32767]  # clipped, not wrapped
    assert np.allclose(pcm_to_float(float_to_pcm(x[:3])), x[:3], atol=1e-4)


def test_tone_silence_frames() -> None:
    t = tone(100, 16000, 440)
    assert duration_ms(t, 16000) == pytest.approx(100)
    assert 7900 <= peak(t) <= 8000
    assert peak(silence(20, 16000)) == 0
    assert [len(f) for f in split_frames(t, 16000)] == [640] * 5
    assert len(split_frames(t[:700], 16000)) == 2
    fs = frames(t, 16000)
    assert len(fs) == 5 and all(f.sample_rate == 16000 for f in fs)
    assert join(fs) == (t, 16000)
    assert join([]) == (b"", None)


def test_stereo_is_mixed_down_by_averaging() -> None:
    left, right = [1000, -2000, 32767], [3000, -4000, 32767]
    inter = to_bytes([v for pair in zip(left, right, strict=True) for v in pair])
    assert list(samples(mix_to_mono(inter, 2))) == [2000, -3000, 32767]  # no clipping at full scale


# --- wav files -----------------------------------------------------------------------------------
def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = tone(50, 16000)
    secs = write_wav(tmp_path / "sub" / "a.wav", pcm, 16000)
    assert secs == pytest.approx(0.05)
    assert read_wav(tmp_path / "sub" / "a.wav") == (pcm, 16000)


def test_stereo_wav_reads_as_mono_everywhere(tmp_path: Path) -> None:
    left = samples(tone(20, 8000, 200))
    stereo = np.stack([left, np.zeros_like(left)], axis=1).reshape(-1)
    path = _write(tmp_path / "s.wav", to_bytes(stereo), 8000, channels=2)
    mono, rate = read_wav(path)
    assert rate == 8000 and list(samples(mono)) == list(left // 2)
    fs = read_wav_frames(path)
    assert b"".join(f.pcm for f in fs) == mono and all(f.sample_rate == 8000 for f in fs)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_other_sample_widths_are_converted_to_16_bit(tmp_path: Path, width: int) -> None:
    ref = samples(tone(20, 16000, 300))
    if width == 1:
        raw = ((ref.astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes()
    else:
        wide = ref.astype(np.int32) << (8 * (width - 2))
        raw = wide.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :width].tobytes()
    pcm, rate = read_wav(_write(tmp_path / f"w{width}.wav", raw, 16000, width=width))
    got = samples(pcm).astype(np.int32)
    tolerance = 256 if width == 1 else 0
    assert rate == 16000 and np.abs(got - ref).max() <= tolerance


def test_bad_wav_files_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"RIFFnope")
    with pytest.raises(AudioError, match=r"bad\.wav: not a readable wav file"):
        read_wav(tmp_path / "bad.wav")
    (tmp_path / "text.wav").write_text("hello, not audio\n")
    with pytest.raises(AudioError, match="not a readable wav file"):
        read_wav(tmp_path / "text.wav")
    with pytest.raises(AudioError, match="no such file"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="has no audio"):
        read_wav_frames(_write(tmp_path / "empty.wav", b"", 16000))
    with pytest.raises(AudioError, match="outside"):
        read_wav(_write(tmp_path / "slow.wav", b"\x00\x00", 100))
    with pytest.raises(AudioError, match=r"out\.wav: odd-length"):
        write_wav(tmp_path / "out.wav", b"\x00\x00\x00", 16000)
    with pytest.raises(AudioError, match=r"out\.wav: sample rate"):
        write_wav(tmp_path / "out.wav", b"\x00\x00", 0)


def test_frames_at_mixed_rates_are_written_at_the_first_rate(tmp_path: Path) -> None:
    fs = [
        AudioFrame(pcm=tone(100, 16000), sample_rate=16000),
        AudioFrame(pcm=tone(100, 48000), sample_rate=48000),
    ]
    secs = write_wav_frames(tmp_path / "o.wav", fs)
    pcm, rate = read_wav(tmp_path / "o.wav")
    assert rate == 16000 and secs == pytest.approx(0.2, abs=0.002)
    assert len(pcm) // 2 == pytest.approx(3200, abs=4)


# --- resampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (16000, 48000), (22050, 16000), (16000, 24000)])
def test_resampling_keeps_length_and_pitch(src: int, dst: int) -> None:
    clip = tone(500, src, 440)
    out = resample_pcm(clip, src, dst)
    assert abs(len(out) // 2 - 500 * dst // 1000) <= 2
    assert _dominant_freq(out, dst) == pytest.approx(440, rel=0.02)
    f = resample(pcm_to_float(clip), src, dst)
    assert f.dtype == np.float32 and abs(len(f) - 500 * dst // 1000) <= 2


def test_downsampling_filters_out_what_the_new_rate_cannot_hold() -> None:
    """A 7 kHz tone cannot exist at 8 kHz (Nyquist 4 kHz): an anti-aliased resampler
    removes it; the old linear interpolation folded it back to 1 kHz at full level."""
    high = tone(500, 48000, 7000)
    out = resample_pcm(high, 48000, 8000)
    assert _level(out) < 0.01 * _level(high)
    low = tone(500, 48000, 1000)  # well inside the band: kept
    assert _level(resample_pcm(low, 48000, 8000)) == pytest.approx(_level(low), rel=0.05)


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (24000, 16000), (16000, 48000), (22050, 16000)])
def test_streaming_resampler_matches_one_shot_once_flushed(src: int, dst: int) -> None:
    clip = tone(400, src, 300)
    whole = samples(resample_pcm(clip, src, dst)).astype(np.int32)
    r = PcmResampler(src, dst)
    parts = [r.process(f) for f in split_frames(clip, src)]
    pieces = samples(b"".join(parts) + r.flush()).astype(np.int32)
    assert abs(len(whole) - len(pieces)) <= 2
    n = min(len(whole), len(pieces))
    # frame by frame gives the same samples as the whole clip (no clicks at the frame edges)
    assert np.abs(whole[:n] - pieces[:n]).max() <= 2


def test_identity_and_bad_resamplers() -> None:
    r = PcmResampler(16000, 16000)
    assert r.process(b"\x01\x00") == b"\x01\x00" and r.flush() == b""
    with pytest.raises(AudioError, match="resample from: sample rate"):
        PcmResampler(0, 16000)
    with pytest.raises(AudioError, match="odd-length"):
        PcmResampler(48000, 16000).process(b"\x00\x00\x00")


def test_float_stream_resampler_follows_a_rate_change() -> None:
    rs = StreamResampler(16000)
    a = np.concatenate([rs(pcm_to_float(f), 48000) for f in split_frames(tone(200, 48000), 48000)])
    b = np.concatenate([rs(pcm_to_float(f), 24000) for f in split_frames(tone(200, 24000), 24000)])
    tail = rs.flush()
    assert len(a) + len(b) + len(tail) == pytest.approx(2 * 3200, abs=300)  # 20 ms of each rate may be held
    assert rs(np.zeros(4, np.float32), 16000).shape == (4,)


def test_the_audio_module_is_vocabulary() -> None:
    """chains.audio imports nothing from runtime/, transport/ or nodes/."""
    code = (
        "import sys, chains.audio; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('runtime', 'transport', 'nodes')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_old_import_paths_are_the_same_objects() -> None:
    import chains.audio as audio
    import nodes.audio
    import transport.audio

    assert transport.audio.Resampler is audio.PcmResampler
    assert transport.audio.pcm_problem is audio.pcm_problem
    assert nodes.audio.StreamResampler is audio.StreamResampler and nodes.audio.resample is audio.resample


# --- Windower: fixed windows from live frames -------------------------------------------
def _tone_frames(n: int, size: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(size) * 3000).astype(np.int16).tobytes() for _ in range(n)]


@pytest.mark.parametrize("frame", [160, 320, 512, 1000, 5000])
def test_windower_cuts_frames_at_the_rate_into_the_same_windows_as_the_joined_stream(frame: int) -> None:
    frames = _tone_frames(40, frame)
    w = Windower(16000, 512)
    got = [x.copy() for f in frames for x in w.push(f, 16000)]
    whole = pcm_to_float(b"".join(frames))
    want = [whole[i : i + 512] for i in range(0, len(whole) - 511, 512)]
    assert len(got) == len(want)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert all(x.dtype == np.float32 and x.shape == (512,) for x in got)


def test_windower_resamples_other_rates_with_one_filter_across_frames() -> None:
    frames = _tone_frames(50, 960)  # 20 ms at 48 kHz
    w, rs = Windower(16000, 512), StreamResampler(16000)
    got = [x for f in frames for x in w.push(f, 48000)]
    joined = np.concatenate([rs(pcm_to_float(f), 48000) for f in frames])
    assert len(got) == len(joined) // 512
    assert all(np.array_equal(a, joined[i * 512 : (i + 1) * 512]) for i, a in enumerate(got))


def test_windower_keeps_windows_intact_after_later_frames() -> None:
    w = Windower(16000, 512)
    frames = _tone_frames(20, 320)
    kept = [x for f in frames for x in w.push(f, 16000)]
    copies = [x.copy() for x in kept]
    for f in _tone_frames(20, 320, seed=1):
        w.push(f, 16000)
    assert all(np.array_equal(a, b) for a, b in zip(kept, copies, strict=True))


def test_windower_refuses_odd_length_pcm() -> None:
    with pytest.raises(AudioError, match="odd-length"):
        Windower(16000, 512).push(b"\x00\x01\x02", 16000)
