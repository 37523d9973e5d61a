"""A session: one client's run of a chain.

It owns one bounded channel per edge and one task per node (a per-session runner
that feeds the node's shared stage), all inside a task group: closing the session
cancels everything it started and nothing outlives it. It also owns the turn
epoch: an ``Interrupt`` bumps it, queued items of the old epoch are dropped at
every stage, in-flight streaming calls are cancelled, and buffered output of the
old turn is flushed before it reaches the client.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio
from anyio import EndOfStream, WouldBlock

from chains.context import NodeContext, context, set_context
from chains.errors import NodeError
from chains.graph import Graph, GraphNode
from chains.messages import Control, ErrorEvent, Interrupt
from chains.spec import Shape
from chains.streams import Stream
from runtime.batcher import StaleItem
from runtime.channels import Tagged, close_all, edge, fan_out
from runtime.envelope import Envelope
from runtime.logs import get_logger
from runtime.stage import Shed, Stage

_ids = itertools.count(1)

ERROR = "error"
EVENTS = "events"


class Output(NamedTuple):
    """One item a session produced: which output, the value, and its provenance."""

    name: str
    value: Any
    origin: float
    epoch: int


class _Tracker:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: Envelope | None = None


class _ChannelStream(Stream[Any]):
    """What a stream node iterates: one input edge, unwrapped."""

    def __init__(self, rx: Any, session: Session, stage: Stage, tracker: _Tracker, drop_stale: bool):
        self._rx = rx
        self._s = session
        self._stage = stage
        self._t = tracker
        self._drop = drop_stale

    async def __anext__(self) -> Any:
        env = await self._s._next_live(self._rx, self._stage, drop_stale=self._drop)
        if env is None:
            raise StopAsyncIteration
        last = self._t.last
        if last is None or env.origin >= last.origin:
            self._t.last = env
        return env.payload


class Session:
    def __init__(
        self,
        graph: Graph,
        stages: list[Stage],
        *,
        budget_s: float | None,
        on_close: Callable[[Session], None] | None = None,
        metrics: Any = None,
        meta: dict[str, Any] | None = None,
    ):
        self.id = f"s{next(_ids)}"
        self.graph = graph
        self.stages = stages
        self.budget_s = budget_s
        self.epoch = 0
        self.closed = False
        self.meta: dict[str, Any] = dict(meta or {})  # session settings every node can read
        self.log = get_logger(chain=graph.name, session=self.id)
        self._metrics = metrics
        self._on_close = on_close
        self._seq = itertools.count()
        self._inflight: set[anyio.CancelScope] = set()
        self._state: dict[str, dict[str, Any]] = {}
        self._first_output_epochs: set[int] = set()
        self._scope: anyio.CancelScope | None = None
        self._wire()

    # --- wiring ---------------------------------------------------------------------
    def _wire(self) -> None:
        g = self.graph
        self._out_tx, self._out_rx = edge()
        self._in_rx: dict[tuple[int, int], Any] = {}
        self._node_senders: list[list[Any]] = [[] for _ in g.nodes]
        self.input_senders: list[list[Any]] = [[] for _ in g.inputs]

        def senders_of(source: int) -> list[Any]:
            return self.input_senders[-source - 1] if source < 0 else self._node_senders[source]

        for i, consumers in enumerate(g.input_consumers):
            for n, p in consumers:
                tx, rx = edge()
                self.input_senders[i].append(tx)
                self._in_rx[(n, p)] = rx
        for node in g.nodes:
            for n, p in node.consumers:
                tx, rx = edge()
                self._node_senders[node.index].append(tx)
                self._in_rx[(n, p)] = rx
        for name, h in g.outputs.items():
            senders_of(h.source).append(Tagged(self._out_tx.clone(), name))
        self._side_tx = self._out_tx.clone()  # errors and control events
        self._out_tx.close()

    # --- running --------------------------------------------------------------------
    async def run(self) -> None:
        """Run every node's per-session task until the inputs are exhausted."""
        try:
            async with anyio.create_task_group() as tg:
                for node in self.graph.nodes:
                    tg.start_soon(self._run_node, node, name=f"{self.id}:{node.name}")
        finally:
            self._side_tx.close()

    async def _run_node(self, node: GraphNode) -> None:
        stage = self.stages[node.index]
        rxs = [self._in_rx[(node.index, p)] for p in range(len(node.inputs))]
        senders = self._node_senders[node.index]
        set_context(self._context(node))
        try:
            shape = node.spec.shape
            if shape is Shape.STREAM:
                await self._run_stream_node(stage, node, rxs, senders)
            elif shape is Shape.BATCH:
                await self._run_batched(stage, rxs[0], senders)
            elif len(rxs) == 1:
                await self._run_map1(stage, rxs[0], senders, shape is Shape.STREAM_MAP)
            else:
                await self._run_map_n(stage, node, rxs, senders, shape is Shape.STREAM_MAP)
        finally:
            close_all(senders)
            for rx in rxs:
                rx.close_receiver()

    def _context(self, node: GraphNode) -> NodeContext:
        return NodeContext(
            self.id, node.name, self._state.setdefault(node.name, {}), lambda: self.epoch, self.meta
        )

    # --- per-shape runners ----------------------------------------------------------
    async def _run_map1(self, stage: Stage, rx: Any, senders: list[Any], streaming: bool) -> None:
        ctx = context()  # set by _run_node for this task
        m = stage.metrics
        lim = stage.limiter
        replicas = stage.replicas
        fast = stage.spec.is_async and stage.timeout_s is None and stage.retries == 0 and not streaming
        shed_late = stage.shed_late
        node_budget = stage.budget_s
        mono = time.monotonic
        # The hot path of every pass-through hop: _next_live's receive and the epoch
        # check are inlined here on purpose (a call per item shows in benchmarks/overhead.py).
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
            if env.epoch != self.epoch:
                m.stale += 1
                continue
            t0 = mono()
            deadline = env.deadline - stage.downstream_s
            if node_budget is not None and t0 + node_budget < deadline:
                deadline = t0 + node_budget
            if not lim.try_acquire():
                m.queued += 1
                try:
                    await lim.acquire(deadline)
                finally:
                    m.queued -= 1
                t1 = mono()
                m.queue_wait.observe(t1 - t0)
                t0 = t1
                if env.epoch != self.epoch:
                    lim.release()
                    m.stale += 1
                    continue
            if shed_late and t0 + stage.expected_service_s() > deadline:
                lim.release()
                m.shed += 1
                await self._fail(stage, Shed(stage.name, t0 + stage.expected_service_s() - deadline))
                continue
            slot = replicas.acquire()
            inst = replicas.instances[slot]
            ctx.deadline = deadline
            if streaming:
                try:
                    await self._stream_call(stage, inst, (env.payload,), env, senders)
                finally:
                    replicas.release(slot)
                    lim.release()
                t1 = mono()
                m.service.observe(t1 - t0)
                m.items += 1
                if t1 > deadline:
                    m.late += 1
                continue
            try:
                result = await inst(env.payload) if fast else await stage.call(inst, (env.payload,))
            except Exception as e:
                replicas.release(slot)
                lim.release()
                await self._fail(stage, e)
                continue
            replicas.release(slot)
            lim.release()
            t1 = mono()
            m.service.observe(t1 - t0)
            m.items += 1
            m.consecutive_errors = 0
            if t1 > deadline:
                m.late += 1
            if result is None:
                continue  # a map returning None filters the item out
            if isinstance(result, Control):
                await self._control(result, env)
                continue
            out = Envelope(result, env.seq, env.origin, env.deadline, env.epoch)
            for tx in senders:
                try:
                    tx.send_nowait(out)
                except WouldBlock:
                    await fan_out((tx,), out)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass

    async def _stream_call(
        self, stage: Stage, inst: Any, args: tuple[Any, ...], meta: Envelope, senders: list[Any]
    ) -> None:
        """One streaming-map call; cancelled by an interrupt of its turn."""
        with anyio.CancelScope() as scope:
            self._inflight.add(scope)
            t0 = time.monotonic()
            first = True
            try:
                agen = stage.open_stream(inst, args)
                async with contextlib.aclosing(agen):
                    async for out in agen:
                        if first:
                            stage.metrics.first_output.observe(time.monotonic() - t0)
                            first = False
                        if meta.epoch != self.epoch:
                            stage.metrics.stale += 1
                            return
                        if isinstance(out, Control):
                            await self._control(out, meta)
                            continue
                        await fan_out(
                            senders, Envelope(out, meta.seq, meta.origin, meta.deadline, meta.epoch)
                        )
            except Exception as e:
                await self._fail(stage, e)
            finally:
                self._inflight.discard(scope)

    async def _run_map_n(
        self, stage: Stage, node: GraphNode, rxs: list[Any], senders: list[Any], streaming: bool
    ) -> None:
        """A map with several inputs: streams are zipped, single values are held.

        When every input is a single value the node is called exactly once."""
        held: dict[int, Envelope] = {}
        once = not any(h.stream for h in node.inputs)
        while True:
            args = []
            last: Envelope | None = None
            for p, rx in enumerate(rxs):
                if p in held:
                    env = held[p]
                else:
                    env = await self._next_live(rx, stage)
                    if env is None:
                        return
                    if not node.inputs[p].stream:
                        held[p] = env
                args.append(env.payload)
                if last is None or env.origin >= last.origin:
                    last = env
            assert last is not None
            meta = Envelope(None, last.seq, last.origin, last.deadline, self.epoch)
            await self._call_once(stage, tuple(args), meta, senders, streaming)
            if once:
                return

    async def _call_once(
        self, stage: Stage, args: tuple[Any, ...], meta: Envelope, senders: list[Any], streaming: bool
    ) -> None:
        deadline = stage.deadline(meta.deadline, time.monotonic())
        context().deadline = deadline
        await stage.limiter.acquire(deadline)
        t0 = time.monotonic()
        slot = stage.replicas.acquire()
        result: Any = None
        try:
            inst = stage.replicas.instances[slot]
            if streaming:
                await self._stream_call(stage, inst, args, meta, senders)
                return
            try:
                result = await stage.call(inst, args)
            except Exception as e:
                await self._fail(stage, e)
                return
        finally:
            stage.replicas.release(slot)
            stage.limiter.release()
            stage.metrics.service.observe(time.monotonic() - t0)
            stage.metrics.items += 1
        if result is None:
            return
        if isinstance(result, Control):
            await self._control(result, meta)
            return
        await fan_out(senders, Envelope(result, meta.seq, meta.origin, meta.deadline, meta.epoch))

    async def _next_live(self, rx: Any, stage: Stage, drop_stale: bool = True) -> Envelope | None:
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
            if not drop_stale or env.epoch == self.epoch:
                return env
            stage.metrics.stale += 1

    async def _run_batched(self, stage: Stage, rx: Any, senders: list[Any]) -> None:
        batcher = stage.batcher
        assert batcher is not None
        window = batcher.max_size
        pend_tx, pend_rx = edge(window)

        async def emit() -> None:
            try:
                async for env, fut in pend_rx:
                    try:
                        result = await fut
                    except StaleItem:
                        continue  # counted by the batcher when it dropped it
                    except Exception as e:
                        await self._fail(stage, e)
                        continue
                    if env.epoch != self.epoch:
                        stage.metrics.stale += 1
                        continue
                    if result is None:
                        continue
                    if isinstance(result, Control):
                        await self._control(result, env)
                        continue
                    await fan_out(senders, Envelope(result, env.seq, env.origin, env.deadline, env.epoch))
            finally:
                pend_rx.close_receiver()

        async with anyio.create_task_group() as tg:
            tg.start_soon(emit)
            try:
                while True:
                    env = await self._next_live(rx, stage)
                    if env is None:
                        break
                    epoch = env.epoch

                    def alive(epoch: int = epoch) -> bool:
                        return not self.closed and self.epoch == epoch

                    fut = batcher.submit(env.payload, stage.deadline(env.deadline, time.monotonic()), alive)
                    stage.metrics.queued = len(batcher)
                    await pend_tx.send((env, fut))
            finally:
                pend_tx.close()

    async def _run_stream_node(
        self, stage: Stage, node: GraphNode, rxs: list[Any], senders: list[Any]
    ) -> None:
        tracker = _Tracker()
        args: list[Any] = []
        for p, (param, rx) in enumerate(zip(node.spec.params, rxs, strict=True)):
            from_input = node.inputs[p].source < 0
            if param.stream:
                args.append(_ChannelStream(rx, self, stage, tracker, drop_stale=not from_input))
            else:
                env = await self._next_live(rx, stage)
                if env is None:
                    return
                tracker.last = env
                args.append(env.payload)
        inst = stage.replicas.pick()
        seq = itertools.count()
        # Outputs belong to the turn of what caused them; a node fed only by chain
        # inputs (the user's audio: never stale) speaks for the session's current turn.
        follows_inputs = any(
            p.stream and h.source >= 0 for p, h in zip(node.spec.params, node.inputs, strict=True)
        )
        try:
            agen = stage.open_stream(inst, tuple(args))
            async with contextlib.aclosing(agen):
                async for out in agen:
                    last = tracker.last
                    origin = last.origin if last else time.monotonic()
                    deadline = last.deadline if last else float("inf")
                    epoch = last.epoch if (follows_inputs and last is not None) else self.epoch
                    env = Envelope(out, next(seq), origin, deadline, epoch)
                    if isinstance(out, Control):
                        await self._control(out, env)
                        continue
                    stage.metrics.items += 1
                    await fan_out(senders, env)
        except Exception as e:
            await self._fail(stage, e)

    # --- control, errors ------------------------------------------------------------
    async def _control(self, ev: Control, env: Envelope) -> None:
        if isinstance(ev, Interrupt):
            self.interrupt(ev.reason or "node")
        await self._side(EVENTS, Envelope(ev, env.seq, env.origin, env.deadline, self.epoch))

    async def _fail(self, stage: Stage, exc: BaseException) -> None:
        if isinstance(exc, Shed):
            code, msg = exc.code, exc.detail
        elif isinstance(exc, NodeError):
            stage.metrics.errors += 1
            stage.metrics.consecutive_errors += 1
            code, msg = exc.code, exc.detail
        else:
            stage.metrics.errors += 1
            stage.metrics.consecutive_errors += 1
            code, msg = "node_error", f"{type(exc).__name__}: {exc}"
        if code == "shed":
            self.log.debug("item_shed", node=stage.name, error=msg)
        else:
            self.log.warning("item_failed", node=stage.name, code=code, error=msg)
        now = time.monotonic()
        await self._side(
            ERROR, Envelope(ErrorEvent(node=stage.name, code=code, message=msg), -1, now, now, self.epoch)
        )

    async def _side(self, name: str, env: Envelope) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._side_tx.send((name, env))

    # --- the public face: inputs, outputs, interrupts --------------------------------
    def input_index(self, name_or_index: int | str) -> int:
        if isinstance(name_or_index, int):
            if not 0 <= name_or_index < len(self.graph.inputs):
                raise IndexError(f"chain {self.graph.name!r} has {len(self.graph.inputs)} input(s)")
            return name_or_index
        for i, inp in enumerate(self.graph.inputs):
            if inp.name == name_or_index:
                return i
        raise KeyError(f"chain {self.graph.name!r} has no input {name_or_index!r}")

    async def send(self, item: Any, input: int | str = 0) -> None:
        """Feed one item to a chain input (waits while the chain is full)."""
        i = self.input_index(input)
        want = self.graph.inputs[i].type
        if isinstance(want, type) and want is not object and not isinstance(item, want):
            raise TypeError(
                f"chain {self.graph.name!r} input {self.graph.inputs[i].name!r} wants "
                f"{want.__name__}, got {type(item).__name__}"
            )
        now = time.monotonic()
        deadline = now + self.budget_s if self.budget_s is not None else float("inf")
        await fan_out(self.input_senders[i], Envelope(item, next(self._seq), now, deadline, self.epoch))

    def close_input(self, input: int | str = 0) -> None:
        close_all(self.input_senders[self.input_index(input)])

    def close_inputs(self) -> None:
        for senders in self.input_senders:
            close_all(senders)

    def interrupt(self, reason: str = "client") -> None:
        """Barge-in: a new turn starts; the old one's work is dropped and cancelled."""
        self.epoch += 1
        for scope in list(self._inflight):
            scope.cancel()
        self.log.info("interrupt", epoch=self.epoch, reason=reason)

    async def receive(self) -> Output:
        """The next output (raises anyio.EndOfStream when the session is done)."""
        rx = self._out_rx
        while True:
            try:
                name, env = rx.receive_nowait()
            except WouldBlock:
                name, env = await rx.receive()
            if name != ERROR and name != EVENTS and env.epoch != self.epoch:
                continue  # buffered output of an interrupted turn: flushed
            if self._metrics is not None and name != ERROR and name != EVENTS:
                now = time.monotonic()
                self._metrics.end_to_end.observe(now - env.origin)
                if env.epoch not in self._first_output_epochs:
                    self._first_output_epochs.add(env.epoch)
                    self._metrics.first_output.observe(now - env.origin)
            return Output(name, env.payload, env.origin, env.epoch)

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Output:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        """End the session now: every task it started is cancelled."""
        if self._scope is not None:
            self._scope.cancel()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._out_rx.close_receiver()
            if self._on_close:
                self._on_close(self)
