"""Per-shape runners: the one task a session runs per node.

A runner takes its node's input edges, hands each item to the node's stage
(``Stage.serve`` / ``serve_stream`` / ``submit``: the one place an item is served)
and sends what comes back to the node's output edges. It sees its session only
through ``SessionPort``: the turn epoch, the control and error paths, and the set of
cancel scopes an interrupt cancels.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any, Protocol

import anyio
from anyio import EndOfStream, WouldBlock

from chains.graph import GraphNode
from chains.messages import Control
from chains.streams import Stream
from runtime.batcher import StaleItem
from runtime.channels import edge, fan_out
from runtime.envelope import FOLLOWER_GRACE_S, Envelope, Request, deadline_at
from runtime.stage import Stage

_mono = time.monotonic


class SessionPort(Protocol):
    """What a runner needs of its session."""

    id: str
    epoch: int
    closed: bool
    inflight: set[anyio.CancelScope]

    async def control(self, ev: Control, env: Envelope) -> None: ...

    async def fail(self, stage: Stage, exc: BaseException) -> None: ...


class _Live:
    """``alive()`` for one item: its turn is still the session's."""

    __slots__ = ("epoch", "sess")

    def __init__(self, sess: SessionPort, epoch: int):
        self.sess = sess
        self.epoch = epoch

    def __call__(self) -> bool:
        return not self.sess.closed and self.sess.epoch == self.epoch


async def next_live(sess: SessionPort, rx: Any, stage: Stage, drop_stale: bool = True) -> Envelope | None:
    """The next item of this turn from ``rx`` (None at end of stream); items of an
    interrupted turn are dropped and counted."""
    while True:
        try:
            env = rx.receive_nowait()
        except WouldBlock:
            try:
                env = await rx.receive()
            except EndOfStream:
                return None
        except EndOfStream:
            return None
        if not drop_stale or env.epoch == sess.epoch:
            return env
        stage.metrics.stale += 1


async def emit(sess: SessionPort, result: Any, meta: Envelope, senders: list[Any]) -> None:
    """Send a node's result on: nothing for None (a filter), a control event to the
    session, anything else to every consumer in ``meta``'s provenance."""
    if result is None:
        return
    if isinstance(result, Control):
        await sess.control(result, meta)
        return
    out = Envelope(result, meta.seq, meta.origin, meta.deadline, meta.epoch)
    for tx in senders:
        try:
            tx.send_nowait(out)
        except WouldBlock:
            await fan_out((tx,), out)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


async def run_map1(sess: SessionPort, stage: Stage, rx: Any, senders: list[Any], streaming: bool) -> None:
    """A map with one input: each item served on the stage as it comes."""
    m = stage.metrics
    node_budget = stage.budget_s
    downstream = stage.downstream_s
    sid = sess.id
    rs = stage.replicas
    serve = stage.serve
    live = _Live(sess, sess.epoch)  # one per turn, not one per item
    req = Request((), sid, sess.epoch, float("inf"))
    learns = rs.router_learns
    turn = -1  # the epoch of the last item served: the next of the same turn is a follower
    # The hot path of every pass-through hop: next_live's receive and the epoch check
    # are inlined here on purpose (a call per item shows in benchmarks/overhead.py).
    while True:
        try:
            env = rx.receive_nowait()
        except WouldBlock:
            try:
                env = await rx.receive()
            except EndOfStream:
                return
        except EndOfStream:
            return
        if env.epoch != sess.epoch:
            m.stale += 1
            continue
        args = (env.payload,)
        now = _mono() if node_budget is not None else 0.0  # the clock only where a budget needs it
        deadline = deadline_at(env.deadline, downstream, node_budget, now)
        grace = FOLLOWER_GRACE_S if env.epoch == turn else 0.0
        turn = env.epoch
        if streaming:
            req_s = Request(args, sid, env.epoch, deadline, stage.route(sid, args), grace)
            await stream_call(sess, stage, req_s, env, senders)
            continue
        if live.epoch != env.epoch:  # a new turn: the request's epoch follows
            live = _Live(sess, env.epoch)
            req.epoch = env.epoch
        # One request per task, refilled per item: serve() is awaited before the next.
        req.args = args
        req.deadline = deadline
        req.grace_s = grace
        req.route = stage.route(sid, args) if learns or len(rs.ready) > 1 else None
        try:
            result = await serve(req, live)
        except StaleItem:
            continue
        except Exception as e:
            await sess.fail(stage, e)
            continue
        if result is None:
            continue  # a map returning None filters the item out
        if isinstance(result, Control):
            await sess.control(result, env)
            continue
        # emit(), inlined: the hot path
        out = Envelope(result, env.seq, env.origin, env.deadline, env.epoch)
        for tx in senders:
            try:
                tx.send_nowait(out)
            except WouldBlock:
                await fan_out((tx,), out)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass


async def stream_call(
    sess: SessionPort,
    stage: Stage,
    req: Request,
    meta: Envelope,
    senders: list[Any],
) -> None:
    """One streaming-map call; an interrupt of its turn cancels it."""
    with anyio.CancelScope() as scope:
        sess.inflight.add(scope)
        try:
            agen = stage.serve_stream(req)
            async with contextlib.aclosing(agen):
                async for out in agen:
                    if meta.epoch != sess.epoch:
                        stage.metrics.stale += 1
                        return
                    if isinstance(out, Control):
                        await sess.control(out, meta)
                        continue
                    await fan_out(senders, Envelope(out, meta.seq, meta.origin, meta.deadline, meta.epoch))
        except Exception as e:
            await sess.fail(stage, e)
        finally:
            sess.inflight.discard(scope)


async def run_map_n(
    sess: SessionPort, stage: Stage, node: GraphNode, rxs: list[Any], senders: list[Any], streaming: bool
) -> None:
    """A map with several inputs: streams are zipped, single values are held.

    When every input is a single value the node is called exactly once."""
    held: dict[int, Envelope] = {}
    once = not any(h.stream for h in node.inputs)
    turn = -1  # the epoch of the last call: the next of the same turn is a follower
    while True:
        args = []
        last: Envelope | None = None
        for p, rx in enumerate(rxs):
            got = held.get(p)
            if got is None:
                got = await next_live(sess, rx, stage)
                if got is None:
                    return
                if not node.inputs[p].stream:
                    held[p] = got
            env = got
            args.append(env.payload)
            if last is None or env.origin >= last.origin:
                last = env
        assert last is not None
        meta = Envelope(None, last.seq, last.origin, last.deadline, sess.epoch)
        call_args = tuple(args)
        req = Request(
            call_args,
            sess.id,
            meta.epoch,
            stage.deadline(meta.deadline, _mono()),
            stage.route(sess.id, call_args),
            FOLLOWER_GRACE_S if meta.epoch == turn else 0.0,
        )
        turn = meta.epoch
        if streaming:
            await stream_call(sess, stage, req, meta, senders)
        else:
            try:
                result = await stage.serve(req, _Live(sess, meta.epoch))
            except StaleItem:
                result = None
            except Exception as e:
                await sess.fail(stage, e)
                result = None
            await emit(sess, result, meta, senders)
        if once:
            return


async def run_batched(sess: SessionPort, stage: Stage, rx: Any, senders: list[Any]) -> None:
    """A batched map: items go to the stage's batcher as they come (so they can batch
    with other sessions'), results go on in order as their batches finish. A stage
    whose replicas run elsewhere has no batcher here (batches form where the replicas
    are): its items go one by one, as a map's."""
    if stage.batcher is None:
        await run_map1(sess, stage, rx, senders, False)
        return
    window = stage.batcher.max_size
    pend_tx, pend_rx = edge(window)

    async def results() -> None:
        try:
            async for env, fut in pend_rx:
                try:
                    result = await fut
                except StaleItem:
                    continue  # counted by the batcher when it dropped it
                except Exception as e:
                    await sess.fail(stage, e)
                    continue
                if env.epoch != sess.epoch:
                    stage.metrics.stale += 1
                    continue
                await emit(sess, result, env, senders)
        finally:
            pend_rx.close_receiver()

    async with anyio.create_task_group() as tg:
        tg.start_soon(results)
        try:
            while True:
                env = await next_live(sess, rx, stage)
                if env is None:
                    break
                fut = stage.submit(env.payload, stage.deadline(env.deadline, _mono()), _Live(sess, env.epoch))
                await pend_tx.send((env, fut))
        finally:
            pend_tx.close()


class _Tracker:
    """The newest input item a stream node has taken: its outputs inherit its provenance."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: Envelope | None = None


class _ChannelStream(Stream[Any]):
    """What a stream node iterates: one input edge, unwrapped."""

    def __init__(self, rx: Any, sess: SessionPort, stage: Stage, tracker: _Tracker, drop_stale: bool):
        self._rx = rx
        self._s = sess
        self._stage = stage
        self._t = tracker
        self._drop = drop_stale

    async def __anext__(self) -> Any:
        env = await next_live(self._s, self._rx, self._stage, drop_stale=self._drop)
        if env is None:
            raise StopAsyncIteration
        last = self._t.last
        if last is None or env.origin >= last.origin:
            self._t.last = env
        return env.payload


async def run_stream_node(
    sess: SessionPort, stage: Stage, node: GraphNode, rxs: list[Any], senders: list[Any]
) -> None:
    """A stream node: one instance call per session, iterating its input streams."""
    tracker = _Tracker()
    args: list[Any] = []
    for p, (param, rx) in enumerate(zip(node.spec.params, rxs, strict=True)):
        from_input = node.inputs[p].source < 0
        if param.stream:
            args.append(_ChannelStream(rx, sess, stage, tracker, drop_stale=not from_input))
        else:
            env = await next_live(sess, rx, stage)
            if env is None:
                return
            tracker.last = env
            args.append(env.payload)
    seq = itertools.count()
    # Outputs belong to the turn of what caused them; a node fed only by chain
    # inputs (the user's audio: never stale) speaks for the session's current turn.
    follows_inputs = any(
        p.stream and h.source >= 0 for p, h in zip(node.spec.params, node.inputs, strict=True)
    )
    try:
        agen = stage.serve_session(sess.id, tuple(args))
        async with contextlib.aclosing(agen):
            async for out in agen:
                last = tracker.last
                origin = last.origin if last else _mono()
                deadline = last.deadline if last else float("inf")
                epoch = last.epoch if (follows_inputs and last is not None) else sess.epoch
                env = Envelope(out, next(seq), origin, deadline, epoch)
                if isinstance(out, Control):
                    await sess.control(out, env)
                    continue
                await fan_out(senders, env)
    except Exception as e:
        await sess.fail(stage, e)  # counted by the stage
