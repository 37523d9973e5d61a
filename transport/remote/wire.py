"""The remote-stage link's wire format and flow-control primitives (frames, codec, credits).

One websocket carries every session's traffic to one remote node. Each websocket
message is a msgpack array of frames (the writer coalesces whatever is queued, so
a busy link pays one syscall for many items). Frames are msgspec Structs tagged
and array-encoded. Item payloads travel as ``Value(type tag, raw msgpack)``: the
tag names a message type both processes know (from the chain's own type hints and
``chains.messages``), never a module to import, so the wire cannot make a process
load code.

Flow control is credit-based at three levels, so backpressure crosses the process
boundary instead of turning into buffers: the host grants a number of concurrent
calls per link (``Welcome.calls``; a terminal frame gives one back), a window of
input items per open stream (``FeedCredit``), and the caller grants a window of
output items per streaming call (``ItemCredit``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

import msgspec

import chains.messages as _messages
from chains.errors import NodeError
from runtime.envelope import Usage

PROTOCOL_VERSION = 2  # 2: Result and End carry the replica's Usage
STALE = "stale"  # a Fail code: the item's turn was interrupted before it was served


class Value(msgspec.Struct, array_like=True, frozen=True, gc=False):
    t: str  # type tag ("" for plain msgpack data)
    v: msgspec.Raw


class Hello(msgspec.Struct, tag="hello", array_like=True, frozen=True):
    node: str
    shape: str
    impl: str
    out_window: int
    version: int = PROTOCOL_VERSION


class Welcome(msgspec.Struct, tag="welcome", array_like=True, frozen=True):
    node: str
    shape: str
    calls: int
    feed_window: int


class Refuse(msgspec.Struct, tag="refuse", array_like=True, frozen=True):
    message: str


class Call(msgspec.Struct, tag="call", array_like=True, frozen=True):
    """One map / batched / streaming-map call (takes one call credit)."""

    id: int
    session: str
    epoch: int
    args: list[Value]
    meta: dict[str, Any] | None = None
    budget_ms: float | None = None  # time left to the item's deadline when it was sent


class Open(msgspec.Struct, tag="open", array_like=True, frozen=True):
    """Start a per-session stream node; its stream inputs follow as ``Feed`` frames."""

    id: int
    session: str
    epoch: int
    args: list[Value | None]  # None where the parameter is a stream
    meta: dict[str, Any] | None = None


class Feed(msgspec.Struct, tag="feed", array_like=True, frozen=True):
    id: int
    param: int
    epoch: int
    value: Value


class FeedEnd(msgspec.Struct, tag="feedend", array_like=True, frozen=True):
    id: int
    param: int


class Cancel(msgspec.Struct, tag="cancel", array_like=True, frozen=True):
    id: int


class Result(msgspec.Struct, tag="result", array_like=True, frozen=True):
    id: int
    value: Value | None  # None: the map filtered the item out
    usage: Usage | None = None  # what the replica reported serving it (cached tokens)


class Item(msgspec.Struct, tag="item", array_like=True, frozen=True):
    id: int
    value: Value


class End(msgspec.Struct, tag="end", array_like=True, frozen=True):
    id: int
    usage: Usage | None = None  # a finished streaming call: what the replica reported


class Fail(msgspec.Struct, tag="fail", array_like=True, frozen=True):
    id: int
    code: str
    message: str


class FeedCredit(msgspec.Struct, tag="fcredit", array_like=True, frozen=True):
    id: int
    n: int


class ItemCredit(msgspec.Struct, tag="icredit", array_like=True, frozen=True):
    id: int
    n: int


class SessionEnd(msgspec.Struct, tag="sessend", array_like=True, frozen=True):
    session: str


Frame = (
    Hello
    | Welcome
    | Refuse
    | Call
    | Open
    | Feed
    | FeedEnd
    | Cancel
    | Result
    | Item
    | End
    | Fail
    | FeedCredit
    | ItemCredit
    | SessionEnd
)

_frames_encoder = msgspec.msgpack.Encoder()
_frames_decoder = msgspec.msgpack.Decoder(list[Frame])


def encode_frames(frames: list[Any]) -> bytes:
    return _frames_encoder.encode(frames)


def decode_frames(data: bytes) -> list[Any]:
    return _frames_decoder.decode(data)


# --- payload codec --------------------------------------------------------------------------
def _walk(t: Any, out: set[type]) -> None:
    if isinstance(t, type):
        if issubclass(t, msgspec.Struct) or dataclasses.is_dataclass(t):
            out.add(t)
        return
    origin = typing.get_origin(t)
    if origin is not None or isinstance(t, types.UnionType):
        for a in typing.get_args(t):
            _walk(a, out)


def payload_types(spec: Any) -> set[type]:
    """The Struct/dataclass types a node's items can be: its hints plus the vocabulary."""
    found: set[type] = set()
    for name in _messages.__all__:
        _walk(getattr(_messages, name), found)
    for p in spec.params:
        _walk(p.type, found)
    _walk(spec.out_type, found)
    return found


class Codec:
    """Items <-> ``Value``s, by a registry of known types (tag = qualified class name)."""

    def __init__(self, types_: Iterable[type], node: str):
        self.node = node
        self._tags: dict[type, str] = {}
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        for cls in sorted(types_, key=lambda c: c.__qualname__):
            tag = cls.__qualname__
            if tag in self._decoders:  # two types of one name: qualify the later one
                tag = f"{cls.__module__}.{tag}"
            self._tags[cls] = tag
            self._decoders[tag] = msgspec.msgpack.Decoder(cls)
        self._plain = msgspec.msgpack.Decoder()
        self._enc = msgspec.msgpack.Encoder()

    def encode(self, x: Any) -> Value:
        try:
            return Value(self._tags.get(type(x), ""), msgspec.Raw(self._enc.encode(x)))
        except TypeError as e:
            raise NodeError(
                self.node, f"cannot send {type(x).__name__} to the remote stage: {e}", code="remote_encode"
            ) from e

    def decode(self, v: Value) -> Any:
        if not v.t:
            return self._plain.decode(v.v)
        dec = self._decoders.get(v.t)
        if dec is None:
            raise NodeError(
                self.node, f"the remote stage sent an unknown type {v.t!r}", code="remote_protocol"
            )
        return dec.decode(v.v)


# --- flow control ----------------------------------------------------------------------------
class Credits:
    """A counter of permits: ``acquire`` waits for one; ``grant`` adds some (FIFO wake-up)."""

    __slots__ = ("_waiters", "available", "closed")

    def __init__(self, n: int = 0):
        self.available = n
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed: BaseException | None = None

    async def acquire(self) -> None:
        if self.closed is not None:
            raise self.closed
        if self.available > 0 and not self._waiters:
            self.available -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.grant(1)  # handed a permit as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def grant(self, n: int = 1) -> None:
        self.available += n
        while self.available > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self.available -= 1
                fut.set_result(None)

    def close(self, exc: BaseException) -> None:
        """Fail every waiter (the link is gone)."""
        self.closed = exc
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class Inbox:
    """The frames of one call, in order, for the one task that consumes them."""

    __slots__ = ("_getter", "_q")

    def __init__(self) -> None:
        self._q: collections.deque[Any] = collections.deque()
        self._getter: asyncio.Future[None] | None = None

    def put(self, item: Any) -> None:
        self._q.append(item)
        g = self._getter
        if g is not None and not g.done():
            g.set_result(None)

    async def get(self) -> Any:
        while not self._q:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return self._q.popleft()

    def __len__(self) -> int:
        return len(self._q)


class Outbox:
    """Frames waiting to go out on a link; one writer task coalesces them per message."""

    __slots__ = ("_q", "_wake")

    def __init__(self) -> None:
        self._q: list[Any] = []
        self._wake: asyncio.Future[None] | None = None

    def put(self, frame: Any) -> None:
        self._q.append(frame)
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def take(self) -> list[Any]:
        while not self._q:
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        q, self._q = self._q, []
        return q


def error_of(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a failed item, exactly as the in-process session reports it."""
    if isinstance(exc, NodeError):
        return exc.code, exc.detail
    return "node_error", f"{type(exc).__name__}: {exc}"


__all__ = [
    "PROTOCOL_VERSION",
    "STALE",
    "Call",
    "Cancel",
    "Codec",
    "Credits",
    "End",
    "Fail",
    "Feed",
    "FeedCredit",
    "FeedEnd",
    "Frame",
    "Hello",
    "Inbox",
    "Item",
    "ItemCredit",
    "Open",
    "Outbox",
    "Refuse",
    "Result",
    "SessionEnd",
    "Value",
    "Welcome",
    "decode_frames",
    "encode_frames",
    "error_of",
    "payload_types",
]
