"""A turn's later items queue behind other sessions' first items (runtime/envelope.py
``FOLLOWER_GRACE_S``): a caller waiting for a reply's first sentence is served before
another caller's second sentence, whose first is already playing; and by a bounded
amount only, so a follower whose turn began long before still goes first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import chains
from chains import Stream
from runtime.envelope import FOLLOWER_GRACE_S
from runtime.limiter import DeadlineLimiter
from tests.fakes import staggered_callers

SERVICE_S = {"x1": 0.7}  # the others take 0.1 s


def chain_of(order: list[str], streaming: bool) -> chains.Chain:
    if streaming:

        @chains.node(concurrency=1)
        async def speak(x: str) -> AsyncIterator[str]:
            order.append(x)
            await asyncio.sleep(SERVICE_S.get(x, 0.1))
            yield x

        node = speak
    else:

        @chains.node(concurrency=1)
        async def work(x: str) -> str:
            order.append(x)
            await asyncio.sleep(SERVICE_S.get(x, 0.1))
            return x

        node = work

    @chains.chain(budget_ms=4000)
    def c(xs: Stream[str]):
        return node(xs)

    return c


async def run(streaming: bool, b_after_s: float) -> list[str]:
    """``a1`` takes the free slot; ``x1`` (another session) waits and takes it next;
    ``a2``, A's follower, queues while ``x1`` runs, and ``b1``, B's first item, comes
    ``b_after_s`` after A's input. Who gets the slot when ``x1`` ends?"""
    order: list[str] = []
    async with chains.Runtime(chain_of(order, streaming)) as rt:
        got = await staggered_callers(
            rt, [(0.0, "a", ["a1", "a2"]), (0.05, "x", ["x1"]), (b_after_s, "b", ["b1"])]
        )
    assert got == {"a": ["a1", "a2"], "x": ["x1"], "b": ["b1"]}  # nothing lost
    return order


async def test_a_first_item_goes_before_another_sessions_follower():
    assert await run(streaming=False, b_after_s=0.15) == ["a1", "x1", "b1", "a2"]


async def test_the_same_on_a_streaming_map():
    assert await run(streaming=True, b_after_s=0.15) == ["a1", "x1", "b1", "a2"]


async def test_a_follower_keeps_its_place_against_a_much_later_first_item():
    """B's input comes more than the grace after A's (x1 holds the slot from 0.1 s to
    0.8 s, B waits from 0.6 s): A's follower is still due first."""
    assert FOLLOWER_GRACE_S < 0.6
    assert await run(streaming=False, b_after_s=0.6) == ["a1", "x1", "a2", "b1"]


def test_the_limiter_orders_waiters_by_what_it_is_given():
    async def main() -> list[str]:
        lim = DeadlineLimiter(1)
        await lim.acquire(0.0)
        got: list[str] = []

        async def wait(name: str, key: float) -> None:
            await lim.acquire(key)
            got.append(name)
            lim.release()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(wait("follower", 1.0 + FOLLOWER_GRACE_S))
            tg.create_task(wait("first", 1.2))
            await asyncio.sleep(0.01)
            lim.release()
        return got

    assert asyncio.run(main()) == ["first", "follower"]
