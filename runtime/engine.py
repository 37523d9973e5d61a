"""The runtime of one chain: it owns the stages (replicas, batchers) and the
sessions, and it is the one place that admits or refuses a new session.

Use it as an async context manager; while it is open, ``chains.call`` and
``chains.stream`` on its chain run as its sessions (so they share its models and
batches). Every task it starts lives in its task group and ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import anyio

from chains.errors import ChainError, NodeError, Overloaded
from chains.messages import ErrorEvent
from chains.outputs import ERROR, EVENTS, Output
from chains.results import unwrapped
from chains.spec import checkable
from runtime.autoscale import Autoscaler
from runtime.batcher import Policy
from runtime.calls import DirectCalls
from runtime.envelope import Envelope  # noqa: F401  (re-exported for transports)
from runtime.logs import get_logger
from runtime.metrics import COLLECTOR, ChainMetrics
from runtime.placement import Placed, Placement, make_stages
from runtime.session import Session

_active: contextvars.ContextVar[dict[int, Runtime]] = contextvars.ContextVar("chains_runtimes", default={})  # noqa: B039


def _reraise_body_error(group: BaseExceptionGroup, body_error: BaseException | None) -> None:
    """A task group wraps an error raised in the ``async with`` body it hosts: give the
    caller their own exception back, not a group around it (when nothing else failed)."""
    if body_error is None:
        return
    rest = group.subgroup(
        lambda e: (
            not isinstance(e, BaseExceptionGroup)
            and e is not body_error
            and not isinstance(e, asyncio.CancelledError)
        )
    )
    if rest is None:
        raise body_error.with_traceback(body_error.__traceback__) from None


def _raise_single(group: BaseExceptionGroup) -> None:
    """Raise the one real error inside nested task groups (cancellations aside)."""
    real = group.subgroup(
        lambda e: not isinstance(e, BaseExceptionGroup) and not isinstance(e, asyncio.CancelledError)
    )
    if real is None:
        return
    leaves: list[BaseException] = []
    stack: list[BaseException] = [real]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    if len(leaves) == 1:
        raise leaves[0].with_traceback(leaves[0].__traceback__) from None


def active_runtime(chain: Any) -> Runtime | None:
    """The runtime serving ``chain`` in this context, if one is open."""
    return _active.get().get(id(chain))


class Runtime:
    def __init__(
        self,
        chain: Any,
        *,
        max_sessions: int | None = None,
        max_queue: int | None = None,
        batch_policy: Policy = "deadline",
        register_metrics: bool = True,
        placement: Placement | None = None,
    ):
        if isinstance(chain, Placed):  # a chain with nodes served elsewhere (--remote, --ray)
            placement = chain.placement if placement is None else chain.placement.merged(placement)
            chain = chain.chain
        graph = getattr(chain, "graph", None)
        if graph is None:
            raise ChainError(f"expected a @chains.chain, got {chain!r}")
        self.chain = chain
        self.graph = graph
        self.max_sessions = max_sessions
        self.max_queue = max_queue
        self.metrics = ChainMetrics(graph.name)
        self._register = register_metrics
        self.placement = placement or Placement()
        self.stages, self._replica_sets = make_stages(
            graph.name, graph.nodes, self.metrics.stage, batch_policy, self.placement
        )
        self._session_hooks = [rs for rs in self._replica_sets if not rs.provider.local]
        self.budget_s = chain.budget_ms / 1000.0 if getattr(chain, "budget_ms", None) else None
        self.sessions: dict[str, Session] = {}
        self.autoscalers: dict[str, Autoscaler] = {}  # by node, for autoscaled nodes
        self._single_inputs = not any(inp.stream for inp in graph.inputs)
        self._direct = DirectCalls(self) if DirectCalls.eligible(graph) else None
        self.log = get_logger(chain=graph.name)
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: Any = None
        self._token: contextvars.Token | None = None

    # --- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._close_replicas)
            t0 = time.monotonic()
            for rs in self._replica_sets:
                if not rs.provider.local:  # a provider that owns tasks (remote links) runs them here
                    await self._tg.start(rs.provider.run, name=f"provider:{rs.name}")
                await rs.start()
            self.log.info("started", nodes=len(self.stages), load_s=round(time.monotonic() - t0, 3))
            for rs in self._replica_sets:
                self._tg.start_soon(rs.run, name=f"replicas:{rs.name}")
                if rs.spec.options.autoscaled:
                    scaler = Autoscaler(rs, [st for st in self.stages if st.replicas is rs])
                    self.autoscalers[rs.name] = scaler
                    self._tg.start_soon(scaler.run, name=f"autoscaler:{rs.name}")
            for st in self.stages:
                if st.batcher is not None:
                    self._tg.start_soon(st.run_batcher, name=f"batcher:{st.name}")
            self._tg.start_soon(self._refresh_budgets, name="budgets")
        except BaseException:
            self._tg.cancel_scope.cancel()  # a provider's task (remote links) would keep it open
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        if self._register:
            COLLECTOR.register(self.metrics)
        active = dict(_active.get())
        active[id(self.chain)] = self
        self._token = _active.set(active)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        if self._token is not None:
            _active.reset(self._token)
            self._token = None
        if self._register:
            COLLECTOR.unregister(self.metrics)
        if self._direct is not None:
            self._direct.cancel_all()
        live = list(self.sessions.values())
        for sess in live:
            sess.cancel()  # nothing a runtime serves outlives it
        # Sessions run in their callers' tasks: let them end before the replicas close.
        with anyio.move_on_after(5.0, shield=True):
            for sess in live:
                await sess.done.wait()
        assert self._stack is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._stack.__aexit__(*exc)
        except BaseExceptionGroup as group:
            _reraise_body_error(group, exc[1])
            raise

    async def _close_replicas(self) -> None:
        for rs in self._replica_sets:
            await rs.close()

    async def _refresh_budgets(self) -> None:
        """Keep each stage's view of what the stages after it need (longest path)."""
        nodes = self.graph.nodes
        while True:
            need = [0.0] * len(nodes)
            for n in reversed(nodes):
                after = 0.0
                for c, _ in n.consumers:
                    after = max(after, need[c])
                self.stages[n.index].downstream_s = after
                need[n.index] = after + self.stages[n.index].expected_service_s()
            await anyio.sleep(0.25)

    # --- admission ------------------------------------------------------------------
    def admit(self, extra: int = 0) -> None:
        """Refuse a new session (or direct call: ``extra`` of them are live) over the limits."""
        if self.max_sessions is not None and len(self.sessions) + extra >= self.max_sessions:
            self.metrics.sessions_refused += 1
            raise Overloaded(f"chain {self.graph.name!r} is at its limit of {self.max_sessions} sessions")
        if self.max_queue is not None:
            for st in self.stages:
                queued = len(st.batcher) if st.batcher is not None else st.limiter.waiting
                if queued >= self.max_queue:
                    self.metrics.sessions_refused += 1
                    raise Overloaded(f"stage {st.name!r} has {queued} items queued (limit {self.max_queue})")

    @contextlib.asynccontextmanager
    async def session(self, meta: dict[str, Any] | None = None) -> AsyncIterator[Session]:
        """Open a session: feed it with ``send``/``close_input``, read it with ``receive``.

        ``meta`` holds session settings every node can read via ``chains.context().meta``
        (the transport puts the client's ``output_sample_rate`` there)."""
        if self._tg is None:
            raise RuntimeError("the runtime is not running: use `async with Runtime(chain)`")
        self.admit(self._direct.active if self._direct is not None else 0)
        sess = Session(
            self.graph,
            self.stages,
            budget_s=self.budget_s,
            metrics=self.metrics,
            on_close=self._forget,
            meta=meta,
        )
        self.sessions[sess.id] = sess
        self.metrics.sessions_total += 1
        self.metrics.sessions_active = len(self.sessions)
        body_error: BaseException | None = None
        try:
            # The scope lets the runtime end the session (and its caller's body) at exit;
            # the task group owns the session's node tasks (Session.start says why asyncio's).
            with anyio.CancelScope() as scope:
                sess._scope = scope
                async with asyncio.TaskGroup() as tg:
                    sess.start(tg)
                    try:
                        yield sess
                    except BaseException as e:
                        body_error = e
                        raise
                    finally:
                        sess.stop()
        except BaseExceptionGroup as group:
            _reraise_body_error(group, body_error)
            raise
        finally:
            sess._close()

    def _forget(self, sess: Session) -> None:
        self.sessions.pop(sess.id, None)
        self.metrics.sessions_active = len(self.sessions)
        self.session_ended(sess.id)

    def session_ended(self, sid: str) -> None:
        """A session or a direct call ended: replicas that keep per-session state
        elsewhere (a remote host) drop it now."""
        for rs in self._session_hooks:
            rs.provider.session_closed(rs.instances, sid)

    def models(self, node: str) -> list[Any]:
        """The loaded objects serving ``node`` (each live replica's instance, not the
        result check around it), for tests and benchmarks that inspect or tune a model
        in place."""
        found = {
            id(m): m for st in self.stages if st.name == node for m in map(unwrapped, st.replicas.instances)
        }
        return list(found.values())

    # --- one-shot helpers -----------------------------------------------------------
    async def _feed(self, sess: Session, inputs: tuple[Any, ...]) -> None:
        for i, (inp, value) in enumerate(zip(self.graph.inputs, inputs, strict=True)):
            if inp.stream:
                if hasattr(value, "__aiter__"):
                    async for item in value:
                        await sess.send(item, i)
                elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
                    for item in value:
                        await sess.send(item, i)
                else:
                    raise TypeError(
                        f"chain input {inp.name!r} is a Stream: pass an iterable or async iterable, "
                        f"got {type(value).__name__}"
                    )
            else:
                await sess.send(value, i)
            sess.close_input(i)

    def _check_arity(self, inputs: tuple[Any, ...]) -> None:
        """Refuse wrong inputs before a session starts: their count and single values' types."""
        want = len(self.graph.inputs)
        if len(inputs) != want:
            names = ", ".join(i.name for i in self.graph.inputs)
            raise TypeError(f"chain {self.graph.name!r} takes {want} input(s) ({names}), got {len(inputs)}")
        for inp, value in zip(self.graph.inputs, inputs, strict=True):
            t = inp.type
            if not inp.stream and checkable(t) and not isinstance(value, t):
                raise TypeError(
                    f"chain {self.graph.name!r} input {inp.name!r} wants {t.__name__}, "
                    f"got {type(value).__name__}"
                )

    async def pump(self, inputs: tuple[Any, ...], tx: Any) -> None:
        """Run one session on ``inputs`` and send its outputs to ``tx``."""
        self._check_arity(inputs)
        try:
            async with tx, self.session() as sess, anyio.create_task_group() as tg:
                tg.start_soon(self._feed, sess, inputs)
                async for out in sess:
                    await tx.send(out)
        except BaseExceptionGroup as group:
            _raise_single(group)
            raise

    def stream(self, *inputs: Any) -> AsyncIterator[Output]:
        """Run one session on ``inputs``; yield its outputs as they are produced."""
        return session_outputs(self._itself, inputs)

    async def _itself(self) -> Runtime:
        return self

    async def call(self, *inputs: Any) -> Any:
        """Run one session to completion and return its outputs."""
        self._check_arity(inputs)
        if self._direct is not None:
            return self._shape_result(await self._direct.call(inputs))
        collected: dict[str, list[Any]] = {k: [] for k in self.graph.outputs}
        failure: NodeError | None = None

        async def collect(sess: Session) -> None:
            nonlocal failure
            async for out in sess:
                if out.name == ERROR:
                    ev: ErrorEvent = out.value
                    failure = next(
                        (
                            e
                            for e in sess.failures
                            if (e.node, e.code, e.detail) == (ev.node, ev.code, ev.message)
                        ),
                        None,
                    ) or NodeError(ev.node, ev.message, code=ev.code)
                    return
                if out.name == EVENTS:
                    continue
                collected[out.name].append(out.value)

        try:
            async with self.session() as sess:
                if self._single_inputs:
                    # Single values fit their edges: sent inline, no feeding task (the
                    # one-session-per-request path stays cheap).
                    for i, value in enumerate(inputs):
                        await sess.send(value, i)
                    sess.close_inputs()
                    await collect(sess)
                else:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._feed, sess, inputs)
                        await collect(sess)
                        tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            _raise_single(group)
            raise
        if failure is not None:
            raise failure
        result = {}
        for k, h in self.graph.outputs.items():
            vals = collected[k]
            result[k] = vals if h.stream else (vals[0] if vals else None)
        return self._shape_result(result)

    def _shape_result(self, result: dict[str, Any]) -> Any:
        """One output as its value, numbered outputs as a tuple, named ones as a dict."""
        keys = list(result)
        if keys == ["output"]:
            return result["output"]
        if all(k.isdigit() for k in keys):
            return tuple(result[str(i)] for i in range(len(keys)))
        return result


async def session_outputs(
    runtime_for: Callable[[], Awaitable[Runtime]], inputs: tuple[Any, ...]
) -> AsyncIterator[Output]:
    """Outputs of one session as they come, on the runtime ``runtime_for()`` gives.

    The session runs in a task this generator owns (cancelled and awaited when the
    generator finishes or is closed), so no task group is held open across a
    ``yield``: a consumer's own cancellation never lands inside the session.
    """
    tx, rx = anyio.create_memory_object_stream[Output](0)

    async def run() -> None:
        rt = await runtime_for()
        await rt.pump(inputs, tx)

    task = asyncio.ensure_future(run())
    try:
        async with rx:
            async for out in rx:
                yield out
        await task
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["Runtime", "active_runtime", "session_outputs"]
