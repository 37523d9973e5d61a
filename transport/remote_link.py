"""The caller's end of a remote stage's link (see ``transport.remote``).

One ``RemoteLink`` per remote node: one websocket to the node's process, a writer
task that coalesces frames, a reader task that routes replies to the waiting call
(a future for a map call, an inbox for a streaming call or a stream node). Credits
from ``transport.link`` bound every call, input item and output item in flight.
If the link drops, every pending call fails with ``remote_unavailable`` and the
next call tries to link again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chains.context import context
from chains.errors import ModelError, NodeError
from chains.spec import NodeSpec
from runtime.logs import get_logger
from transport.link import (
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
    payload_types,
)

OUT_WINDOW = 32  # output items a streaming call may have in flight towards us


class _SessionMark:
    """Lives in a session's node state; when the session is gone, the host is told."""

    __slots__ = ("__weakref__",)


class RemoteLink:
    """The caller's end of one node's link: connect, send frames, route replies."""

    def __init__(self, url: str, spec: NodeSpec, node: str, out_window: int = OUT_WINDOW):
        self.url = url
        self.spec = spec
        self.node = node
        self.out_window = out_window
        self.codec = Codec(payload_types(spec), node)
        self.ws: ClientConnection | None = None
        self.out = Outbox()
        self.calls = Credits(0)
        self.feed_window = 16
        self._ids = itertools.count(1)
        self._pending: dict[int, Any] = {}  # id -> Future (map) or Inbox (streams)
        self._feed_credits: dict[int, Credits] = {}
        self._open_ids: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dead: NodeError | None = None
        self.stats = {"calls": 0, "max_waiting": 0, "max_inbox": 0}
        self.log = get_logger(node=node, component="remote_link")

    # --- connection ------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._connect()
        except NodeError as e:
            raise ModelError(f"remote node {self.node!r}: {e.detail}") from None

    async def _connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            ws = await connect(self.url, compression=None, max_size=None, open_timeout=10)
        except Exception as e:
            raise self._gone(f"cannot reach {self.url}: {e}") from None
        try:
            hello = Hello(
                self.node, self.spec.shape.value, self.spec.qualname.split(":")[-1], self.out_window
            )
            await ws.send(encode_frames([hello]))
            reply = decode_frames(await ws.recv(decode=False))[0]
        except Exception as e:
            await ws.close()
            raise self._gone(f"no handshake with {self.url}: {e}") from None
        if isinstance(reply, Refuse):
            await ws.close()
            raise self._gone(f"{self.url} refused the link: {reply.message}")
        if not isinstance(reply, Welcome):
            await ws.close()
            raise self._gone(f"{self.url} answered {type(reply).__name__}, not welcome")
        self.ws = ws
        self.dead = None
        self.out = Outbox()
        self.calls = Credits(reply.calls)
        self.feed_window = reply.feed_window
        self._tasks = [
            asyncio.create_task(self._reader(ws), name=f"remote-reader:{self.node}"),
            asyncio.create_task(self._writer(ws, self.out), name=f"remote-writer:{self.node}"),
        ]
        self.log.info("linked", url=self.url, calls=reply.calls)

    async def _ensure(self) -> None:
        if self.ws is not None and self.dead is None:
            return
        async with self._lock:
            if self.ws is None or self.dead is not None:
                await self._teardown()
                await self._connect()

    async def stop(self) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        ws, self.ws = self.ws, None
        if ws is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await ws.close()
            ws.transport.abort()
        self._fail_all(self._gone("the link was closed"))

    def _gone(self, why: str) -> NodeError:
        return NodeError(self.node, f"remote stage unavailable: {why}", code="remote_unavailable")

    def _fail_all(self, err: NodeError) -> None:
        self.dead = err
        self.calls.close(err)
        for c in self._feed_credits.values():
            c.close(err)
        self._open_ids.clear()
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if isinstance(p, asyncio.Future):
                if not p.done():
                    p.set_exception(err)
            else:
                p.put(Fail(0, err.code, err.detail))

    async def _writer(self, ws: ClientConnection, out: Outbox) -> None:
        try:
            while True:
                frames = await out.take()
                await ws.send(encode_frames(frames))
        except ConnectionClosed:
            self._fail_all(self._gone(f"{self.url} closed the link"))

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    continue
                for f in decode_frames(raw):
                    self._route(f)
        except ConnectionClosed:
            pass
        self._fail_all(self._gone(f"{self.url} closed the link"))

    def _route(self, f: Any) -> None:
        if isinstance(f, FeedCredit):
            c = self._feed_credits.get(f.id)
            if c is not None:
                c.grant(f.n)
            return
        terminal = isinstance(f, Result | End | Fail)
        if terminal:
            if f.id in self._open_ids:
                self._open_ids.discard(f.id)
            else:
                self.calls.grant(1)  # every call's terminal frame gives its credit back
        p = self._pending.get(f.id)
        if p is None:
            return  # a call we abandoned (cancelled) has finished on the host
        if isinstance(p, asyncio.Future):  # a map call: one terminal frame
            del self._pending[f.id]
            if p.done():
                return
            if isinstance(f, Result):
                p.set_result(f.value)
            elif isinstance(f, Fail):
                p.set_exception(NodeError(self.node, f.message, code=f.code))
            else:  # End: cancelled on the host
                p.cancel()
            return
        p.put(f)
        if len(p) > self.stats["max_inbox"]:
            self.stats["max_inbox"] = len(p)
        if terminal:
            del self._pending[f.id]

    def send(self, frame: Any) -> None:
        self.out.put(frame)

    # --- sessions -----------------------------------------------------------------------------
    @staticmethod
    def _budget_ms() -> float | None:
        """Time left to the current item's deadline, when the runtime tells (``ctx.deadline``)."""
        deadline = getattr(context(), "deadline", None)
        if deadline is None or deadline == float("inf"):
            return None
        return max(0.0, (deadline - time.monotonic()) * 1000.0)

    def _session(self) -> tuple[str, int, dict[str, Any] | None]:
        """(session id, epoch, meta if the host has not seen this session yet)."""
        ctx = context()
        meta = None
        if "_remote_mark" not in ctx.state:
            mark = _SessionMark()
            ctx.state["_remote_mark"] = mark
            weakref.finalize(mark, self._session_gone, ctx.session_id)
            meta = dict(ctx.meta)
        return ctx.session_id, ctx.epoch, meta

    def _session_gone(self, sid: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self.ws is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.out.put, SessionEnd(sid))

    # --- the three call shapes ------------------------------------------------------------------
    async def call(self, args: tuple[Any, ...]) -> Any:
        """A map call: one item in, one result (or None) out."""
        await self._ensure()
        sid, epoch, meta = self._session()
        values = [self.codec.encode(a) for a in args]
        await self._acquire_call()
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        self.send(Call(call_id, sid, epoch, values, meta, self._budget_ms()))
        try:
            value = await fut
        except asyncio.CancelledError:
            if self._pending.pop(call_id, None) is not None:
                self.send(Cancel(call_id))  # the host's End gives the credit back
            raise
        return None if value is None else self.codec.decode(value)

    async def _acquire_call(self) -> None:
        w = self.calls.waiting + 1
        if w > self.stats["max_waiting"]:
            self.stats["max_waiting"] = w
        await self.calls.acquire()
        self.stats["calls"] += 1

    async def call_stream(self, args: tuple[Any, ...]) -> AsyncIterator[Any]:
        """A streaming-map call: outputs arrive as produced; closing it cancels it."""
        await self._ensure()
        sid, epoch, meta = self._session()
        values = [self.codec.encode(a) for a in args]
        await self._acquire_call()
        call_id = next(self._ids)
        inbox = Inbox()
        self._pending[call_id] = inbox
        self.send(Call(call_id, sid, epoch, values, meta, self._budget_ms()))
        async with contextlib.aclosing(self._outputs(call_id, inbox)) as outs:
            async for out in outs:
                yield out

    async def open_stream(self, args: tuple[Any, ...]) -> AsyncIterator[Any]:
        """A stream node's session: our input streams are fed to the host's instance."""
        await self._ensure()
        sid, epoch, meta = self._session()
        params = self.spec.params
        open_args = [None if p.stream else self.codec.encode(a) for p, a in zip(params, args, strict=True)]
        call_id = next(self._ids)
        inbox = Inbox()
        self._pending[call_id] = inbox
        credits = self._feed_credits[call_id] = Credits(self.feed_window)
        self._open_ids.add(call_id)
        self.send(Open(call_id, sid, epoch, open_args, meta))
        feeders = [
            asyncio.create_task(self._feed(call_id, i, a, credits), name=f"remote-feed:{self.node}:{call_id}")
            for i, (p, a) in enumerate(zip(params, args, strict=True))
            if p.stream
        ]
        try:
            async with contextlib.aclosing(self._outputs(call_id, inbox)) as outs:
                async for out in outs:
                    yield out
        finally:
            for t in feeders:
                t.cancel()
            for t in feeders:
                with contextlib.suppress(asyncio.CancelledError, NodeError):
                    await t
            self._feed_credits.pop(call_id, None)

    async def _feed(self, call_id: int, param: int, stream: Any, credits: Credits) -> None:
        ctx = context()
        async for item in stream:
            await credits.acquire()
            self.send(Feed(call_id, param, ctx.epoch, self.codec.encode(item)))
        self.send(FeedEnd(call_id, param))

    async def _outputs(self, call_id: int, inbox: Inbox) -> AsyncIterator[Any]:
        step = max(1, self.out_window // 2)
        consumed = 0
        finished = False
        try:
            while True:
                f = await inbox.get()
                if isinstance(f, Item):
                    consumed += 1
                    if consumed >= step:
                        self.send(ItemCredit(call_id, consumed))
                        consumed = 0
                    yield self.codec.decode(f.value)
                elif isinstance(f, End):
                    finished = True
                    return
                elif isinstance(f, Fail):
                    finished = True
                    raise NodeError(self.node, f.message, code=f.code)
        finally:
            if not finished and self._pending.pop(call_id, None) is not None:
                self.send(Cancel(call_id))  # an interrupt closed us: stop the host's work


__all__ = ["OUT_WINDOW", "RemoteLink"]
