"""PCM16 audio helpers for the transport: validation, wav files, framing, resampling.

Pure standard library (``array``, ``wave``): the transport must not pull numpy in
just to move audio, and ``audioop`` is gone from Python 3.13. Audio on the wire is
always PCM16LE mono; these helpers are what the server, the Python client and the
benchmarks share.
"""

from __future__ import annotations

import math
import sys
import wave
from array import array
from pathlib import Path

FRAME_MS = 20
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)

_BIG_ENDIAN = sys.byteorder == "big"


def pcm_problem(data: bytes, max_bytes: int | None = None) -> str | None:
    """Why ``data`` is not acceptable PCM16LE mono, or None when it is."""
    if not data:
        return "empty audio message"
    if len(data) % 2:
        return f"odd-length PCM16 audio: {len(data)} bytes (samples are 2 bytes each)"
    if max_bytes is not None and len(data) > max_bytes:
        return f"audio message of {len(data)} bytes exceeds the limit of {max_bytes}"
    return None


def samples(pcm: bytes) -> array:
    """PCM16LE bytes as an array of signed 16-bit ints."""
    a = array("h")
    a.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if _BIG_ENDIAN:  # pragma: no cover - little-endian hosts only in CI
        a.byteswap()
    return a


def to_bytes(a: array) -> bytes:
    if _BIG_ENDIAN:  # pragma: no cover
        a = array("h", a)
        a.byteswap()
    return a.tobytes()


def duration_ms(pcm: bytes, rate: int) -> float:
    return 1000.0 * (len(pcm) // 2) / rate


def silence(ms: float, rate: int) -> bytes:
    return bytes(2 * round(rate * ms / 1000.0))


def tone(ms: float, rate: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone: test and benchmark audio that a trivial energy VAD hears as speech."""
    n = round(rate * ms / 1000.0)
    w = 2 * math.pi * freq / rate
    return to_bytes(array("h", (int(amplitude * math.sin(w * i)) for i in range(n))))


def peak(pcm: bytes) -> int:
    a = samples(pcm)
    return max((abs(x) for x in a), default=0)


def split_frames(pcm: bytes, rate: int, ms: int = FRAME_MS) -> list[bytes]:
    """Cut PCM into ``ms``-long frames (the last one may be shorter)."""
    step = max(2, rate * ms // 1000 * 2)
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


class Resampler:
    """Streaming linear-interpolation resampler for PCM16 mono.

    It carries its phase and the last input sample across calls, so a stream cut
    into 20 ms frames resamples without clicks at the frame edges. Linear
    interpolation is enough for speech between the usual rates; it is not a
    mastering-grade filter.
    """

    __slots__ = ("_last", "_pos", "dst", "src")

    def __init__(self, src: int, dst: int):
        if src <= 0 or dst <= 0:
            raise ValueError(f"sample rates must be positive, got {src} -> {dst}")
        self.src = src
        self.dst = dst
        self._pos = 0.0  # position of the next output sample, in input samples, relative to _last
        self._last: int | None = None

    def process(self, pcm: bytes) -> bytes:
        if self.src == self.dst:
            return pcm
        x = samples(pcm)
        if not x:
            return b""
        if self._last is None:
            seq = x
            self._pos = 0.0
        else:
            seq = array("h", [self._last])
            seq.extend(x)
        step = self.src / self.dst
        n_in = len(seq)
        out = array("h")
        pos = self._pos
        # interpolate between seq[i] and seq[i + 1] while both exist
        while pos < n_in - 1:
            i = int(pos)
            frac = pos - i
            a = seq[i]
            out.append(int(a + (seq[i + 1] - a) * frac))
            pos += step
        self._last = seq[-1]
        self._pos = pos - (n_in - 1)
        return to_bytes(out)


def resample(pcm: bytes, src: int, dst: int) -> bytes:
    """One-shot resampling of a whole clip."""
    if src == dst:
        return pcm
    r = Resampler(src, dst)
    out = r.process(pcm)
    # the resampler holds back the last sample to interpolate with the next call: flush it
    if r._last is not None and r._pos <= 0.0:
        out += to_bytes(array("h", [r._last]))
    return out


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """A wav file as (PCM16LE mono bytes, sample rate); stereo is mixed down."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path}: not a readable wav file ({e})") from e
    if width != 2:
        raise ValueError(f"{path}: need 16-bit PCM, got {8 * width}-bit samples")
    if channels == 1:
        return raw, rate
    a = samples(raw)
    mono = array("h", (sum(a[i : i + channels]) // channels for i in range(0, len(a), channels)))
    return to_bytes(mono), rate


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


__all__ = [
    "FRAME_MS",
    "SAMPLE_RATES",
    "Resampler",
    "duration_ms",
    "pcm_problem",
    "peak",
    "read_wav",
    "resample",
    "samples",
    "silence",
    "split_frames",
    "to_bytes",
    "tone",
    "write_wav",
]
