"""The transport's old names for the audio helpers, which now live in ``chains.audio``.

Kept only so that modules not yet moved over keep importing (``transport/outputs.py``
takes ``Resampler`` from here); new code imports ``chains.audio``. ``Resampler`` is
the soxr stream resampler (``chains.audio.PcmResampler``): it holds back the filter's
look-ahead, so a caller flushes it at the end of a stream.
"""

from __future__ import annotations

from chains.audio import FRAME_MS, SAMPLE_RATES, pcm_problem
from chains.audio import PcmResampler as Resampler

__all__ = ["FRAME_MS", "SAMPLE_RATES", "Resampler", "pcm_problem"]
