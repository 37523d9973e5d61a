"""Cancel the call of an HTTP client that went away.

ASGI says a client left only through ``receive()`` returning ``http.disconnect``, so
someone must wait on it while the call runs. A task per request for that cost about
as much as the chain call itself (benchmarks/http.py: a per-request task group and
timer added 13 µs to a 30 µs request), and a call that ends within a few ms has
nothing worth cancelling. So one ``Departures`` per server keeps the calls in flight
in a dict (the only per-request cost), and its ticker starts a watcher, in its own
task group, for each call still running after ``WATCH_AFTER_S``; the watcher cancels
the call's task when its client leaves, and is cancelled when the call ends.

    async with anyio.create_task_group() as tg:
        await tg.start(departures.run)
    result = await departures.until_gone(receive, work())   # Disconnected if the client left
"""

from __future__ import annotations

import asyncio
import time
from asyncio import current_task
from collections.abc import Awaitable
from typing import Any

import anyio
from anyio.abc import TaskStatus

WATCH_AFTER_S = 0.02  # a call still running after this watches for its client leaving


class Disconnected(Exception):
    """The client went away before its answer was ready."""


class _Call:
    __slots__ = ("gone", "host", "receive", "scope", "started")

    def __init__(self, host: asyncio.Task[Any], receive: Any):
        self.host = host
        self.receive = receive
        self.started = time.monotonic()
        self.scope: anyio.CancelScope | None = None  # its watcher's, once it has one
        self.gone = False


class Departures:
    """The server's calls in flight, and the watchers of the long ones."""

    def __init__(self, after_s: float = WATCH_AFTER_S):
        self.after_s = after_s
        self.calls: dict[asyncio.Task[Any], _Call] = {}
        self._tg: Any = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                while True:
                    await anyio.sleep(self.after_s / 2)
                    due = time.monotonic() - self.after_s
                    for call in list(self.calls.values()):
                        if call.scope is None and call.started <= due:
                            call.scope = anyio.CancelScope()
                            tg.start_soon(self._watch, call)
            finally:
                self._tg = None

    async def _watch(self, call: _Call) -> None:
        assert call.scope is not None
        with call.scope:
            while (await call.receive())["type"] != "http.disconnect":
                pass
            call.gone = True
            call.host.cancel()

    async def until_gone(self, receive: Any, work: Awaitable[Any]) -> Any:
        """``await work``, cancelled (``Disconnected``) when the client (whose ASGI
        ``receive`` it is) goes away first. Call it after the body is read: the only
        message left to receive is the disconnect."""
        host = current_task()
        if host is None or self._tg is None:  # not running (a test's bare app): no watching
            return await work
        call = _Call(host, receive)
        self.calls[host] = call
        try:
            return await work
        except asyncio.CancelledError:
            if not call.gone:
                raise
            host.uncancel()  # our own cancellation: the client left
            raise Disconnected() from None
        finally:
            del self.calls[host]
            if call.scope is not None:
                call.scope.cancel()


__all__ = ["WATCH_AFTER_S", "Departures", "Disconnected"]
