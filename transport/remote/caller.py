"""The caller's end of a remote stage's link: one websocket to one replica's host.

A ``RemoteLink`` is one connection. ``run`` connects, shakes hands, reports itself
started, then routes frames both ways (a writer that coalesces queued frames into
one message, a reader that hands each reply to the call waiting for it) in a task
group of its own, until the connection drops or ``close`` cancels it. Whoever
starts ``run`` owns those tasks: the replica provider runs it in a task group
opened with the runtime (see ``transport.remote.stubs``), never as bare tasks.

A link does not reconnect by itself. When the connection drops, every call in
flight fails as ``ReplicaLost`` (no hang) and so does every later call; the
replica set sees the loss and asks the provider for a new replica, which is a new
link (to the same URL, or to the restarted actor's new one), with backoff.

Credits from ``transport.remote.wire`` bound every call, input item and output
item in flight. A session's node state on the host is dropped when the runtime
tells the replica the session closed (``session_closed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chains.context import context, current_context
from chains.errors import ModelError, NodeError, ReplicaLost
from chains.spec import NodeSpec
from runtime.batcher import StaleItem
from runtime.envelope import Reply, Request
from runtime.logs import get_logger
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
CONNECT_TIMEOUT_S = 10.0


class RemoteLink:
    """One connection to a replica's host: send frames, route replies."""

    def __init__(
        self,
        url: str,
        spec: NodeSpec,
        node: str,
        out_window: int = OUT_WINDOW,
        on_lost: Callable[[RemoteLink], None] | None = None,
    ):
        self.url = url
        self.on_lost = on_lost  # told once when an established link drops
        self.spec = spec
        self.node = node
        self.out_window = out_window
        self.codec = Codec(payload_types(spec), node)
        self.out = Outbox()
        self.calls = Credits(0)
        self.feed_window = 16
        self._ids = itertools.count(1)
        self._pending: dict[int, Any] = {}  # id -> Future (map) or Inbox (streams)
        self._feed_credits: dict[int, Credits] = {}
        self._open_ids: set[int] = set()
        self._sessions: set[str] = set()  # sessions the host holds state for
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self.dead: NodeError | None = None
        self.dropped = False  # the connection ended on its own (not closed by us)
        self.stats = {"calls": 0, "max_waiting": 0, "max_inbox": 0}
        self.log = get_logger(node=node, component="remote_link")

    # --- lifetime ---------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, then serve the link until it drops or is closed (start it with ``tg.start``:
        a failed connection raises ``ModelError`` to the starter)."""
        started = False
        try:
            with anyio.CancelScope() as self._scope:
                ws = await self._connect()
                try:
                    task_status.started()
                    started = True
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._writer, ws, tg.cancel_scope)
                        await self._reader(ws)
                        tg.cancel_scope.cancel()
                except Exception as e:  # a broken link loses its replica, never its owner's tasks
                    self.dropped = True
                    self.log.warning("link_failed", url=self.url, error=f"{type(e).__name__}: {e}")
                    self._fail_all(self._lost(f"{type(e).__name__}: {e}"))
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await ws.close()
                    ws.transport.abort()
        finally:
            self._fail_all(self.dead or self._lost("the link was closed"))
            self._done.set()
            if self.on_lost is not None and started and self.dropped:
                self.on_lost(self)

    async def close(self) -> None:
        """Stop the link (its calls in flight fail) and wait until its tasks are gone."""
        if self._scope is not None:
            self._scope.cancel()
            await self._done.wait()
        else:
            self._fail_all(self._lost("the link was closed"))

    @property
    def alive(self) -> bool:
        return self.dead is None and self._scope is not None and not self._done.is_set()

    async def _connect(self) -> ClientConnection:
        try:
            ws = await connect(self.url, compression=None, max_size=None, open_timeout=CONNECT_TIMEOUT_S)
        except Exception as e:
            raise ModelError(f"remote node {self.node!r}: cannot reach {self.url}: {e}") from None
        try:
            impl = self.spec.qualname.split(":")[-1]
            await ws.send(encode_frames([Hello(self.node, self.spec.shape.value, impl, self.out_window)]))
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                reply = decode_frames(await ws.recv(decode=False))[0]
        except Exception as e:
            await ws.close()
            raise ModelError(f"remote node {self.node!r}: no handshake with {self.url}: {e}") from None
        if not isinstance(reply, Welcome):
            await ws.close()
            why = reply.message if isinstance(reply, Refuse) else f"answered {type(reply).__name__}"
            raise ModelError(f"remote node {self.node!r}: {self.url} refused the link: {why}")
        self.calls = Credits(reply.calls)
        self.feed_window = reply.feed_window
        self.log.info("linked", url=self.url, calls=reply.calls)
        return ws

    def _lost(self, why: str) -> ReplicaLost:
        return ReplicaLost(self.node, f"remote replica at {self.url} is gone: {why}")

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
                p.put(err)  # a stream's consumer raises it

    async def _writer(self, ws: ClientConnection, scope: anyio.CancelScope) -> None:
        try:
            while True:
                frames = await self.out.take()
                await ws.send(encode_frames(frames))
        except ConnectionClosed:
            self.dropped = True
            self._fail_all(self._lost(f"{self.url} closed the link"))
            scope.cancel()

    async def _reader(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                if isinstance(raw, str):
                    continue
                for f in decode_frames(raw):
                    self._route(f)
        self.dropped = True
        self._fail_all(self._lost(f"{self.url} closed the link"))

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
                p.set_result(f)
            elif isinstance(f, Fail):
                p.set_exception(_error(self.node, f))
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

    def _check(self) -> None:
        if self.dead is not None:
            raise self.dead

    # --- sessions -----------------------------------------------------------------------------
    @staticmethod
    def _budget_ms(deadline: float) -> float | None:
        """Time left to the item's deadline (the request's), as the wire carries it."""
        if deadline == float("inf"):
            return None
        return max(0.0, (deadline - time.monotonic()) * 1000.0)

    def _meta(self, sid: str) -> dict[str, Any] | None:
        """The session's settings (``meta``) the first time the host sees the session:
        session-wide, not the item's, so read from the session's context once."""
        if sid in self._sessions:
            return None
        self._sessions.add(sid)
        ctx = current_context()
        return dict(ctx.meta) if ctx is not None else {}

    def _session(self) -> tuple[str, int, dict[str, Any] | None]:
        """(session id, epoch, meta if the host has not seen this session yet) of a
        stream node's session, which a session opens (no per-item request)."""
        ctx = context()
        return ctx.session_id, ctx.epoch, self._meta(ctx.session_id)

    def session_closed(self, session_id: str) -> None:
        """The runtime closed a session: the host drops its node state."""
        if session_id in self._sessions:
            self._sessions.discard(session_id)
            if self.dead is None:
                self.send(SessionEnd(session_id))

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    # --- the three call shapes ------------------------------------------------------------------
    async def call(self, req: Request) -> Reply:
        """A map call: one item in, one result (or None) out, with its usage."""
        self._check()
        sid = req.session
        meta = self._meta(sid)
        values = [self.codec.encode(a) for a in req.args]
        await self._acquire_call()
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        self.send(Call(call_id, sid, req.epoch, values, meta, self._budget_ms(req.deadline)))
        try:
            res: Result = await fut
        except asyncio.CancelledError:
            if self._pending.pop(call_id, None) is not None:
                self.send(Cancel(call_id))  # the host's End gives the credit back
            raise
        return Reply(None if res.value is None else self.codec.decode(res.value), res.usage)

    async def _acquire_call(self) -> None:
        w = self.calls.waiting + 1
        if w > self.stats["max_waiting"]:
            self.stats["max_waiting"] = w
        await self.calls.acquire()
        self.stats["calls"] += 1

    async def call_stream(self, req: Request, reply: Reply) -> AsyncGenerator[Any, None]:
        """A streaming-map call: outputs arrive as produced; closing it cancels it. What
        serving it used arrives with its end, in ``reply.usage``."""
        self._check()
        sid = req.session
        meta = self._meta(sid)
        values = [self.codec.encode(a) for a in req.args]
        await self._acquire_call()
        call_id = next(self._ids)
        inbox = Inbox()
        self._pending[call_id] = inbox
        self.send(Call(call_id, sid, req.epoch, values, meta, self._budget_ms(req.deadline)))
        async with contextlib.aclosing(self._outputs(call_id, inbox, reply)) as outs:
            async for out in outs:
                yield out

    async def open_stream(self, args: tuple[Any, ...]) -> AsyncGenerator[Any, None]:
        """A stream node's session: our input streams are fed to the host's instance by
        feeder tasks in a task group this generator holds open while it runs."""
        self._check()
        sid, epoch, meta = self._session()
        params = self.spec.params
        open_args = [None if p.stream else self.codec.encode(a) for p, a in zip(params, args, strict=True)]
        call_id = next(self._ids)
        inbox = Inbox()
        self._pending[call_id] = inbox
        credits = self._feed_credits[call_id] = Credits(self.feed_window)
        self._open_ids.add(call_id)
        self.send(Open(call_id, sid, epoch, open_args, meta))
        try:
            async with anyio.create_task_group() as tg:
                for i, (p, a) in enumerate(zip(params, args, strict=True)):
                    if p.stream:
                        tg.start_soon(self._feed, call_id, i, a, credits)
                async with contextlib.aclosing(self._outputs(call_id, inbox)) as outs:
                    async for out in outs:
                        yield out
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the node's own error, as in process (not a group)
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise
        finally:
            self._feed_credits.pop(call_id, None)

    async def _feed(self, call_id: int, param: int, stream: Any, credits: Credits) -> None:
        ctx = context()
        with contextlib.suppress(NodeError):  # the link died: the outputs side reports it
            async for item in stream:
                await credits.acquire()
                self.send(Feed(call_id, param, ctx.epoch, self.codec.encode(item)))
            self.send(FeedEnd(call_id, param))

    async def _outputs(
        self, call_id: int, inbox: Inbox, reply: Reply | None = None
    ) -> AsyncGenerator[Any, None]:
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
                    if reply is not None:
                        reply.usage = f.usage
                    return
                elif isinstance(f, Fail):
                    finished = True
                    raise _error(self.node, f)
                elif isinstance(f, BaseException):  # the link is gone
                    finished = True
                    raise f
        finally:
            if not finished and self._pending.pop(call_id, None) is not None:
                self.send(Cancel(call_id))  # an interrupt closed us: stop the host's work


def _error(node: str, f: Fail) -> Exception:
    """The host's failure as the caller's error. A replica the host lost (its model died)
    keeps its code but is not this link's loss: the host rebuilds it, the link stays."""
    if f.code == STALE:
        return StaleItem()
    return NodeError(node, f.message, code=f.code)


__all__ = ["OUT_WINDOW", "RemoteLink"]
