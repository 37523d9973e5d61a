"""Class nodes and node options: replicas load once each (off the loop) and close
at runtime exit; concurrency limits hold across sessions; retries and timeout_ms
do what they say; ``chains.context()`` state is per (session, node)."""

import threading
from collections.abc import AsyncIterator

import anyio
import pytest

import chains
from chains import Stream
from tests.fakes import BatchFake, MapFake, ModelFake, StreamingFake, wait_until


async def call_many(chain: chains.Chain, inputs: list[object]) -> list[object]:
    """One session per input, all at once, inside the active runtime."""
    results: list[object] = [None] * len(inputs)

    async def one(i: int) -> None:
        results[i] = await chains.call(chain, inputs[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(inputs)):
            tg.start_soon(one, i)
    return results


# --- class nodes --------------------------------------------------------------------


@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize("async_setup", [False, True])
async def test_class_node_init_setup_close_once_per_replica(sync: bool, async_setup: bool) -> None:
    model = ModelFake(sync=sync, async_setup=async_setup, replicas=3)

    @chains.chain
    def c(x: str):
        return model.cls("cfg")(x)

    async with chains.Runtime(c):
        assert model.count("init") == model.count("setup") == 3
        results = await call_many(c, [f"s{k}/0" for k in range(12)])
        assert model.count("init") == 3  # serving loads nothing more
        assert model.count("close") == 0
    for k, r in enumerate(results):
        item, replica = str(r).rsplit("@", 1)
        assert item == f"s{k}/0" and int(replica) in range(3)
    assert sorted(n for e, n in model.events if e == "close") == [0, 1, 2]
    assert threading.get_ident() not in model.init_threads  # loaded off the loop
    if sync:
        assert threading.get_ident() not in model.call_threads  # served off the loop
    else:
        assert model.call_threads == {threading.get_ident()}
    for n in range(3):  # each replica: init, then setup, ..., then close last
        mine = [e for e, m in model.events if m == n]
        assert mine == ["init", "setup", "close"]


async def test_replicas_share_the_load() -> None:
    model = ModelFake(replicas=3, delay_of=lambda x: 0.005)

    @chains.chain
    def c(x: str):
        return model.cls()(x)

    async with chains.Runtime(c):
        await call_many(c, [f"s{k}/0" for k in range(9)])
    assert sum(model.served.values()) == 9
    assert all(n >= 1 for n in model.served.values())


async def test_a_class_template_used_twice_in_a_chain_loads_one_model() -> None:
    model = ModelFake(replicas=2)

    @chains.chain
    def c(x: str):
        m = model.cls()
        return m(m(x))

    async with chains.Runtime(c):
        out = await chains.call(c, "x")
    assert out.startswith("x@") and out.count("@") == 2
    assert model.count("init") == 2 and model.count("close") == 2


async def test_two_templates_of_one_class_load_two_models() -> None:
    model = ModelFake()

    @chains.chain
    def c(x: str):
        return model.cls("a")(model.cls("b")(x))

    async with chains.Runtime(c):
        await chains.call(c, "x")
    assert model.count("init") == model.count("close") == 2


async def test_each_replica_runs_at_most_concurrency_calls_at_once() -> None:
    model = ModelFake(sync=True, replicas=2, delay_of=lambda x: 0.1 if x == "long" else 0.002)

    @chains.chain
    def c(x: str):
        return model.cls()(x)

    async with chains.Runtime(c), anyio.create_task_group() as tg:
        for x in ["long", "a", "b", "c", "d"]:
            tg.start_soon(chains.call, c, x)
            await wait_until(lambda: sum(model.served.values()) >= 1)
    assert [model.flight[n].max for n in (0, 1)] == [1, 1]


# --- concurrency --------------------------------------------------------------------


@pytest.mark.parametrize(("sync", "concurrency", "expected"), [(False, 3, 3), (True, None, 1), (True, 2, 2)])
async def test_map_concurrency_limit_holds_across_sessions(
    sync: bool, concurrency: int | None, expected: int
) -> None:
    m = MapFake(sync=sync, delay=0.005, concurrency=concurrency)

    @chains.chain
    def c(x: str):
        return m.node(x)

    async with chains.Runtime(c):
        results = await call_many(c, [f"s{k}/0" for k in range(12)])
    assert results == [f"S{k}/0" for k in range(12)]
    assert m.flight.max == expected


async def test_streaming_map_concurrency_limit_holds_across_sessions() -> None:
    llm = StreamingFake(tokens=3, delay=0.002, concurrency=2)
    in_flight = {"now": 0, "max": 0}

    @chains.node
    async def watch(tokens: Stream[str]) -> AsyncIterator[str]:
        async for t in tokens:
            yield t

    @chains.chain
    def c(x: str):
        return watch(llm.node(x))

    async def sample() -> None:
        while True:
            now = len(llm.started) - len(llm.completed) - len(llm.cancelled)
            in_flight["now"] = now
            in_flight["max"] = max(in_flight["max"], now)
            await anyio.sleep(0.0005)

    async with chains.Runtime(c), anyio.create_task_group() as tg:
        tg.start_soon(sample)
        results = await call_many(c, [f"p{k}" for k in range(8)])
        tg.cancel_scope.cancel()
    assert results == [[f"p{k}#{i}" for i in range(3)] for k in range(8)]
    assert in_flight["max"] == 2


async def test_batched_concurrency_bounds_batches_in_flight() -> None:
    emb = BatchFake(max_size=4, a=0.003, concurrency=2)

    @chains.chain
    def c(x: str):
        return emb.node(x)

    async with chains.Runtime(c):
        await call_many(c, [f"s{k}/0" for k in range(40)])
    assert emb.flight.max == 2
    assert sum(emb.sizes) == 40 and max(emb.sizes) <= 4


# --- retries and timeouts -----------------------------------------------------------


def flaky(failures: int, retries: int, sync: bool = False) -> tuple[object, list[str]]:
    attempts: list[str] = []

    def attempt(x: str) -> str:
        attempts.append(x)
        if len(attempts) <= failures:
            raise ConnectionError(f"transient {len(attempts)}")
        return x.upper()

    if sync:

        @chains.node(retries=retries)
        def flaky_sync(x: str) -> str:
            return attempt(x)

        return flaky_sync, attempts

    @chains.node(retries=retries)
    async def flaky_async(x: str) -> str:
        return attempt(x)

    return flaky_async, attempts


@pytest.mark.parametrize("sync", [False, True])
async def test_retries_hide_transient_failures(sync: bool) -> None:
    node, attempts = flaky(failures=2, retries=2, sync=sync)

    @chains.chain
    def c(x: str):
        return node(x)

    assert await chains.call(c, "x") == "X"
    assert attempts == ["x", "x", "x"]


@pytest.mark.parametrize("sync", [False, True])
async def test_a_failure_past_the_retries_is_a_node_error(sync: bool) -> None:
    node, attempts = flaky(failures=3, retries=2, sync=sync)

    @chains.chain
    def c(x: str):
        return node(x)

    with pytest.raises(chains.NodeError, match="ConnectionError: transient 3") as e:
        await chains.call(c, "x")
    assert e.value.node == node.spec.name
    assert len(attempts) == 3


async def test_timeout_ms_fails_a_slow_async_call() -> None:
    slow = MapFake("slow", delay=5.0, timeout_ms=10)

    @chains.chain
    def c(x: str):
        return slow.node(x)

    with pytest.raises(chains.NodeError, match="timed out after 10 ms") as e:
        await chains.call(c, "x")
    assert (e.value.node, e.value.code) == ("slow", "timeout")


async def test_a_timed_out_attempt_is_retried() -> None:
    attempts = []

    @chains.node(timeout_ms=20, retries=1)
    async def hangs_once(x: str) -> str:
        attempts.append(x)
        if len(attempts) == 1:
            await anyio.sleep(5)
        return x.upper()

    @chains.chain
    def c(x: str):
        return hangs_once(x)

    assert await chains.call(c, "x") == "X"
    assert attempts == ["x", "x"]


async def test_timeout_ms_applies_to_each_batch() -> None:
    emb = BatchFake("emb", a=5.0, timeout_ms=10)

    @chains.chain
    def c(x: str):
        return emb.node(x)

    with pytest.raises(chains.NodeError, match="timed out") as e:
        await chains.call(c, "s/0")
    assert (e.value.node, e.value.code) == ("emb", "timeout")


async def test_timeout_ms_fails_a_slow_sync_call() -> None:
    slow = MapFake("slow_sync", sync=True, delay=0.2, timeout_ms=10)

    @chains.chain
    def c(x: str):
        return slow.node(x)

    with pytest.raises(chains.NodeError, match="timed out") as e:
        await chains.call(c, "x")
    assert e.value.code == "timeout"
    await wait_until(lambda: slow.flight.now == 0)  # the abandoned thread finishes on its own


# --- chains.context() ---------------------------------------------------------------


async def test_context_state_is_per_session_and_per_node() -> None:
    seen: list[tuple[str, str, int]] = []

    def counting(name: str, sync: bool) -> object:
        def bump(x: str) -> str:
            ctx = chains.context()
            ctx.state["n"] = ctx.state.get("n", 0) + 1
            seen.append((ctx.session_id, ctx.node, ctx.state["n"]))
            return x

        if sync:

            @chains.node(name=name)
            def count_sync(x: str) -> str:
                return bump(x)

            return count_sync

        @chains.node(name=name)
        async def count_async(x: str) -> str:
            return bump(x)

        return count_async

    first = counting("count", sync=False)
    second = counting("count_sync", sync=True)

    @chains.chain
    def c(xs: Stream[str]):
        return second(first(first(xs)))  # the same function twice: nodes count, count_2

    async with chains.Runtime(c):
        a, b = await call_many(c, [["a1", "a2", "a3"], ["b1", "b2"]])
    assert a == ["a1", "a2", "a3"] and b == ["b1", "b2"]
    sessions = {s for s, _, _ in seen}
    assert len(sessions) == 2
    for s in sessions:
        for node in ("count", "count_2", "count_sync"):
            counts = [n for s2, nd, n in seen if s2 == s and nd == node]
            assert counts == list(range(1, len(counts) + 1)), (s, node, counts)
    assert sorted(len([1 for s2, nd, _ in seen if s2 == s and nd == "count"]) for s in sessions) == [2, 3]


async def test_context_is_set_for_streaming_maps_and_stream_nodes_and_absent_outside() -> None:
    seen = []

    @chains.node
    async def tokens(x: str) -> AsyncIterator[str]:
        ctx = chains.context()
        seen.append((ctx.node, ctx.epoch))
        yield x

    @chains.node
    async def tail(xs: Stream[str]) -> AsyncIterator[str]:
        seen.append((chains.context().node, chains.context().epoch))
        async for x in xs:
            yield x

    @chains.chain
    def c(x: str):
        return tail(tokens(x))

    assert await chains.call(c, "x") == ["x"]
    assert sorted(seen) == [("tail", 0), ("tokens", 0)]
    with pytest.raises(RuntimeError, match="only available inside a running node"):
        chains.context()


def test_streaming_nodes_refuse_timeout_and_retries() -> None:
    """A streaming call hands outputs on as it makes them: it cannot be timed out or
    retried as one unit, so those options are refused where the node is defined
    rather than silently ignored."""
    with pytest.raises(chains.ChainError, match="retries and timeout_ms apply to maps"):

        @chains.node(timeout_ms=50)
        async def stalls(x: str) -> AsyncIterator[str]:
            yield x

    with pytest.raises(chains.ChainError, match="node 'flaky_stream'"):

        @chains.node(retries=2)
        async def flaky_stream(x: str) -> AsyncIterator[str]:
            yield x
