"""Fan-out and backpressure: every consumer of an output gets every item, and a
slow consumer (a node or the client) slows its producer instead of letting
queues grow: how far a producer gets ahead is bounded by the edge capacities."""

import anyio

import chains
from chains import Stream
from runtime.channels import DEFAULT_CAPACITY as CAP
from tests.fakes import BatchFake, Gate, MapFake, ProducerFake, drain, steady, wait_until

# --- fan-out ------------------------------------------------------------------------


async def test_fan_out_delivers_every_item_to_every_consumer_in_order() -> None:
    upper = MapFake("upper")
    left = MapFake("left", fn=lambda x: "L" + x)
    right = MapFake("right", fn=lambda x: "R" + x, delay=0.0005)

    @chains.node
    async def count(xs: Stream[str]):  # a stream node consuming the same output
        n = 0
        async for _ in xs:
            n += 1
        yield n

    @chains.chain
    def c(xs: Stream[str]):
        u = upper.node(xs)
        return {"u": u, "left": left.node(u), "right": right.node(u), "n": count(u), "raw": left.node(xs)}

    items = [f"s/{i}" for i in range(200)]
    out = await chains.call(c, items)
    up = [x.upper() for x in items]
    assert out["u"] == up
    assert out["left"] == ["L" + x for x in up]
    assert out["right"] == ["R" + x for x in up]
    assert out["n"] == [200]
    assert out["raw"] == ["L" + x for x in items]


async def test_fan_out_runs_at_the_pace_of_the_slowest_consumer() -> None:
    gate = Gate()
    fast = MapFake("fast")
    slow = MapFake("slow", gate=gate)
    producer = ProducerFake(per_item=1000)

    @chains.chain
    def c(xs: Stream[str]):
        p = producer.node(xs)
        return {"fast": fast.node(p), "slow": slow.node(p)}

    async with chains.Runtime(c) as rt, rt.session() as sess, anyio.create_task_group() as tg:
        received = {"fast": 0, "slow": 0}

        async def read() -> None:
            async for out in sess:
                received[out.name] += 1

        tg.start_soon(read)
        await sess.send("x")
        sess.close_inputs()
        await wait_until(lambda: gate.waiting == 1)
        await steady(lambda: (producer.accepted, len(fast.calls)))
        # the producer may be at most one edge ahead of the stalled consumer, and so
        # may the fast consumer: nothing grows without bound
        assert producer.accepted <= len(slow.calls) + CAP
        assert len(fast.calls) <= producer.offered
        gate.allow(100)
        await wait_until(lambda: gate.passed == 100)
        await steady(lambda: (producer.accepted, len(fast.calls)))
        assert producer.accepted <= len(slow.calls) + CAP
        gate.open()
        await wait_until(lambda: received["slow"] == 1000)
        await wait_until(lambda: received["fast"] == 1000)


# --- backpressure -------------------------------------------------------------------


async def test_a_stalled_node_blocks_its_producer() -> None:
    gate = Gate()
    producer = ProducerFake(per_item=2000)
    slow = MapFake("slow", gate=gate)

    @chains.chain
    def c(xs: Stream[str]):
        return slow.node(producer.node(xs))

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("x")
        sess.close_inputs()
        await wait_until(lambda: gate.waiting == 1)
        for step in (0, 1, 10, 100):
            gate.allow(step)
            await wait_until(lambda: gate.waiting == 1)
            await steady(lambda: producer.accepted)
            # what the producer handed on = what the consumer took + one full edge
            assert producer.accepted - len(slow.calls) <= CAP
            assert producer.accepted - len(slow.calls) >= CAP - 1  # it did run ahead that far
            assert producer.offered <= producer.accepted + 1
        gate.open()
        outs = await drain(sess)
    assert [o.value for o in outs] == [f"X.{j}" for j in range(2000)]


async def test_a_client_that_does_not_read_blocks_the_chain() -> None:
    producer = ProducerFake(per_item=5000)
    upper = MapFake("upper")

    @chains.chain
    def c(xs: Stream[str]):
        return upper.node(producer.node(xs))

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("x")
        sess.close_inputs()
        await steady(lambda: producer.accepted)  # stalled, not crawling on
        # the session's output edge, the edge into `upper` and the item in hand
        assert producer.accepted <= 2 * CAP + 2
        edges = [*sess._in_rx.values(), sess._out_rx]  # white box: what is held in memory
        assert all(len(e) <= CAP for e in edges)
        assert sum(len(e) for e in edges) >= CAP  # the output edge did fill up
        outs = await drain(sess)
    assert len(outs) == 5000
    assert outs[-1].value == "X.4999"


async def test_send_waits_while_the_chain_is_full() -> None:
    gate = Gate()
    slow = MapFake("slow", gate=gate)

    @chains.chain
    def c(xs: Stream[str]):
        return slow.node(xs)

    async with chains.Runtime(c) as rt, rt.session() as sess, anyio.create_task_group() as tg:
        sent = 0

        async def feed() -> None:
            nonlocal sent
            for i in range(1000):
                await sess.send(f"s/{i}")
                sent += 1
            sess.close_inputs()

        tg.start_soon(feed)
        await wait_until(lambda: gate.waiting == 1)
        await steady(lambda: sent)
        assert sent <= len(slow.calls) + CAP
        gate.open()
        outs = await drain(sess)
        assert [o.value for o in outs] == [f"S/{i}" for i in range(1000)]
        assert sent == 1000


async def test_a_stalled_consumer_after_a_batched_stage_bounds_the_batcher() -> None:
    gate = Gate()
    producer = ProducerFake(per_item=1000)
    emb = BatchFake(max_size=8, a=0.0005, k=0.0)
    slow = MapFake("slow", gate=gate)

    @chains.chain
    def c(xs: Stream[str]):
        return slow.node(emb.node(producer.node(xs)))

    async with chains.Runtime(c) as rt, rt.session() as sess:
        await sess.send("x")
        sess.close_inputs()
        await wait_until(lambda: gate.waiting == 1)
        await steady(lambda: (producer.accepted, sum(emb.sizes)))  # the batched stage stops too
        # producer -> [edge] -> batched -> [its pending window] -> [edge] -> slow
        assert producer.accepted <= len(slow.calls) + 2 * CAP + 8 + 2
        gate.open()
        outs = await drain(sess)
    assert [o.value for o in outs] == [f"X.{j}" for j in range(1000)]
