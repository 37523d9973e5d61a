"""Slots with a waiting room: what the server may hold at once (websocket sessions,
HTTP chain requests), and how long a newcomer may wait for a free one.

A refusal right at the limit punishes a client for arriving a moment before another
left; a short wait turns most of those into a served session. Past the wait the
caller refuses with a retry hint (``retry_after_s``: the websocket error says it, an
HTTP refusal carries ``Retry-After``).

    slots = Slots(64, wait_s=2.0)
    if not await slots.take():
        refuse(...)
    try: ... finally: slots.give()
"""

from __future__ import annotations

import math

import anyio


class Slots:
    """``size`` slots; ``take`` waits up to ``wait_s`` for one. Not thread-safe (one loop)."""

    def __init__(self, size: int, wait_s: float = 0.0, retry_after_s: float = 1.0):
        self.size = size
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.used = 0
        self.waiting = 0
        self._freed = anyio.Event()

    async def take(self) -> bool:
        """Take a slot, waiting up to ``wait_s`` for one; False when none came free."""
        if self.used < self.size:
            self.used += 1
            return True
        if self.wait_s <= 0:
            return False
        self.waiting += 1
        try:
            with anyio.move_on_after(self.wait_s):
                while self.used >= self.size:
                    await self._freed.wait()
                self.used += 1
                return True
        finally:
            self.waiting -= 1
        return False

    def give(self) -> None:
        """Give a slot back and wake the waiters (the first to run takes it)."""
        self.used -= 1
        if self.waiting:  # nobody waits (the common case): no event to make
            freed, self._freed = self._freed, anyio.Event()
            freed.set()

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` takes whole seconds."""
        return str(max(1, math.ceil(self.retry_after_s)))


__all__ = ["Slots"]
