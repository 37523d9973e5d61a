"""What every HTTP endpoint of the chain server shares: the token check, reading a
body within the size limit, JSON decoding, the request slots (waiting room, then 503
with ``Retry-After``), cancelling the work when the client goes away, and turning
every failure into a status with a JSON body naming the problem.

The error body has one shape for our own endpoints and the OpenAI-compatible ones
(whose clients read ``error.message``):

    {"error": {"code": "bad_input", "message": "...", "type": "invalid_request_error",
               "param": "doc.text", "node": null}}
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from chains.errors import NodeError, Overloaded
from transport.admission import Slots
from transport.http import token_from, token_matches
from transport.httpapi.leaving import Disconnected

JSON = "application/json"
JSON_HEADER = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode
LATE = frozenset(("shed", "timeout", "late", "deadline"))  # the item's budget ran out
UNAVAILABLE = frozenset(("replica_lost", "no_replica"))


class HttpError(Exception):
    """A request that cannot be served: its status, a short code and what was wrong."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        node: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.node = node
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "type": kind,
                "param": self.param,
                "node": self.node,
            }
        }

    def response(self) -> Response:
        return Response(_encode(self.body()), self.status, self.headers, media_type=JSON)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status, media_type=JSON)


def encode(value: Any) -> bytes:
    return _encode(value)


def check_token(request: Request, token: str | None) -> None:
    if token is None:
        return
    given = token_from(request.headers.get("authorization"), request.url.query)
    if not token_matches(given, token):
        raise HttpError(401, "unauthorized", "missing or wrong token: send `Authorization: Bearer TOKEN`")


def check_scope_token(auth: bytes | None, query: bytes, token: str) -> None:
    """``check_token`` on a raw ASGI scope's authorization header and query string."""
    given = token_from(auth.decode("latin-1") if auth is not None else None, query.decode("latin-1"))
    if not token_matches(given, token):
        raise HttpError(401, "unauthorized", "missing or wrong token: send `Authorization: Bearer TOKEN`")


async def receive_body(receive: Any, declared: bytes | None, limit: int) -> bytes:
    """``read_body`` on raw ASGI messages (``declared``: the content-length header);
    ``Disconnected`` when the client leaves before it is read."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_big(int(declared), limit)
    msg = await receive()
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body", False):  # the whole body in one message: the usual case
        if msg["type"] == "http.disconnect":
            raise Disconnected()
        if len(body) > limit:
            raise _too_big(len(body), limit)
        return body
    chunks = [body]
    size = len(body)
    while msg.get("more_body", False):
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise Disconnected()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_big(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 past ``limit`` bytes (before reading when the
    client declares its length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_big(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_big(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_big(size: int, limit: int) -> HttpError:
    return HttpError(413, "too_big", f"request body of {size} bytes exceeds the limit of {limit} bytes")


def decode_json(body: bytes) -> Any:
    if not body.strip():
        raise HttpError(400, "bad_json", "empty body: send a JSON value")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise HttpError(400, "bad_json", f"malformed JSON: {e}") from None


def validation_error(e: msgspec.ValidationError, prefix: str, what: str) -> HttpError:
    """A msgspec validation message (``... - at `$.x```) with the path under ``prefix``."""
    text = str(e)
    path = prefix
    if " - at `$" in text:
        text, _, at = text.rpartition(" - at `$")
        path = prefix + at.rstrip("`")
    where = f"`{path}`" if path else "the body"
    return HttpError(422, "bad_input", f"{what}: {text} - at {where}", param=path.lstrip(".") or None)


def node_failure(e: NodeError) -> HttpError:
    """A node's failure as a status: the budget ran out (504), no replica could serve
    (503), else the node failed (500); the node is named either way."""
    if e.code in LATE:
        return HttpError(504, e.code, str(e), node=e.node)
    if e.code in UNAVAILABLE:
        return HttpError(503, e.code, str(e), node=e.node, headers={"Retry-After": "1"})
    return HttpError(500, e.code, str(e), node=e.node)


def busy(slots: Slots, reason: str) -> HttpError:
    """503 ``overloaded`` with the slots' ``Retry-After`` hint, in the header and the text."""
    return HttpError(
        503,
        "overloaded",
        f"{reason}; retry after {slots.retry_after_header} s",
        headers={"Retry-After": slots.retry_after_header},
    )


def overloaded(e: Overloaded, slots: Slots) -> HttpError:
    return busy(slots, str(e))


def refused(slots: Slots, what: str) -> HttpError:
    """No slot came free in the waiting room: 503 with ``Retry-After``."""
    return busy(slots, f"the server is at its limit of {slots.size} {what}")


async def in_slot(slots: Slots, what: str, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``work`` holding one of ``slots`` (waiting for one in the waiting room)."""
    if not await slots.take():
        raise refused(slots, what)
    try:
        return await work()
    finally:
        slots.give()


def endpoint(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every failure a client can cause as its status and JSON body; a client that left
    gets nothing (the work was cancelled)."""

    @functools.wraps(fn)
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except HttpError as e:
            return e.response()
        except Disconnected:
            return Response(status_code=499)  # nobody reads it; uvicorn drops it

    return wrapped


__all__ = [
    "JSON",
    "JSON_HEADER",
    "Disconnected",
    "HttpError",
    "check_scope_token",
    "check_token",
    "decode_json",
    "encode",
    "endpoint",
    "in_slot",
    "json_response",
    "node_failure",
    "overloaded",
    "read_body",
    "receive_body",
    "refused",
    "validation_error",
]
