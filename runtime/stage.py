"""A stage: the shared worker set of one node, serving every session.

Replicas (one instance of a class node each, loading its model once) are shared
by all sessions; for a class template used several times in a chain, by all its
graph nodes too. Maps and streaming maps run in their session's task under the
stage's deadline-ordered concurrency limit; batched maps go through the stage's
batcher, which forms batches across sessions.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

import anyio

from chains.errors import ModelError, NodeError
from chains.graph import GraphNode
from chains.spec import NodeSpec, Shape
from runtime.batcher import Batcher, BatchItem, Policy, fail_future
from runtime.costmodel import CostModel
from runtime.limiter import DeadlineLimiter
from runtime.logs import get_logger
from runtime.metrics import StageMetrics


class Shed(NodeError):
    """An item dropped because it could no longer make its deadline."""

    def __init__(self, node: str, late_s: float):
        super().__init__(node, f"shed: would miss its deadline by {late_s * 1000:.1f} ms", code="shed")
        self.late_s = late_s


class ReplicaSet:
    """The loaded instances of one node implementation (a class template or a function)."""

    def __init__(self, spec: NodeSpec, template: Any):
        self.spec = spec
        self.template = template
        self.instances: list[Any] = []
        self.busy: list[int] = []  # calls in flight per replica
        self._rr = 0

    async def start(self) -> None:
        if not self.spec.is_class:
            self.instances = [self.spec.impl] * self.spec.options.replicas
            self.busy = [0] * len(self.instances)
            return
        for _ in range(self.spec.options.replicas):
            try:
                inst = await anyio.to_thread.run_sync(self.template.instantiate)
                setup = getattr(inst, "setup", None)
                if setup is not None:
                    res = setup()
                    if inspect.isawaitable(res):
                        await res
            except ModelError:
                raise
            except Exception as e:
                raise ModelError(f"node {self.spec.name!r} failed to start: {type(e).__name__}: {e}") from e
            self.instances.append(inst)
            self.busy.append(0)

    async def close(self) -> None:
        for inst in self.instances if self.spec.is_class else ():
            close = getattr(inst, "close", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        res = close()
                        if inspect.isawaitable(res):
                            await res
                    except Exception as e:  # a failing close must not hide the others
                        get_logger(node=self.spec.name).warning("close_failed", error=repr(e))
        self.instances = []

    def pick(self) -> Any:
        """A replica for a long-lived per-session use (a stream node): round robin."""
        self._rr = (self._rr + 1) % len(self.instances)
        return self.instances[self._rr]

    def acquire(self) -> int:
        """The least busy replica for one call; ``release`` it after.

        The stage limiter caps calls at concurrency x replicas in all; taking the
        least busy replica keeps each one within its own ``concurrency``."""
        busy = self.busy
        i = min(range(len(busy)), key=busy.__getitem__) if len(busy) > 1 else 0
        busy[i] += 1
        return i

    def release(self, i: int) -> None:
        self.busy[i] -= 1


class Stage:
    def __init__(
        self,
        chain_name: str,
        gnode: GraphNode,
        replicas: ReplicaSet,
        metrics: StageMetrics,
        batch_policy: Policy = "deadline",
    ):
        self.node = gnode
        self.spec = gnode.spec
        self.name = gnode.name
        self.replicas = replicas
        self.metrics = metrics
        self.log = get_logger(chain=chain_name, node=self.name)
        opts = self.spec.options
        self.budget_s = opts.budget_ms / 1000.0 if opts.budget_ms else None
        self.timeout_s = opts.timeout_ms / 1000.0 if opts.timeout_ms else None
        self.retries = opts.retries
        self.shed_late = opts.on_late == "shed"
        self.downstream_s = 0.0  # expected time the stages after this one need
        self.cost = CostModel()
        slots = self.spec.concurrency * opts.replicas
        self.limiter = DeadlineLimiter(slots)
        self.batcher: Batcher | None = None
        if self.spec.shape is Shape.BATCH:
            assert opts.batch is not None
            self.batcher = Batcher(
                max_size=opts.batch.max_size,
                max_wait_s=opts.batch.max_wait_ms / 1000.0,
                on_late=opts.on_late,
                policy=batch_policy,
                cost=self.cost,
                on_shed=self._shed_item,
                on_stale=self._stale_item,
            )

    # --- deadlines ------------------------------------------------------------------
    def deadline(self, chain_deadline: float, now: float) -> float:
        """The tighter of the chain's and the node's budgets, less downstream needs."""
        d = chain_deadline - self.downstream_s
        if self.budget_s is not None:
            d = min(d, now + self.budget_s)
        return d

    def expected_service_s(self) -> float:
        if self.spec.shape is Shape.BATCH:
            return self.cost.predict(1) if self.cost.n else 0.0
        return self.metrics.service.mean if self.metrics.service.count else 0.0

    # --- calling user code ----------------------------------------------------------
    def _raw_call(self, inst: Any, args: tuple[Any, ...]) -> Any:
        return inst(*args)

    async def call(self, inst: Any, args: tuple[Any, ...]) -> Any:
        """One map or batch call, in a worker thread for sync code, with retries and timeout."""
        attempt = 0
        while True:
            try:
                if self.timeout_s is None:
                    return await self._invoke(inst, args)
                with anyio.fail_after(self.timeout_s):
                    return await self._invoke(inst, args)
            except TimeoutError as e:
                if attempt < self.retries:
                    attempt += 1
                    continue
                raise NodeError(
                    self.name, f"timed out after {self.timeout_s * 1000:.0f} ms", code="timeout"
                ) from e
            except Exception:
                if attempt < self.retries:
                    attempt += 1
                    continue
                raise

    async def _invoke(self, inst: Any, args: tuple[Any, ...]) -> Any:
        if self.spec.is_async:
            return await inst(*args)
        # With a timeout the wait must be cancellable: the thread runs on, its result unused.
        return await anyio.to_thread.run_sync(
            functools.partial(inst, *args), abandon_on_cancel=self.timeout_s is not None
        )

    def open_stream(self, inst: Any, args: tuple[Any, ...]) -> Any:
        """Start a streaming map or stream node call: an async generator."""
        return inst(*args)

    # --- batching -------------------------------------------------------------------
    def _shed_item(self, item: BatchItem, late_s: float) -> None:
        self.metrics.shed += 1
        fail_future(item.future, Shed(self.name, late_s))

    def _stale_item(self, item: BatchItem) -> None:
        self.metrics.stale += 1

    async def run_batcher(self) -> None:
        """The stage's batching loop: owned by the runtime's task group."""
        assert self.batcher is not None
        async with anyio.create_task_group() as tg:
            while True:
                await self.limiter.acquire(0.0)
                try:
                    batch = await self.batcher.next_batch()
                except BaseException:
                    self.limiter.release()
                    raise
                self.metrics.queued = len(self.batcher)
                self.batcher.in_flight += 1
                tg.start_soon(self._run_batch, batch)

    async def _run_batch(self, batch: list[BatchItem]) -> None:
        slot = self.replicas.acquire()
        try:
            inst = self.replicas.instances[slot]
            start = time.monotonic()
            for it in batch:
                self.metrics.queue_wait.observe(start - it.enqueued)
            try:
                results = await self.call(inst, ([it.payload for it in batch],))
                if not isinstance(results, list | tuple) or len(results) != len(batch):
                    got = len(results) if isinstance(results, list | tuple) else type(results).__name__
                    raise NodeError(self.name, f"returned {got} results for a batch of {len(batch)}")
            except Exception as e:
                err = e if isinstance(e, NodeError) else NodeError(self.name, f"{type(e).__name__}: {e}")
                self.log.warning("batch_failed", size=len(batch), error=str(err))
                if len(batch) == 1:
                    fail_future(batch[0].future, err)
                    return
                # One bad item must not fail the sessions batched with it: run each alone.
                await self._isolate(inst, batch)
                return
            end = time.monotonic()
            self.cost.observe(len(batch), end - start)
            self.metrics.service.observe(end - start)
            self.metrics.batch_size.observe(len(batch))
            self.metrics.items += len(batch)
            self.metrics.consecutive_errors = 0
            for it, r in zip(batch, results, strict=True):
                if end > it.deadline:
                    self.metrics.late += 1
                if not it.future.done():
                    it.future.set_result(r)
        finally:
            self.replicas.release(slot)
            self.batcher.batch_done()  # type: ignore[union-attr]
            self.limiter.release()

    async def _isolate(self, inst: Any, batch: list[BatchItem]) -> None:
        """After a failed batch, serve its items one by one so only the bad ones fail."""
        for it in batch:
            if it.future.done():
                continue
            try:
                res = await self.call(inst, ([it.payload],))
                if not isinstance(res, list | tuple) or len(res) != 1:
                    raise NodeError(self.name, f"returned {res!r:.60} for a batch of 1")
            except Exception as e:
                err = e if isinstance(e, NodeError) else NodeError(self.name, f"{type(e).__name__}: {e}")
                fail_future(it.future, err)
                continue
            self.metrics.items += 1
            if not it.future.done():
                it.future.set_result(res[0])


def make_stages(
    chain_name: str,
    nodes: list[GraphNode],
    stage_metrics: Callable[[str], StageMetrics],
    batch_policy: Policy = "deadline",
) -> tuple[list[Stage], list[ReplicaSet]]:
    """One stage per graph node; one replica set per distinct implementation."""
    sets: dict[int, ReplicaSet] = {}
    stages = []
    for n in nodes:
        key = id(n.template) if n.template is not None else id(n.spec)
        rs = sets.get(key)
        if rs is None:
            rs = sets[key] = ReplicaSet(n.spec, n.template)
        stages.append(Stage(chain_name, n, rs, stage_metrics(n.name), batch_policy))
    return stages, list(sets.values())
