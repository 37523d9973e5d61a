"""One call of a chain of maps: a walk of its DAG in the caller's task.

A web handler calls a chain once per request (``await rt.call(x)``). When every
input is a single value and every node is a map or a batched map, the call needs
no session: no edges, no per-node tasks, no turns. Each node is served in
topological order straight through ``Stage.serve`` (the same limiter, batcher,
shedding, retries, replica choice and metrics as a session's runner), and nodes
that do not depend on each other run concurrently, level by level. A session would
cost several times the whole call (benchmarks/calls.py measures both).

Chains with streams (stream inputs, stream nodes, streaming maps) run as sessions.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Protocol

from chains.context import NodeContext, reset_context, set_context
from chains.errors import ChainsError
from chains.graph import Graph
from chains.messages import Control
from chains.spec import Shape
from runtime.batcher import StaleItem
from runtime.envelope import Request
from runtime.metrics import ChainMetrics
from runtime.stage import Stage


class Runtime(Protocol):
    """What a direct call needs of its runtime (runtime/engine.py)."""

    graph: Graph
    stages: list[Stage]
    metrics: ChainMetrics
    budget_s: float | None
    sessions: dict[str, Any]

    def admit(self, extra: int = 0) -> None: ...

    def session_ended(self, sid: str) -> None: ...


_ids = itertools.count(1)
_mono = time.monotonic


def _epoch0() -> int:
    return 0


class DirectCalls:
    """The plan for calling one chain without a session, built once per runtime."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        graph: Graph = rt.graph
        self.graph = graph
        depth = [0] * len(graph.nodes)
        for n in graph.nodes:
            depth[n.index] = 1 + max((depth[h.source] for h in n.inputs if h.source >= 0), default=-1)
        levels: dict[int, list[int]] = {}
        for n in graph.nodes:
            levels.setdefault(depth[n.index], []).append(n.index)
        self.levels = [levels[d] for d in sorted(levels)]
        self.sources = [[h.source for h in n.inputs] for n in graph.nodes]
        self.active = 0
        # the calls in flight by number, their tasks, for the runtime's exit to cancel
        # (a plain task cancel: an anyio scope per call was a third of a call's cost)
        self.tasks: dict[int, asyncio.Task[Any] | None] = {}
        self.cancelled: set[int] = set()

    @staticmethod
    def eligible(graph: Graph) -> bool:
        return not any(i.stream for i in graph.inputs) and all(
            n.spec.shape in (Shape.MAP, Shape.BATCH) for n in graph.nodes
        )

    async def call(self, inputs: tuple[Any, ...]) -> dict[str, Any]:
        """The chain's outputs by name (None where an item was filtered out)."""
        rt = self.rt
        m = rt.metrics
        rt.admit(extra=self.active)
        self.active += 1
        m.sessions_total += 1
        m.sessions_active = len(rt.sessions) + self.active
        n = next(_ids)
        sid = f"c{n}"
        origin = _mono()
        deadline = origin + rt.budget_s if rt.budget_s is not None else float("inf")
        values: list[Any] = [None] * len(self.graph.nodes)
        task = self.tasks[n] = asyncio.current_task()
        try:
            try:
                for level in self.levels:
                    if len(level) == 1:
                        values[level[0]] = await self._node(level[0], inputs, values, sid, deadline)
                    else:
                        await self._level(level, inputs, values, sid, deadline)
            except asyncio.CancelledError:
                # the runtime's exit ended the call (unless someone else cancels it too)
                if n not in self.cancelled or task is None or task.uncancel() > 0:
                    raise
                raise ChainsError(
                    f"chain {self.graph.name!r}: the runtime closed while the call was in flight"
                ) from None
        finally:
            del self.tasks[n]
            self.cancelled.discard(n)
            rt.session_ended(sid)
            self.active -= 1
            m.sessions_active = len(rt.sessions) + self.active
        now = _mono()
        m.first_output.observe(now - origin)
        m.end_to_end.observe(now - origin)
        return {
            k: (values[h.source] if h.source >= 0 else inputs[-h.source - 1])
            for k, h in self.graph.outputs.items()
        }

    async def _level(
        self, level: list[int], inputs: tuple[Any, ...], values: list[Any], sid: str, deadline: float
    ) -> None:
        """Nodes that do not depend on each other, concurrently; the first error raised."""
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [(i, tg.create_task(self._node(i, inputs, values, sid, deadline))) for i in level]
        except BaseExceptionGroup as group:
            first = group.exceptions[0]
            raise first.with_traceback(first.__traceback__) from None
        for i, t in tasks:
            values[i] = t.result()

    async def _node(
        self, i: int, inputs: tuple[Any, ...], values: list[Any], sid: str, deadline: float
    ) -> Any:
        args = tuple(inputs[-s - 1] if s < 0 else values[s] for s in self.sources[i])
        if any(a is None for a in args):
            return None  # an input was filtered out upstream: this node never runs
        stage = self.rt.stages[i]
        req = Request(args, sid, 0, stage.deadline(deadline, _mono()), stage.route(sid, args))
        token = set_context(NodeContext(sid, stage.name, {}, _epoch0))
        try:
            result = await stage.serve(req)
        except StaleItem:
            return None
        finally:
            reset_context(token)
        return None if isinstance(result, Control) else result

    def cancel_all(self) -> None:
        for n, task in list(self.tasks.items()):
            if task is not None and n not in self.cancelled:
                self.cancelled.add(n)
                task.cancel()
