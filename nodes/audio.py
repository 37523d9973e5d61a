"""PCM16 helpers shared by the audio nodes.

Resampling uses soxr (libsoxr's band-limited resampler, a ~1 MB wheel): whole
clips through ``resample``, live audio through ``StreamResampler``, which keeps
the filter state across frames so frame boundaries do not click the way
per-frame resampling does.
"""

from __future__ import annotations

import numpy as np


def pcm_to_float(pcm: bytes) -> np.ndarray:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """A whole clip from ``src`` Hz to ``dst`` Hz (float32 mono)."""
    if src == dst or len(x) == 0:
        return x.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(x.astype(np.float32, copy=False), src, dst, quality="HQ")


class StreamResampler:
    """Resamples a live stream frame by frame, carrying the filter state.

    Output lags input by a few milliseconds; ``flush()`` returns the tail. The
    input rate may change mid-stream (the resampler is then rebuilt)."""

    def __init__(self, dst: int):
        self.dst = dst
        self.src: int | None = None
        self._rs = None

    def __call__(self, x: np.ndarray, src: int) -> np.ndarray:
        if src == self.dst:
            return x
        if src != self.src:
            import soxr

            self.src = src
            self._rs = soxr.ResampleStream(src, self.dst, 1, dtype="float32", quality="HQ")
        return self._rs.resample_chunk(x.astype(np.float32, copy=False))

    def flush(self) -> np.ndarray:
        if self._rs is None:
            return np.zeros(0, dtype=np.float32)
        return self._rs.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
