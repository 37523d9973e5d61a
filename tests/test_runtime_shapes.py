"""Every node shape runs, alone and together, with its options honoured."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

import chains
from chains import Stream, Text
from tests.fakes import Recorder, collect, counting_map, slow_llm, staggered_callers, thread_map


@chains.node
async def inc(x: int) -> int:
    return x + 1


@chains.chain
def one_map(x: int):
    return inc(x)


async def test_map_on_a_value_and_on_a_stream():
    assert await chains.call(one_map, 1) == 2

    @chains.chain
    def over_stream(xs: Stream[int]):
        return inc(xs)

    assert await chains.call(over_stream, [1, 2, 3]) == [2, 3, 4]


async def test_sync_map_runs_in_a_worker_thread():
    rec = Recorder()
    tm = thread_map(rec)

    @chains.chain
    def c(xs: Stream[int]):
        return tm(xs)

    assert await chains.call(c, [1, 2]) == [10, 20]
    assert threading.get_ident() not in rec.threads


async def test_batched_map_and_batch_sizes():
    calls = []

    @chains.node(batch=chains.Batch(max_size=3, max_wait_ms=1))
    def square(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        return [x * x for x in xs]

    @chains.chain
    def c(xs: Stream[int]):
        return square(xs)

    assert await chains.call(c, range(7)) == [x * x for x in range(7)]
    assert max(calls) <= 3 and sum(calls) == 7


def over_stream(node: Any) -> Any:
    """A chain of one batched class node over a stream of items."""

    @chains.chain
    def c(xs: Stream[int]):
        return node()(xs)

    return c


@chains.node(batch=chains.Batch(max_size=8, max_wait_ms=50))
class SlowSquare:
    """A batched model whose negative items carry their answer (as a transcript known
    before any pass): ``known_result`` answers them at once."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @staticmethod
    def known_result(x: int) -> int | None:
        return -x if x < 0 else None

    def __call__(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        threading.Event().wait(0.3)
        return [x * x for x in xs]


async def test_items_a_batched_node_already_knows_skip_the_batch():
    async with chains.Runtime(over_stream(SlowSquare)) as rt:
        (model,) = rt.models("SlowSquare")
        # "known" comes while "slow"'s batch is running
        got = await staggered_callers(rt, [(0.0, "slow", [3]), (0.05, "known", [-2, -5])])
    assert got == {"known": [2, 5], "slow": [9]}
    assert list(got) == ["known", "slow"]  # answered while the other session's batch ran
    assert model.batches == [[3]]  # never in a batch


@chains.node(batch=chains.Batch(max_size=8, max_wait_ms=50))
class Remembering:
    """A batched model that remembers what it computed (process-wide, as WhisperSTT
    does its clips' words): an item that came while its twin was in a pass is known
    by the time the next batch forms."""

    heard: dict[int, int] = {}

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @staticmethod
    def known_result(x: int) -> int | None:
        return Remembering.heard.get(x)

    def __call__(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        threading.Event().wait(0.2)
        Remembering.heard.update({x: x * x for x in xs})
        return [x * x for x in xs]


async def test_an_item_known_while_it_waited_joins_no_batch():
    Remembering.heard.clear()
    async with chains.Runtime(over_stream(Remembering)) as rt:
        (model,) = rt.models("Remembering")
        # the twin (the same item) queues while the first's pass is running
        got = await staggered_callers(rt, [(0.0, "first", [3]), (0.05, "twin", [3]), (0.06, "other", [5])])
    assert got == {"first": [9], "twin": [9], "other": [25]}
    assert model.batches == [[3], [5]]  # the twin was answered from what the first pass heard


@chains.node(batch=chains.Batch(max_size=8, max_wait_ms=50))
class Transcriber:
    """A batched model with best-effort items (odd ones, as interim snapshots) that
    ``batch_priority`` puts after the urgent ones, never in the same batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @staticmethod
    def batch_priority(x: int) -> int:
        return x % 2

    def __call__(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        threading.Event().wait(0.2)
        return [x * 10 for x in xs]


async def test_items_of_a_lower_priority_wait_for_their_own_batch():
    async with chains.Runtime(over_stream(Transcriber)) as rt:
        (model,) = rt.models("Transcriber")
        # while "first"'s batch runs: the interims queue first, then the finals
        got = await staggered_callers(
            rt, [(0.0, "first", [2]), (0.05, "interim", [7, 9]), (0.06, "final", [4]), (0.06, "final2", [6])]
        )
    assert got["final"] == [40] and got["final2"] == [60] and got["interim"] == [70, 90]
    assert model.batches[0] == [2]
    assert sorted(model.batches[1]) == [4, 6]  # the urgent ones first, alone
    assert sorted(x for b in model.batches[2:] for x in b) == [7, 9]


async def test_streaming_map_streams_outputs_in_order():
    rec = Recorder()
    llm = slow_llm(rec, tokens=3, delay=0.001)

    @chains.chain
    def c(prompts: Stream[str]):
        return llm(prompts)

    assert await chains.call(c, ["a", "b"]) == ["a:0", "a:1", "a:2", "b:0", "b:1", "b:2"]


async def test_stream_node_sees_the_whole_session():
    @chains.node
    async def running_sum(xs: Stream[int]) -> AsyncIterator[int]:
        total = 0
        async for x in xs:
            total += x
            yield total

    @chains.chain
    def c(xs: Stream[int]):
        return running_sum(xs)

    assert await chains.call(c, [1, 2, 3]) == [1, 3, 6]


async def test_fan_in_map_zips_streams_and_holds_values():
    @chains.node
    async def add(a: int, b: int) -> int:
        return a + b

    @chains.node
    async def scale(x: int, k: int) -> int:
        return x * k

    @chains.chain
    def zipped(xs: Stream[int], ys: Stream[int]):
        return add(xs, ys)

    @chains.chain
    def held(xs: Stream[int], k: int):
        return scale(xs, k)

    assert await chains.call(zipped, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    assert await chains.call(held, [1, 2, 3], 5) == [5, 10, 15]


async def test_merge_and_zip_builtins():
    @chains.chain
    def merged(xs: Stream[int], ys: Stream[int]):
        return chains.merge(xs, ys)

    @chains.chain
    def zipped(xs: Stream[int], ys: Stream[str]):
        return chains.zip(xs, ys)

    assert sorted(await chains.call(merged, [1, 3], [2, 4])) == [1, 2, 3, 4]
    assert await chains.call(zipped, [1, 2, 3], ["a", "b"]) == [(1, "a"), (2, "b")]


async def test_stream_node_with_a_value_parameter():
    @chains.node
    async def prefix(xs: Stream[str], p: str) -> AsyncIterator[str]:
        async for x in xs:
            yield p + x

    @chains.chain
    def c(xs: Stream[str], p: str):
        return prefix(xs, p)

    assert await chains.call(c, ["a", "b"], ">") == [">a", ">b"]


async def test_class_node_loads_once_per_replica_and_closes():
    events = []

    @chains.node(replicas=2)
    class Model:
        def __init__(self, scale: int):
            events.append(("init", threading.get_ident()))
            self.scale = scale

        async def setup(self) -> None:
            events.append(("setup", None))

        async def close(self) -> None:
            events.append(("close", None))

        async def __call__(self, x: int) -> int:
            return x * self.scale

    @chains.chain
    def c(xs: Stream[int]):
        return Model(3)(xs)

    async with chains.running(c):
        assert await chains.call(c, [1, 2]) == [3, 6]
        assert await chains.call(c, [4]) == [12]
        assert [e for e, _ in events] == ["init", "setup", "init", "setup"]
        assert all(t != threading.get_ident() for e, t in events if e == "init")  # loaded off the loop
    assert [e for e, _ in events].count("close") == 2


async def test_concurrency_limit_is_shared_across_sessions():
    rec = Recorder()
    m = counting_map(rec, delay=0.005, concurrency=3)

    @chains.chain
    def c(xs: Stream[int]):
        return m(xs)

    async with chains.running(c):
        await asyncio.gather(*(chains.call(c, [i]) for i in range(20)))
    assert rec.max_in_flight == 3


async def test_retries_then_success_and_timeout():
    attempts = []

    @chains.node(retries=2)
    async def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise RuntimeError("transient")
        return x

    @chains.node(timeout_ms=20)
    async def hangs(x: int) -> int:
        await asyncio.sleep(10)
        return x

    @chains.chain
    def c1(x: int):
        return flaky(x)

    @chains.chain
    def c2(x: int):
        return hangs(x)

    assert await chains.call(c1, 7) == 7 and len(attempts) == 3
    with pytest.raises(chains.NodeError, match="timed out after 20 ms") as e:
        await chains.call(c2, 1)
    assert e.value.node == "hangs" and e.value.code == "timeout"


async def test_map_returning_none_filters():
    @chains.node
    async def evens(x: int) -> int | None:
        return x if x % 2 == 0 else None

    @chains.chain
    def c(xs: Stream[int]):
        return evens(xs)

    assert await chains.call(c, range(6)) == [0, 2, 4]


async def test_context_state_is_per_session_and_node():
    @chains.node
    async def counter(t: Text) -> int:
        st = chains.context().state
        st["n"] = st.get("n", 0) + 1
        return st["n"]

    @chains.chain
    def c(ts: Stream[Text]):
        return counter(ts)

    async with chains.running(c):
        a, b = await asyncio.gather(
            chains.call(c, [Text(text="x")] * 3), chains.call(c, [Text(text="y")] * 2)
        )
    assert a == [1, 2, 3] and b == [1, 2]


async def test_outputs_as_dict_and_tuple_and_stream_api():
    @chains.chain
    def c(x: int):
        return inc(x), inc(inc(x))

    assert await chains.call(c, 1) == (2, 3)
    outs = [(o.name, o.value) async for o in chains.stream(c, 5)]
    assert sorted(outs) == [("0", 6), ("1", 7)]
    rec = Recorder()
    assert await chains.call(_collect_chain(rec), [1, 2]) == [[1, 2]]


def _collect_chain(rec: Recorder):
    @chains.chain
    def c(xs: Stream[int]):
        return collect(xs)

    return c
