"""Fan-out, backpressure, cancellation, error isolation and interruption."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import anyio
import pytest

import chains
from chains import Stream
from tests.fakes import Recorder, slow_llm


@chains.node
async def ident(x: int) -> int:
    return x


@chains.node
async def neg(x: int) -> int:
    return -x


async def test_fan_out_delivers_every_item_to_every_consumer():
    @chains.chain
    def c(xs: Stream[int]):
        h = ident(xs)
        return {"a": neg(h), "b": ident(h), "c": h}

    out = await chains.call(c, range(100))
    assert out == {"a": [-i for i in range(100)], "b": list(range(100)), "c": list(range(100))}


async def test_slow_consumer_blocks_its_producer_and_memory_stays_bounded():
    produced = 0
    release = asyncio.Event()

    @chains.node
    async def produce(n: int) -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(n):
            produced += 1
            yield b"x" * 10_000

    @chains.node
    async def stalled(xs: Stream[bytes]) -> AsyncIterator[int]:
        await release.wait()
        async for x in xs:
            yield len(x)

    @chains.chain
    def c(n: int):
        return stalled(produce(n))

    tracemalloc.start()
    try:
        async with chains.running(c) as rt, rt.session() as s:
            await s.send(100_000)
            s.close_inputs()
            await asyncio.sleep(0.2)
            ahead = produced
            _, peak = tracemalloc.get_traced_memory()
            # the producer is held by the full edge: one edge of 64 items, not 100 000
            assert ahead <= 64 + 2
            assert peak < 20 * 64 * 10_000
            release.set()
            got = 0
            with anyio.fail_after(30):
                async for _ in s:
                    got += 1
            assert got == 100_000
    finally:
        tracemalloc.stop()


async def test_closing_a_session_early_cancels_everything_it_started():
    rec = Recorder()
    llm = slow_llm(rec, tokens=1000, delay=0.01)

    @chains.chain
    def c(p: str):
        return llm(p)

    async with chains.running(c) as rt:
        async with rt.session() as s:
            await s.send("long")
            await s.receive()  # streaming has started
        # leaving the block cancelled the in-flight call; the leak check proves no task is left
        assert rec.cancelled == ["long"]
        assert rt.sessions == {}


async def test_cancelling_the_caller_cancels_the_session():
    rec = Recorder()
    llm = slow_llm(rec, tokens=1000, delay=0.01)

    @chains.chain
    def c(p: str):
        return llm(p)

    with anyio.move_on_after(0.1):
        await chains.call(c, "x")
    assert rec.cancelled == ["x"]


async def test_a_failing_item_fails_only_its_session():
    @chains.node(batch=chains.Batch(max_size=8, max_wait_ms=5))
    async def picky(xs: list[int]) -> list[int]:
        return xs

    @chains.node
    async def boom(x: int) -> int:
        if x == 13:
            raise ValueError("unlucky")
        return x

    @chains.chain
    def c(xs: Stream[int]):
        return boom(picky(xs))

    async with chains.running(c):
        results = await asyncio.gather(
            *(chains.call(c, [i, 13 if i == 3 else i]) for i in range(10)), return_exceptions=True
        )
    for i, r in enumerate(results):
        if i == 3:
            assert isinstance(r, chains.NodeError)
            assert r.node == "boom" and "ValueError: unlucky" in str(r)
        else:
            assert r == [i, i]


async def test_stream_api_reports_errors_as_events_and_goes_on():
    @chains.node
    async def boom(x: int) -> int:
        if x == 2:
            raise RuntimeError("bad item")
        return x

    @chains.chain
    def c(xs: Stream[int]):
        return boom(xs)

    outs = [o async for o in chains.stream(c, [1, 2, 3])]
    values = [o.value for o in outs if o.name == "output"]
    errors = [o.value for o in outs if o.name == "error"]
    assert values == [1, 3]
    assert len(errors) == 1 and errors[0].node == "boom" and "bad item" in errors[0].message


async def test_interrupt_cancels_in_flight_stream_and_drops_old_turn():
    rec = Recorder()
    llm = slow_llm(rec, tokens=50, delay=0.01)

    @chains.chain
    def c(prompts: Stream[str]):
        return llm(prompts)

    async with chains.running(c) as rt, rt.session() as s:
        await s.send("old")
        await s.send("queued")  # waits behind "old" in this session
        first = await s.receive()
        assert first.value == "old:0" and first.epoch == 0
        s.interrupt()
        await s.send("new")
        s.close_inputs()
        rest = [o async for o in s]
    assert rec.cancelled == ["old"]
    assert "queued" not in rec.calls  # dropped before it started
    assert [o.value for o in rest] == [f"new:{i}" for i in range(50)]
    assert all(o.epoch == 1 for o in rest)


async def test_a_node_emitting_interrupt_starts_a_new_turn():
    rec = Recorder()
    llm = slow_llm(rec, tokens=30, delay=0.01)

    @chains.node
    async def turns(xs: Stream[str]) -> AsyncIterator[str | chains.Interrupt]:
        async for x in xs:
            if x.startswith("!"):
                yield chains.Interrupt(reason="barge-in")
                yield x[1:]
            else:
                yield x

    @chains.chain
    def c(xs: Stream[str]):
        return llm(turns(xs))

    async with chains.running(c) as rt, rt.session() as s:
        await s.send("first")
        got = await s.receive()
        assert got.value == "first:0"
        await s.send("!second")
        s.close_inputs()
        rest = [o async for o in s]
    assert rec.cancelled == ["first"]
    data = [o.value for o in rest if o.name == "output"]
    assert data == [f"second:{i}" for i in range(30)]
    assert any(isinstance(o.value, chains.Interrupt) for o in rest if o.name == "events")


async def test_interrupt_drops_old_items_queued_at_a_batched_stage():
    seen = []
    gate = asyncio.Event()

    @chains.node
    async def hold(x: int) -> int:
        if x == 0:
            await gate.wait()
        return x

    @chains.node(batch=chains.Batch(max_size=4, max_wait_ms=1))
    async def batched(xs: list[int]) -> list[int]:
        seen.extend(xs)
        return xs

    @chains.chain
    def c(xs: Stream[int]):
        return batched(hold(xs))

    async with chains.running(c) as rt, rt.session() as s:
        for i in range(5):
            await s.send(i)
        await asyncio.sleep(0.01)
        s.interrupt()
        gate.set()
        await s.send(100)
        s.close_inputs()
        outs = [o.value async for o in s]
    assert outs == [100]
    assert seen == [100]
    assert rt.metrics.stages["hold"].stale + rt.metrics.stages["batched"].stale >= 5


async def test_admission_refuses_past_the_session_limit():
    @chains.chain
    def c(x: int):
        return ident(x)

    async with chains.running(c, max_sessions=1) as rt, rt.session():
        with pytest.raises(chains.Overloaded, match="limit of 1 sessions"):
            async with rt.session():
                pass
        assert rt.metrics.sessions_refused == 1


async def test_input_of_the_wrong_type_is_a_clear_error():
    @chains.node
    async def echo(t: chains.Text) -> chains.Text:
        return t

    @chains.chain
    def c(t: chains.Text):
        return echo(t)

    with pytest.raises(TypeError, match="input 't' wants Text, got int"):
        await chains.call(c, 5)
    with pytest.raises(TypeError, match="takes 1 input"):
        await chains.call(c)
