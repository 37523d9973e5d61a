"""Forms batches for a batched stage across every session, by deadline.

One inbox (a heap ordered by deadline, earliest first) holds every session's
items. When a replica slot is free the batcher decides, from the deadlines it
holds and the service time it has learned (``CostModel``), whether to dispatch
now or wait for more:

- dispatch when the batch is full;
- dispatch when waiting longer would make the earliest deadline miss
  (``now + t(n+1) + margin >= earliest deadline``);
- dispatch when the oldest item has waited ``max_wait_ms``;
- dispatch at once when waiting cannot help: no other batch is running (the
  hardware would sit idle while we wait), or fewer than one more arrival is
  expected before the batch would have to go anyway.

A busy stage thus batches naturally (items gather while its batches run: with
cost ``a + k*b`` this greedy batch size is stable for any load below the
physical limit) and an idle one adds no wait. Items that can no longer make their deadline, even in a
batch of their own size, follow the node's ``on_late``: shed (the session gets an
error event) or served and counted late. That keeps goodput at the physical limit
under overload instead of serving everyone late.

Items a batched class node's ``known_result`` answers are not batched: neither when
they come, nor when the words come meanwhile (checked again as each batch forms).

Items may come in priorities (a batched class node's ``batch_priority(item)``, lower
first): items of different priorities never share a batch, and a batch takes only the
most urgent priority waiting. A final transcription must not ride in the same pass as
a best-effort interim one, whose result it would wait for.

``policy="window"`` is the fixed size-or-timeout window (Ray Serve's
``@serve.batch``), kept so benchmarks can compare the two in one run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.costmodel import CostModel

Policy = Literal["deadline", "window"]


class StaleItem(Exception):
    """The item's turn was interrupted (or its session closed) before it was served."""


def fail_future(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` for whoever awaits it; if its session is gone and nobody does,
    asyncio must not log "exception was never retrieved"."""
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # marks it retrieved; an awaiting session still gets it raised


@dataclass(order=True)
class BatchItem:
    deadline: float
    seq: int
    payload: Any = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    enqueued: float = field(compare=False)
    alive: Callable[[], bool] = field(compare=False)  # False: the session or turn is gone
    priority: int = field(compare=False, default=0)  # lower first; never batched with others


class Batcher:
    def __init__(
        self,
        *,
        max_size: int,
        max_wait_s: float,
        idle_wait_s: float = 0.0,
        on_late: str,
        policy: Policy = "deadline",
        cost: CostModel | None = None,
        on_shed: Callable[[BatchItem, float], None] | None = None,
        on_stale: Callable[[BatchItem], None] | None = None,
        known: Callable[[Any], Any] | None = None,
    ):
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.idle_wait_s = idle_wait_s
        self.on_late = on_late
        self.policy = policy
        self.cost = cost or CostModel()
        self.on_shed = on_shed
        self.on_stale = on_stale
        self.known = known  # answers an item without a batch (None: not known yet)
        self._heap: list[BatchItem] = []
        self._prioritized = False  # an item came with a priority other than 0
        self._seq = itertools.count()
        self._arrival: asyncio.Event = asyncio.Event()
        self._last_arrival = 0.0
        self._gap_ewma = math.inf  # mean time between arrivals
        self.margin_s = 0.002
        self.in_flight = 0  # batches running now (maintained by the stage)
        # How much sooner than predicted a batch is assumed to finish when deciding what
        # to shed: adapted from what happened (see ``served``). Too optimistic and items
        # are served late (wasted capacity); too pessimistic and items that would have
        # made it are shed. It starts at the model's noise (two residuals).
        self.optimism: float | None = None
        self.late_ewma = 0.0  # share of served items that finished late, recent batches

    def __len__(self) -> int:
        return len(self._heap)

    # --- intake ---------------------------------------------------------------------
    def submit(
        self, payload: Any, deadline: float, alive: Callable[[], bool], priority: int = 0
    ) -> asyncio.Future[Any]:
        now = time.monotonic()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, BatchItem(deadline, next(self._seq), payload, fut, now, alive, priority))
        self._prioritized = self._prioritized or priority != 0
        if self._last_arrival:
            gap = now - self._last_arrival
            self._gap_ewma = gap if math.isinf(self._gap_ewma) else 0.9 * self._gap_ewma + 0.1 * gap
        self._last_arrival = now
        self._arrival.set()
        return fut

    @property
    def arrival_rate(self) -> float:
        return 0.0 if math.isinf(self._gap_ewma) or self._gap_ewma <= 0 else 1.0 / self._gap_ewma

    # --- forming a batch ------------------------------------------------------------
    def _prune(self) -> None:
        """Drop items whose session is gone or whose turn was interrupted."""
        if any(not (it.alive() and not it.future.done()) for it in self._heap):
            keep = []
            for it in self._heap:
                if it.alive() and not it.future.done():
                    keep.append(it)
                else:
                    # not cancel(): its session awaits it, and a cancelled future would
                    # read as that session's own cancellation
                    fail_future(it.future, StaleItem())
                    if self.on_stale:
                        self.on_stale(it)
            heapq.heapify(keep)
            self._heap = keep

    async def _wait_arrival(self, timeout: float | None) -> None:
        self._arrival.clear()
        if timeout is None:
            await self._arrival.wait()
            return
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrival.wait(), timeout)

    def _should_wait(self, now: float) -> float | None:
        """How long to wait for more items, or None to dispatch now."""
        n = len(self._heap)
        if n >= self.max_size:
            return None
        oldest = min(it.enqueued for it in self._heap)
        window_end = oldest + self.max_wait_s
        if self.policy == "window":
            return window_end - now if window_end > now else None
        earliest = self._heap[0].deadline
        if self.in_flight == 0:
            if not self.idle_wait_s:
                return None  # the hardware is idle: waiting cannot help
            # Items known to come together: a short wait for company, within the deadline.
            end = min(oldest + self.idle_wait_s, earliest - self.cost.predict(n + 1) - self.margin())
            return end - now if end > now else None
        latest_start = earliest - self.cost.predict(n + 1) - self.margin()
        horizon = min(window_end, latest_start)
        if horizon <= now:
            return None
        if self.arrival_rate * (horizon - now) < 1.0:
            return None  # waiting cannot help: no further arrival is expected in time
        return horizon - now

    def batch_done(self) -> None:
        """A batch finished: re-evaluate a pending wait (the hardware may be idle now)."""
        self.in_flight -= 1
        self._arrival.set()

    def margin(self) -> float:
        return max(self.margin_s, 2.0 * self.cost.resid)

    LATE_TARGET = 0.005  # served-late share the shed rule aims under

    def served(self, n: int, late: int) -> None:
        """A batch of ``n`` finished with ``late`` items past their deadline: adapt the
        shed rule's optimism. Late items under overload mean it was too optimistic
        (step it down fast); none for a while means it may shed too eagerly (step it up
        slowly, at most to the model's noise margin)."""
        if self.on_late != "shed" or n == 0:
            return
        self.late_ewma = 0.9 * self.late_ewma + 0.1 * (late / n)
        noise = self.margin()
        opt = noise if self.optimism is None else self.optimism
        step = max(self.cost.resid, 0.0005)
        if self.late_ewma > self.LATE_TARGET:
            opt -= step
        elif self.late_ewma < self.LATE_TARGET / 2:
            opt += step / 4
        self.optimism = max(-noise, min(noise, opt))

    async def next_batch(self) -> list[BatchItem]:
        """Wait for and return the next batch (called when a slot is free)."""
        while True:
            self._prune()
            if not self._heap:
                await self._wait_arrival(None)
                continue
            wait = self._should_wait(time.monotonic())
            if wait is None:
                self._answer_known()
                batch = self._take(time.monotonic())
                if batch:
                    return batch
                continue
            await self._wait_arrival(wait)

    def _answer_known(self) -> None:
        """Answer the queued items that became known while they waited (the node's
        ``known_result``: words a pass that ended meanwhile heard), so they join no
        batch."""
        if self.known is None:
            return
        left = []
        for it in self._heap:
            try:
                result = self.known(it.payload)
            except Exception:  # the hook's fault is not the batcher's: the item joins a batch,
                result = None  # where the node's own call answers or fails it
            if result is None:
                left.append(it)
            elif not it.future.done():
                it.future.set_result(result)
        if len(left) < len(self._heap):
            heapq.heapify(left)
            self._heap = left

    def _take(self, now: float) -> list[BatchItem]:
        """The next batch, of the most urgent priority waiting (the others stay queued)."""
        if not self._prioritized or not self._heap:
            return self._take_one_priority(now)
        first = min(it.priority for it in self._heap)
        later = [it for it in self._heap if it.priority != first]
        if not later:
            return self._take_one_priority(now)
        self._heap = [it for it in self._heap if it.priority == first]
        heapq.heapify(self._heap)
        try:
            return self._take_one_priority(now)
        finally:
            self._heap += later
            heapq.heapify(self._heap)

    def _take_one_priority(self, now: float) -> list[BatchItem]:
        batch: list[BatchItem] = []
        if self.policy == "window" or self.on_late != "shed" or self.cost.n == 0:
            while self._heap and len(batch) < self.max_size:
                batch.append(heapq.heappop(self._heap))
            return batch
        return self._take_feasible(now)

    def _take_feasible(self, now: float) -> list[BatchItem]:
        """The largest batch whose every item makes its deadline, and shedding only what
        no batch starting now could serve (a smaller batch finishes sooner: an item that
        would miss in a full batch may make it in the one actually formed).

        Which feasible items go: earliest deadline first, except under overload, when
        more items must go now than a batch holds (none of them could wait for the next
        batch, which ends one batch later): then the newest of them, since the oldest are
        the ones the cost model's noise would make late, and the same number dies either
        way. Those left behind are shed at the next take."""
        # Optimistic by the adapted margin: shed only what will surely miss, not what the
        # model's noise says might (``served`` tunes how sure).
        optimism = self.margin() if self.optimism is None else self.optimism
        items = sorted(self._heap)  # by deadline
        self._heap = []
        deadlines = [it.deadline for it in items]
        n = min(self.max_size, len(items))
        cut = len(items)
        while n > 0:
            cut = bisect.bisect_left(deadlines, now + self.cost.predict(n) - optimism)
            if len(items) - cut >= n:
                break
            n -= 1
        if n == 0:
            cut = bisect.bisect_left(deadlines, now + self.cost.predict(1) - optimism)
        finish = now + self.cost.predict(max(n, 1)) - optimism
        for it in items[:cut]:
            if self.on_shed:
                self.on_shed(it, finish - it.deadline)
        feasible = items[cut:]
        must = bisect.bisect_left(deadlines, finish + self.cost.predict(self.max_size), lo=cut) - cut
        if must > n:  # overload: the newest of those that must go now
            batch = feasible[must - n : must]
            rest = feasible[: must - n] + feasible[must:]
        else:
            batch, rest = feasible[:n], feasible[n:]
        self._heap = rest  # sorted, so already a heap
        return batch
