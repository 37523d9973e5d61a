"""The leak check: nothing a test started may outlive it.

A session promises that every task it started ends with it, and a runtime that a
node call it walked away from is not still running in a worker thread. So after a
test, any asyncio task still alive (besides the test's own and the test runner's)
is a leak, and so is a thread it started that is still busy (an idle pooled anyio
worker thread is not: the pool keeps it for the next call).

``LeakCheck`` works in any async code; the pytest plugin
(``chains.testing.pytest_plugin``) runs it around every async test.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

# A cancelled task needs a few loop iterations to unwind its `finally` blocks;
# anything alive after this many is a leak.
SETTLE_ITERATIONS = 20


class LeakError(AssertionError):
    """Work was left running; the message lists each leaked task and busy thread."""


def _is_harness_task(task: asyncio.Task[Any]) -> bool:
    """anyio's pytest runner wraps each fixture/test step in a short-lived task."""
    qualname = getattr(task.get_coro(), "__qualname__", "")
    return qualname.startswith("TestRunner.")


def _busy_thread(t: threading.Thread) -> bool:
    idle = getattr(t, "idle_workers", None)  # anyio's WorkerThread keeps its pool here
    if idle is not None:
        return t not in idle
    return True


def find_leaks(
    own: set[asyncio.Task[Any]], threads_before: set[threading.Thread]
) -> tuple[list[asyncio.Task[Any]], list[threading.Thread]]:
    """The tasks alive now that are not in ``own`` (nor the test runner's), and the
    busy threads not in ``threads_before``."""
    tasks = [t for t in asyncio.all_tasks() if t not in own and not t.done() and not _is_harness_task(t)]
    threads = [
        t for t in threading.enumerate() if t not in threads_before and t.is_alive() and _busy_thread(t)
    ]
    return tasks, threads


def describe_task(t: asyncio.Task[Any]) -> str:
    coro = t.get_coro()
    return f"{t.get_name()} ({getattr(coro, '__qualname__', coro)!r})"


class LeakCheck:
    """Snapshot what runs now; ``await check()`` later raises ``LeakError`` if more runs.

        leaks = LeakCheck()            # in the test's task, before the code under test
        ...                            # run sessions, call chains
        await leaks.check()            # LeakError naming what was left running

    ``check`` first closes the default runtimes that ``chains.call`` outside
    ``chains.running`` started (they are the test's to close), gives cancelled tasks
    a few loop iterations to finish, then cancels what is still alive (so one leaky
    test does not poison the next) and raises.
    """

    def __init__(self) -> None:
        self.own = set(asyncio.all_tasks())
        self.threads_before = set(threading.enumerate())

    async def leaks(self) -> tuple[list[asyncio.Task[Any]], list[threading.Thread]]:
        """What is still running after the settle time (cancelled, not raised)."""
        from runtime.default import close_default_runtimes  # the vocabulary reaches up lazily

        await close_default_runtimes()
        tasks: list[asyncio.Task[Any]] = []
        threads: list[threading.Thread] = []
        for i in range(SETTLE_ITERATIONS):
            tasks, threads = find_leaks(self.own, self.threads_before)
            if not tasks and not threads:
                return [], []
            await asyncio.sleep(0 if i < SETTLE_ITERATIONS // 2 else 0.005)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        return tasks, threads

    async def check(self) -> None:
        tasks, threads = await self.leaks()
        if tasks or threads:
            raise LeakError(describe_leaks(tasks, threads))


def describe_leaks(tasks: list[asyncio.Task[Any]], threads: list[threading.Thread]) -> str:
    lines = [f"leaked task: {describe_task(t)}" for t in tasks]
    lines += [f"leaked busy thread: {t.name}" for t in threads]
    return "the test left work running:\n  " + "\n  ".join(lines)


__all__ = ["SETTLE_ITERATIONS", "LeakCheck", "LeakError", "describe_leaks", "describe_task", "find_leaks"]
