"""Service time per batch size, learned online: ``t(b) = a + k*b``.

A least-squares fit over the most recent batches, so the model follows a stage
whose cost drifts (a warming cache, a neighbour stealing the CPU). Before it has
seen two distinct batch sizes it falls back to what it has: the mean of what it
saw, or ``prior_s`` when it has seen nothing (the safe start: it will not claim a
batch is free before it knows).
"""

from __future__ import annotations

import math
from collections import deque


class CostModel:
    def __init__(self, window: int = 64, prior_s: float = 0.0):
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)
        self.prior_s = prior_s
        self.a = prior_s
        self.k = 0.0
        self.resid = 0.0  # rms residual of the fit, seconds
        self._dirty = False

    def observe(self, size: int, seconds: float) -> None:
        self.samples.append((size, seconds))
        self._dirty = True

    @property
    def n(self) -> int:
        return len(self.samples)

    def _fit(self) -> None:
        self._dirty = False
        n = len(self.samples)
        if n == 0:
            return
        sx = sy = sxx = sxy = 0.0
        for b, t in self.samples:
            sx += b
            sy += t
            sxx += b * b
            sxy += b * t
        den = n * sxx - sx * sx
        if den <= 1e-12:  # one batch size seen: no slope yet
            self.a, self.k = sy / n, 0.0
        else:
            k = (n * sxy - sx * sy) / den
            a = (sy - k * sx) / n
            if k < 0:  # noise: cost cannot fall with size
                k, a = 0.0, sy / n
            if a < 0:
                a, k = 0.0, sxy / sxx
            self.a, self.k = a, k
        ss = sum((t - (self.a + self.k * b)) ** 2 for b, t in self.samples)
        self.resid = math.sqrt(ss / n)

    def predict(self, size: int) -> float:
        if self._dirty:
            self._fit()
        return self.a + self.k * size
