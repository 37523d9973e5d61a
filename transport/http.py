"""Plain HTTP answers on a websocket port (through ``process_request``)."""

from __future__ import annotations

import http

from websockets.datastructures import Headers
from websockets.http11 import Request, Response


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


TEXT = "text/plain; charset=utf-8"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

__all__ = ["PROMETHEUS", "TEXT", "is_websocket", "response"]
