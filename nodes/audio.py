"""PCM16 helpers shared by the audio nodes (numpy only)."""

from __future__ import annotations

import numpy as np


def pcm_to_float(pcm: bytes) -> np.ndarray:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited enough for speech: a windowed-sinc low-pass before decimating,
    then linear interpolation onto the new grid."""
    if src == dst or len(x) == 0:
        return x
    if dst < src:
        cutoff = 0.5 * dst / src
        taps = 31
        n = np.arange(taps) - (taps - 1) / 2
        h = np.sinc(2 * cutoff * n) * np.hamming(taps)
        h /= h.sum()
        x = np.convolve(x, h, mode="same").astype(np.float32)
    n_out = round(len(x) * dst / src)
    t = np.arange(n_out) * (src / dst)
    return np.interp(t, np.arange(len(x)), x).astype(np.float32)
