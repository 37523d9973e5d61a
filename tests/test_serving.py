"""One place serves an item (``Stage.serve``): the same rules for a map, a fan-in map
and a batched map; retries that respect the deadline; replicas that die and come
back; the default runtime of ``chains.call``; and the defects a new user met."""

from __future__ import annotations

import itertools
import typing
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import chains
from chains import Stream
from runtime.default import close_default_runtimes
from tests.fakes import BatchFake, InFlight, MapFake, ModelFake, StreamingFake, drain, wait_until

# --- the same rules for every shape ------------------------------------------------------


def _shapes(on_late: str) -> dict[str, tuple[Any, Any]]:
    """A slow node of each shape, in a one-node chain: (chain, the stage's node name)."""
    slow_map = MapFake("map", delay=0.02, on_late=on_late, budget_ms=5)

    @chains.node(name="fanin", on_late=on_late, budget_ms=5)
    async def fanin(a: str, b: str) -> str:
        await anyio.sleep(0.02)
        return a + b

    batched = BatchFake("batched", a=0.02, k=0.0, max_size=1, on_late=on_late, budget_ms=5)

    @chains.chain
    def one_map(x: str):
        return slow_map.node(x)

    @chains.chain
    def one_fanin(x: str, y: str):
        return fanin(x, y)

    @chains.chain
    def one_batched(x: str):
        return batched.node(x)

    return {"map": (one_map, 1), "fanin": (one_fanin, 2), "batched": (one_batched, 1)}


@pytest.mark.parametrize("shape", ["map", "fanin", "batched"])
async def test_late_items_are_counted_the_same_for_every_shape(shape: str) -> None:
    chain, arity = _shapes("serve")[shape]
    async with chains.running(chain) as rt:
        for i in range(3):
            await rt.call(*[f"x{i}"] * arity)
        m = rt.stages[0].metrics
        assert m.items == 3
        assert m.late == 3  # 20 ms of service for a 5 ms budget
        assert m.service.count >= 1 and m.errors == 0 and m.consecutive_errors == 0


@pytest.mark.parametrize("shape", ["map", "fanin", "batched"])
async def test_hopeless_items_are_shed_the_same_for_every_shape(shape: str) -> None:
    chain, arity = _shapes("shed")[shape]
    async with chains.running(chain) as rt:
        await rt.call(*["warm"] * arity)  # learns that a call takes ~20 ms
        errors = []
        for i in range(3):
            try:
                await rt.call(*[f"x{i}"] * arity)
            except chains.NodeError as e:
                errors.append(e.code)
        m = rt.stages[0].metrics
        assert errors == ["shed"] * 3
        assert m.shed == 3 and m.errors == 0


async def test_retries_back_off_and_never_run_past_the_deadline() -> None:
    attempts: list[float] = []

    @chains.node(retries=50, budget_ms=60, timeout_ms=1000)
    async def flaky(x: str) -> str:
        attempts.append(anyio.current_time())
        await anyio.sleep(0.01)
        raise ValueError("down")

    @chains.chain
    def c(x: str):
        return flaky(x)

    async with chains.running(c) as rt:
        with pytest.raises(chains.NodeError) as err:
            await rt.call("x")
        assert "down" in str(err.value)
        # 50 retries allowed, but a 60 ms budget fits only a few 10 ms attempts with backoff
        assert 2 <= len(attempts) < 8
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert all(g >= 0.01 for g in gaps)  # each retry waited (its call + a backoff)
        assert rt.stages[0].metrics.errors >= 1


async def test_a_retry_that_succeeds_is_one_item_and_no_error() -> None:
    seen: list[str] = []

    @chains.node(retries=2)
    async def once_flaky(x: str) -> str:
        seen.append(x)
        if len(seen) == 1:
            raise ValueError("blip")
        return x.upper()

    @chains.chain
    def c(x: str):
        return once_flaky(x)

    async with chains.running(c) as rt:
        assert await rt.call("a") == "A"
        m = rt.stages[0].metrics
        assert (m.items, m.consecutive_errors) == (1, 0)


# --- replicas that die ---------------------------------------------------------------------


def _dying_model(dead: set[int], loads: list[int]) -> Any:
    @chains.node(replicas=2)
    class Engine:
        def __init__(self) -> None:
            self.n = len(loads)
            loads.append(self.n)

        def alive(self) -> bool:
            return self.n not in dead

        async def __call__(self, x: str) -> str:
            await anyio.sleep(0.001)
            if self.n in dead:
                raise RuntimeError("engine process is gone")
            return f"{x}@{self.n}"

    return Engine


async def test_a_replica_whose_model_dies_is_rebuilt_while_the_other_serves() -> None:
    dead: set[int] = set()
    loads: list[int] = []
    engine = _dying_model(dead, loads)

    @chains.chain
    def c(x: str):
        return engine()(x)

    async with chains.running(c) as rt:
        rs = rt.stages[0].replicas
        rs.backoff_s = (0.001, 0.01)
        assert [await rt.call(f"w{i}") for i in range(2)]  # both loaded and serving
        dead.add(0)
        codes = []
        for i in range(10):
            try:
                await rt.call(f"x{i}")
            except chains.NodeError as e:
                codes.append(e.code)
        assert codes.count("replica_lost") <= 1  # at most the one item on it when it died
        await wait_until(lambda: rs.rebuilds == 1 and len(rs.ready) == 2, what="rebuilt")
        assert loads == [0, 1, 2]
        out = {await rt.call(f"y{i}") for i in range(6)}
        assert {o.split("@")[1] for o in out} <= {"1", "2"}  # never the dead one
        m = rt.stages[0].metrics
        assert m.replica_rebuilds == 1 and m.replicas_ready == 2 and m.healthy


async def test_every_replica_lost_fails_items_fast_and_names_the_state() -> None:
    dead: set[int] = {0, 1}
    loads: list[int] = []
    engine = _dying_model(dead, loads)

    @chains.chain
    def c(x: str):
        return engine()(x)

    async with chains.running(c) as rt:
        rs = rt.stages[0].replicas
        rs.backoff_s = (5.0, 5.0)  # the rebuild waits: nothing is ready meanwhile
        rs.provider.start = _never_ready(rs.provider.start)  # type: ignore[method-assign]
        codes = []
        for i in range(4):
            try:
                await rt.call(f"x{i}")
            except chains.NodeError as e:
                codes.append(e.code)
        assert codes[:2] == ["replica_lost", "replica_lost"]
        assert set(codes[2:]) == {"no_replica"}
        assert not rt.stages[0].metrics.healthy


def _never_ready(start: Any) -> Any:
    async def slow_start(rid: int) -> Any:
        await anyio.sleep(60)
        return await start(rid)

    return slow_start


async def test_scale_to_adds_a_replica_that_takes_work_only_once_loaded() -> None:
    model = ModelFake("m", delay_of=lambda x: 0.002)

    @chains.chain
    def c(x: str):
        return model.cls()(x)

    async with chains.running(c) as rt:
        rs = rt.stages[0].replicas
        rs.scale_to(3)
        await wait_until(lambda: len(rs.ready) == 3, what="scaled out")
        assert model.count("init") == 3 and len(rs.cold_starts) == 2
        assert rt.stages[0].limiter.capacity == 3 * rt.stages[0].spec.concurrency
        rs.scale_to(1)
        await wait_until(lambda: len(rs.replicas) == 1, what="scaled in")
        await wait_until(lambda: model.count("close") == 2, what="drained replicas closed")
        assert (await rt.call("z")).startswith("z@")


# --- routers --------------------------------------------------------------------------------


async def test_round_robin_router_spreads_calls_over_replicas() -> None:
    model = ModelFake("rr", replicas=3, router="round_robin")

    @chains.chain
    def c(x: str):
        return model.cls()(x)

    async with chains.running(c) as rt:
        for i in range(9):
            await rt.call(f"x{i}")
    assert sorted(model.served.values()) == [3, 3, 3]


# --- speculative turns ----------------------------------------------------------------------


def _speculating_vad(script: list[str]) -> Any:
    """A stream node that speaks for the user: "spec" starts a speculative turn with
    the text so far, "confirm" confirms it, "barge" abandons it."""

    @chains.node
    async def vad(xs: Stream[str]) -> AsyncIterator[str | chains.Control]:
        async for x in xs:
            if x.startswith("spec:"):
                yield chains.SpeculativeTurn()
                yield x[5:]
            elif x == "confirm":
                yield chains.ConfirmTurn()
            elif x == "barge":
                yield chains.Interrupt(reason="speculation_abandoned")

    return vad


async def _run_turns(script: list[str], llm: StreamingFake, gate_after: int | None = None) -> list[Any]:
    vad = _speculating_vad(script)

    @chains.chain
    def c(audio: Stream[str]):
        return llm.node(vad(audio))

    async with chains.running(c) as rt, rt.session() as s:
        outs: list[Any] = []
        for item in script:
            await s.send(item)
            await anyio.sleep(0.03)  # let the speculative work run ahead
        s.close_inputs()
        outs = await drain(s)
        return outs


async def test_a_confirmed_speculative_turn_sends_its_reply_unchanged() -> None:
    llm = StreamingFake(tokens=3, delay=0.001)
    outs = await _run_turns(["spec:hello", "confirm"], llm)
    data = [o.value for o in outs if o.is_data]
    assert data == ["hello#0", "hello#1", "hello#2"]
    assert len(llm.started) == 1  # the speculative call IS the turn: nothing redone
    kinds = [type(o.value).__name__ for o in outs if o.is_event]
    assert kinds == ["SpeculativeTurn", "ConfirmTurn"]


async def test_held_outputs_wait_for_the_confirmation() -> None:
    llm = StreamingFake(tokens=2, delay=0.001)
    vad = _speculating_vad([])

    @chains.chain
    def c(audio: Stream[str]):
        return llm.node(vad(audio))

    async with chains.running(c) as rt, rt.session() as s:
        await s.send("spec:hi")
        await wait_until(lambda: len(llm.completed) == 1, what="speculative work done")
        first = await s.receive()
        assert first.is_event and isinstance(first.value, chains.SpeculativeTurn)
        with anyio.move_on_after(0.05) as scope:
            await s.receive()  # nothing: the reply is held
        assert scope.cancelled_caught
        await s.send("confirm")
        got = [await s.receive() for _ in range(2)]
        assert [o.value for o in got] == ["hi#0", "hi#1"]  # released ahead of the event
        s.close_inputs()
        await drain(s)
        assert s.speculative["confirmed"] == 1


async def test_an_abandoned_speculative_turn_sends_nothing_and_cancels_its_work() -> None:
    llm = StreamingFake(tokens=1000, delay=0.002)
    outs = await _run_turns(["spec:half", "barge", "spec:half and whole", "confirm"], llm)
    data = [o.value for o in outs if o.is_data]
    assert data and all(v.startswith("half and whole#") for v in data)
    assert any(p == "half" for _, p in llm.cancelled)  # the abandoned request was aborted


# --- the defects a new user met -------------------------------------------------------------


async def test_a_chain_input_annotated_any_is_accepted() -> None:
    @chains.node
    async def echo(x: Any) -> Any:
        return x

    @chains.chain
    def c(x: typing.Any):
        return echo(x)

    async with chains.running(c) as rt:
        assert await rt.call({"k": 1}) == {"k": 1}


async def test_an_async_batched_map_runs_one_batch_at_a_time_per_replica() -> None:
    fake = BatchFake("b", a=0.005, k=0.0, max_size=2, max_wait_ms=0)

    @chains.chain
    def c(x: str):
        return fake.node(x)

    async with chains.running(c) as rt, anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(rt.call, f"s{i}/x")
    assert fake.flight.max == 1
    assert len(fake.batches) < 20  # items waited and batched instead of overlapping


async def test_concurrent_calls_without_a_runtime_share_one_loaded_model_and_batch() -> None:
    loads: list[int] = []
    batches: list[int] = []
    flight = InFlight()

    @chains.node(batch=chains.Batch(max_size=64, max_wait_ms=20))
    class Model:
        def __init__(self) -> None:
            loads.append(1)

        async def __call__(self, xs: list[str]) -> list[str]:
            batches.append(len(xs))
            with flight:
                await anyio.sleep(0.01)
            return [x.upper() for x in xs]

    @chains.chain
    def c(x: str):
        return Model()(x)

    results: list[str] = []

    async def one(i: int) -> None:
        results.append(await chains.call(c, f"x{i}"))

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, i)
    assert sorted(results) == sorted(f"X{i}" for i in range(100))
    assert len(loads) == 1
    assert max(batches) > 1 and len(batches) < 100
    await close_default_runtimes()


async def test_an_autoscaled_node_starts_at_its_minimum_under_its_autoscaler() -> None:
    model = ModelFake("auto", min_replicas=2, max_replicas=4)

    @chains.chain
    def c(x: str):
        return model.cls()(x)

    async with chains.running(c) as rt:
        assert set(rt.autoscalers) == {"auto"}
        assert len(rt.stages[0].replicas.ready) == 2
        assert (await rt.call("x")).startswith("x@")


@pytest.mark.parametrize("on_late", ["serve", "shed"])
async def test_a_remote_stage_counts_late_and_shed_items_as_in_process(on_late: str) -> None:
    from transport.remote import with_remotes
    from transport.remote.host import hosting

    chain, _ = _shapes(on_late)["map"]
    async with hosting(chain, "map") as (host, url), chains.running(with_remotes(chain, {"map": url})) as rt:
        codes = []
        for i in range(4):
            try:
                await rt.call(f"x{i}")
            except chains.NodeError as e:
                codes.append(e.code)
        m = host.stage.metrics  # the host's own Stage serves every remote item
        if on_late == "serve":
            assert codes == [] and m.items == 4 and m.late == 4
        else:
            # Shed where it is first seen to be hopeless: the caller's stage (it learned the
            # stage's service time too) or the host's; counted once either way.
            assert codes == ["shed"] * 3 and m.items == 1
            assert m.shed + rt.stages[0].metrics.shed == 3


async def test_a_learning_router_is_asked_with_one_replica_so_a_session_keeps_it_after_scale_out() -> None:
    model = ModelFake("sticky", router="sticky")

    @chains.chain
    def c(xs: Stream[str]):
        return model.cls()(xs)

    async with chains.running(c) as rt, rt.session() as s:
        await s.send("a")
        assert (await s.receive()).value == "a@0"
        rs = rt.stages[0].replicas
        rs.scale_to(2)
        await wait_until(lambda: len(rs.ready) == 2, what="scaled out")
        for x in ("b", "c", "d"):
            await s.send(x)
            assert (await s.receive()).value == f"{x}@0"  # pinned while it was alone
        s.close_inputs()
        await drain(s)


async def test_engine_cache_hits_reported_by_a_node_check_the_prefix_routers_prediction() -> None:
    @chains.node(replicas=2, router="prefix")
    class Llm:
        def route_tokens(self, prompt: str) -> list[int]:
            return [ord(c) for c in prompt]

        async def __call__(self, prompt: str) -> AsyncIterator[str]:
            chains.context().cached_tokens = 32  # what the engine said it had cached
            yield prompt.upper()

    @chains.chain
    def c(prompt: str):
        return Llm()(prompt)

    from runtime.metrics import prometheus_text

    shared = "x" * 64  # four full 16-token blocks
    async with chains.running(c) as rt:
        for i in range(3):
            assert await rt.call(shared + str(i)) == [(shared + str(i)).upper()]
        stats = rt.stages[0].metrics.prefix
        assert stats is not None and stats.observed == 3
        assert stats.actual_cached_tokens == 96
        assert stats.predicted_tokens == 128  # the 2nd and 3rd went where the 1st did
        assert rt.stages[0].metrics.snapshot()["prefix_routing"]["requests"] == 3
        text = prometheus_text().decode()
        assert 'chains_stage_prefix_tokens_total{chain="c",kind="engine_cached",node="Llm"} 96.0' in text


def test_an_llm_like_node_with_replicas_routes_by_prefix_unless_told_otherwise() -> None:
    from runtime.metrics import ChainMetrics
    from runtime.placement import make_stages
    from runtime.routing import LeastBusy, PrefixAware

    def build(**options: Any) -> Any:
        @chains.node(**options)
        class Llm:
            def route_tokens(self, prompt: str) -> list[int]:
                return [1, 2, 3]

            async def __call__(self, prompt: str) -> str:
                return prompt

        @chains.chain
        def c(prompt: str):
            return Llm()(prompt)

        _, sets = make_stages("c", c.graph.nodes, ChainMetrics("c").stage)
        return sets[0].router

    assert isinstance(build(replicas=2), PrefixAware)
    assert isinstance(build(min_replicas=1, max_replicas=3), PrefixAware)
    assert isinstance(build(), LeastBusy)  # one replica: nothing to choose
    assert isinstance(build(replicas=2, router="least_busy"), LeastBusy)
