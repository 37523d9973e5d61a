"""Test harness for the core runtime: async tests run on anyio's pytest plugin
(asyncio backend), and every async test is checked for leaks.

Why a leak check: a session promises that nothing it started outlives it
(DESIGN.md, "Session"). So any asyncio task still alive when an async test ends,
besides the test's own, fails that test; so does a thread it started that is still
running (an idle pooled anyio worker thread is not a leak, a busy one is: a sync
node call the runtime walked away from).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A cancelled task needs a few loop iterations to unwind its `finally` blocks;
# anything alive after this many is a leak.
SETTLE_ITERATIONS = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> None:
    """Every ``async def`` test runs on anyio and under the leak check."""
    if collector.istestfunction(obj, name) and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)
        pytest.mark.usefixtures("anyio_backend", "no_leaks")(obj)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    """Keep each phase's report on the item, so the leak check knows whether the
    test body passed (a test that already failed is not also reported for leaks)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _is_harness_task(task: asyncio.Task[Any]) -> bool:
    """anyio's test runner wraps each fixture/test step in a short-lived task."""
    coro = task.get_coro()
    qualname = getattr(coro, "__qualname__", "")
    return qualname.startswith("TestRunner.")


def _busy_thread(t: threading.Thread) -> bool:
    idle = getattr(t, "idle_workers", None)  # anyio's WorkerThread keeps its pool here
    if idle is not None:
        return t not in idle
    return True


def find_leaks(
    own: set[asyncio.Task[Any]], threads_before: set[threading.Thread]
) -> tuple[list[asyncio.Task[Any]], list[threading.Thread]]:
    tasks = [
        t for t in asyncio.all_tasks() if t not in own and not t.done() and not _is_harness_task(t)
    ]
    threads = [
        t for t in threading.enumerate() if t not in threads_before and t.is_alive() and _busy_thread(t)
    ]
    return tasks, threads


def describe_task(t: asyncio.Task[Any]) -> str:
    coro = t.get_coro()
    return f"{t.get_name()} ({getattr(coro, '__qualname__', coro)!r})"


@pytest.fixture
async def no_leaks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail the test if it leaves a task or a busy thread behind."""
    own = set(asyncio.all_tasks())  # the runner task that runs this test
    threads_before = set(threading.enumerate())
    yield
    from runtime.default import close_default_runtimes

    await close_default_runtimes()  # chains.call's runtimes are the test's to close
    tasks: list[asyncio.Task[Any]] = []
    threads: list[threading.Thread] = []
    for i in range(SETTLE_ITERATIONS):
        tasks, threads = find_leaks(own, threads_before)
        if not tasks and not threads:
            return
        await asyncio.sleep(0 if i < SETTLE_ITERATIONS // 2 else 0.005)
    # Clean up before reporting, so one leaky test does not poison the next.
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2.0)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and not rep.passed:
        return  # the test already failed (or xfailed): its own report says why
    lines = [f"leaked task: {describe_task(t)}" for t in tasks]
    lines += [f"leaked busy thread: {t.name}" for t in threads]
    pytest.fail("the test left work running:\n  " + "\n  ".join(lines), pytrace=False)
