"""A pytest plugin for testing chains: async tests on anyio, each under the leak check.

Load it from your ``conftest.py``::

    pytest_plugins = ["chains.testing.pytest_plugin"]

Then every ``async def test_...`` runs on anyio's pytest runner (asyncio backend; no
``@pytest.mark.anyio`` needed) and fails if it leaves a task or a busy worker thread
behind (see ``chains.testing.leaks``). A test that already failed is not also
reported for leaks. The ``no_leaks`` fixture can be requested by name as well, and
``anyio_backend`` can be overridden in a conftest to pick another backend.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chains.testing.leaks import LeakCheck, describe_leaks


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
    test body passed."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
async def no_leaks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail the test if it leaves a task or a busy thread behind."""
    check = LeakCheck()  # taken in the runner task that runs this test
    yield
    tasks, threads = await check.leaks()
    if not tasks and not threads:
        return
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and not rep.passed:
        return  # the test already failed (or xfailed): its own report says why
    pytest.fail(describe_leaks(tasks, threads), pytrace=False)
