"""The one admission slot of a stage: what every item of every shape goes through.

``Stage.serve`` (a map), ``Stage.serve_stream`` (a streaming map), the batch loop
(runtime/batches.py: a batch holds one slot) and so, through them, a direct call
and a remote host's calls all take a slot here, and count here: the queue wait,
the shed decision, the service time, items, late items and the health counter.
A stream node's session holds its replica instead (runtime/stage.py says why),
and counts its items through ``served_item``. Failures are counted where they are
told apart (``Stage._failed``), once per item.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chains.errors import NodeError
from runtime.batcher import StaleItem
from runtime.limiter import DeadlineLimiter
from runtime.metrics import StageMetrics

_mono = time.monotonic


class Shed(NodeError):
    """An item dropped because it could no longer make its deadline."""

    def __init__(self, node: str, late_s: float):
        super().__init__(node, f"shed: would miss its deadline by {late_s * 1000:.1f} ms", code="shed")
        self.late_s = late_s


def _no_estimate() -> float:
    return 0.0


class Admission:
    """A stage's slots (EDF across sessions) and the counting of what they serve."""

    def __init__(self, node: str, limiter: DeadlineLimiter, metrics: StageMetrics, on_late: str):
        self.node = node
        self.limiter = limiter
        self.metrics = metrics
        self.shed_late = on_late == "shed"
        # The stage's expected service time (its learned cost), for the shed decision.
        self.expected_service_s: Callable[[], float] = _no_estimate

    def try_admit(self, deadline: float) -> float | None:
        """Take a free slot now (no checkpoint): when it was taken, or None when the
        item must wait (``admit``). Raises ``Shed`` for a hopeless item."""
        lim = self.limiter
        if lim.in_use < lim.capacity and not lim._waiters:
            lim.in_use += 1
            t0 = _mono()
            if self.shed_late:
                self._shed_if_hopeless(t0, deadline)
            return t0
        return None

    async def admit(
        self, deadline: float, alive: Callable[[], bool] | None = None, grace_s: float = 0.0
    ) -> float:
        """A slot in deadline order (``deadline + grace_s``: a turn's follower queues
        later), the queue wait counted, a hopeless item shed (``on_late="shed"``, by its
        own deadline); when it was taken. Raises ``Shed``, or ``StaleItem`` when
        ``alive()`` turned False while it waited (its turn was interrupted)."""
        t0 = self.try_admit(deadline)
        if t0 is not None:
            return t0
        m = self.metrics
        since = _mono()
        m.queued += 1
        try:
            await self.limiter.acquire(deadline + grace_s)
        finally:
            m.queued -= 1
        t0 = _mono()
        m.queue_wait.observe(t0 - since)
        if alive is not None and not alive():
            self.release()
            m.stale += 1
            raise StaleItem()
        if self.shed_late:
            self._shed_if_hopeless(t0, deadline)
        return t0

    def release(self) -> None:
        lim = self.limiter
        if lim._waiters or lim.in_use > lim.capacity:
            lim.release()
        else:  # DeadlineLimiter.release, inlined: nobody waits
            lim.in_use -= 1

    def served(self, t0: float, t1: float, n: int = 1, late: int = 0) -> None:
        """``n`` items served by one call that held a slot from ``t0`` to ``t1`` (``late``
        of them past their deadline): successes counted, the health counter reset."""
        m = self.metrics
        m.service.observe(t1 - t0)
        m.items += n
        m.late += late
        m.consecutive_errors = 0

    def served_item(self) -> None:
        """One output of a stream node's session: a success, without a slot."""
        m = self.metrics
        m.items += 1
        m.consecutive_errors = 0

    def _shed_if_hopeless(self, start: float, deadline: float) -> None:
        """An item that cannot finish by its deadline gives its slot back and is shed."""
        late = start + self.expected_service_s() - deadline
        if late > 0:
            self.release()
            self.metrics.shed += 1
            raise Shed(self.node, late)


__all__ = ["Admission", "Shed"]
