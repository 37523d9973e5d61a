"""A session: one client's run of a chain.

It owns one bounded channel per edge and one task per node (a per-session runner,
runtime/runners.py, that feeds the node's shared stage), all inside a task group:
closing the session cancels everything it started and nothing outlives it. It also
owns the turn epoch:

- an ``Interrupt`` bumps it: queued items of the old epoch are dropped at every
  stage, in-flight streaming calls are cancelled, and buffered output of the old
  turn is flushed before it reaches the client;
- a ``SpeculativeTurn`` bumps it too, but the new turn's outputs are held here until
  a ``ConfirmTurn`` releases them in order (an ``Interrupt`` first discards them), so
  a chain can start work before it is sure it is wanted and nothing of it is seen
  unless it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock

from chains.context import NodeContext, set_context
from chains.errors import NodeError
from chains.graph import Graph, GraphNode
from chains.history import record as record_heard
from chains.messages import ConfirmTurn, Control, ErrorEvent, Heard, Interrupt, SpeculativeTurn
from chains.outputs import ERROR, EVENTS, Output
from chains.spec import Shape, checkable
from runtime import runners
from runtime.channels import Tagged, close_all, edge, fan_out
from runtime.envelope import Envelope
from runtime.logs import get_logger
from runtime.stage import Stage

_ids = itertools.count(1)


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
        self._log: Any = None
        self._metrics = metrics
        self._on_close = on_close
        self._seq = itertools.count()
        self.inflight: set[anyio.CancelScope] = set()  # what an interrupt cancels
        self._held_epochs: set[int] = set()  # speculative turns not yet confirmed
        self._held: deque[tuple[str, Envelope]] = deque()  # their outputs, in order
        self._released: deque[tuple[str, Envelope]] = deque()  # confirmed, not yet read
        self._confirming = -1
        self.speculative = {"started": 0, "confirmed": 0, "abandoned": 0, "held_dropped": 0}
        self._state: dict[str, dict[str, Any]] = {}
        self._first_output_epochs: set[int] = set()
        self._scope: anyio.CancelScope | None = None
        self._running = 0  # node tasks still running
        self._tasks: list[asyncio.Task[None]] = []
        self.done = anyio.Event()  # set once the session is closed
        # called with (the old epoch, the reason) at every interrupt: a transport that
        # paces audio learns there how much of the cut reply was played (transport/pacing.py)
        self.interrupt_listeners: list[Callable[[int, str], None]] = []
        # the last few failures as raised (an ErrorEvent carries their code and text, so
        # ``Runtime.call`` can raise the original: a WrongResultType, not a bare NodeError)
        self.failures: deque[NodeError] = deque(maxlen=8)
        self._wire()

    @property
    def log(self) -> Any:
        """The session's logger, bound on first use (most sessions never log)."""
        if self._log is None:
            self._log = get_logger(chain=self.graph.name, session=self.id)
        return self._log

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
    def start(self, tg: asyncio.TaskGroup) -> None:
        """Start every node's per-session task in ``tg``, the session's owner.

        An ``asyncio.TaskGroup``, not anyio's: a session per request is the common web
        pattern, and anyio's task group and task start cost several times more than
        the whole of a one-node call (benchmarks/calls.py). Inside, runners still use
        anyio scopes freely. The side channel (errors, events) closes with the last node."""
        self._running = len(self.graph.nodes)
        if not self._running:
            self._side_tx.close()
        self._tasks = [
            tg.create_task(self._run_node(node), name=f"{self.id}:{node.name}") for node in self.graph.nodes
        ]

    def stop(self) -> None:
        """The session's owner is leaving: cancel the node tasks still running."""
        for t in self._tasks:
            t.cancel()

    async def _run_node(self, node: GraphNode) -> None:
        stage = self.stages[node.index]
        rxs = [self._in_rx[(node.index, p)] for p in range(len(node.inputs))]
        senders = self._node_senders[node.index]
        set_context(self._context(node))
        try:
            shape = node.spec.shape
            if shape is Shape.STREAM:
                await runners.run_stream_node(self, stage, node, rxs, senders)
            elif shape is Shape.BATCH:
                await runners.run_batched(self, stage, rxs[0], senders)
            elif len(rxs) == 1:
                await runners.run_map1(self, stage, rxs[0], senders, shape is Shape.STREAM_MAP)
            else:
                await runners.run_map_n(self, stage, node, rxs, senders, shape is Shape.STREAM_MAP)
        finally:
            close_all(senders)
            for rx in rxs:
                rx.close_receiver()
            self._running -= 1
            if self._running == 0:
                self._side_tx.close()

    def _context(self, node: GraphNode) -> NodeContext:
        return NodeContext(
            self.id, node.name, self._state.setdefault(node.name, {}), lambda: self.epoch, self.meta
        )

    # --- control, errors (what runners call) -------------------------------------------
    async def control(self, ev: Control, env: Envelope) -> None:
        """A control event a node produced: act on it, then pass it to the client."""
        if isinstance(ev, Interrupt):
            self.interrupt(ev.reason or "node")
        elif isinstance(ev, SpeculativeTurn):
            self.speculate(ev.reason or "node")
        elif isinstance(ev, ConfirmTurn) and self.epoch in self._held_epochs:
            self._confirming = self.epoch  # its event, read in order, releases the outputs
        await self._side(EVENTS, Envelope(ev, env.seq, env.origin, env.deadline, self.epoch))

    async def fail(self, stage: Stage, exc: BaseException) -> None:
        """Tell the client an item failed at ``stage`` (the stage counted it)."""
        if isinstance(exc, NodeError):
            code, msg = exc.code, exc.detail
            self.failures.append(exc)
        else:
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
        await fan_out(self.input_senders[i], self._envelope(item, i))

    def has_room(self, input: int) -> bool:
        """Every consumer of input ``input`` can take an item now (``offer`` succeeds)."""
        return all(tx.has_room() for tx in self.input_senders[input])

    def offer(self, item: Any, input: int) -> bool:
        """Feed one item without waiting: False, and nothing sent, when a consumer of
        the input is full (the caller then ``send``s, which waits). What a socket's
        fast lane uses: it runs inside the protocol's callback and cannot wait."""
        if not self.has_room(input):
            return False
        env = self._envelope(item, input)
        for tx in self.input_senders[input]:
            with contextlib.suppress(BrokenResourceError, ClosedResourceError):
                tx.send_nowait(env)  # (a consumer gone: its branch ended, as in fan_out)
        return True

    def _envelope(self, item: Any, i: int) -> Envelope:
        want = self.graph.inputs[i].type
        if checkable(want) and not isinstance(item, want):
            raise TypeError(
                f"chain {self.graph.name!r} input {self.graph.inputs[i].name!r} wants "
                f"{want.__name__}, got {type(item).__name__}"
            )
        now = time.monotonic()
        deadline = now + self.budget_s if self.budget_s is not None else float("inf")
        return Envelope(item, next(self._seq), now, deadline, self.epoch)

    def close_input(self, input: int | str = 0) -> None:
        close_all(self.input_senders[self.input_index(input)])

    def close_inputs(self) -> None:
        for senders in self.input_senders:
            close_all(senders)

    def interrupt(self, reason: str = "client") -> None:
        """Barge-in: a new turn starts; the old one's work is dropped and cancelled (a
        speculative turn not yet confirmed is abandoned: its held outputs never go out)."""
        if self.epoch in self._held_epochs and self._confirming != self.epoch:
            self.speculative["abandoned"] += 1
            self._held_epochs.discard(self.epoch)  # its outputs are stale from now on
            self.speculative["held_dropped"] += len(self._held)
            self._held.clear()
            self.tell_heard(Heard(epoch=self.epoch, text="", reason="abandoned"))  # nobody heard it
        self.epoch += 1
        for scope in list(self.inflight):
            scope.cancel()
        for listener in list(self.interrupt_listeners):
            listener(self.epoch - 1, reason)
        self.log.info("interrupt", epoch=self.epoch, reason=reason)

    def tell_heard(self, msg: Heard) -> None:
        """What the user heard of turn ``msg.epoch``'s reply: kept for every node of the
        session (``chains.history.heard()``), so history-keeping nodes cut it."""
        record_heard(self.meta, msg)

    def speculate(self, reason: str = "node") -> None:
        """Start a speculative turn: like an interrupt, but the new turn's outputs are
        held until ``ConfirmTurn`` (an interrupt discards them)."""
        self.interrupt(f"speculative: {reason}")
        self._held_epochs.add(self.epoch)
        self.speculative["started"] += 1

    async def receive(self) -> Output:
        """The next output (raises anyio.EndOfStream when the session is done)."""
        rx = self._out_rx
        while True:
            if self._released:
                name, env = self._released.popleft()
            else:
                try:
                    name, env = rx.receive_nowait()
                except WouldBlock:
                    name, env = await rx.receive()
                if self._held_epochs and self._hold(name, env):
                    continue
            if name != ERROR and name != EVENTS and env.epoch != self.epoch:
                continue  # buffered output of an interrupted turn: flushed
            if self._metrics is not None and name != ERROR and name != EVENTS:
                now = time.monotonic()
                self._metrics.end_to_end.observe(now - env.origin)
                if env.epoch not in self._first_output_epochs:
                    self._first_output_epochs.add(env.epoch)
                    self._metrics.first_output.observe(now - env.origin)
            return Output(name, env.payload, env.origin, env.epoch)

    def _hold(self, name: str, env: Envelope) -> bool:
        """Outputs of a speculative turn wait here; its ConfirmTurn event (read in order
        from the same channel) releases them ahead of itself."""
        if name == EVENTS and isinstance(env.payload, ConfirmTurn) and env.epoch in self._held_epochs:
            self._held_epochs.discard(env.epoch)
            self.speculative["confirmed"] += 1
            kept = [(n, e) for n, e in self._held if e.epoch == env.epoch]
            self.speculative["held_dropped"] += len(self._held) - len(kept)
            self._held.clear()
            self._released.extend(kept)
            self._released.append((name, env))
            return True
        if name != ERROR and name != EVENTS and env.epoch in self._held_epochs:
            self._held.append((name, env))
            return True
        return False

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
            self.done.set()
            self._out_rx.close_receiver()
            if self._on_close:
                self._on_close(self)
