"""Test plumbing: async tests run on a fresh event loop each, and a test FAILS if
it leaves a task running (every task must have an owner that outlives it)."""

from __future__ import annotations

import asyncio
import inspect
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _run_checked(fn, kwargs):
    me = asyncio.current_task()
    await fn(**kwargs)
    await asyncio.sleep(0)  # let finished tasks be reaped
    leaked = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    if leaked:
        names = ", ".join(sorted(t.get_name() for t in leaked))
        for t in leaked:
            t.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test leaked {len(leaked)} task(s): {names}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn) or "anyio_backend" in pyfuncitem.fixturenames:
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {n: pyfuncitem.funcargs[n] for n in names}
    asyncio.run(_run_checked(fn, kwargs))
    return True
