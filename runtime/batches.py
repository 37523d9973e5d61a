"""Running the batches a stage's batcher forms: one task per batch on a free replica
slot, the cost model fed with what each batch took, and a failed batch served item by
item so that one bad input fails only its own session.

The functions take the stage (``self``, seen through ``BatchStage``) whose serving
rules they apply: a batch holds one admission slot; replica choice, retries within
the deadline and the accounting of successes and failures stay in runtime/stage.py.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import anyio

from chains.errors import NodeError
from runtime.admission import Admission
from runtime.batcher import Batcher, BatchItem, fail_future
from runtime.costmodel import CostModel
from runtime.envelope import Reply, Request
from runtime.limiter import DeadlineLimiter
from runtime.metrics import StageMetrics


class BatchStage(Protocol):
    """The seam between running batches and their stage (runtime/stage.py): its public
    serving calls, the same ones ``Stage.serve`` uses, so a batch is admitted, tried,
    retried and counted like any item."""

    name: str
    batcher: Batcher | None
    limiter: DeadlineLimiter
    metrics: StageMetrics
    cost: CostModel
    log: Any

    async def call(self, req: Request, count: int = 1) -> Reply: ...

    async def attempt(self, req: Request, count: int = 1) -> Reply: ...

    def failed(self, exc: BaseException, count: int = 1) -> NodeError: ...

    @property
    def slot(self) -> Admission: ...


_mono = time.monotonic


async def run_batcher(self: BatchStage) -> None:
    """Take batches from the stage's batcher as replica slots free up, and run each in
    its own task: owned by the runtime's task group, through its stage."""
    assert self.batcher is not None
    async with anyio.create_task_group() as tg:
        while True:
            await self.limiter.acquire(0.0)  # a batch holds one slot (the stage's EDF limit)
            try:
                batch = await self.batcher.next_batch()
            except BaseException:
                self.slot.release()
                raise
            self.metrics.queued = len(self.batcher)
            self.batcher.in_flight += 1
            tg.start_soon(_run_batch, self, batch)
            del batch  # not held while idle: its items keep their sessions' payloads and results alive


async def _run_batch(self: BatchStage, batch: list[BatchItem]) -> None:
    m = self.metrics
    try:
        start = _mono()
        for it in batch:
            m.queue_wait.observe(start - it.enqueued)
        payloads = [it.payload for it in batch]
        # A failed batch counts no error by itself: its items are failed (and counted)
        # one by one, or served alone so that only the bad ones fail.
        try:
            # A batch spans sessions: its request names none (a batched node keeps no session state).
            results = (await self.call(Request((payloads,), "", 0, batch[0].deadline), count=0)).value
            if not isinstance(results, list | tuple) or len(results) != len(batch):
                got = len(results) if isinstance(results, list | tuple) else type(results).__name__
                raise NodeError(self.name, f"returned {got} results for a batch of {len(batch)}")
        except Exception as e:
            err = e if isinstance(e, NodeError) else self.failed(e, 0)
            self.log.warning("batch_failed", size=len(batch), error=str(err))
            if len(batch) == 1 or err.code in ("replica_lost", "no_replica"):
                self.failed(err, len(batch))
                for it in batch:
                    fail_future(it.future, err)
                return
            # One bad item must not fail the sessions batched with it: run each alone.
            await _isolate(self, batch)
            return
        end = _mono()
        self.cost.observe(len(batch), end - start)
        m.batch_size.observe(len(batch))
        late = 0
        for it, r in zip(batch, results, strict=True):
            if end > it.deadline:
                late += 1
            if not it.future.done():
                it.future.set_result(r)
        self.slot.served(start, end, len(batch), late)
        self.batcher.served(len(batch), late)  # type: ignore[union-attr]
    finally:
        self.batcher.batch_done()  # type: ignore[union-attr]
        self.slot.release()


async def _isolate(self: BatchStage, batch: list[BatchItem]) -> None:
    """After a failed batch, serve its items one by one so only the bad ones fail."""
    for it in batch:
        if it.future.done():
            continue
        try:
            t0 = _mono()
            res = (await self.attempt(Request(([it.payload],), "", 0, it.deadline))).value
            if not isinstance(res, list | tuple) or len(res) != 1:
                raise self.failed(NodeError(self.name, f"returned {res!r:.60} for a batch of 1"))
        except Exception as e:
            fail_future(it.future, e if isinstance(e, NodeError) else self.failed(e))
            continue
        t1 = _mono()
        self.slot.served(t0, t1, 1, int(t1 > it.deadline))
        if not it.future.done():
            it.future.set_result(res[0])
