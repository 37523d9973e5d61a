"""Property: whatever the number of sessions, their items, the service times and
the batch sizes, every session gets exactly its own outputs, in order, and the
runtime leaves no task behind. Each example runs on its own event loop."""

import asyncio
from collections.abc import AsyncIterator

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chains
from chains import Stream
from tests.fakes import BatchFake, MapFake

sessions_st = st.lists(st.lists(st.integers(0, 3), max_size=6), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions=sessions_st, max_size=st.integers(1, 5), batch_concurrency=st.sampled_from([1, 2, None]))
def test_every_session_gets_its_own_outputs_in_order(
    sessions: list[list[int]], max_size: int, batch_concurrency: int | None
) -> None:
    first = MapFake("first", fn=lambda x: x)
    emb = BatchFake(
        "emb", a=0.0005, k=0.0001, max_size=max_size, max_wait_ms=1, concurrency=batch_concurrency
    )

    @chains.node
    async def jitter(x: str) -> str:  # each item scripts its own delay: 0..3 ms
        await anyio.sleep(int(x.rsplit("/", 2)[-1]) / 1000)
        return x

    @chains.node
    async def count(xs: Stream[str]) -> AsyncIterator[str]:
        n = 0
        async for x in xs:
            yield f"{n}:{x}"
            n += 1

    @chains.chain
    def c(xs: Stream[str]):
        return count(emb.node(jitter(first.node(xs))))

    def items(k: int) -> list[str]:
        return [f"s{k}/{i}/{d}" for i, d in enumerate(sessions[k])]

    async def main() -> dict[int, list[str]]:
        results: dict[int, list[str]] = {}
        async with chains.Runtime(c):

            async def one(k: int) -> None:
                results[k] = await chains.call(c, items(k))

            async with anyio.create_task_group() as tg:
                for k in range(len(sessions)):
                    tg.start_soon(one, k)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        assert left == [], left
        return results

    results = anyio.run(main)
    for k in range(len(sessions)):
        assert results[k] == [f"{n}:{x.upper()}" for n, x in enumerate(items(k))]
    assert all(len(b) <= max_size for b in emb.batches)
    assert sum(emb.sizes) == sum(len(s) for s in sessions)
