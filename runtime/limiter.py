"""A concurrency limit shared by every session of a stage, handing free slots to
the waiter with the earliest deadline (EDF) rather than the first to ask. The
caller may queue an item as if due later than its deadline (a turn's follower,
runtime/envelope.py ``FOLLOWER_GRACE_S``): the limiter orders by what it is given.

Unlike ``anyio.CapacityLimiter`` it takes a free slot without a checkpoint, so a
stage that is not saturated adds no scheduling round-trip per item.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class DeadlineLimiter:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def acquire(self, deadline: float) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (deadline, next(self._seq), fut)
        heapq.heappush(self._waiters, entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot as we were cancelled: pass it on
            else:
                fut.cancel()
            raise

    def resize(self, capacity: int) -> None:
        """Change the number of slots (replicas came or went); waiters get new slots at once."""
        self.capacity = capacity
        while self._waiters and self.in_use < self.capacity:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)

    def release(self) -> None:
        if self.in_use > self.capacity:  # shrunk: this slot goes away
            self.in_use -= 1
            return
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot moves to the waiter; in_use unchanged
                return
        self.in_use -= 1
