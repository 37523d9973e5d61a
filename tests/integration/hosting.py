"""A runtime hosted for a whole test module on one event loop.

A runtime's task group must be entered and left by the same task, while module-scoped
fixtures and sync tests drive the loop from outside: one host task keeps the runtime
open until the module is done, and the tests run sessions beside it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import chains


@contextlib.contextmanager
def hosted_runtime(loop: asyncio.AbstractEventLoop, chain: Any) -> Iterator[Any]:
    ready: asyncio.Future[Any] = loop.create_future()
    stop = asyncio.Event()

    async def host() -> None:
        try:
            async with chains.running(chain) as rt:
                ready.set_result(rt)
                await stop.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            raise

    task = loop.create_task(host())
    rt = loop.run_until_complete(ready)
    try:
        yield rt
    finally:
        loop.call_soon_threadsafe(stop.set)
        loop.run_until_complete(task)
