"""One caller's link on a node's host: its sessions, its calls in flight, its outbox.

Every item is served by the host's stage through ``Stage.serve`` /
``Stage.serve_stream`` (the runtime's one path for an item: limiter, shedding,
replica choice, retries, errors and metrics), so a remote stage behaves and
counts exactly as the same stage in process. Stream nodes hold one replica for
their session's life, as in process.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any, Protocol

import anyio
from websockets.asyncio.server import ServerConnection

from chains.context import NodeContext, reset_context, set_context
from chains.spec import NodeSpec, Shape
from runtime.batcher import StaleItem
from runtime.envelope import Reply, Request
from runtime.stage import Stage
from transport.remote.wire import (
    STALE,
    Call,
    Cancel,
    Codec,
    Credits,
    End,
    Fail,
    Feed,
    FeedCredit,
    FeedEnd,
    Inbox,
    Item,
    ItemCredit,
    Open,
    Outbox,
    Result,
    SessionEnd,
    decode_frames,
    encode_frames,
    error_of,
)


class NodeHost(Protocol):
    """What a caller's link needs of the host it runs on (transport/remote/host.py)."""

    stage: Stage
    spec: NodeSpec
    shape: Shape
    codec: Codec
    feed_window: int
    stats: dict[str, int]

    def deadline(self, budget_ms: float | None = None) -> float: ...


_link_ids = itertools.count(1)
_END = object()


class HostSession:
    __slots__ = ("epoch", "meta", "state")

    def __init__(self, meta: dict[str, Any] | None):
        self.state: dict[str, Any] = {}
        self.epoch = 0
        self.meta: dict[str, Any] = dict(meta or {})


class FeedStream:
    """What a remote stream node iterates: the ``Feed`` frames of one parameter.
    Consuming items hands credits back to the caller in half-window steps."""

    def __init__(self, link: HostLink, call_id: int, window: int):
        self._inbox = Inbox()
        self._link = link
        self._id = call_id
        self._step = max(1, window // 2)
        self._consumed = 0

    def put(self, item: Any) -> None:
        self._inbox.put(item)

    def __len__(self) -> int:
        return len(self._inbox)

    def __aiter__(self) -> FeedStream:
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


class HostLink:
    """The state of one caller: its sessions, its calls in flight, its outbox."""

    def __init__(self, host: NodeHost, ws: ServerConnection, out_window: int):
        self.host = host
        self.ws = ws
        self.id = next(_link_ids)
        self.out = Outbox()
        self.out_window = out_window
        self.sessions: dict[str, HostSession] = {}
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.cancelled: set[int] = set()
        self.item_credits: dict[int, Credits] = {}
        self.feeds: dict[int, list[FeedStream | None]] = {}
        self._open_sessions: dict[int, HostSession] = {}
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

    def session(self, sid: str, epoch: int, meta: dict[str, Any] | None) -> HostSession:
        s = self.sessions.get(sid)
        if s is None:
            s = self.sessions[sid] = HostSession(meta)
        elif meta:
            s.meta.update(meta)
        if epoch > s.epoch:
            s.epoch = epoch
        return s

    def _feed_stream(self, call_id: int, param: int) -> FeedStream | None:
        streams = self.feeds.get(call_id)
        return streams[param] if streams is not None and 0 <= param < len(streams) else None

    def _dispatch(self, f: Any, tg: Any) -> None:
        if isinstance(f, Call):
            tg.start_soon(self._call, f)
        elif isinstance(f, Feed):
            fs = self._feed_stream(f.id, f.param)
            if fs is not None:
                fs.put(self.host.codec.decode(f.value))
                stats = self.host.stats
                if len(fs) > stats["max_feed_backlog"]:
                    stats["max_feed_backlog"] = len(fs)
                sess = self._open_sessions.get(f.id)
                if sess is not None and f.epoch > sess.epoch:
                    sess.epoch = f.epoch
        elif isinstance(f, FeedEnd):
            fs = self._feed_stream(f.id, f.param)
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
        ctx = NodeContext(f.session, stage.name, sess.state, lambda: sess.epoch, sess.meta)
        token = set_context(ctx)
        terminal = False
        try:
            with self._cancellable(f.id) as scope:
                try:
                    args = tuple(codec.decode(a) for a in f.args)
                    req = Request(
                        args, f.session, f.epoch, host.deadline(f.budget_ms), stage.route(f.session, args)
                    )
                    reply = Reply()
                    if host.shape is Shape.STREAM_MAP:
                        await self._stream_call(f.id, req, reply)
                        self.out.put(End(f.id, reply.usage))
                    else:
                        epoch = f.epoch

                        def alive() -> bool:
                            return sess.epoch == epoch and not self.closed

                        result = await stage.serve(req, alive, reply)
                        value = None if result is None else codec.encode(result)
                        self.out.put(Result(f.id, value, reply.usage))
                    terminal = True
                except StaleItem:  # its turn was interrupted: the caller drops it too
                    self.out.put(Fail(f.id, STALE, "the item's turn was interrupted"))
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

    async def _stream_call(self, call_id: int, req: Request, reply: Reply) -> None:
        credits = self.item_credits[call_id] = Credits(self.out_window)
        codec = self.host.codec
        try:
            async with contextlib.aclosing(self.host.stage.serve_stream(req, reply)) as outs:
                async for out in outs:
                    await credits.acquire()
                    self.out.put(Item(call_id, codec.encode(out)))
        finally:
            self.item_credits.pop(call_id, None)

    def _prepare_open(self, f: Open) -> tuple[HostSession, Credits, list[Any]]:
        """Set up an Open's input streams now: its Feed frames may be in the same message."""
        host = self.host
        sess = self.session(f.session, f.epoch, f.meta)
        self._open_sessions[f.id] = sess
        credits = self.item_credits[f.id] = Credits(self.out_window)
        feeds: list[FeedStream | None] = []
        args: list[Any] = []
        for p, a in zip(host.spec.params, f.args, strict=True):
            if p.stream:
                fs = FeedStream(self, f.id, host.feed_window)
                feeds.append(fs)
                args.append(fs)
            else:
                feeds.append(None)
                args.append(host.codec.decode(a) if a is not None else None)
        self.feeds[f.id] = feeds
        return sess, credits, args

    async def _open(self, f: Open, prepared: tuple[HostSession, Credits, list[Any]]) -> None:
        """A stream node's session: one replica held for its life, like in process."""
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
                    agen = stage.serve_session(f.session, tuple(args))
                    async with contextlib.aclosing(agen):
                        async for out in agen:
                            await credits.acquire()
                            self.out.put(Item(f.id, codec.encode(out)))
                    self.out.put(End(f.id))
                    terminal = True
                except Exception as e:  # counted by the stage
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


__all__ = ["FeedStream", "HostLink", "HostSession"]
