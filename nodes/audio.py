"""The audio nodes' helpers: re-exported from ``chains.audio``, where the one set of
PCM, WAV and soxr resampling rules lives (the nodes use the public chains API).
Kept so the nodes' existing imports keep working; new code imports ``chains.audio``."""

from __future__ import annotations

from chains.audio import StreamResampler, float_to_pcm, pcm_to_float, resample

__all__ = ["StreamResampler", "float_to_pcm", "pcm_to_float", "resample"]
