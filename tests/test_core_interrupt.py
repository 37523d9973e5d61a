"""Turns and barge-in: ``sess.interrupt()`` (or a node yielding
``chains.Interrupt``) starts a new turn: queued items of the old turn are dropped
at every stage, in-flight streaming calls are cancelled, and no output of the old
turn reaches the receiver afterwards; the new turn then flows normally."""

import contextlib
from collections.abc import AsyncIterator

import chains
from chains import Stream
from tests.fakes import (
    BatchFake,
    Gate,
    InterrupterFake,
    MapFake,
    ProducerFake,
    StreamingFake,
    drain,
    wait_until,
)


async def test_interrupt_drops_queued_old_turn_items_at_every_stage() -> None:
    gate_a, gate_b = Gate(), Gate()
    a = MapFake("a", gate=gate_a, fn=lambda x: x + "a")
    b = MapFake("b", gate=gate_b, fn=lambda x: x + "b")

    @chains.chain
    def c(xs: Stream[str]):
        return b.node(a.node(xs))

    async with chains.Runtime(c) as rt, rt.session() as sess:
        for i in range(10):
            await sess.send(f"old/{i}")
        gate_a.allow(5)  # a hands five items on; b holds the first, four queue for b
        await wait_until(lambda: gate_a.passed == 5 and gate_a.waiting == 1 and gate_b.waiting == 1)
        assert a.values == [f"old/{i}" for i in range(6)]  # old/5 in a; old/6..9 queued for a
        assert b.values == ["old/0a"]
        sess.interrupt()
        assert sess.epoch == 1
        gate_a.open()
        gate_b.open()
        await sess.send("new/0")
        sess.close_inputs()
        outs = await drain(sess)
    assert [(o.name, o.value, o.epoch) for o in outs] == [("output", "new/0ab", 1)]
    assert a.values == [f"old/{i}" for i in range(6)] + ["new/0"]  # old/6..9 never ran
    assert b.values == ["old/0a", "new/0a"]  # old/1a..old/5a never ran
    assert rt.metrics.stages["a"].stale == 4
    assert rt.metrics.stages["b"].stale == 5


async def stream_node_barge_in() -> tuple[list[chains.Output], list[str], int]:
    """Five old-turn items queue in front of a stream node busy with the first; an
    interrupt; one new-turn item. Returns the outputs, what the node saw, the stale count."""
    gate = Gate()
    seen: list[str] = []

    @chains.node
    async def speak(xs: Stream[str]) -> AsyncIterator[str]:
        async for x in xs:
            seen.append(x)
            await gate.wait()
            yield x + "!"

    upper = MapFake()

    @chains.chain
    def c(xs: Stream[str]):
        return speak(upper.node(xs))

    async with chains.Runtime(c) as rt, rt.session() as sess:
        for i in range(5):
            await sess.send(f"old/{i}")
        await wait_until(lambda: gate.waiting == 1 and len(upper.calls) == 5)
        sess.interrupt()
        gate.open()
        await sess.send("new/0")
        sess.close_inputs()
        outs = await drain(sess)
    return outs, seen, rt.metrics.stages["speak"].stale


async def test_interrupt_drops_old_turn_items_queued_for_a_stream_node() -> None:
    outs, seen, stale = await stream_node_barge_in()
    assert seen == ["OLD/0", "NEW/0"]  # OLD/1..4 were dropped in front of the node
    assert stale == 4
    assert ("NEW/0!", 1) in [(o.value, o.epoch) for o in outs]


async def test_a_stream_node_output_for_an_old_turn_item_is_dropped() -> None:
    outs, _, _ = await stream_node_barge_in()
    assert [(o.value, o.epoch) for o in outs] == [("NEW/0!", 1)]


async def test_interrupt_cancels_an_in_flight_streaming_call() -> None:
    gate = Gate()
    llm = StreamingFake(tokens=5, gate=gate)

    @chains.chain
    def c(prompts: Stream[str]):
        return llm.node(prompts)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("old")
        first = await sess.receive()
        assert (first.value, first.epoch) == ("old#0", 0)
        assert gate.waiting == 1
        sess.interrupt()
        await wait_until(lambda: llm.cancelled == [(sess.id, "old")], what="the stream to be cancelled")
        gate.open()
        await sess.send("new")
        sess.close_inputs()
        outs = await drain(sess)
    assert [(o.value, o.epoch) for o in outs] == [(f"new#{i}", 1) for i in range(5)]
    assert llm.emitted[:1] == ["old#0"] and "old#1" not in llm.emitted
    assert llm.completed == [(sess.id, "new")]


async def test_no_buffered_old_turn_output_reaches_the_receiver() -> None:
    producer = ProducerFake(per_item=40)
    llm = StreamingFake(tokens=2)

    @chains.chain
    def c(xs: Stream[str]):
        return {"items": producer.node(xs), "tokens": llm.node(xs)}

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("old")
        await wait_until(lambda: producer.accepted == 40 and len(llm.completed) == 1)
        # 42 outputs of the old turn sit in the session's output edge, unread
        sess.interrupt()
        await sess.send("new")
        sess.close_inputs()
        outs = await drain(sess)
    assert {o.epoch for o in outs} == {1}
    assert sorted(o.value for o in outs if o.name == "tokens") == ["new#0", "new#1"]
    assert [o.value for o in outs if o.name == "items"] == [f"new.{j}" for j in range(40)]


async def test_a_node_yielding_interrupt_starts_a_new_turn() -> None:
    gate = Gate()
    vad = InterrupterFake(trigger="barge")
    llm = StreamingFake(tokens=3, gate=gate)
    queued = MapFake("queued", fn=lambda x: x)

    @chains.chain
    def c(audio: Stream[str]):
        return llm.node(queued.node(vad.node(audio)))

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("hello")
        first = await sess.receive()
        assert (first.value, first.epoch) == ("hello#0", 0)
        await sess.send("more")  # queued behind the streaming call
        await wait_until(lambda: queued.values == ["hello", "more"])
        await sess.send("barge")
        event = await sess.receive()
        assert (event.name, event.value) == ("events", chains.Interrupt(reason="barge"))
        assert sess.epoch == 1
        await wait_until(lambda: llm.cancelled == [(sess.id, "hello")])
        gate.open()
        await sess.send("again")
        sess.close_inputs()
        outs = await drain(sess)
    assert [(o.name, o.value, o.epoch) for o in outs] == [("output", f"again#{i}", 1) for i in range(3)]
    assert [p for _, p in llm.started] == ["hello", "again"]  # "more" was dropped, never called
    assert vad.seen == ["hello", "more", "barge", "again"]
    assert rt.metrics.stages["llm"].stale == 1  # "more", dropped in front of the llm


async def test_a_streaming_map_yielding_interrupt_ends_its_own_turn() -> None:
    @chains.node
    async def agent(x: str):
        yield x + "#0"
        if x == "stop":
            yield chains.Interrupt(reason="agent")
            yield x + "#unreachable"
        else:
            yield x + "#1"

    @chains.chain
    def c(xs: Stream[str]):
        return agent(xs)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("stop")
        event = await sess.receive()
        # "stop#0" was still buffered when the turn ended: flushed with its turn
        assert (event.name, event.value, event.epoch) == ("events", chains.Interrupt(reason="agent"), 1)
        await sess.send("go")
        sess.close_inputs()
        outs = await drain(sess)
    assert [o.value for o in outs] == ["go#0", "go#1"]
    assert rt.metrics.stages["agent"].stale == 1  # "stop#unreachable" was never handed on


async def test_chains_stream_reports_the_interrupt_event() -> None:
    vad = InterrupterFake()
    got: list[tuple[str, object, int]] = []

    async def audio() -> AsyncIterator[str]:
        yield "a"
        await wait_until(lambda: len(got) == 1)  # the client heard "a" before barging in
        yield "barge"
        yield "b"

    @chains.chain
    def c(audio: Stream[str]):
        return vad.node(audio)

    async with contextlib.aclosing(chains.stream(c, audio())) as outs:
        async for o in outs:
            got.append((o.name, o.value, o.epoch))
    assert got == [
        ("output", "a", 0),
        ("events", chains.Interrupt(reason="barge"), 1),
        ("output", "b", 1),
    ]


async def test_interrupt_drops_old_turn_items_waiting_in_the_batcher() -> None:
    emb = BatchFake("emb", a=0.03, k=0.0, max_size=4, concurrency=1)

    @chains.chain
    def c(xs: Stream[str]):
        return emb.node(xs)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("old/0")
        await wait_until(lambda: emb.flight.now == 1)  # a batch runs: the rest must wait
        for i in range(1, 4):
            await sess.send(f"old/{i}")
        await wait_until(lambda: len(rt.stages[0].batcher or []) == 3)
        sess.interrupt()
        await sess.send("new/0")
        sess.close_inputs()
        outs = await drain(sess)
    assert [(o.value, o.epoch) for o in outs] == [("NEW/0", 1)]
    assert ["old/1", "old/2", "old/3"] not in emb.batches


async def test_interrupt_between_batches_keeps_the_new_turn() -> None:
    """Old-turn items already batched are served but their outputs are dropped."""
    emb = BatchFake("emb", a=0.02, k=0.0, max_size=4)

    @chains.chain
    def c(xs: Stream[str]):
        return emb.node(xs)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("old/0")
        await wait_until(lambda: emb.flight.now == 1)
        sess.interrupt()
        await sess.send("new/0")
        sess.close_inputs()
        outs = await drain(sess)
    assert [(o.value, o.epoch) for o in outs] == [("NEW/0", 1)]
    assert emb.batches == [["old/0"], ["new/0"]]
