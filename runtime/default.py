"""The default runtime: what serves ``chains.call`` / ``chains.stream`` outside
``chains.running(...)``.

Starting a runtime per call would load the models once per call and batch nothing
across calls, so the obvious code (``await chains.call(chain, x)`` in a web handler)
would be the slow code. Instead every such call of a chain in one event loop is a
session of one runtime, started on first use and kept until the loop ends.

Lifetimes stay structured: one host task per event loop owns a task group, and each
default runtime lives in a task of that group. The host ends with the loop
(``asyncio.run`` cancels it at exit, which closes every runtime and its models), or
earlier with ``close_default_runtimes()`` (tests call it before checking for leaks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from chains.outputs import Output
from runtime.engine import Runtime, active_runtime, session_outputs


class _Host:
    """The owner of one event loop's default runtimes."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.runtimes: dict[int, Runtime] = {}
        self._starting: dict[int, asyncio.Future[Runtime]] = {}
        self._tg: TaskGroup | None = None
        self._ready = asyncio.Event()
        self.task = loop.create_task(self._run(), name="chains:default-runtimes")

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._ready.set()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            if _hosts.get(self.loop) is self:
                del _hosts[self.loop]

    async def runtime(self, chain: Any) -> Runtime:
        key = id(chain)
        rt = self.runtimes.get(key)
        if rt is not None:
            return rt
        pending = self._starting.get(key)
        if pending is not None:  # another call is loading it: wait for that one
            return await asyncio.shield(pending)
        fut: asyncio.Future[Runtime] = self.loop.create_future()
        self._starting[key] = fut
        try:
            await self._ready.wait()
            assert self._tg is not None
            name = f"chains:default:{getattr(chain, 'name', chain)}"
            rt = await self._tg.start(self._serve, chain, name=name)
            self.runtimes[key] = rt
            fut.set_result(rt)
            return rt
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # retrieved: the waiters (if any) get it raised
            raise
        finally:
            self._starting.pop(key, None)

    async def _serve(self, chain: Any, *, task_status: TaskStatus[Runtime]) -> None:
        try:
            async with Runtime(chain) as rt:
                task_status.started(rt)
                await anyio.sleep_forever()
        finally:
            self.runtimes.pop(id(chain), None)

    async def close(self) -> None:
        self.task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(self.task, return_exceptions=True)


_hosts: dict[asyncio.AbstractEventLoop, _Host] = {}


async def default_runtime(chain: Any) -> Runtime:
    """The runtime that serves ``chain`` in this event loop, started on first use."""
    loop = asyncio.get_running_loop()
    host = _hosts.get(loop)
    if host is None or host.task.done():
        host = _hosts[loop] = _Host(loop)
    return await host.runtime(chain)


async def close_default_runtimes() -> None:
    """Close this event loop's default runtimes now (their models are released)."""
    host = _hosts.pop(asyncio.get_running_loop(), None)
    if host is not None:
        await host.close()


def stream_outputs(chain: Any, inputs: tuple[Any, ...]) -> AsyncIterator[Output]:
    """Outputs of one session of ``chain`` (``chains.stream``): on the runtime open for
    it in this context, else on its default runtime."""

    async def runtime_for() -> Runtime:
        return active_runtime(chain) or await default_runtime(chain)

    return session_outputs(runtime_for, inputs)


__all__ = ["close_default_runtimes", "default_runtime", "stream_outputs"]
