"""A stage: one node served to every session, and the one place that serves an item.

Whoever has an item for a node (a session's runner, a fan-in map, the remote host
serving another process) calls ``Stage.serve`` (a value out) or
``Stage.serve_stream`` (outputs as they come). Everything that decides how an item
is served lives behind those two calls, once:

- admission: the stage's deadline-ordered concurrency limit (EDF across sessions);
- the deadline check: an item that can no longer make it is shed (``on_late="shed"``)
  or served and counted late;
- replica choice: the replica set's router picks a ready replica;
- timing, a timeout per attempt, retries with exponential backoff that never run
  past the item's deadline;
- errors: user exceptions become ``NodeError`` naming the node; an error that means
  the replica died takes it out of service (it is rebuilt) and reads ``replica_lost``;
- metrics: queue wait, service time, items, errors, shed, late, first output.

Batched maps go through the stage's batcher, which forms batches across sessions;
``submit`` hands it one item and returns the future its session awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from chains.context import current_context
from chains.errors import NodeError, ReplicaLost
from chains.graph import GraphNode
from chains.messages import Control
from chains.spec import Shape
from runtime.batcher import Batcher, BatchItem, Policy, StaleItem, fail_future
from runtime.batches import run_batcher
from runtime.costmodel import CostModel
from runtime.limiter import DeadlineLimiter
from runtime.logs import get_logger
from runtime.metrics import StageMetrics
from runtime.replicas import LocalProvider, Replica, ReplicaSet
from runtime.routing import Route, router_for

_mono = time.monotonic


class Shed(NodeError):
    """An item dropped because it could no longer make its deadline."""

    def __init__(self, node: str, late_s: float):
        super().__init__(node, f"shed: would miss its deadline by {late_s * 1000:.1f} ms", code="shed")
        self.late_s = late_s


def _retryable(exc: BaseException) -> bool:
    return not isinstance(exc, Shed | StaleItem)


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
        # An async map with no timeout and no retries is awaited directly: the hot path.
        self.fast = self.spec.is_async and self.timeout_s is None and self.retries == 0
        self.downstream_s = 0.0  # expected time the stages after this one need
        self.cost = CostModel()
        self.limiter = DeadlineLimiter(self.spec.concurrency * max(1, replicas.target))
        replicas.on_change.append(self._replicas_changed)
        self.batcher: Batcher | None = None
        if self.spec.shape is Shape.BATCH:
            assert opts.batch is not None
            self.batcher = Batcher(
                max_size=opts.batch.max_size,
                max_wait_s=opts.batch.max_wait_ms / 1000.0,
                idle_wait_s=opts.batch.idle_wait_ms / 1000.0,
                on_late=opts.on_late,
                policy=batch_policy,
                cost=self.cost,
                on_shed=self._shed_item,
                on_stale=self._stale_item,
            )

    def _replicas_changed(self, rs: ReplicaSet) -> None:
        """Slots follow the ready replicas; with none ready one slot stays open, so items
        fail fast with ``no_replica`` (or retry within their deadline) rather than hang."""
        self.limiter.resize(self.spec.concurrency * max(1, len(rs.ready)))
        c = rs.counts()
        m = self.metrics
        m.replicas_ready, m.replicas_loading, m.replicas_lost = c["ready"], c["loading"], c["lost"]
        m.replica_rebuilds = rs.rebuilds
        m.prefix = getattr(rs.router, "stats", None)

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

    def route(self, session: str, args: tuple[Any, ...]) -> Route | None:
        """What the router sees of an item; None when there is nothing to choose from."""
        rs = self.replicas
        if len(rs.ready) < 2 and not rs.router_learns:
            return None
        tokens_of = getattr(rs.ready[0].instance, "route_tokens", None) if self.spec.is_class else None
        return Route(session, args, tokens_of)

    # --- serving one item -----------------------------------------------------------
    async def serve(
        self,
        args: tuple[Any, ...],
        deadline: float,
        route: Route | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> Any:
        """Serve one item on a map or batched map and return its result.

        Raises ``NodeError`` (``Shed``, ``ReplicaLost``, ``NoReplica``, a timeout, the
        node's own failure), or ``StaleItem`` when ``alive()`` turned False while it
        waited (its turn was interrupted or its session ended)."""
        if self.batcher is not None:
            return await self.submit(args[0], deadline, alive or _always)
        m = self.metrics
        lim = self.limiter
        t0 = _mono()
        if lim.in_use < lim.capacity and not lim._waiters:  # try_acquire, inlined: the hot path
            lim.in_use += 1
        else:
            t0 = await self._wait_slot(deadline, t0)
            if alive is not None and not alive():
                lim.release()
                m.stale += 1
                raise StaleItem()
        if self.shed_late:
            self._shed_if_hopeless(t0, deadline)
        try:
            if self.fast:
                rs = self.replicas
                ready = rs.ready
                if len(ready) == 1 and route is None:  # ReplicaSet.acquire, inlined
                    r = ready[0]
                    r.inflight += 1
                else:
                    r = rs.acquire(route)
                try:
                    result = await r.instance(*args)
                except Exception as e:
                    raise self._failed(r, e) from e
                finally:
                    r.inflight -= 1  # ReplicaSet.release, inlined for a ready replica
                    if r.state != "ready":
                        rs.released_unready(r)
            else:
                result = await self._call_with_retries(args, deadline, route)
        finally:
            if lim._waiters or lim.in_use > lim.capacity:
                lim.release()
            else:  # DeadlineLimiter.release, inlined: nobody waits
                lim.in_use -= 1
        t1 = _mono()
        m.service.observe(t1 - t0)
        m.items += 1
        m.consecutive_errors = 0
        if t1 > deadline:
            m.late += 1
        return result

    async def serve_stream(
        self, args: tuple[Any, ...], deadline: float, route: Route | None = None
    ) -> AsyncGenerator[Any, None]:
        """Serve one item on a streaming map: its outputs as they are produced.

        Use it with ``contextlib.aclosing``: closing it early (an interrupt) closes the
        node's generator and frees the slot and the replica."""
        m = self.metrics
        lim = self.limiter
        t0 = _mono()
        if not lim.try_acquire():
            t0 = await self._wait_slot(deadline, t0)
        if self.shed_late:
            self._shed_if_hopeless(t0, deadline)
        rs = self.replicas
        try:
            r = rs.acquire(route)
        except BaseException:
            lim.release()
            raise
        first = True
        ctx = current_context() if route is not None else None
        if ctx is not None:
            ctx.cached_tokens = None
        try:
            agen = r.instance(*args)
            async with contextlib.aclosing(agen):
                async for out in agen:
                    if first:
                        m.first_output.observe(_mono() - t0)
                        first = False
                    yield out
        except Exception as e:
            raise self._failed(r, e) from e
        finally:
            rs.release(r)
            lim.release()
            t1 = _mono()
            m.service.observe(t1 - t0)
            m.items += 1
            if t1 > deadline:
                m.late += 1
            if ctx is not None and ctx.cached_tokens is not None:
                self._observe_cache(route, ctx.cached_tokens)  # type: ignore[arg-type]
        m.consecutive_errors = 0

    def _observe_cache(self, route: Route, cached: int) -> None:
        """The engine said how many prompt tokens it served from its cache: the router's
        prediction for this item is checked against it (exported with the stage)."""
        stats = getattr(self.replicas.router, "stats", None)
        if stats is not None:
            tokens = route.tokens
            stats.observe_actual(cached, route.predicted_cached, len(tokens) if tokens is not None else None)

    async def _wait_slot(self, deadline: float, since: float) -> float:
        """Wait for a slot in deadline order; when it came (the queue wait is counted)."""
        m = self.metrics
        m.queued += 1
        try:
            await self.limiter.acquire(deadline)
        finally:
            m.queued -= 1
        now = _mono()
        m.queue_wait.observe(now - since)
        return now

    def _shed_if_hopeless(self, start: float, deadline: float) -> None:
        """``on_late="shed"``: an item that cannot finish by its deadline gives its slot back."""
        late = start + self.expected_service_s() - deadline
        if late > 0:
            self.limiter.release()
            self.metrics.shed += 1
            raise Shed(self.name, late)

    def submit(self, payload: Any, deadline: float, alive: Callable[[], bool]) -> asyncio.Future[Any]:
        """Queue one item of a batched map; its session awaits the returned future (so it
        can keep feeding the batcher while earlier items are served)."""
        assert self.batcher is not None
        fut = self.batcher.submit(payload, deadline, alive)
        self.metrics.queued = len(self.batcher)
        return fut

    # --- errors -----------------------------------------------------------------------
    def _failed(self, r: Replica | None, exc: BaseException, count: int = 1) -> NodeError:
        """Count a failure (``count`` items) and say what it was; a replica that died
        leaves the set."""
        if isinstance(exc, Shed):
            return exc
        m = self.metrics
        m.errors += count
        m.consecutive_errors += count
        rs = self.replicas
        if r is not None and (isinstance(exc, ReplicaLost) or rs.is_lost(r, exc)):
            rs.lost(r, exc)
            if not isinstance(exc, ReplicaLost):
                return ReplicaLost(self.name, f"replica {r.id} died: {type(exc).__name__}: {exc}")
        if isinstance(exc, NodeError):
            return exc
        return NodeError(self.name, f"{type(exc).__name__}: {exc}")

    def failed(self, exc: BaseException) -> NodeError:
        """A failure of this stage's user code outside ``serve`` (a stream node): counted."""
        return self._failed(None, exc)

    # --- calling user code ----------------------------------------------------------
    async def _call_with_retries(
        self, args: tuple[Any, ...], deadline: float, route: Route | None, count: int = 1
    ) -> Any:
        """One call; failed attempts are retried with exponential backoff while the retry
        can still finish before the item's deadline (``retries`` times at most)."""
        if self.retries == 0:
            return await self._attempt(args, route, count)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > self.retries:
                return True
            # Never past the deadline: the next attempt must start in time to finish.
            upcoming = state.upcoming_sleep or 0.0
            return _mono() + upcoming + self.expected_service_s() > deadline

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait_exponential(multiplier=0.01, min=0.005, max=1.0),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(args, route, count)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, args: tuple[Any, ...], route: Route | None, count: int = 1) -> Any:
        rs = self.replicas
        r = rs.acquire(route)
        try:
            if self.timeout_s is None:
                return await self._invoke(r.instance, args)
            try:
                with anyio.fail_after(self.timeout_s):
                    return await self._invoke(r.instance, args)
            except TimeoutError as e:
                raise NodeError(
                    self.name, f"timed out after {self.timeout_s * 1000:.0f} ms", code="timeout"
                ) from e
        except Exception as e:
            raise self._failed(r, e, count) from e
        finally:
            rs.release(r)

    async def _invoke(self, inst: Any, args: tuple[Any, ...]) -> Any:
        if self.spec.is_async:
            return await inst(*args)
        # With a timeout the wait must be cancellable: the thread runs on, its result unused.
        return await anyio.to_thread.run_sync(
            functools.partial(inst, *args), abandon_on_cancel=self.timeout_s is not None
        )

    async def serve_session(self, session: str, args: tuple[Any, ...]) -> AsyncGenerator[Any, None]:
        """Serve a stream node for one session: one replica held for the session's life,
        its outputs as they come (data items counted; control events passed through).

        Use it with ``contextlib.aclosing``. Failures (no ready replica, the node's own
        error, a replica that died) are counted and raised as ``NodeError``."""
        rs = self.replicas
        try:
            r = rs.acquire(self.route(session, ()))
        except Exception as e:
            raise self._failed(None, e) from e
        try:
            agen = r.instance(*args)
            async with contextlib.aclosing(agen):
                async for out in agen:
                    if not isinstance(out, Control):
                        self.metrics.items += 1
                    yield out
        except Exception as e:
            raise self._failed(r, e) from e
        finally:
            rs.release(r)

    # --- batching -------------------------------------------------------------------
    def _shed_item(self, item: BatchItem, late_s: float) -> None:
        self.metrics.shed += 1
        fail_future(item.future, Shed(self.name, late_s))

    def _stale_item(self, item: BatchItem) -> None:
        self.metrics.stale += 1

    async def run_batcher(self) -> None:
        """The stage's batching loop (runtime/batches.py), owned by the runtime's task group."""
        await run_batcher(self)


def _always() -> bool:
    return True


def make_stages(
    chain_name: str,
    nodes: list[GraphNode],
    stage_metrics: Callable[[str], StageMetrics],
    batch_policy: Policy = "deadline",
) -> tuple[list[Stage], list[ReplicaSet]]:
    """One stage per graph node; one replica set per distinct implementation.

    A node's replicas come from its template's ``provider(spec)`` when it has one (a
    remote or Ray stub), else from this process (``LocalProvider``)."""
    sets: dict[int, ReplicaSet] = {}
    stages = []
    for n in nodes:
        key = id(n.template) if n.template is not None else id(n.spec)
        rs = sets.get(key)
        if rs is None:
            make_provider = getattr(n.template, "provider", None)
            provider = (
                make_provider(n.spec) if make_provider is not None else LocalProvider(n.spec, n.template)
            )
            rs = sets[key] = ReplicaSet(n.spec, provider, router=router_for(n.spec))
        stages.append(Stage(chain_name, n, rs, stage_metrics(n.name), batch_policy))
    return stages, list(sets.values())
