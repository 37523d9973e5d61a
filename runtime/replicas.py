"""A node's replicas: interchangeable servers behind one interface.

A replica is whatever serves one copy of a node: a loaded model in this process,
a link to another process hosting the node, a Ray actor. Where replicas come from
is a ``Provider``'s job (start one, stop one, tell a fatal error); which replica
serves an item is a router's (runtime/routing.py). The set in between keeps the
state of each replica and supervises them:

- ``acquire(route)`` gives a ready replica (never a loading or lost one) and counts
  its load; ``release`` gives it back;
- ``lost(replica, exc)`` takes a replica whose model died out of service at once;
  the supervisor (``run``, owned by the runtime's task group) stops it and starts a
  new one with exponential backoff, ``max_restarts`` times at most, and the new one
  takes work only once it is ready;
- ``scale_to(n)`` asks for ``n`` replicas (the autoscaler's lever): new ones load in
  the background and are counted as cold starts; surplus ones drain, then stop.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol, cast

import anyio
from anyio.abc import TaskStatus
from tenacity import AsyncRetrying, stop_after_attempt, stop_never, wait_exponential

from chains.errors import ModelError, NoReplica, ReplicaLost
from chains.results import checked
from chains.spec import NodeSpec
from runtime.logs import get_logger
from runtime.routing import LeastBusy, Route, Router

ReplicaState = Literal["loading", "ready", "lost", "draining", "stopped"]


class Replica:
    """One server of a node, with its load and its state."""

    __slots__ = ("id", "inflight", "instance", "restarts", "started", "state")

    def __init__(self, rid: int):
        self.id = rid
        self.instance: Any = None
        self.inflight = 0
        self.restarts = 0
        self.state: ReplicaState = "loading"
        self.started = time.monotonic()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def __repr__(self) -> str:
        return f"<replica {self.id} {self.state} inflight={self.inflight}>"


class Provider(Protocol):
    """Where a node's replicas come from: this process, links to hosts, Ray actors.

    The whole contract, so the runtime never sniffs for capabilities: ``local`` says
    whether replicas run here (a batched map forms its batches where its replicas
    are, so a stage whose replicas are elsewhere forwards items one by one, and its
    concurrency is the provider's ``concurrency``); ``run`` holds the tasks the
    provider owns (remote links) for the runtime's life; ``watch`` gives it the set it
    serves (a dropped link reports its replica lost at once); ``session_closed`` lets
    replicas that keep per-session state elsewhere drop it; ``tokens_of`` gives the
    driver-side ``route_tokens`` of a node whose replicas are not here.

    What ``start`` returns is what the stage calls. Here, the node itself (called with
    the item's arguments). Elsewhere (``local = False``), a replica call takes the
    item's whole ``Request`` (runtime/envelope.py: arguments, session, epoch, deadline,
    route): ``serve(req) -> Reply`` for a map or batched map (the value and its usage,
    such as an engine's cached tokens), ``serve_stream(req, reply)`` for a streaming
    map (its outputs; ``reply.usage`` filled at the end), and, for a stream node, a call
    with the session's arguments (a session, not an item).

    A provider may subclass it to take the in-process defaults of the optional parts."""

    local: bool = True
    concurrency: int | None = None  # calls in flight per replica; None: the node's own
    replicas: int | None = None  # replicas to start with; None: the node's own count

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the provider's tasks until cancelled (report started first)."""
        task_status.started()

    def watch(self, replicas: ReplicaSet) -> None:
        """The set this provider serves (to report a replica it sees die)."""
        return None

    async def start(self, rid: int) -> Any:
        """Load one replica; return what the stage calls (raises ModelError if it cannot)."""
        ...

    async def stop(self, instance: Any) -> None:
        """Release one replica's resources (best effort: it may already be dead)."""
        ...

    def is_lost(self, instance: Any, exc: BaseException) -> bool:
        """Does ``exc``, raised by a call on ``instance``, mean the replica is dead?"""
        ...

    def session_closed(self, instances: list[Any], session_id: str) -> None:
        """A session ended: replicas holding its state elsewhere drop it."""
        return None

    def tokens_of(self) -> Callable[..., Any] | None:
        """``route_tokens`` for items of this node when its replicas cannot be asked here."""
        return None


async def _maybe_await(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


class LocalProvider(Provider):
    """Replicas in this process: a class node's instance (its ``__init__`` in a worker
    thread, then ``setup()``), or a function node itself."""

    def __init__(self, spec: NodeSpec, template: Any):
        self.spec = spec
        self.template = template

    async def start(self, rid: int) -> Any:
        if not self.spec.is_class:
            return checked(self.spec, self.spec.impl)  # results checked against the annotation
        try:
            inst = await anyio.to_thread.run_sync(self.template.instantiate)
            setup = getattr(inst, "setup", None)
            if setup is not None:
                await _maybe_await(setup())
        except Exception as e:
            if _started_a_process_while_importing(e):
                raise ModelError(
                    f"node {self.spec.name!r} failed to start: its engine starts worker processes, "
                    "and each re-runs the script that defines the chain, whose top-level code starts "
                    'the chain again. Put that code under `if __name__ == "__main__":` (the chain '
                    "and node definitions may stay at top level), or run the file with `chains run`."
                ) from e
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"node {self.spec.name!r} failed to start: {type(e).__name__}: {e}") from e
        return checked(self.spec, inst)

    async def stop(self, instance: Any) -> None:
        close = getattr(instance, "close", None) if self.spec.is_class else None
        if close is not None:
            with anyio.CancelScope(shield=True):
                await _maybe_await(close())

    def is_lost(self, instance: Any, exc: BaseException) -> bool:
        if isinstance(exc, ReplicaLost):
            return True
        alive = getattr(instance, "alive", None) if self.spec.is_class else None
        return alive is not None and not alive()


def _started_a_process_while_importing(exc: BaseException | None) -> bool:
    """multiprocessing's refusal to start a process from a script re-run by a spawned
    child (no main guard), wherever it sits in the chain of causes (an engine's loader
    wraps it in its own error, whose advice would be wrong)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, RuntimeError) and "bootstrapping phase" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


_rids = itertools.count(1)


class ReplicaSet:
    """The replicas of one node implementation, shared by every stage that runs it."""

    def __init__(
        self,
        spec: NodeSpec,
        provider: Provider,
        *,
        count: int | None = None,
        router: Router | None = None,
        max_restarts: int | None = None,
        backoff_s: tuple[float, float] = (0.2, 10.0),
    ):
        self.spec = spec
        self.name = spec.name
        self.provider = provider
        provider.watch(self)
        self.router: Router = router or LeastBusy()
        self.router_learns = self.router.learns
        opts = spec.options
        self.target = count if count is not None else max(opts.replicas, opts.min_replicas or 1)
        self.max_restarts = spec.options.max_restarts if max_restarts is None else max_restarts
        self.backoff_s = backoff_s
        self.replicas: list[Replica] = []
        self.ready: list[Replica] = []  # the routable ones, kept in step with states
        self.rebuilds = 0  # replicas started again after a loss
        self.cold_starts: list[float] = []  # seconds each background start took to be ready
        self.on_change: list[Callable[[ReplicaSet], None]] = []  # stages resize their limiters
        self.log = get_logger(node=spec.name, component="replicas")
        self._wake = anyio.Event()
        self._closed = False

    # --- what stages use ----------------------------------------------------------------
    def acquire(self, route: Route | None = None) -> Replica:
        """A ready replica for one call (the router's choice); ``release`` it after."""
        ready = self.ready
        if len(ready) == 1 and not self.router_learns:
            r = ready[0]
        elif ready:
            r = cast(Replica, self.router.choose(ready, route))  # one of ``ready``
        else:
            raise self._none_ready()
        r.inflight += 1
        return r

    def release(self, r: Replica) -> None:
        r.inflight -= 1
        if r.state != "ready":
            self.released_unready(r)

    def released_unready(self, r: Replica) -> None:
        """A call ended on a replica that is leaving: the last one lets it stop."""
        if r.state == "draining" and r.inflight == 0:
            self._wake.set()

    def lost(self, r: Replica, exc: BaseException) -> None:
        """Take ``r`` out of service now; the supervisor rebuilds it."""
        if r.state in ("lost", "stopped"):
            return
        self.log.warning("replica_lost", replica=r.id, error=f"{type(exc).__name__}: {exc}")
        self._set_state(r, "lost")
        self.router.forget(r)
        self._wake.set()

    def is_lost(self, r: Replica, exc: BaseException) -> bool:
        return self.provider.is_lost(r.instance, exc)

    @property
    def instances(self) -> list[Any]:
        return [r.instance for r in self.replicas if r.instance is not None]

    @property
    def load(self) -> int:
        return sum(r.inflight for r in self.ready)

    def counts(self) -> dict[str, int]:
        out = {"loading": 0, "ready": 0, "lost": 0, "draining": 0}
        for r in self.replicas:
            if r.state in out:
                out[r.state] += 1
        return out

    def _none_ready(self) -> NoReplica:
        c = self.counts()
        return NoReplica(
            self.name,
            f"no replica is ready ({c['loading']} loading or being rebuilt, {c['lost']} lost)",
        )

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the first replicas before serving (a model that cannot load is an error)."""
        for _ in range(self.target):
            r = Replica(next(_rids))
            self.replicas.append(r)
            r.instance = await self.provider.start(r.id)
            self._set_state(r, "ready")

    async def run(self) -> None:
        """Supervise: rebuild lost replicas, follow ``scale_to``, stop drained ones.
        Runs in the runtime's task group until it is cancelled."""
        async with anyio.create_task_group() as tg:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                for r in list(self.replicas):
                    if r.state == "lost":
                        self._set_state(r, "loading")
                        tg.start_soon(self._rebuild, r)
                    elif r.state == "draining" and r.inflight == 0:
                        self._set_state(r, "stopped")
                        self.replicas.remove(r)
                        tg.start_soon(self._stop, r.instance)
                live = [r for r in self.replicas if r.state in ("loading", "ready", "lost")]
                for _ in range(self.target - len(live)):
                    r = Replica(next(_rids))
                    self.replicas.append(r)
                    self._notify()
                    tg.start_soon(self._cold_start, r)
                surplus = len(live) - self.target
                if surplus > 0:
                    # Drain the newest first: loading ones before ready ones, idle before busy.
                    order = sorted(live, key=lambda r: (r.state == "ready", r.inflight, -r.id))
                    for r in order[:surplus]:
                        self._set_state(r, "draining")
                        self.router.forget(r)
                    self._wake.set()

    def scale_to(self, n: int) -> None:
        """Ask for ``n`` replicas (at least 1); the supervisor starts or drains the rest."""
        n = max(1, n)
        if n != self.target:
            self.target = n
            self._wake.set()

    async def close(self) -> None:
        self._closed = True
        for r in self.replicas:
            if r.instance is not None:
                await self._stop(r.instance)
            r.state = "stopped"
        self.replicas = []
        self.ready = []

    # --- inside the supervisor ------------------------------------------------------------
    async def _cold_start(self, r: Replica) -> None:
        t0 = time.monotonic()
        try:
            r.instance = await self.provider.start(r.id)
        except Exception as e:
            self.log.warning("replica_start_failed", replica=r.id, error=str(e))
            self._set_state(r, "lost")  # retried with backoff like a lost one
            self._wake.set()
            return
        if r.state == "loading":
            self.cold_starts.append(time.monotonic() - t0)
            self._set_state(r, "ready")
        else:  # drained while it loaded
            await self._stop(r.instance)

    async def _rebuild(self, r: Replica) -> None:
        old, r.instance = r.instance, None
        if old is not None:
            await self._stop(old)
        stop = (
            stop_never
            if self.max_restarts < 0
            else stop_after_attempt(max(1, self.max_restarts - r.restarts))
        )
        lo, hi = self.backoff_s
        try:
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=lo, min=lo, max=hi), stop=stop, reraise=True
            ):
                with attempt:
                    if self.max_restarts >= 0 and r.restarts >= self.max_restarts:
                        raise ModelError(
                            f"node {self.name!r}: replica {r.id} used its {self.max_restarts} restarts"
                        )
                    r.restarts += 1
                    self.rebuilds += 1
                    r.instance = await self.provider.start(r.id)
        except Exception as e:
            self.log.error("replica_given_up", replica=r.id, error=str(e))
            self._set_state(r, "stopped")
            self.replicas.remove(r)
            return
        if r.state == "loading":
            self.log.info("replica_rebuilt", replica=r.id, restarts=r.restarts)
            self._set_state(r, "ready")

    async def _stop(self, instance: Any) -> None:
        try:
            await self.provider.stop(instance)
        except Exception as e:  # a failing close must not hide the others
            self.log.warning("close_failed", error=repr(e))

    def _set_state(self, r: Replica, state: ReplicaState) -> None:
        r.state = state
        self.ready = [x for x in self.replicas if x.state == "ready"]
        self._notify()

    def _notify(self) -> None:
        for cb in self.on_change:
            cb(self)
