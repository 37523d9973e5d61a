"""Plain HTTP on a websocket port (through ``process_request``): one helper for
``/healthz``, ``/metrics`` and the token check, used by the remote stage host's
``websockets`` server; the token helpers are shared with the ASGI app (transport/app.py).

    process_request = http_endpoints(metrics_text, health, token, fallback=static_files)
    await websockets.asyncio.server.serve(handler, host, port, process_request=process_request)

``/healthz`` answers the JSON ``health()`` returns, 200 when its ``status`` is ``"ok"``,
else 503; it is open (a load balancer probes it without secrets). ``/metrics``
answers ``metrics_text()`` as Prometheus text and, when a token is set, only to a
request that carries it (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``).
Websocket upgrades pass through untouched (``None``) so the handler runs.
"""

from __future__ import annotations

import hmac
import http
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

TEXT = "text/plain; charset=utf-8"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"

ProcessRequest = Callable[[Any, Request], Response | None]


def response(status: int, body: bytes, ctype: str) -> Response:
    """A complete HTTP response; the connection closes after it."""
    headers = Headers(
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def is_websocket(request: Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def request_token(request: Request | None) -> str | None:
    """The token a request carries: ``Authorization: Bearer TOKEN``, else ``?token=``."""
    if request is None:
        return None
    return token_from(request.headers.get("Authorization"), request.path.partition("?")[2])


def token_from(authorization: str | None, query: str) -> str | None:
    """The token from an ``Authorization`` header value, else from a query string's
    ``token=`` (every server here, websocket or ASGI, reads it this way)."""
    auth = authorization or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    vals = parse_qs(query).get("token")
    return vals[0] if vals else None


def token_matches(given: str | None, want: str | None) -> bool:
    """Is ``given`` the expected token? Always true when none is expected; compared in
    constant time so response timing does not leak the token."""
    if want is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), want.encode())


def health_response(health: dict[str, Any]) -> Response:
    ok = health.get("status") == "ok"
    return response(200 if ok else 503, json.dumps(health).encode() + b"\n", JSON)


def http_endpoints(
    metrics_text: Callable[[], str | bytes],
    health: Callable[[], dict[str, Any]],
    token: str | None,
    fallback: Callable[[str], Response] | None = None,
) -> ProcessRequest:
    """A ``process_request`` for ``websockets.asyncio.server.serve`` answering
    ``/healthz`` and ``/metrics`` (token-checked when ``token`` is set); any other path
    goes to ``fallback(path)`` (404 without one)."""
    token = token or None

    def process_request(connection: Any, request: Request) -> Response | None:
        if is_websocket(request):
            return None
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return health_response(health())
        if path == "/metrics":
            if not token_matches(request_token(request), token):
                return response(401, b"unauthorized\n", TEXT)
            text = metrics_text()
            return response(200, text.encode() if isinstance(text, str) else text, PROMETHEUS)
        if fallback is not None:
            return fallback(path)
        return response(404, b"not found\n", TEXT)

    return process_request


__all__ = [
    "JSON",
    "PROMETHEUS",
    "TEXT",
    "ProcessRequest",
    "health_response",
    "http_endpoints",
    "is_websocket",
    "request_token",
    "response",
    "token_from",
    "token_matches",
]
