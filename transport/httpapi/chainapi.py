"""``POST /v1/chains/CHAIN``: one request is one ``rt.call`` (or ``rt.stream``) of the
runtime serving the chain, so HTTP requests batch with each other and with websocket
sessions.

Body: the chain's inputs (transport/httpapi/inputs.py). Answer: the outputs as JSON,
by name, a single output bare. With ``Accept: application/x-ndjson`` (or
``text/event-stream``) the outputs stream as they are produced, one JSON line (one
SSE ``data:`` event) each:

    {"name": "reply", "data": {"text": "Hel", "final": false}}
    {"error": {"code": "node_error", "message": "...", "node": "upper", ...}}   # the rest goes on
    {"done": true}

Statuses: 400 malformed JSON, 401 no token, 404 unknown chain, 413 body too big, 422
bad input (the field named), 503 with ``Retry-After`` when admission refuses (the
server's request slots after their waiting room, or the runtime's own limits), 504
when an item's budget runs out, 500 naming the node that failed. A client that goes
away cancels its call in the runtime.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
from starlette.responses import Response, StreamingResponse

from chains.errors import NodeError, Overloaded
from chains.outputs import ERROR, EVENTS
from transport.httpapi.common import (
    JSON_HEADER,
    Disconnected,
    HttpError,
    check_scope_token,
    decode_json,
    encode,
    node_failure,
    overloaded,
    receive_body,
    refused,
)
from transport.httpapi.inputs import chain_inputs, outputs_by_name

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def runtime_named(served: Any, name: str) -> Any:
    rt = served.runtimes.get(name)
    if rt is None:
        have = ", ".join(served.runtimes)
        raise HttpError(404, "unknown_chain", f"no chain {name!r}; this server has: {have}", param="chain")
    return rt


async def call(served: Any, rt: Any, inputs: tuple[Any, ...]) -> Any:
    """``rt.call(*inputs)`` with every failure as its status."""
    try:
        return await rt.call(*inputs)
    except Overloaded as e:
        raise overloaded(e, served.requests) from None
    except NodeError as e:
        raise node_failure(e) from None
    except TypeError as e:  # the runtime's own input check (count, types)
        raise HttpError(422, "bad_input", str(e)) from None


def chain_endpoint(served: Any) -> ChainEndpoint:
    return ChainEndpoint(served)


class ChainEndpoint:
    """The route's raw ASGI app: the hot path of every chain request, so it reads the
    scope's headers and the body's messages itself and sends its answer as two ASGI
    messages (a Starlette ``Request``, its body stream, the ``Response`` object and
    the exception-handling wrappers around the endpoint cost about as much as the
    chain call itself; benchmarks/http.py). Errors and streams still go out as
    Starlette responses."""

    def __init__(self, served: Any):
        self.served = served

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        served = self.served
        auth = declared = accept = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
            elif key == b"accept":
                accept = value
            elif key == b"authorization":
                auth = value
        try:
            if served.token is not None:
                check_scope_token(auth, scope.get("query_string", b""), served.token)
            rt = runtime_named(served, scope["path_params"]["chain"])
            body = await receive_body(receive, declared, served.limits.max_body_bytes)
            inputs = chain_inputs(rt.graph, decode_json(body))
            if accept is not None and (b"ndjson" in accept or b"event-stream" in accept):
                sse = SSE.encode() in accept and NDJSON.encode() not in accept
                response = await stream_response(served, rt, inputs, sse=sse)
                await response(scope, receive, send)
                return
            slots = served.requests
            if not await slots.take():
                raise refused(slots, "requests")
            try:
                result = await served.departures.until_gone(receive, call(served, rt, inputs))
            finally:
                slots.give()
            answer = encode(outputs_by_name(rt.graph, result))
        except HttpError as e:
            await e.response()(scope, receive, send)
            return
        except Disconnected:
            return  # the client left: nobody to answer (uvicorn sends nothing for it)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode()), JSON_HEADER],
            }
        )
        await send({"type": "http.response.body", "body": answer})


class StreamResponse(StreamingResponse):
    """Sends ``lines`` as NDJSON or SSE; the first line (or failure) is awaited before
    the status goes out, so a refusal still gets its status. The client going away
    cancels the stream (and the call behind it)."""

    def __init__(
        self, first: bytes, rest: AsyncIterator[bytes], sse: bool, on_close: Any, stall_s: float = 10.0
    ):
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        super().__init__(rest, status_code=200, headers=headers, media_type=SSE if sse else NDJSON)
        self.first = first
        self.rest = rest
        self.sse = sse
        self.on_close = on_close
        self.stall_s = stall_s  # a client that reads nothing for this long is given up on
        self.stalled = False

    def _frame(self, line: bytes) -> bytes:
        return b"data: " + line + b"\n\n" if self.sse else line + b"\n"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                async def put(msg: dict[str, Any]) -> None:
                    # uvicorn's send waits while the socket is full: a client that stopped
                    # reading pauses the stream (and the call behind it), then is dropped
                    with anyio.move_on_after(self.stall_s) as timer:
                        await send(msg)
                    if timer.cancelled_caught:
                        self.stalled = True
                        tg.cancel_scope.cancel()

                tg.start_soon(watch)
                await put({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                await put({"type": "http.response.body", "body": self._frame(self.first), "more_body": True})
                async for line in self.rest:
                    await put({"type": "http.response.body", "body": self._frame(line), "more_body": True})
                await put({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except OSError:
            pass  # the client went away mid-send
        finally:
            await self.on_close()


def _line(out: Any) -> bytes | None:
    if out.name == EVENTS:
        return None
    if out.name == ERROR:
        ev = out.value
        err = node_failure(NodeError(ev.node, ev.message, code=ev.code))
        return encode(err.body())
    return encode({"name": out.name, "data": out.value})


async def stream_response(served: Any, rt: Any, inputs: tuple[Any, ...], sse: bool) -> Response:
    """One ``rt.stream`` of ``inputs`` as a streamed response, holding a request slot
    until it ends."""
    slots = served.requests
    if not await slots.take():
        raise refused(slots, "requests")
    outputs = rt.stream(*inputs)

    async def close() -> None:
        with anyio.CancelScope(shield=True):
            await gen.aclose()
            await outputs.aclose()  # cancels the session behind it if it still runs
        slots.give()

    async def lines() -> AsyncGenerator[bytes, None]:
        async for out in outputs:
            line = _line(out)
            if line is not None:
                yield line
        yield b'{"done":true}'

    gen = lines()
    try:
        first = await _first(gen)
    except BaseException:
        await close()
        raise
    return StreamResponse(first, gen, sse, close, served.limits.stall_timeout_s)


async def _first(gen: AsyncIterator[bytes]) -> bytes:
    try:
        return await gen.__anext__()
    except Overloaded as e:
        raise HttpError(503, "overloaded", str(e), headers={"Retry-After": "1"}) from None
    except NodeError as e:
        raise node_failure(e) from None
    except TypeError as e:
        raise HttpError(422, "bad_input", str(e)) from None


__all__ = ["chain_endpoint", "runtime_named"]
