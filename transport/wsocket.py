"""The websocket under a ``Connection``, on uvicorn: the ASGI messages plus the three
things ASGI does not expose and our limits need.

A client that stops reading must be detected and dropped (``stall_timeout_s``): that
needs the socket's write buffer bounded at ``write_limit`` (so a send waits instead of
buffering without end), its size, and a way to abort a socket whose close frame can
never be written. Keepalive pings (``ping_interval_s``) report their round trip
(``latency``). And a *lane* (``AsgiSocket.set_lane``): a callback that takes a binary
message straight from the protocol, with no ASGI message, queue or task switch per
message. On 20 ms audio frames (benchmarks/soak.py's callers), uvicorn's path costs
about 10 us a frame more: the queue, the reader's wake-up and a pause and resume of
reading per message. A server whose chain only consumes the audio went from 1.97 to
1.51 ms of CPU per session-second with the lane (the soak benchmark's figures).
``protocol_class(limits)`` makes uvicorn's websocket protocol (the
sans-I/O one on the ``websockets`` library) apply these limits and put itself in the
ASGI scope's extensions under ``EXTENSION``; ``AsgiSocket`` finds it there. Under
another ASGI server (no extension) the socket still works, without the write-buffer
figure and with a polite close instead of an abort.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from transport.settings import Limits
from transport.wsframes import frame_at, plain_binary, unmasked

EXTENSION = "chains.websocket"
CUT_MAX = 65536  # frames up to this size are cut here (an audio frame: a few KiB)

Lane = Callable[[bytes], bool]
"""Takes one whole binary message (True), or declines it (False: it goes the ASGI way)."""


class SocketClosed(Exception):
    """The peer closed the websocket (or it was lost); ``code`` as received."""

    def __init__(self, code: int = 1005):
        super().__init__(code)
        self.code = code


def protocol_class(limits: Limits) -> type[WebSocketsSansIOProtocol]:
    """uvicorn's websocket protocol with chains' write limit and close timeout, that
    exposes itself to the app (``scope["extensions"][EXTENSION]``)."""

    class ChainsWebSocketProtocol(WebSocketsSansIOProtocol):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.close_timeout = limits.close_timeout_s

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=limits.write_limit)

        lane: Lane | None = None
        _cutting: bool | None = None  # this side cuts the frames (None: not decided yet)
        _held = b""  # the start of a frame not yet whole

        def data_received(self, data: bytes) -> None:
            # Cut from the first read after the handshake, when the parser waits at a frame
            # boundary (a client sends no frame before the 101): from then on it gets whole
            # frames only, so it stays at a boundary.
            if self._cutting is None and self.conn.state is State.OPEN:
                self._cutting = not self.conn.reader.buffer
            if not self._cutting:
                super().data_received(data)
                return
            if self._held:
                data, self._held = self._held + data, b""
            self._cut(data)

        def _cut(self, data: bytes) -> None:
            """Whole frames from ``data``: a plain binary message to the lane (unmasked
            here), the other frames and what the lane declines to the ``websockets``
            parser as they came, in order; an incomplete last frame is held for the next
            read. From a frame over ``CUT_MAX`` on, the parser takes the stream (it
            buffers a long message without copying it at every read, and refuses one
            over the size limit)."""
            conn = self.conn
            pos = given = 0  # data[given:pos]: whole frames for the parser, not yet given
            n, limit = len(data), conn.max_message_size or len(data)
            while (frame := frame_at(data, pos)) is not None:
                head, size = frame
                if size > min(limit, CUT_MAX):  # big: the parser takes this and all that follows
                    pos, self._cutting = n, False
                    break
                if head + size > n:
                    break
                if plain_binary(data, pos) and self.lane is not None:
                    if given < pos:  # first what came before it (it may queue a message)
                        super().data_received(data[given:pos])
                        given = pos
                    lane = self._open_lane()
                    # (not inside a fragmented message: a new one there is the parser's error)
                    if (
                        lane is not None
                        and conn.state is State.OPEN
                        and conn.current_size is None
                        and lane(unmasked(data, head, size))
                    ):
                        given = head + size
                pos = head + size
            self._held = data[pos:]
            if given < pos:
                super().data_received(data[given:pos])

        def handle_bytes(self, event: Any) -> None:
            lane = self._open_lane()
            if lane is not None and event.fin:
                data = event.data
                if lane(data if type(data) is bytes else bytes(data)):
                    return
            super().handle_bytes(event)

        def _open_lane(self) -> Lane | None:
            """The lane, if it may take a message now: only while nothing waits in the
            ASGI queue (so messages stay in order) and the app has not closed."""
            lane = self.lane
            return lane if lane is not None and self.queue.empty() and not self.close_sent else None

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)  # absent when the handshake was refused
            if scope is not None:
                scope["extensions"][EXTENSION] = self

    return ChainsWebSocketProtocol


class AsgiSocket:
    """One accepted websocket as ``Connection`` uses it: receive a text or binary
    message, send one, close, abort, and read the buffer and the ping round trip."""

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any):
        self.scope = scope
        self._receive = receive
        self._send = send
        self._proto: Any = scope.get("extensions", {}).get(EXTENSION)
        self.transport: Any = getattr(self._proto, "transport", None)
        self.open = True
        self.close_code: int | None = None

    async def accept(self) -> None:
        msg = await self._receive()
        if msg["type"] != "websocket.connect":
            raise SocketClosed(msg.get("code", 1006))
        await self._send({"type": "websocket.accept"})

    async def recv(self) -> str | bytes:
        msg = await self._receive()
        kind = msg["type"]
        if kind == "websocket.receive":
            text = msg.get("text")
            return text if text is not None else msg["bytes"]
        self.open = False
        self.close_code = msg.get("code", 1005)
        raise SocketClosed(self.close_code or 1005)

    async def send(self, data: str | bytes) -> None:
        if not self.open:
            raise SocketClosed(self.close_code or 1006)
        msg = (
            {"type": "websocket.send", "text": data}
            if isinstance(data, str)
            else {
                "type": "websocket.send",
                "bytes": bytes(data),
            }
        )
        try:
            await self._send(msg)
        except OSError as e:  # uvicorn's ClientDisconnected
            self.open = False
            raise SocketClosed(1006) from e

    async def close(self, code: int, reason: str = "") -> None:
        if not self.open:
            return
        self.open = False
        with contextlib.suppress(OSError, RuntimeError):  # already closed by the peer or the server
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def set_lane(self, lane: Lane | None) -> bool:
        """Route binary messages to ``lane`` first (None: stop); False where the server
        has no such hook (another ASGI server): every message then comes by ``recv``."""
        if self._proto is None:
            return False
        self._proto.lane = lane
        return True

    def abort(self) -> None:
        """Drop the socket without a close handshake (a peer that reads nothing)."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    def buffered(self) -> int:
        """Bytes written and not yet taken by the peer's TCP window."""
        t = self.transport
        return t.get_write_buffer_size() if t is not None and not t.is_closing() else 0

    @property
    def latency(self) -> float:
        """The last keepalive ping's round trip in seconds (0 before the first pong)."""
        return float(getattr(self._proto, "last_ping_rtt", 0.0))

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.scope.get("headers", []):
            if k == key:
                return v.decode("latin-1")
        return None

    @property
    def query_string(self) -> str:
        return self.scope.get("query_string", b"").decode("latin-1")


__all__ = ["EXTENSION", "AsgiSocket", "Lane", "SocketClosed", "protocol_class"]
