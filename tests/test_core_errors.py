"""Error isolation and admission: a node failing on one session's item fails that
item for that session only (``chains.call`` raises ``NodeError`` naming the node,
``chains.stream`` yields an ``"error"`` output and goes on), while other sessions
complete; past its limits a runtime refuses new sessions with ``Overloaded``."""

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

import chains
from chains import ErrorEvent, Stream
from tests.fakes import BatchFake, Gate, MapFake, StreamingFake, drain, wait_until


def is_bad(x: str) -> bool:
    return x.endswith("/bad")


async def call_all(chain: chains.Chain, inputs: dict[str, object]) -> dict[str, object]:
    """One concurrent session per input; each result is the value or the exception."""
    results: dict[str, object] = {}

    async def one(key: str) -> None:
        try:
            results[key] = await chains.call(chain, inputs[key])
        except chains.NodeError as e:
            results[key] = e

    async with anyio.create_task_group() as tg:
        for key in inputs:
            tg.start_soon(one, key)
    return results


@pytest.mark.parametrize("sync", [False, True])
async def test_a_failing_item_fails_only_its_own_session(sync: bool) -> None:
    check = MapFake("check", sync=sync, fail_on=is_bad, delay=0.001)
    after = MapFake("after", fn=lambda x: x + "!")

    @chains.chain
    def c(xs: Stream[str]):
        return after.node(check.node(xs))

    inputs = {f"s{k}": [f"s{k}/0", f"s{k}/1"] for k in range(20)}
    inputs["s7"] = ["s7/0", "s7/bad", "s7/2"]
    async with chains.Runtime(c) as rt:
        results = await call_all(c, inputs)
        err = results.pop("s7")
        assert isinstance(err, chains.NodeError)
        assert err.node == "check" and err.code == "node_error"
        assert "node 'check' failed" in str(err) and "cannot take 's7/bad'" in str(err)
        assert results == {k: [x.upper() + "!" for x in v] for k, v in inputs.items() if k != "s7"}
        assert rt.metrics.stages["check"].errors == 1
        # the stage is healthy for the next session
        assert await chains.call(c, ["z/0"]) == ["Z/0!"]
    assert "S7/BAD" not in after.values


async def test_chains_call_raises_node_error_without_a_runtime_too() -> None:
    check = MapFake("check", fail_on=is_bad)

    @chains.chain
    def c(x: str):
        return check.node(x)

    with pytest.raises(chains.NodeError, match="node 'check' failed: ValueError: cannot take 'x/bad'"):
        await chains.call(c, "x/bad")


async def test_stream_yields_an_error_output_and_the_session_goes_on() -> None:
    check = MapFake("check", fail_on=is_bad)

    @chains.chain
    def c(xs: Stream[str]):
        return check.node(xs)

    async with contextlib.aclosing(chains.stream(c, ["a/0", "a/bad", "a/2"])) as outs:
        got = [(o.name, o.value) async for o in outs]
    assert got == [
        ("output", "A/0"),
        ("error", ErrorEvent(node="check", code="node_error", message="ValueError: cannot take 'a/bad'")),
        ("output", "A/2"),
    ]


async def test_a_streaming_map_failing_mid_stream_fails_that_call_only() -> None:
    @chains.node
    async def tokens(prompt: str) -> AsyncIterator[str]:
        for i in range(3):
            if prompt == "bad" and i == 1:
                raise RuntimeError("engine died")
            yield f"{prompt}#{i}"

    @chains.chain
    def c(prompts: Stream[str]):
        return tokens(prompts)

    async with contextlib.aclosing(chains.stream(c, ["a", "bad", "b"])) as outs:
        got = [(o.name, o.value) async for o in outs]
    assert got == [
        ("output", "a#0"),
        ("output", "a#1"),
        ("output", "a#2"),
        ("output", "bad#0"),
        ("error", ErrorEvent(node="tokens", code="node_error", message="RuntimeError: engine died")),
        ("output", "b#0"),
        ("output", "b#1"),
        ("output", "b#2"),
    ]


async def test_a_failing_stream_node_ends_its_own_session_with_an_error() -> None:
    @chains.node
    async def vad(xs: Stream[str]) -> AsyncIterator[str]:
        async for x in xs:
            if is_bad(x):
                raise RuntimeError("state corrupt")
            yield x

    @chains.chain
    def c(xs: Stream[str]):
        return vad(xs)

    async with chains.Runtime(c) as rt:
        results = await call_all(c, {"s1": ["s1/0", "s1/bad", "s1/2"], "s2": ["s2/0", "s2/1"]})
        assert results["s2"] == ["s2/0", "s2/1"]
        err = results["s1"]
        assert isinstance(err, chains.NodeError) and err.node == "vad"
        assert "RuntimeError: state corrupt" in str(err)
        async with rt.session() as sess:
            await sess.send("s3/bad")
            await sess.send("s3/1")  # the node is gone; the session still ends
            sess.close_inputs()
            outs = await drain(sess)
        assert [o.name for o in outs] == ["error"]


async def test_a_failing_batch_fails_its_items_and_the_stage_goes_on() -> None:
    emb = BatchFake("emb", fail_on=is_bad)

    @chains.chain
    def c(xs: Stream[str]):
        return emb.node(xs)

    async with chains.Runtime(c):
        with pytest.raises(chains.NodeError, match="node 'emb' failed: ValueError") as e:
            await chains.call(c, ["s1/bad"])
        assert e.value.node == "emb"
        assert await chains.call(c, ["s2/0", "s2/1"]) == ["S2/0", "S2/1"]


async def test_a_bad_item_in_a_shared_batch_fails_only_its_own_session() -> None:
    gate = Gate()
    hold = MapFake("hold", gate=gate, fn=lambda x: x)
    emb = BatchFake("emb", fail_on=is_bad, max_size=16, concurrency=1)

    @chains.chain
    def c(x: str):
        return emb.node(hold.node(x))

    inputs = {f"s{k}": f"s{k}/0" for k in range(8)}
    inputs["s3"] = "s3/bad"
    async with chains.Runtime(c):
        async with anyio.create_task_group() as tg:
            results: dict[str, object] = {}

            async def run() -> None:
                results.update(await call_all(c, inputs))

            tg.start_soon(run)
            await wait_until(lambda: gate.waiting == 8)
            gate.open()  # all eight reach the batcher together
        assert max(len(b) for b in emb.batches if "s3/bad" in b) > 1  # it did share a batch
        assert isinstance(results.pop("s3"), chains.NodeError)
        assert results == {k: v.upper() for k, v in inputs.items() if k != "s3"}


# --- admission ----------------------------------------------------------------------


async def test_max_sessions_refuses_with_overloaded() -> None:
    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str]):
        return upper.node(xs)

    async with chains.Runtime(c, max_sessions=2) as rt:
        async with rt.session() as a, rt.session() as b:
            with pytest.raises(chains.Overloaded, match="limit of 2 sessions"):
                async with rt.session():
                    pass  # pragma: no cover
            with pytest.raises(chains.Overloaded) as e:
                await chains.call(c, ["x"])
            assert e.value.code == "overloaded"
            assert rt.metrics.sessions_refused == 2
            assert rt.metrics.sessions_active == 2
            for s in (a, b):  # the admitted sessions are unaffected
                await s.send("ok")
                assert (await s.receive()).value == "OK"
        assert await chains.call(c, ["x"]) == ["X"]  # room again


async def test_max_queue_refuses_new_sessions_while_a_stage_is_backed_up() -> None:
    gate = Gate()
    slow = MapFake("slow", gate=gate, concurrency=1)

    @chains.chain
    def c(x: str):
        return slow.node(x)

    async with chains.Runtime(c, max_queue=3) as rt, anyio.create_task_group() as tg:
        for k in range(4):  # one in service, three waiting for the stage's one slot
            tg.start_soon(chains.call, c, f"s{k}/0")
        await wait_until(lambda: rt.stages[0].limiter.waiting == 3)
        with pytest.raises(chains.Overloaded, match="stage 'slow' has 3 items queued"):
            await chains.call(c, "late/0")
        gate.open()
    assert len(slow.calls) == 4


async def test_send_checks_the_input_type_and_name() -> None:
    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str]):
        return upper.node(xs)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        with pytest.raises(TypeError, match="input 'xs' wants str, got int"):
            await sess.send(3)
        with pytest.raises(KeyError, match="no input 'ys'"):
            await sess.send("x", "ys")
        with pytest.raises(IndexError):
            await sess.send("x", 1)
        await sess.send("fine", "xs")
        sess.close_inputs()
        assert [o.value for o in await drain(sess)] == ["FINE"]


async def test_a_streaming_fake_error_reaches_the_caller_as_node_error() -> None:
    llm = StreamingFake(tokens=2)
    check = MapFake("check", fail_on=lambda x: x == "p#1")

    @chains.chain
    def c(prompt: str):
        return check.node(llm.node(prompt))

    with pytest.raises(chains.NodeError) as e:
        await chains.call(c, "p")
    assert e.value.node == "check"


async def test_a_batched_node_returning_the_wrong_number_of_results_is_a_node_error() -> None:
    @chains.node(batch=chains.Batch(max_size=4))
    async def drops_one(xs: list[str]) -> list[str]:
        return xs[1:]

    @chains.chain
    def c(x: str):
        return drops_one(x)

    with pytest.raises(chains.NodeError, match="returned 0 results for a batch of 1") as e:
        await chains.call(c, "x")
    assert e.value.node == "drops_one"


async def test_calling_a_chain_with_the_wrong_number_of_inputs_is_a_type_error() -> None:
    upper = MapFake()

    @chains.chain
    def c(x: str):
        return upper.node(x)

    with pytest.raises(TypeError, match=r"takes 1 input\(s\) \(x\), got 2"):
        await chains.call(c, "a", "b")
    assert upper.calls == []
