"""Audio for every layer: PCM16 frames, WAV files and resampling, with one set of rules.

Audio moves through chains as PCM16 little-endian mono (``AudioFrame.pcm``) at the
rate the frame names. File mode, the transport and the audio nodes all read, write,
check and resample it here, so they agree on what is accepted:

- **Mono.** A WAV file with several channels is mixed down to mono by averaging its
  channels (not refused, not left-channel-only): speech recorded in stereo keeps both
  speakers, and the result never clips.
- **Sample widths.** WAV files of 8-, 16-, 24- or 32-bit integer PCM are read and
  converted to 16-bit; anything written is 16-bit.
- **Rates.** A sample rate is a whole number of Hz in ``MIN_RATE..MAX_RATE``.
- **Resampling** uses soxr (libsoxr's band-limited, anti-aliased resampler) at one
  quality, ``QUALITY``: whole clips with ``resample``/``resample_pcm``, live audio
  with ``PcmResampler`` (bytes) or ``StreamResampler`` (float32), which carry the
  filter state across frames so frame edges do not click. A streaming resampler
  holds back a few milliseconds (the filter's look-ahead) until ``flush()``.

Bad audio raises ``AudioError`` (a ``ChainsError`` and a ``ValueError``) naming the
problem: not a WAV file, an odd byte count, an impossible rate.

This is vocabulary: it imports nothing from runtime/, transport/ or nodes/.
"""

from __future__ import annotations

import math
import os
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from chains.errors import AudioError
from chains.messages import AudioFrame

FRAME_MS = 20
"""The length of the frames file mode and the clients cut audio into."""
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
"""The usual rates (what a client may announce on the wire)."""
MIN_RATE, MAX_RATE = 1000, 384000
QUALITY = "HQ"
"""soxr quality for every resampler here (20-bit precision, steep anti-alias filter)."""

_PCM16 = np.dtype("<i2")


# --- checks -------------------------------------------------------------------------------------
def rate_problem(rate: object) -> str | None:
    """Why ``rate`` is not a usable sample rate, or None when it is."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        return f"sample rate must be a whole number of Hz, got {rate!r}"
    if not MIN_RATE <= rate <= MAX_RATE:
        return f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz"
    return None


def check_rate(rate: object, what: str = "audio") -> int:
    """``rate`` as an int, or ``AudioError`` naming ``what`` and the problem."""
    problem = rate_problem(rate)
    if problem is not None:
        raise AudioError(f"{what}: {problem}")
    return int(rate)  # type: ignore[call-overload]


def pcm_problem(data: bytes, max_bytes: int | None = None) -> str | None:
    """Why ``data`` is not acceptable PCM16LE mono, or None when it is."""
    if not data:
        return "empty audio message"
    if len(data) % 2:
        return f"odd-length PCM16 audio: {len(data)} bytes (samples are 2 bytes each)"
    if max_bytes is not None and len(data) > max_bytes:
        return f"audio message of {len(data)} bytes exceeds the limit of {max_bytes}"
    return None


def _even(pcm: bytes, what: str) -> None:
    if len(pcm) % 2:
        raise AudioError(f"{what}: odd-length PCM16 audio: {len(pcm)} bytes (samples are 2 bytes each)")


# --- conversions ---------------------------------------------------------------------------------
def samples(pcm: bytes) -> np.ndarray:
    """PCM16LE bytes as an int16 array (a view, no copy). ``AudioError`` on an odd byte count."""
    _even(pcm, "audio")
    return np.frombuffer(pcm, dtype=_PCM16)


def to_bytes(x: np.ndarray | Iterable[int]) -> bytes:
    """int16 samples (an array or any iterable of ints) as PCM16LE bytes."""
    return np.asarray(x).astype(_PCM16, copy=False).tobytes()


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """PCM16LE bytes as float32 in [-1, 1)."""
    return samples(pcm).astype(np.float32) / 32768.0


def float_to_pcm(x: np.ndarray) -> bytes:
    """float audio in [-1, 1] as PCM16LE bytes (values outside are clipped)."""
    return (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(_PCM16).tobytes()


def mix_to_mono(pcm: bytes, channels: int) -> bytes:
    """Interleaved PCM16 with ``channels`` channels, mixed down by averaging them."""
    if channels == 1:
        return pcm
    x = samples(pcm)
    x = x[: len(x) - len(x) % channels].reshape(-1, channels).astype(np.int32)
    return to_bytes(np.floor_divide(x.sum(axis=1), channels))


def duration_ms(pcm: bytes, rate: int) -> float:
    return 1000.0 * (len(pcm) // 2) / rate


def silence(ms: float, rate: int) -> bytes:
    return bytes(2 * round(rate * ms / 1000.0))


def tone(ms: float, rate: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone: test and benchmark audio that a trivial energy VAD hears as speech."""
    n = round(rate * ms / 1000.0)
    return to_bytes((amplitude * np.sin(2 * math.pi * freq / rate * np.arange(n))).astype(np.int16))


def peak(pcm: bytes) -> int:
    x = samples(pcm)
    return int(np.abs(x.astype(np.int32)).max()) if len(x) else 0


def split_frames(pcm: bytes, rate: int, ms: int = FRAME_MS) -> list[bytes]:
    """Cut PCM into ``ms``-long pieces (the last one may be shorter)."""
    step = max(2, rate * ms // 1000 * 2)
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def frames(pcm: bytes, rate: int, ms: int = FRAME_MS) -> list[AudioFrame]:
    """A clip as ``ms``-long ``AudioFrame``s, the way a live source would send it."""
    check_rate(rate)
    _even(pcm, "audio")
    return [AudioFrame(pcm=p, sample_rate=rate) for p in split_frames(pcm, rate, ms)]


def join(frames_: Iterable[AudioFrame]) -> tuple[bytes, int | None]:
    """Frames back into one clip: (PCM, rate). Frames at another rate than the first
    are resampled to it; ``None`` rate when there are no frames."""
    out: list[bytes] = []
    rate: int | None = None
    for f in frames_:
        if rate is None:
            rate = f.sample_rate
        out.append(f.pcm if f.sample_rate == rate else resample_pcm(f.pcm, f.sample_rate, rate))
    return b"".join(out), rate


# --- wav files -----------------------------------------------------------------------------------
def read_wav(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """A WAV file as (PCM16LE mono bytes, sample rate).

    Several channels are mixed down to mono; 8/24/32-bit integer samples are converted
    to 16-bit. ``AudioError`` names the file and the problem otherwise."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as e:
        raise AudioError(f"{path}: not a readable wav file ({e}); need integer PCM audio") from None
    problem = rate_problem(rate)
    if problem is not None:
        raise AudioError(f"{path}: {problem}")
    raw = raw[: len(raw) - len(raw) % (width * channels)]
    if width == 1:  # unsigned 8-bit
        pcm = to_bytes((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8)
    elif width == 2:
        pcm = raw
    elif width in (3, 4):
        b = np.frombuffer(raw, np.uint8).reshape(-1, width)
        pcm = b[:, width - 2 :].copy().tobytes()  # the two most significant bytes (little-endian)
    else:
        raise AudioError(f"{path}: {8 * width}-bit samples are not supported (need 8, 16, 24 or 32-bit)")
    return mix_to_mono(pcm, channels), rate


def write_wav(path: str | os.PathLike[str], pcm: bytes, rate: int) -> float:
    """Write PCM16LE mono as a WAV file (folders created); returns its length in seconds."""
    rate = check_rate(rate, str(path))
    _even(pcm, str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return len(pcm) / 2 / rate


def read_wav_frames(path: str | os.PathLike[str], ms: int = FRAME_MS) -> list[AudioFrame]:
    """A WAV file as ``ms``-long mono ``AudioFrame``s (see ``read_wav`` for the rules)."""
    pcm, rate = read_wav(path)
    if not pcm:
        raise AudioError(f"{path}: the wav file has no audio")
    return frames(pcm, rate, ms)


def write_wav_frames(path: str | os.PathLike[str], frames_: Iterable[AudioFrame]) -> float:
    """Write frames as one WAV file at the first frame's rate; returns seconds written."""
    pcm, rate = join(frames_)
    return write_wav(path, pcm, rate or 16000)


# --- resampling ----------------------------------------------------------------------------------
def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """A whole float32 mono clip from ``src`` Hz to ``dst`` Hz."""
    src, dst = check_rate(src, "resample from"), check_rate(dst, "resample to")
    if src == dst or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float32), src, dst, quality=QUALITY)


def resample_pcm(pcm: bytes, src: int, dst: int) -> bytes:
    """A whole PCM16 mono clip from ``src`` Hz to ``dst`` Hz."""
    src, dst = check_rate(src, "resample from"), check_rate(dst, "resample to")
    x = samples(pcm)
    if src == dst or len(x) == 0:
        return pcm
    import soxr

    return to_bytes(soxr.resample(x, src, dst, quality=QUALITY))


_idle_streams: dict[tuple[int, int, str], list[Any]] = {}
_IDLE_MAX = 512  # per rate pair: about the most sessions a process serves at once


def _stream(src: int, dst: int, dtype: str) -> Any:
    """A soxr stream resampler, reused when one is idle. Why a pool: a server builds one
    per session, building one costs more than a frame's resampling, and soxr/numpy keep
    small allocations per construction that settle only after hundreds of them."""
    idle = _idle_streams.get((src, dst, dtype))
    if idle:
        return idle.pop()
    import soxr

    return soxr.ResampleStream(src, dst, 1, dtype=dtype, quality=QUALITY)


def _release(src: int, dst: int, dtype: str, rs: Any) -> None:
    """A flushed stream goes back to the pool, its filter state cleared."""
    rs.clear()
    idle = _idle_streams.setdefault((src, dst, dtype), [])
    if len(idle) < _IDLE_MAX:
        idle.append(rs)


class PcmResampler:
    """Resamples a live PCM16 mono stream frame by frame, carrying the filter state.

    ``process(pcm)`` returns what the filter has ready (it may be empty for the first
    frames: the filter looks a few milliseconds ahead); ``flush()`` returns the held
    tail at the end of the stream and starts afresh."""

    __slots__ = ("_rs", "dst", "src")

    def __init__(self, src: int, dst: int):
        self.src = check_rate(src, "resample from")
        self.dst = check_rate(dst, "resample to")
        self._rs: object | None = None

    def process(self, pcm: bytes) -> bytes:
        x = samples(pcm)
        if self.src == self.dst:
            return pcm
        if self._rs is None:
            self._rs = _stream(self.src, self.dst, "int16")
        return self._rs.resample_chunk(x).tobytes()  # type: ignore[attr-defined]

    def flush(self) -> bytes:
        if self._rs is None:
            return b""
        rs, self._rs = self._rs, None
        out = rs.resample_chunk(np.zeros(0, _PCM16), last=True).tobytes()  # type: ignore[attr-defined]
        _release(self.src, self.dst, "int16", rs)
        return out


class StreamResampler:
    """Resamples a live float32 stream to ``dst`` Hz frame by frame, carrying the filter
    state; the input rate may change mid-stream (the filter is then rebuilt).
    ``flush()`` returns the held tail."""

    def __init__(self, dst: int):
        self.dst = check_rate(dst, "resample to")
        self.src: int | None = None
        self._rs: object | None = None

    def __call__(self, x: np.ndarray, src: int) -> np.ndarray:
        if src == self.dst:
            return x
        if src != self.src:
            self.src = check_rate(src, "resample from")
            self._rs = _stream(src, self.dst, "float32")
        return self._rs.resample_chunk(np.asarray(x, dtype=np.float32))  # type: ignore[attr-defined]

    def flush(self) -> np.ndarray:
        if self._rs is None:
            return np.zeros(0, dtype=np.float32)
        return self._rs.resample_chunk(np.zeros(0, dtype=np.float32), last=True)  # type: ignore[attr-defined]


class Windower:
    """Cuts a live stream of PCM16 frames, at any rate and of any length, into windows of
    ``size`` float32 samples at ``rate`` Hz: what a frame-wise model takes (Silero: 512
    samples at 16 kHz) from what a client sends (20 ms at 8-48 kHz). The remainder and
    the resampler's state carry over between frames.

    It runs for every frame of every live session, so frames already at ``rate`` only
    append their bytes; the float conversion happens once per window. Each window is a
    new array the caller may keep (the turn keeps its utterance's windows)."""

    __slots__ = ("_pcm", "_rest", "_rs", "rate", "size")

    def __init__(self, rate: int, size: int):
        self.rate = check_rate(rate, "windows at")
        if size < 1:
            raise ValueError("window size must be >= 1 sample")
        self.size = size
        self._rs = StreamResampler(rate)
        self._pcm = bytearray()  # PCM16 at ``rate`` not yet in a window
        self._rest = np.zeros(0, dtype=np.float32)  # resampled samples not yet in a window

    def push(self, pcm: bytes, sample_rate: int) -> list[np.ndarray]:
        """The windows completed by one frame (often none or one)."""
        if sample_rate != self.rate or len(self._rest):
            return self._push_resampled(pcm, sample_rate)
        _even(pcm, "audio")
        buf = self._pcm
        buf += pcm
        step = 2 * self.size
        if len(buf) < step:
            return []
        whole = len(buf) // step * step
        x = np.frombuffer(buf, dtype=_PCM16, count=whole // 2).astype(np.float32)
        x *= 1.0 / 32768.0
        del buf[:whole]
        return list(x.reshape(-1, self.size)) if whole > step else [x]

    def _push_resampled(self, pcm: bytes, sample_rate: int) -> list[np.ndarray]:
        parts = [self._rest, self._rs(pcm_to_float(pcm), sample_rate)]
        if self._pcm:  # the rate changed: what was held at ``rate`` goes first
            parts.insert(0, pcm_to_float(bytes(self._pcm)))
            self._pcm.clear()
        x = np.concatenate(parts)
        n = len(x) // self.size * self.size
        self._rest = x[n:].copy()
        return [w.copy() for w in x[:n].reshape(-1, self.size)]


__all__ = [
    "FRAME_MS",
    "MAX_RATE",
    "MIN_RATE",
    "QUALITY",
    "SAMPLE_RATES",
    "AudioError",
    "PcmResampler",
    "StreamResampler",
    "Windower",
    "check_rate",
    "duration_ms",
    "float_to_pcm",
    "frames",
    "join",
    "mix_to_mono",
    "pcm_problem",
    "pcm_to_float",
    "peak",
    "rate_problem",
    "read_wav",
    "read_wav_frames",
    "resample",
    "resample_pcm",
    "samples",
    "silence",
    "split_frames",
    "to_bytes",
    "tone",
    "write_wav",
    "write_wav_frames",
]
