"""A direct call (runtime/calls.py: a chain of maps called without a session) ends
with the runtime: the runtime's exit fails the call in flight with ``ChainsError``,
while a caller's own cancellation passes through as a cancellation and leaves the
runtime serving."""

from __future__ import annotations

import anyio

import chains
from chains.errors import ChainsError


def _chain(started: anyio.Event) -> chains.Chain:
    @chains.node
    async def stuck(x: str) -> str:
        if x == "slow":
            started.set()
            await anyio.sleep_forever()
        return x

    @chains.chain
    def c(x: str):
        return stuck(x)

    return c


async def test_runtime_exit_fails_the_direct_call_in_flight() -> None:
    started = anyio.Event()
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg, chains.Runtime(_chain(started)) as rt:
        assert rt._direct is not None  # the path under test

        async def caller() -> None:
            try:
                await rt.call("slow")
            except ChainsError as e:
                errors.append(e)

        tg.start_soon(caller)
        await started.wait()
    assert len(errors) == 1 and "closed while the call was in flight" in str(errors[0])
    assert rt._direct.tasks == {}


async def test_a_callers_cancel_passes_through_and_the_runtime_serves_on() -> None:
    started = anyio.Event()
    async with chains.Runtime(_chain(started)) as rt:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rt.call, "slow")
                await started.wait()
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert rt._direct is not None and rt._direct.tasks == {}
        assert await rt.call("fast") == "fast"
