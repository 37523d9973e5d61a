"""The hosting side of a remote stage: ``chains serve FILE --only NODE --port N``.

It runs one node's stage (its replicas, its batcher, its deadline-ordered
concurrency limit, its metrics: the same ``runtime.stage.Stage`` an in-process
runtime uses) and serves it to every main process that links to it. Per-session
node state (``chains.context().state``) lives here, keyed by the caller's link
and session id, and is dropped when the caller says the session ended or the
link closes. The same port answers ``GET /healthz`` and ``GET /metrics``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chains.context import NodeContext, reset_context, set_context
from chains.errors import ChainError
from chains.spec import Shape
from runtime.logs import get_logger
from runtime.metrics import COLLECTOR, ChainMetrics, prometheus_text
from runtime.stage import Shed, make_stages
from transport.http import PROMETHEUS, TEXT, is_websocket, response
from transport.link import (
    PROTOCOL_VERSION,
    Call,
    Cancel,
    Codec,
    Credits,
    End,
    Fail,
    Feed,
    FeedCredit,
    FeedEnd,
    Hello,
    Inbox,
    Item,
    ItemCredit,
    Open,
    Outbox,
    Refuse,
    Result,
    SessionEnd,
    Welcome,
    decode_frames,
    encode_frames,
    error_of,
    payload_types,
)

_link_ids = itertools.count(1)


class _HostSession:
    __slots__ = ("epoch", "meta", "state")

    def __init__(self, meta: dict[str, Any] | None):
        self.state: dict[str, Any] = {}
        self.epoch = 0
        self.meta: dict[str, Any] = dict(meta or {})


class _FeedStream:
    """What a remote stream node iterates: the ``Feed`` frames of one parameter.
    Consuming items hands credits back to the caller in half-window steps."""

    def __init__(self, link: _HostLink, call_id: int, window: int):
        self._inbox = Inbox()
        self._link = link
        self._id = call_id
        self._step = max(1, window // 2)
        self._consumed = 0

    def put(self, item: Any) -> None:
        self._inbox.put(item)

    def __len__(self) -> int:
        return len(self._inbox)

    def __aiter__(self) -> _FeedStream:
        return self

    async def __anext__(self) -> Any:
        item = await self._inbox.get()
        if item is _END:
            self._inbox.put(_END)  # stay ended
            raise StopAsyncIteration
        self._consumed += 1
        if self._consumed >= self._step:
            self._link.out.put(FeedCredit(self._id, self._consumed))
            self._consumed = 0
        return item


_END = object()


class NodeHost:
    """One node's stage, served to any number of links."""

    def __init__(self, chain: Any, node_name: str, *, calls: int = 256, feed_window: int = 16):
        graph = chain.graph
        self.chain_name = graph.name
        self.gnode = graph.node(node_name)
        self.spec = self.gnode.spec
        self.shape = self.spec.shape
        self.calls = calls
        self.feed_window = feed_window
        self.metrics = ChainMetrics(f"{graph.name}.{node_name}")
        stages, self._sets = make_stages(graph.name, [self.gnode], self.metrics.stage)
        self.stage = stages[0]
        self.codec = Codec(payload_types(self.spec), node_name)
        budget_ms = self.spec.options.budget_ms or getattr(chain, "budget_ms", None)
        self.budget_s = budget_ms / 1000.0 if budget_ms else None
        self.links: set[_HostLink] = set()
        self.stats = {
            "calls": 0,
            "streams": 0,
            "cancelled": 0,
            "failed": 0,
            "inflight": 0,
            "max_inflight": 0,
            "max_feed_backlog": 0,
            "budgeted_calls": 0,  # calls that came with the item's remaining budget
        }
        self.log = get_logger(chain=graph.name, node=node_name, component="remote_host")
        self._tg: Any = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[NodeHost]:
        for rs in self._sets:
            await rs.start()
        COLLECTOR.register(self.metrics)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self.stage.batcher is not None:
                    tg.start_soon(self.stage.run_batcher, name=f"batcher:{self.stage.name}")
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            COLLECTOR.unregister(self.metrics)
            for rs in self._sets:
                await rs.close()

    def deadline(self, budget_ms: float | None = None) -> float:
        """The caller's deadline for the item (its remaining budget, when sent), tightened
        by this node's own budget."""
        now = time.monotonic()
        d = now + self.budget_s if self.budget_s is not None else float("inf")
        if budget_ms is not None:
            d = min(d, now + budget_ms / 1000.0)
        return d

    async def handle(self, ws: ServerConnection) -> None:
        """One caller's link: handshake, then frames until it closes."""
        try:
            first = decode_frames(await ws.recv(decode=False))
        except Exception:
            return
        hello = first[0] if first else None
        if not isinstance(hello, Hello):
            return
        problem = self._check(hello)
        if problem is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_frames([Refuse(problem)]))
            return
        link = _HostLink(self, ws, hello.out_window)
        self.links.add(link)
        try:
            await ws.send(
                encode_frames([Welcome(self.gnode.name, self.shape.value, self.calls, self.feed_window)])
            )
            await link.run()
        except ConnectionClosed:
            pass
        finally:
            self.links.discard(link)

    def _check(self, hello: Hello) -> str | None:
        if hello.version != PROTOCOL_VERSION:
            return f"link protocol version {hello.version} is not {PROTOCOL_VERSION}"
        if hello.node != self.gnode.name:
            return f"this process serves node {self.gnode.name!r}, not {hello.node!r}"
        if hello.impl != self.spec.qualname.split(":")[-1] or hello.shape != self.shape.value:
            return (
                f"node {hello.node!r} here is {self.spec.qualname.split(':')[-1]} ({self.shape.value}), "
                f"the caller expects {hello.impl} ({hello.shape}): are both running the same chain file?"
            )
        return None


class _HostLink:
    """The state of one caller: its sessions, its calls in flight, its outbox."""

    def __init__(self, host: NodeHost, ws: ServerConnection, out_window: int):
        self.host = host
        self.ws = ws
        self.id = next(_link_ids)
        self.out = Outbox()
        self.out_window = out_window
        self.sessions: dict[str, _HostSession] = {}
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.cancelled: set[int] = set()
        self.item_credits: dict[int, Credits] = {}
        self.feeds: dict[int, list[_FeedStream | None]] = {}
        self._open_sessions: dict[int, _HostSession] = {}
        self.closed = False

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
            try:
                async for raw in self.ws:
                    if isinstance(raw, str):
                        continue
                    for f in decode_frames(raw):
                        self._dispatch(f, tg)
            finally:
                self.closed = True
                self.sessions.clear()
                tg.cancel_scope.cancel()

    async def _writer(self) -> None:
        while True:
            frames = await self.out.take()
            await self.ws.send(encode_frames(frames))

    def session(self, sid: str, epoch: int, meta: dict[str, Any] | None) -> _HostSession:
        s = self.sessions.get(sid)
        if s is None:
            s = self.sessions[sid] = _HostSession(meta)
        elif meta:
            s.meta.update(meta)
        if epoch > s.epoch:
            s.epoch = epoch
        return s

    def _dispatch(self, f: Any, tg: Any) -> None:
        if isinstance(f, Call):
            tg.start_soon(self._call, f)
        elif isinstance(f, Feed):
            streams = self.feeds.get(f.id)
            fs = streams[f.param] if streams is not None and 0 <= f.param < len(streams) else None
            if fs is not None:
                fs.put(self.host.codec.decode(f.value))
                stats = self.host.stats
                if len(fs) > stats["max_feed_backlog"]:
                    stats["max_feed_backlog"] = len(fs)
                sess = self._open_sessions.get(f.id)
                if sess is not None and f.epoch > sess.epoch:
                    sess.epoch = f.epoch
        elif isinstance(f, FeedEnd):
            streams = self.feeds.get(f.id)
            fs = streams[f.param] if streams is not None and 0 <= f.param < len(streams) else None
            if fs is not None:
                fs.put(_END)
        elif isinstance(f, ItemCredit):
            c = self.item_credits.get(f.id)
            if c is not None:
                c.grant(f.n)
        elif isinstance(f, Open):
            try:
                prepared = self._prepare_open(f)
            except Exception as e:
                self.out.put(Fail(f.id, *error_of(e)))
                return
            tg.start_soon(self._open, f, prepared)
        elif isinstance(f, Cancel):
            scope = self.scopes.get(f.id)
            if scope is not None:
                scope.cancel()
            else:
                self.cancelled.add(f.id)
        elif isinstance(f, SessionEnd):
            self.sessions.pop(f.session, None)

    # --- calls ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _cancellable(self, call_id: int) -> Iterator[anyio.CancelScope]:
        """A cancel scope the caller's Cancel frame reaches (one that came first applies)."""
        with anyio.CancelScope() as scope:
            if call_id in self.cancelled:
                self.cancelled.discard(call_id)
                scope.cancel()
            self.scopes[call_id] = scope
            yield scope

    async def _call(self, f: Call) -> None:
        host = self.host
        stage = host.stage
        codec = host.codec
        sess = self.session(f.session, f.epoch, f.meta)
        stats = host.stats
        stats["calls"] += 1
        if f.budget_ms is not None:
            stats["budgeted_calls"] += 1
        stats["inflight"] += 1
        stats["max_inflight"] = max(stats["max_inflight"], stats["inflight"])
        token = set_context(NodeContext(f.session, stage.name, sess.state, lambda: sess.epoch, sess.meta))
        terminal = False
        try:
            with self._cancellable(f.id) as scope:
                try:
                    args = tuple(codec.decode(a) for a in f.args)
                    deadline = host.deadline(f.budget_ms)
                    if host.shape is Shape.STREAM_MAP:
                        await self._stream_call(f.id, args, deadline)
                        self.out.put(End(f.id))
                    else:
                        result = await self._map_call(args, sess, f.epoch, deadline)
                        self.out.put(Result(f.id, None if result is None else codec.encode(result)))
                    terminal = True
                except Exception as e:
                    stats["failed"] += 1
                    self.out.put(Fail(f.id, *error_of(e)))
                    terminal = True
            if scope.cancelled_caught:
                stats["cancelled"] += 1
        finally:
            reset_context(token)
            self.scopes.pop(f.id, None)
            stats["inflight"] -= 1
            if not terminal:
                self.out.put(End(f.id))  # cancelled: the terminal frame returns the caller's credit

    async def _map_call(self, args: tuple[Any, ...], sess: _HostSession, epoch: int, deadline: float) -> Any:
        host = self.host
        stage = host.stage
        m = stage.metrics
        if stage.batcher is not None:
            return await stage.batcher.submit(
                args[0], deadline, lambda: sess.epoch == epoch and not self.closed
            )
        t0 = time.monotonic()
        await stage.limiter.acquire(deadline)
        t1 = time.monotonic()
        m.queue_wait.observe(t1 - t0)
        if stage.shed_late and t1 + stage.expected_service_s() > deadline:
            stage.limiter.release()
            m.shed += 1
            raise Shed(stage.name, t1 + stage.expected_service_s() - deadline)
        replicas = stage.replicas
        slot = replicas.acquire()
        try:
            inst = replicas.instances[slot]
            try:
                result = await stage.call(inst, args)
            except Exception:
                m.errors += 1
                m.consecutive_errors += 1
                raise
        finally:
            replicas.release(slot)
            stage.limiter.release()
        t2 = time.monotonic()
        m.service.observe(t2 - t1)
        m.items += 1
        m.consecutive_errors = 0
        if t2 > deadline:
            m.late += 1
        return result

    async def _stream_call(self, call_id: int, args: tuple[Any, ...], deadline: float) -> None:
        stage = self.host.stage
        credits = self.item_credits[call_id] = Credits(self.out_window)
        await stage.limiter.acquire(deadline)
        t0 = time.monotonic()
        slot = stage.replicas.acquire()  # least busy, as in-process streaming calls do
        try:
            agen = stage.open_stream(stage.replicas.instances[slot], args)
            async with contextlib.aclosing(agen):
                async for out in agen:
                    await credits.acquire()
                    self.out.put(Item(call_id, self.host.codec.encode(out)))
            stage.metrics.items += 1
        finally:
            stage.replicas.release(slot)
            stage.limiter.release()
            stage.metrics.service.observe(time.monotonic() - t0)
            self.item_credits.pop(call_id, None)

    def _prepare_open(self, f: Open) -> tuple[_HostSession, Credits, list[Any]]:
        """Set up an Open's input streams now: its Feed frames may be in the same message."""
        host = self.host
        sess = self.session(f.session, f.epoch, f.meta)
        self._open_sessions[f.id] = sess
        credits = self.item_credits[f.id] = Credits(self.out_window)
        feeds: list[_FeedStream | None] = []
        args: list[Any] = []
        for p, a in zip(host.spec.params, f.args, strict=True):
            if p.stream:
                fs = _FeedStream(self, f.id, host.feed_window)
                feeds.append(fs)
                args.append(fs)
            else:
                feeds.append(None)
                args.append(host.codec.decode(a) if a is not None else None)
        self.feeds[f.id] = feeds
        return sess, credits, args

    async def _open(self, f: Open, prepared: tuple[_HostSession, Credits, list[Any]]) -> None:
        host = self.host
        stage = host.stage
        codec = host.codec
        sess, credits, args = prepared
        host.stats["streams"] += 1
        token = set_context(NodeContext(f.session, stage.name, sess.state, lambda: sess.epoch, sess.meta))
        terminal = False
        try:
            with self._cancellable(f.id) as scope:
                try:
                    agen = stage.open_stream(stage.replicas.pick(), tuple(args))
                    async with contextlib.aclosing(agen):
                        async for out in agen:
                            stage.metrics.items += 1
                            await credits.acquire()
                            self.out.put(Item(f.id, codec.encode(out)))
                    self.out.put(End(f.id))
                    terminal = True
                except Exception as e:
                    stage.metrics.errors += 1
                    host.stats["failed"] += 1
                    self.out.put(Fail(f.id, *error_of(e)))
                    terminal = True
            if scope.cancelled_caught:
                host.stats["cancelled"] += 1
        finally:
            reset_context(token)
            self.scopes.pop(f.id, None)
            self.feeds.pop(f.id, None)
            self.item_credits.pop(f.id, None)
            self._open_sessions.pop(f.id, None)
            if not terminal:
                self.out.put(End(f.id))


def _http(host: NodeHost):
    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        if is_websocket(request):
            return None
        path = request.path.partition("?")[0]
        if path == "/metrics":
            return response(200, prometheus_text(), PROMETHEUS)
        if path == "/healthz":
            healthy = host.stage.metrics.healthy
            body = {
                "status": "ok" if healthy else "unhealthy",
                "node": host.gnode.name,
                "shape": host.shape.value,
                "links": len(host.links),
                "sessions": sum(len(link.sessions) for link in host.links),
                "stats": host.stats,
            }
            return response(200 if healthy else 503, json.dumps(body).encode() + b"\n", "application/json")
        return response(404, b"not found\n", TEXT)

    return process_request


@contextlib.asynccontextmanager
async def hosting(
    chain: Any, node_name: str, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[tuple[NodeHost, str]]:
    """Host ``node_name`` while the block runs; yields (the host, its ws:// url)."""
    if not any(n.name == node_name for n in chain.graph.nodes):
        names = ", ".join(n.name for n in chain.graph.nodes)
        raise ChainError(f"--only: chain {chain.graph.name!r} has no node {node_name!r}; it has: {names}")
    nh = NodeHost(chain, node_name, **options)
    async with nh.running():
        server = await ws_serve(
            nh.handle,
            host,
            port,
            compression=None,
            max_size=None,
            process_request=_http(nh),
            ping_interval=20,
        )
        try:
            bound = server.sockets[0].getsockname()[1]
            yield nh, f"ws://{host}:{bound}/"
        finally:
            for link in list(nh.links):
                link.ws.transport.abort()
            server.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await server.wait_closed()


async def serve_node(
    chain: Any, node_name: str, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> None:
    """``chains serve FILE --only NODE --port N``: host one node until SIGTERM/SIGINT."""
    async with hosting(chain, node_name, host, port, **options) as (nh, url):
        print(f"chains: serving node {node_name!r} of chain {nh.chain_name!r} on {url}", flush=True)
        sys.stdout.flush()
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                break


__all__ = ["NodeHost", "hosting", "serve_node"]
