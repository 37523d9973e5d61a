"""Every node shape runs as documented: maps (async on the loop, sync in a worker
thread), batched maps, streaming maps, stream nodes and fan-in (zipping maps,
held values, ``chains.merge``, ``chains.zip``)."""

import threading
from collections.abc import AsyncIterator

import anyio
import pytest

import chains
from chains import Stream
from tests.fakes import BatchFake, Gate, MapFake, StreamingFake, drain, wait_until

# --- maps ---------------------------------------------------------------------------


async def test_async_map_runs_on_the_loop_thread() -> None:
    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str]):
        return upper.node(xs)

    assert await chains.call(c, ["a", "b"]) == ["A", "B"]
    assert {call.thread for call in upper.calls} == {threading.get_ident()}


async def test_sync_map_runs_in_a_worker_thread_not_on_the_loop() -> None:
    upper = MapFake(sync=True)

    @chains.chain
    def c(xs: Stream[str]):
        return upper.node(xs)

    assert await chains.call(c, ["a", "b", "c"]) == ["A", "B", "C"]
    threads = {call.thread for call in upper.calls}
    assert threading.get_ident() not in threads
    assert all(call.session is not None for call in upper.calls)  # context reaches the thread


@pytest.mark.parametrize("sync", [False, True])
async def test_a_map_returning_none_filters_the_item_out(sync: bool) -> None:
    keep = MapFake(sync=sync, none_on=lambda x: x.startswith("drop"))
    after = MapFake("after")

    @chains.chain
    def c(xs: Stream[str]):
        return after.node(keep.node(xs))

    assert await chains.call(c, ["a", "drop1", "b", "drop2"]) == ["A", "B"]
    assert after.values == ["A", "B"]  # the filtered items never reach the next node


# --- batched maps -------------------------------------------------------------------


@pytest.mark.parametrize("sync", [False, True])
async def test_batched_map_batches_a_stream_within_max_size(sync: bool) -> None:
    emb = BatchFake(sync=sync, max_size=4, max_wait_ms=5, concurrency=1)

    @chains.chain
    def c(xs: Stream[str]):
        return emb.node(xs)

    items = [f"s/{i}" for i in range(20)]
    assert await chains.call(c, items) == [x.upper() for x in items]
    assert sum(emb.sizes) == 20
    assert max(emb.sizes) <= 4
    assert max(emb.sizes) > 1  # items queued while a batch ran were batched together
    if sync:
        assert threading.get_ident() not in emb.threads
    else:
        assert emb.threads == {threading.get_ident()}


async def test_batched_map_batches_across_sessions() -> None:
    emb = BatchFake(max_size=8, a=0.005, concurrency=1)

    @chains.chain
    def c(x: str):
        return emb.node(x)

    async with chains.Runtime(c):
        results: dict[int, str] = {}

        async def one(k: int) -> None:
            results[k] = await chains.call(c, f"s{k}/0")

        async with anyio.create_task_group() as tg:
            for k in range(16):
                tg.start_soon(one, k)
    assert results == {k: f"S{k}/0" for k in range(16)}
    assert max(emb.sessions_per_batch()) > 1
    assert max(emb.sizes) <= 8


# --- streaming maps -----------------------------------------------------------------


async def test_streaming_map_hands_on_each_token_as_it_is_produced() -> None:
    gate = Gate()
    llm = StreamingFake(tokens=3, gate=gate)

    @chains.chain
    def c(prompts: Stream[str]):
        return llm.node(prompts)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("a")
        await sess.send("b")
        sess.close_inputs()
        first = await sess.receive()
        assert first.value == "a#0"
        assert llm.completed == []  # the call is still running: the token was streamed
        gate.open()
        rest = [o.value for o in await drain(sess)]
    assert rest == ["a#1", "a#2", "b#0", "b#1", "b#2"]
    assert [p for _, p in llm.completed] == ["a", "b"]


# --- stream nodes -------------------------------------------------------------------


async def test_stream_node_has_one_instance_per_session_with_its_own_state() -> None:
    starts = []

    @chains.node
    async def running_total(xs: Stream[int]) -> AsyncIterator[int]:
        starts.append(chains.context().session_id)
        total = 0
        async for x in xs:
            total += x
            yield total

    @chains.chain
    def c(xs: Stream[int]):
        return running_total(xs)

    async with chains.Runtime(c), anyio.create_task_group() as tg:
        results = {}

        async def one(k: int, items: list[int]) -> None:
            results[k] = await chains.call(c, items)

        tg.start_soon(one, 0, [1, 2, 3])
        tg.start_soon(one, 1, [10, 20])
    assert results == {0: [1, 3, 6], 1: [10, 30]}
    assert len(set(starts)) == 2


async def test_stream_node_can_emit_after_its_input_ends() -> None:
    @chains.node
    async def count(xs: Stream[str]) -> AsyncIterator[int]:
        n = 0
        async for _ in xs:
            n += 1
        yield n

    @chains.chain
    def c(xs: Stream[str]):
        return count(xs)

    assert await chains.call(c, ["a", "b", "c"]) == [3]
    assert await chains.call(c, []) == [0]


# --- fan-in -------------------------------------------------------------------------


async def test_a_map_with_two_stream_inputs_zips_them() -> None:
    @chains.node
    async def join(a: str, b: str) -> str:
        return a + b

    @chains.chain
    def c(xs: Stream[str], ys: Stream[str]):
        return join(xs, ys)

    assert await chains.call(c, ["a", "b", "c"], ["1", "2", "3"]) == ["a1", "b2", "c3"]
    assert await chains.call(c, ["a", "b", "c"], ["1"]) == ["a1"]  # ends with the shortest


async def test_a_map_holds_a_single_value_against_a_stream() -> None:
    @chains.node
    async def prefix(x: str, p: str) -> str:
        return p + x

    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str], p: str):
        return prefix(upper.node(xs), p)  # one stream from a node, one value from an input

    assert await chains.call(c, ["a", "b", "c"], "> ") == ["> A", "> B", "> C"]


async def test_a_map_on_two_single_values_is_called_once() -> None:
    calls = []

    @chains.node
    async def join(a: str, b: str) -> str:
        calls.append((a, b))
        return a + b

    @chains.chain
    def c(a: str, b: str):
        return join(a, b)

    assert await chains.call(c, "x", "y") == "xy"
    assert calls == [("x", "y")]


async def test_a_map_on_two_single_values_returning_none_is_called_once() -> None:
    calls = []

    @chains.node
    async def maybe(a: str, b: str) -> str:
        calls.append((a, b))
        if len(calls) > 1:
            raise RuntimeError("called again")
        return None  # type: ignore[return-value]  # filtered

    @chains.chain
    def c(a: str, b: str):
        return maybe(a, b)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("x", "a")
        await sess.send("y", "b")
        sess.close_inputs()
        outs = []
        with anyio.move_on_after(2):  # hang guard
            async for o in sess:
                outs.append(o)
                if o.name == "error":
                    break  # the node was called a second time
    assert calls == [("x", "y")]
    assert outs == []


async def test_a_streaming_map_on_two_single_values_is_called_once() -> None:
    calls = []

    @chains.node
    async def chat(system: str, prompt: str) -> AsyncIterator[str]:
        calls.append(prompt)
        if len(calls) > 1:
            raise RuntimeError("called again")
        yield system + prompt

    @chains.chain
    def c(system: str, prompt: str):
        return chat(system, prompt)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("sys:", "system")
        await sess.send("hi", "prompt")
        sess.close_inputs()
        outs = []
        with anyio.move_on_after(2):  # hang guard
            async for o in sess:
                outs.append((o.name, o.value))
                if o.name == "error":
                    break  # the node was called a second time
    assert calls == ["hi"]
    assert outs == [("output", "sys:hi")]


async def test_a_stream_node_with_two_stream_inputs() -> None:
    @chains.node
    async def interleave(a: Stream[str], b: Stream[str]) -> AsyncIterator[str]:
        async for x in a:
            yield x
        async for y in b:
            yield y

    @chains.chain
    def c(xs: Stream[str], ys: Stream[str]):
        return interleave(xs, ys)

    assert await chains.call(c, ["a", "b"], ["1", "2"]) == ["a", "b", "1", "2"]


async def test_merge_hands_on_each_item_as_soon_as_it_arrives() -> None:
    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str], ys: Stream[str]):
        return chains.merge(upper.node(xs), ys)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("y1", "ys")  # only the second input has an item
        assert (await sess.receive()).value == "y1"
        await sess.send("x1", "xs")
        assert (await sess.receive()).value == "X1"
        await sess.send("y2", "ys")
        assert (await sess.receive()).value == "y2"
        sess.close_inputs()
        assert await drain(sess) == []


async def test_merge_ends_when_every_input_ends() -> None:
    @chains.chain
    def c(xs: Stream[str], ys: Stream[str], zs: Stream[str]):
        return chains.merge(xs, ys, zs)

    out = await chains.call(c, ["a", "b"], [], ["z"])
    assert sorted(out) == ["a", "b", "z"]


async def test_zip_pairs_items_and_ends_with_the_shortest() -> None:
    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str], ys: Stream[int]):
        return chains.zip(upper.node(xs), ys)

    assert await chains.call(c, ["a", "b", "c"], [1, 2]) == [("A", 1), ("B", 2)]


async def test_wait_until_is_only_a_hang_guard() -> None:
    """The helper the other tests use to wait on the runtime raises, not hangs."""
    with pytest.raises(TimeoutError):
        await wait_until(lambda: False, timeout=0.01)


async def test_a_control_event_returned_by_a_map_goes_out_of_band() -> None:
    @chains.node
    async def turn_end(x: str) -> str | chains.EndOfTurn:
        return chains.EndOfTurn() if x == "." else x

    after = MapFake("after")

    @chains.chain
    def c(xs: Stream[str]):
        return after.node(turn_end(xs))

    async with chains.Runtime(c) as rt, rt.session() as sess:
        for x in ["a", ".", "b"]:
            await sess.send(x)
        sess.close_inputs()
        outs = [(o.name, o.value) for o in await drain(sess)]
    # the event skips the nodes after it, so it is not ordered with their outputs
    assert [v for n, v in outs if n == "output"] == ["A", "B"]
    assert [v for n, v in outs if n == "events"] == [chains.EndOfTurn()]
    assert after.values == ["a", "b"]  # the event never reached the data node
