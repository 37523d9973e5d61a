"""Cancellation: leaving a session, cancelling a caller or closing a runtime ends
every task they started (the leak check in conftest.py fails a test that leaves
one), cancels in-flight streaming calls, waits for sync calls in threads, and
closes the replicas. Also checks that the leak check itself catches leaks."""

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import chains
from chains import Stream
from tests.fakes import Gate, MapFake, ModelFake, ProducerFake, StreamingFake, drain, steady, wait_until

CONFTEST = Path(__file__).with_name("conftest.py")


def test_the_leak_check_fails_a_test_that_leaks_a_task_or_a_busy_thread(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_leaky.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            import threading
            import time

            import anyio


            async def test_leaks_a_task():
                asyncio.get_running_loop().create_task(asyncio.sleep(30), name="orphan")


            async def test_leaks_a_busy_thread():
                started = threading.Event()

                def work():
                    started.set()
                    time.sleep(1.0)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: anyio.to_thread.run_sync(work, abandon_on_cancel=True))
                    while not started.is_set():
                        await anyio.sleep(0.001)
                    tg.cancel_scope.cancel()  # abandoned: the thread runs on


            async def test_clean():
                await asyncio.get_running_loop().create_task(asyncio.sleep(0))
                await anyio.to_thread.run_sync(time.sleep, 0)  # an idle pooled thread is no leak
            """
        )
    )
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "leaked task: orphan" in out, out
    assert "leaked busy thread: AnyIO worker thread" in out, out
    assert "ERROR test_leaky.py::test_leaks_a_task " in out, out
    assert "ERROR test_leaky.py::test_leaks_a_busy_thread " in out, out
    assert "ERROR test_leaky.py::test_clean" not in out, out


async def test_leaving_a_session_early_cancels_its_streaming_calls_and_tasks() -> None:
    gate = Gate()
    llm = StreamingFake(tokens=5, gate=gate)
    upper = MapFake()

    @chains.chain
    def c(prompts: Stream[str]):
        return llm.node(upper.node(prompts))

    async with chains.Runtime(c) as rt:
        async with rt.session() as sess:
            await sess.send("a")
            await sess.send("b")  # queued behind the call in flight
            first = await sess.receive()
            assert first.value == "A#0"
            # leave with the stream half done and an item queued, inputs still open
        assert llm.started == [(sess.id, "A")]
        assert llm.cancelled == [(sess.id, "A")]
        assert llm.completed == []
        assert rt.sessions == {}

        # the runtime goes on serving
        gate.open()
        assert await chains.call(c, ["z"]) == [f"Z#{i}" for i in range(5)]


async def test_cancelling_the_caller_cancels_everything_it_started() -> None:
    gate = Gate()
    llm = StreamingFake(tokens=3, gate=gate)

    @chains.chain
    def c(prompt: str):
        return llm.node(prompt)

    async with chains.Runtime(c) as rt:
        async with anyio.create_task_group() as tg:
            tg.start_soon(chains.call, c, "p")
            await wait_until(lambda: gate.waiting == 1, what="the stream to reach its gate")
            tg.cancel_scope.cancel()
        assert [p for _, p in llm.cancelled] == ["p"]
        assert rt.sessions == {}
        assert rt.metrics.sessions_active == 0


async def test_cancelling_a_call_without_a_runtime_ends_its_session_and_keeps_the_default_runtime() -> None:
    model = ModelFake(delay_of=lambda x: 10.0 if x == "slow" else 0.0)

    @chains.chain
    def c(x: str):
        return model.cls()(x)

    async with anyio.create_task_group() as tg:
        tg.start_soon(chains.call, c, "slow")
        await wait_until(lambda: sum(model.served.values()) == 1)
        tg.cancel_scope.cancel()
    # The call's session is gone; the model stays loaded for the next call, once.
    assert await chains.call(c, "fast") is not None
    assert model.count("init") == 1 and model.count("close") == 0
    from runtime.default import close_default_runtimes

    await close_default_runtimes()
    assert model.count("close") == 1


async def test_a_sync_call_in_a_thread_is_awaited_not_abandoned() -> None:
    slow = MapFake(sync=True, delay=0.05)

    @chains.chain
    def c(x: str):
        return slow.node(x)

    async with chains.Runtime(c):
        async with anyio.create_task_group() as tg:
            tg.start_soon(chains.call, c, "x")
            await wait_until(lambda: len(slow.calls) == 1)
            tg.cancel_scope.cancel()
        # the caller came back only when the thread was done (and the leak check
        # finds no busy worker thread)
        assert slow.flight.now == 0


async def test_closing_a_stream_early_cancels_its_session() -> None:
    llm = StreamingFake(tokens=50, delay=0.002)

    @chains.chain
    def c(prompt: str):
        return llm.node(prompt)

    async with chains.Runtime(c) as rt:
        async with contextlib.aclosing(chains.stream(c, "p")) as outs:
            async for out in outs:
                assert out.value == "p#0"
                break
        assert [p for _, p in llm.cancelled] == ["p"]
        assert rt.sessions == {}


async def test_runtime_exit_closes_every_replica_even_when_its_body_fails() -> None:
    model = ModelFake(replicas=3, delay_of=lambda x: 10.0 if x == "stuck" else 0.0)

    @chains.chain
    def c(x: str):
        return model.cls()(x)

    with pytest.raises(KeyError, match="boom"):
        async with chains.Runtime(c) as rt:
            assert model.count("init") == model.count("setup") == 3
            assert model.count("close") == 0
            async with rt.session() as sess:
                await sess.send("stuck")
                await wait_until(lambda: sum(model.served.values()) == 1)
                raise KeyError("boom")
    assert sorted(n for e, n in model.events if e == "close") == [0, 1, 2]


async def test_a_replica_that_fails_to_start_closes_the_ones_already_loaded() -> None:
    closed = []

    @chains.node(replicas=3)
    class Flaky:
        loaded = 0

        def __init__(self) -> None:
            Flaky.loaded += 1
            self.n = Flaky.loaded
            if self.n == 3:
                raise OSError("weights missing")

        def close(self) -> None:
            closed.append(self.n)

        async def __call__(self, x: str) -> str:
            return x

    @chains.chain
    def c(x: str):
        return Flaky()(x)

    with pytest.raises(chains.ModelError, match=r"Flaky.*weights missing"):
        async with chains.Runtime(c):
            pass  # pragma: no cover
    assert sorted(closed) == [1, 2]


async def test_a_session_whose_receiver_is_gone_does_not_block_the_runtime() -> None:
    """A client that stops reading and leaves: its full output edge must not wedge
    the stage for the other sessions, and leaving cancels its blocked tasks."""
    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str]):
        return upper.node(xs)

    async with chains.Runtime(c) as rt:
        async with rt.session() as stuck:
            with anyio.move_on_after(0.05):  # fills every edge of the session, then blocks
                for i in range(10_000):
                    await stuck.send(f"s/{i}")
            assert await chains.call(c, ["other"]) == ["OTHER"]
        async with rt.session() as sess:
            await sess.send("x")
            sess.close_inputs()
            assert [o.value for o in await drain(sess)] == ["X"]


async def test_runtime_exit_ends_a_stream_its_caller_left_open() -> None:
    llm = StreamingFake(tokens=1000, delay=0.001)

    @chains.chain
    def c(prompt: str):
        return llm.node(prompt)

    outs = chains.stream(c, "p")
    try:
        async with chains.Runtime(c) as rt:
            assert (await anext(outs)).value == "p#0"
            assert len(rt.sessions) == 1
        # the caller forgot `outs`; the runtime is gone, and so must its session be
        await wait_until(lambda: bool(llm.cancelled), timeout=0.5)
        assert rt.sessions == {}
    finally:
        await outs.aclose()


async def test_leaving_a_session_while_a_merge_is_backpressured_ends_cleanly() -> None:
    gate = Gate()
    slow = MapFake("slow", gate=gate)
    left, right = ProducerFake("left", per_item=500), ProducerFake("right", per_item=500)

    @chains.chain
    def c(xs: Stream[str], ys: Stream[str]):
        return slow.node(chains.merge(left.node(xs), right.node(ys)))

    async with chains.Runtime(c) as rt:
        try:
            async with rt.session() as sess:
                await sess.send("x", "xs")
                await sess.send("y", "ys")
                await wait_until(lambda: gate.waiting == 1)
                await steady(lambda: (left.accepted, right.accepted))  # the merge is blocked
        except BaseException as e:  # keep anyio's test runner alive for the report
            pytest.fail(f"leaving the session raised {e!r}")
        assert left.closed and right.closed
        assert rt.sessions == {}
