"""The chain server's ASGI app (Starlette routing, served by uvicorn in server.py).

Every route is in one list, built by ``routes(served)``; ``build_app`` wraps it. What
the routes see of the server is ``Served`` (its runtimes, limits, token, slots and
stats), never the server object's internals.

Adding an endpoint: write it in its own module taking ``served`` and add it to
``routes``, before the catch-alls at the end (the static page and the websocket
protocol on any path). A websocket endpoint where one socket is one session subclasses
``transport.endpoints.SessionEndpoint`` (the session slots and waiting room, the counts):

    class MyEndpoint(SessionEndpoint):
        async def serve(self, sock: AsgiSocket) -> None:   # transport/wsocket.py
            ...  # sock.recv() / sock.send(); sock.buffered() and sock.abort() for slow readers

    WebSocketRoute("/my-protocol", MyEndpoint(served))     # added to the list in routes()

uvicorn applies the message size, ping and write-buffer limits to every websocket
route (transport/wsocket.py); the token check is the endpoint's
(``transport.http.token_from`` / ``token_matches``).
"""

from __future__ import annotations

import mimetypes
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from transport.admission import Slots
from transport.connection import Connection
from transport.endpoints import SessionEndpoint, voice_routes
from transport.http import JSON, PROMETHEUS, TEXT, token_from, token_matches
from transport.httpapi.chainapi import chain_endpoint
from transport.httpapi.leaving import Departures
from transport.httpapi.openai import openai_routes
from transport.protocol import CLOSE_OVERLOADED, Error, encode
from transport.settings import ConnectionSettings, Limits
from transport.wsocket import AsgiSocket, SocketClosed


class Served(Protocol):
    """What the routes need of the server."""

    @property
    def runtimes(self) -> Mapping[str, Any]: ...

    limits: Limits
    token: str | None
    settings: ConnectionSettings
    stats: Counter[str]
    connections: set[Connection]
    sessions: Slots  # websocket sessions
    requests: Slots  # HTTP chain requests
    departures: Departures  # cancels the calls of HTTP clients that left
    web_root: Path | None
    log: Any

    def health(self) -> dict[str, Any]: ...


def routes(served: Served, metrics_text: Callable[[], str | bytes]) -> list[BaseRoute]:
    """Every route of the chain server, in matching order."""
    return [
        Route("/v1/chains/{chain}", chain_endpoint(served), methods=["POST"]),  # first: the hot path
        Route("/healthz", _health(served), methods=["GET"]),
        Route("/metrics", _metrics(served, metrics_text), methods=["GET"]),
        *openai_routes(served),
        *voice_routes(served),  # /v1/realtime (OpenAI Realtime), /twilio (Twilio Media Streams)
        # catch-alls last: the browser page's files, our websocket protocol on any path
        Route("/", _static(served), methods=["GET", "HEAD"]),
        Route("/{name}", _static(served), methods=["GET", "HEAD"]),
        WebSocketRoute("/", ProtocolEndpoint(served)),
        WebSocketRoute("/{path:path}", ProtocolEndpoint(served)),
    ]


def build_app(served: Served, metrics_text: Callable[[], str | bytes]) -> Starlette:
    return Starlette(routes=routes(served, metrics_text))


class ProtocolEndpoint(SessionEndpoint):
    """Our websocket protocol (transport/connection.py): one websocket, one session.
    A raw ASGI app, so Starlette passes the socket through untouched."""

    async def serve(self, sock: AsgiSocket) -> None:
        srv = self.served
        conn = Connection(srv.settings, sock)
        srv.connections.add(conn)
        try:
            await conn.run()
        finally:
            srv.connections.discard(conn)

    async def refuse(self, sock: AsgiSocket) -> None:
        await _refuse(self.served, sock)


async def _refuse(srv: Served, sock: AsgiSocket) -> None:
    """At the session limit after the waiting room: say so, with when to retry."""
    slots = srv.sessions
    waited = f" (waited {slots.wait_s:g} s for a free slot)" if slots.wait_s > 0 else ""
    msg = Error(
        code="overloaded",
        message=f"the server is at its limit of {slots.size} sessions{waited}; "
        f"retry after {slots.retry_after_s:g} s",
    )
    with anyio.move_on_after(srv.limits.close_timeout_s):
        try:
            await sock.send(encode(msg).decode())
        except SocketClosed:
            return
        await sock.close(CLOSE_OVERLOADED, f"overloaded; retry after {slots.retry_after_s:g} s")


def _health(srv: Served) -> Callable[[Request], Any]:
    from transport.httpapi.common import encode as enc

    async def health(request: Request) -> Response:
        h = srv.health()
        return Response(enc(h) + b"\n", 200 if h.get("status") == "ok" else 503, media_type=JSON)

    return health


def _metrics(srv: Served, metrics_text: Callable[[], str | bytes]) -> Callable[[Request], Any]:
    async def metrics(request: Request) -> Response:
        given = token_from(request.headers.get("authorization"), request.url.query)
        if not token_matches(given, srv.token):
            return Response(b"unauthorized\n", 401, media_type=TEXT)
        text = metrics_text()
        body = text.encode() if isinstance(text, str) else text
        return Response(body, 200, media_type=PROMETHEUS)

    return metrics


def _static(srv: Served) -> Callable[[Request], Any]:
    async def static(request: Request) -> Response:
        root = srv.web_root
        name = request.path_params.get("name") or "index.html"
        if root is None or not root.is_dir():
            return Response(b"no browser page here\n", 404, media_type=TEXT)
        files = {p.name: p for p in root.iterdir() if p.is_file()}  # flat: no path can escape the folder
        f = files.get(name)
        if f is None:
            return Response(b"not found\n", 404, media_type=TEXT)
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return Response(f.read_bytes(), 200, {"Cache-Control": "no-store"}, media_type=ctype)

    return static


__all__ = ["ProtocolEndpoint", "Served", "build_app", "routes"]
