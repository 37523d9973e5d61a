"""A stage: one node served to every session, and the one place that serves an item.

Whoever has an item for a node (a session's runner, a fan-in map, the remote host
serving another process) calls ``Stage.serve`` (a value out) or
``Stage.serve_stream`` (outputs as they come). Everything that decides how an item
is served lives behind those two calls, once:

- admission: one slot every shape takes (runtime/admission.py): the deadline-ordered
  concurrency limit (EDF across sessions), the deadline check (an item that can no
  longer make it is shed, ``on_late="shed"``, or served and counted late), and the
  accounting of successes;
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
from runtime.admission import Admission, Shed
from runtime.batcher import Batcher, BatchItem, Policy, StaleItem, fail_future
from runtime.batches import run_batcher
from runtime.costmodel import CostModel
from runtime.envelope import Reply, Request, Usage, deadline_at
from runtime.hooks import static_hook
from runtime.limiter import DeadlineLimiter
from runtime.logs import get_logger
from runtime.metrics import StageMetrics
from runtime.replicas import Replica, ReplicaSet
from runtime.routing import Route

_mono = time.monotonic


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
        provider = replicas.provider
        # Replicas elsewhere (remote host, Ray actor): an async link, batched where they run.
        self.local = provider.local  # False: a replica elsewhere, called with the Request
        self.is_async = self.spec.is_async or not provider.local
        self.concurrency = provider.concurrency or self.spec.concurrency
        # An async map with no timeout and no retries is awaited directly: the hot path.
        self.fast = self.is_async and self.timeout_s is None and self.retries == 0
        self.downstream_s = 0.0  # expected time the stages after this one need
        self.cost = CostModel()
        self.slot = Admission(  # the one admission slot every shape takes
            self.name, DeadlineLimiter(self.concurrency * max(1, replicas.target)), metrics, opts.on_late
        )
        self.slot.expected_service_s = self.expected_service_s
        self.limiter = self.slot.limiter
        replicas.on_change.append(self._replicas_changed)
        self._tokens_of = static_hook(self.spec, "route_tokens")
        self._known = static_hook(self.spec, "known_result")
        self._priority = static_hook(self.spec, "batch_priority")
        if self._tokens_of is None and not provider.local:
            self._tokens_of = provider.tokens_of()
        self.batcher: Batcher | None = None
        if self.spec.shape is Shape.BATCH and provider.local:
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
                known=self._known_now if self._known is not None else None,
            )

    def _replicas_changed(self, rs: ReplicaSet) -> None:
        """Slots follow the ready replicas; with none ready one slot stays open: items fail
        fast with ``no_replica`` (or retry within their deadline), not hang."""
        self.limiter.resize(self.concurrency * max(1, len(rs.ready)))
        c = rs.counts()
        m = self.metrics
        m.replicas_ready, m.replicas_loading, m.replicas_lost = c["ready"], c["loading"], c["lost"]
        m.replica_rebuilds = rs.rebuilds
        m.prefix = rs.router.stats

    # --- deadlines ------------------------------------------------------------------
    def deadline(self, chain_deadline: float, now: float) -> float:
        """The tighter of the chain's and the node's budgets, less downstream needs."""
        return deadline_at(chain_deadline, self.downstream_s, self.budget_s, now)

    def expected_service_s(self) -> float:
        if self.batcher is not None:
            return self.cost.predict(1) if self.cost.n else 0.0
        return self.metrics.service.mean or 0.0

    def route(self, session: str, args: tuple[Any, ...]) -> Route | None:
        """What the router sees of an item; None when there is nothing to choose from."""
        rs = self.replicas
        if len(rs.ready) < 2 and not rs.router_learns:
            return None
        tokens_of = self._tokens_of
        if tokens_of is None and self.spec.is_class and rs.provider.local and rs.ready:
            tokens_of = getattr(rs.ready[0].instance, "route_tokens", None)
        return Route(session, args, tokens_of)

    # --- serving one item -----------------------------------------------------------
    async def serve(
        self, req: Request, alive: Callable[[], bool] | None = None, reply: Reply | None = None
    ) -> Any:
        """Serve one item (``req``: its arguments, session, epoch, deadline, route) on a
        map or batched map and return its result; what serving it used goes in ``reply``
        when one is given (a host answering a remote caller).

        Raises ``NodeError`` (``Shed``, ``ReplicaLost``, ``NoReplica``, a timeout, the
        node's own failure), or ``StaleItem`` when ``alive()`` turned False while it
        waited (its turn was interrupted or its session ended)."""
        args = req.args
        deadline = req.deadline
        route = req.route
        if self.batcher is not None:
            return await self.submit(args[0], deadline, alive or _always)
        # The admission slot's fast paths (Admission.try_admit/release/served), inlined:
        # every hop pays for them (benchmarks/overhead.py), the rules stay Admission's.
        slot = self.slot
        lim = self.limiter
        if lim.in_use < lim.capacity and not lim._waiters and not slot.shed_late:
            lim.in_use += 1
            t0 = _mono()
        else:
            t0 = await slot.admit(deadline, alive, req.grace_s)
        usage = None
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
                    if self.local:
                        result = await r.instance(*args)
                    else:  # a replica elsewhere takes the whole request, answers a Reply
                        reply = await r.instance.serve(req)
                        result, usage = reply.value, reply.usage
                except Exception as e:
                    raise self._failed(r, e) from e
                finally:
                    r.inflight -= 1  # ReplicaSet.release, inlined for a ready replica
                    if r.state != "ready":
                        rs.released_unready(r)
            else:
                reply = await self.call(req)
                result, usage = reply.value, reply.usage
        finally:
            if lim._waiters or lim.in_use > lim.capacity:
                lim.release()
            else:
                lim.in_use -= 1
        t1 = _mono()
        m = self.metrics
        m.service.observe(t1 - t0)
        m.items += 1
        m.consecutive_errors = 0
        if t1 > deadline:
            m.late += 1
        if reply is not None or (route is not None and route.predicted_cached is not None):
            self._used(route, usage, reply)  # a prefix-routed map (an LLM extractor), a host
        return result

    def _used(self, route: Route | None, usage: Usage | None, reply: Reply | None) -> None:
        """What serving the item used: from the reply of a replica elsewhere, or from the
        local node's report (an LLM engine's cached tokens: the one thing a node in this
        process tells through its context, taken and cleared here), checked against the
        router's prediction and handed on in ``reply``."""
        if usage is None and self.local:
            ctx = current_context()
            if ctx is not None and ctx.cached_tokens is not None:
                usage, ctx.cached_tokens = Usage(ctx.cached_tokens), None
        if reply is not None:
            reply.usage = usage
        if route is not None and usage is not None and usage.cached_tokens is not None:
            self._observe_cache(route, usage.cached_tokens)

    async def serve_stream(self, req: Request, reply: Reply | None = None) -> AsyncGenerator[Any, None]:
        """Serve one item on a streaming map: its outputs as they are produced.

        Use it with ``contextlib.aclosing``: closing it early (an interrupt) closes the
        node's generator and frees the slot and the replica. Counted like ``serve``: a
        finished or interrupted call is an item, a failed one an error."""
        m = self.metrics
        slot = self.slot
        deadline = req.deadline
        route = req.route
        t0 = await slot.admit(deadline, grace_s=req.grace_s)
        try:
            r = self.replicas.acquire(route)
        except BaseException as e:
            slot.release()
            if isinstance(e, Exception):
                raise self._failed(None, e) from e
            raise
        first = True
        ctx = current_context() if self.local else None
        if ctx is not None:
            ctx.cached_tokens = None
        got = Reply()
        failed = False
        try:
            agen = r.instance(*req.args) if self.local else r.instance.serve_stream(req, got)
            async with contextlib.aclosing(agen):
                async for out in agen:
                    if first:
                        m.first_output.observe(_mono() - t0)
                        first = False
                    yield out
        except Exception as e:
            failed = True
            raise self._failed(r, e) from e
        finally:
            self.replicas.release(r)
            slot.release()
            if not failed:
                t1 = _mono()
                slot.served(t0, t1, 1, int(t1 > deadline))
            if not failed and (route is not None or reply is not None):
                self._used(route, got.usage, reply)

    def _observe_cache(self, route: Route, cached: int) -> None:
        """The engine said how many prompt tokens it served from its cache: the router's
        prediction for this item is checked against it (exported with the stage)."""
        stats = self.replicas.router.stats
        if stats is not None:
            tokens = route.tokens
            stats.observe_actual(cached, route.predicted_cached, len(tokens) if tokens is not None else None)

    def _known_now(self, payload: Any) -> Any:
        """The node's ``known_result`` for a queued item, counted as served when known."""
        assert self._known is not None
        known = self._known(payload)
        if known is not None:
            self.metrics.items += 1
        return known

    def submit(self, payload: Any, deadline: float, alive: Callable[[], bool]) -> asyncio.Future[Any]:
        """Queue one item of a batched map; its session awaits the returned future (so it
        can keep feeding the batcher while earlier items are served). An item the node's
        ``known_result`` answers is not queued."""
        assert self.batcher is not None
        if self._known is not None and (known := self._known_now(payload)) is not None:
            fut = asyncio.get_running_loop().create_future()  # not batched: a batch's items
            fut.set_result(known)  # all wait for its slowest
        else:
            rank = self._priority(payload) if self._priority is not None else 0
            fut = self.batcher.submit(payload, deadline, alive, rank)
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

    def failed(self, exc: BaseException, count: int = 1) -> NodeError:
        """A failure of ``count`` items outside a replica call (a bad batch result):
        counted, and said as a ``NodeError``."""
        return self._failed(None, exc, count)

    # --- calling user code ----------------------------------------------------------
    async def call(self, req: Request, count: int = 1) -> Reply:
        """One call; failed attempts are retried with exponential backoff while the retry
        can still finish before the item's deadline (``retries`` times at most)."""
        if self.retries == 0:
            return await self.attempt(req, count)
        deadline = req.deadline

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
                return await self.attempt(req, count)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def attempt(self, req: Request, count: int = 1) -> Reply:
        """One try on a replica the router picks; a failure counted (``count`` items)."""
        rs = self.replicas
        r = rs.acquire(req.route)
        try:
            if self.timeout_s is None:
                return await self._invoke(r.instance, req)
            try:
                with anyio.fail_after(self.timeout_s):
                    return await self._invoke(r.instance, req)
            except TimeoutError as e:
                raise NodeError(
                    self.name, f"timed out after {self.timeout_s * 1000:.0f} ms", code="timeout"
                ) from e
        except Exception as e:
            raise self._failed(r, e, count) from e
        finally:
            rs.release(r)

    async def _invoke(self, inst: Any, req: Request) -> Reply:
        if not self.local:
            reply: Reply = await inst.serve(req)
            return reply
        if self.is_async:
            return Reply(await inst(*req.args))
        # With a timeout the wait must be cancellable: the thread runs on, its result unused.
        return Reply(
            await anyio.to_thread.run_sync(
                functools.partial(inst, *req.args), abandon_on_cancel=self.timeout_s is not None
            )
        )

    async def serve_session(self, session: str, args: tuple[Any, ...]) -> AsyncGenerator[Any, None]:
        """Serve a stream node for one session: one replica held for the session's life,
        its outputs as they come (data items counted; control events passed through). A
        session holds its replica, not an admission slot (a session may last for hours).
        Every data item is a success (it resets the health counter: a node failing for a
        few sessions while it serves the others stays healthy). Use it with
        ``contextlib.aclosing``. Failures (no ready replica, the node's own error, a
        replica that died) are counted and raised as ``NodeError``."""
        rs = self.replicas
        try:
            # The session is what a router may look at (sticky); no item, so no tokens.
            r = rs.acquire(Route(session) if rs.router_learns or len(rs.ready) > 1 else None)
        except Exception as e:
            raise self._failed(None, e) from e
        try:
            agen = r.instance(*args)
            async with contextlib.aclosing(agen):
                async for out in agen:
                    if not isinstance(out, Control):
                        self.slot.served_item()
                    yield out
        except Exception as e:
            raise self._failed(r, e) from e
        finally:
            rs.release(r)
        self.metrics.consecutive_errors = 0  # the session ended well

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
