"""Many sessions, one runtime: 200 concurrent sessions through a four-stage chain
(map -> shared batched map -> streaming map -> per-session stream node) all get
their own outputs, complete and in order, and the shared stage really batches
items of different sessions together."""

from collections.abc import AsyncIterator

import anyio
import pytest

import chains
from chains import Stream
from tests.fakes import BatchFake, MapFake, StreamingFake

SESSIONS = 200
ITEMS = 3
TOKENS = 2


@pytest.mark.parametrize("sync", [False, True])
async def test_200_sessions_through_a_shared_batched_stage(sync: bool) -> None:
    prep = MapFake("prep", fn=lambda x: x + "p")
    emb = BatchFake("emb", sync=sync, a=0.002, k=0.0001, max_size=16, max_wait_ms=5)
    llm = StreamingFake("llm", tokens=TOKENS, delay=0.0005)
    numbered_by: set[str] = set()

    @chains.node
    async def number(tokens: Stream[str]) -> AsyncIterator[str]:
        numbered_by.add(chains.context().session_id)
        n = 0
        async for t in tokens:
            yield f"{n}:{t}"
            n += 1

    @chains.chain
    def c(xs: Stream[str]):
        return number(llm.node(emb.node(prep.node(xs))))

    results: dict[int, list[str]] = {}
    async with chains.Runtime(c) as rt:

        async def one(k: int) -> None:
            async with rt.session() as sess:
                for i in range(ITEMS):
                    await sess.send(f"s{k}/{i}")
                sess.close_inputs()
                results[k] = [o.value async for o in sess]

        async with anyio.create_task_group() as tg:
            for k in range(SESSIONS):
                tg.start_soon(one, k)
        assert rt.sessions == {}
        assert rt.metrics.sessions_total == SESSIONS
        stage = rt.metrics.stages["emb"]
        assert stage.items == SESSIONS * ITEMS
        assert stage.batch_size.count == len(emb.batches)

    for k in range(SESSIONS):
        tokens = [f"S{k}/{i}P#{j}" for i in range(ITEMS) for j in range(TOKENS)]
        assert results[k] == [f"{n}:{t}" for n, t in enumerate(tokens)], k
    assert len(numbered_by) == SESSIONS  # one stream node instance per session

    sizes = emb.sizes
    assert sum(sizes) == SESSIONS * ITEMS
    assert max(sizes) <= 16
    assert len(sizes) < SESSIONS * ITEMS / 2  # on average more than two items a batch
    mixed = emb.sessions_per_batch()
    assert max(mixed) > 1  # batches hold items of different sessions
    assert sum(1 for m in mixed if m > 1) >= len(mixed) // 2
    assert all(len({x for x in b}) == len(b) for b in emb.batches)  # no item twice
