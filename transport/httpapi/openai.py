"""OpenAI-compatible endpoints for the chains that fit, so that a stock client
(``OpenAI(base_url="http://HOST:PORT/v1")``) can use them. ``model`` names the chain.

- ``GET /v1/models``: every served chain.
- ``POST /v1/embeddings`` (``{"model": CHAIN, "input": str | [str]}``) for a chain
  from one ``Text`` to an ``Embedding``: each string is one ``rt.call``, run at once so
  they batch (with each other and everyone else). ``encoding_format`` ``float`` or
  ``base64`` (float32 little-endian, what the openai client asks for by default).
  ``usage`` counts words: a chain does not report its tokenizer's count.
- ``POST /v1/chat/completions`` for a chain with one value input that takes the
  conversation (a Struct with ``messages: [{role, content}]``; a ``Text`` input gets
  the last user message) and streams ``TextDelta``s (or returns ``Text``): one
  ``rt.stream``; ``stream: true`` answers SSE chunks ending with ``data: [DONE]``.
- ``POST /v1/audio/transcriptions``: transport/httpapi/transcribe.py.

Errors use the OpenAI shape (``error.message``, ``error.type``, ``error.param``) with
our ``code``; see transport/httpapi/common.py.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from chains.errors import NodeError, Overloaded
from chains.messages import Text, TextDelta
from transport.httpapi.chainapi import SSE, StreamResponse, call, runtime_named
from transport.httpapi.common import (
    HttpError,
    check_token,
    decode_json,
    encode,
    endpoint,
    in_slot,
    json_response,
    node_failure,
    overloaded,
    read_body,
)
from transport.httpapi.inputs import convert
from transport.httpapi.transcribe import transcriptions_endpoint


def openai_routes(served: Any) -> list[BaseRoute]:
    return [
        Route("/v1/models", _models(served), methods=["GET"]),
        Route("/v1/embeddings", _embeddings(served), methods=["POST"]),
        Route("/v1/chat/completions", _chat(served), methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions_endpoint(served), methods=["POST"]),
    ]


def request_object(body: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HttpError(422, "bad_input", f"send a JSON object, got {type(body).__name__}")
    for key in required:
        if key not in body:
            raise HttpError(422, "missing_field", f"missing `{key}`", param=key)
    if not isinstance(body["model"], str):
        raise HttpError(422, "bad_input", "`model` must be a string naming a chain", param="model")
    return body


def single_input(rt: Any, what: str) -> Any:
    """The chain's one value input, or a 400 saying why the chain does not fit."""
    g = rt.graph
    if len(g.inputs) != 1 or g.inputs[0].stream:
        raise HttpError(
            400,
            "wrong_chain",
            f"chain {g.name!r} does not fit {what}: it needs one value input "
            f"(it has: {', '.join(i.name for i in g.inputs)})",
            param="model",
        )
    return g.inputs[0]


async def chain_request(
    request: Request, served: Any, required: tuple[str, ...], what: str
) -> tuple[dict[str, Any], Any, Any]:
    """What every OpenAI JSON endpoint does first: the token, the body as a JSON object
    with its ``required`` fields, the chain its ``model`` names and that chain's one
    value input (``what`` names the endpoint in the error when the chain does not fit)."""
    check_token(request, served.token)
    body = request_object(decode_json(await read_body(request, served.limits.max_body_bytes)), required)
    rt = runtime_named(served, body["model"])
    return body, rt, single_input(rt, what)


def _models(served: Any) -> Callable[[Request], Any]:
    @endpoint
    async def models(request: Request) -> Response:
        check_token(request, served.token)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "chains"} for n in served.runtimes]
        return json_response({"object": "list", "data": data})

    return models


# --- embeddings -------------------------------------------------------------------------------
def _embeddings(served: Any) -> Callable[[Request], Any]:
    @endpoint
    async def embeddings(request: Request) -> Response:
        body, rt, inp = await chain_request(request, served, ("model", "input"), "/v1/embeddings")
        texts = body["input"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise HttpError(
                422, "bad_input", "`input` must be a string or a non-empty list of strings", param="input"
            )
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise HttpError(
                422, "bad_input", "`encoding_format` must be float or base64", param="encoding_format"
            )
        values = [convert(t, inp.type, f".input[{i}]", "input") for i, t in enumerate(texts)]

        async def all_of() -> list[Any]:
            out: list[Any] = [None] * len(values)

            async def one(i: int) -> None:
                out[i] = await call(served, rt, (values[i],))

            async with anyio.create_task_group() as tg:
                for i in range(len(values)):
                    tg.start_soon(one, i)
            return out

        async def work() -> list[Any]:
            try:
                return await served.departures.until_gone(request.receive, all_of())
            except BaseExceptionGroup as group:  # the first failure decides the status
                raise group.exceptions[0] from None

        results = await in_slot(served.requests, "requests", work)
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(rt.graph.name, r, fmt)}
            for i, r in enumerate(results)
        ]
        words = sum(len(t.split()) for t in texts)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": rt.graph.name,
                "usage": {"prompt_tokens": words, "total_tokens": words},
            }
        )

    return embeddings


def _vector(chain: str, result: Any, fmt: str) -> Any:
    vec = getattr(result, "vector", result)
    if not isinstance(vec, list | tuple | np.ndarray):
        raise HttpError(
            500, "wrong_chain", f"chain {chain!r} did not return an Embedding (got {type(result).__name__})"
        )
    if fmt == "base64":
        return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vec]


# --- chat completions ---------------------------------------------------------------------------
def _chat(served: Any) -> Callable[[Request], Any]:
    @endpoint
    async def chat(request: Request) -> Response:
        body, rt, inp = await chain_request(request, served, ("model", "messages"), "/v1/chat/completions")
        value = conversation(body["messages"], inp.type)
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": rt.graph.name,
        }
        if body.get("stream"):
            return await _chat_stream(served, rt, value, meta)

        async def collect() -> str:
            try:
                return "".join([piece async for piece in _pieces(rt.stream(value))])
            except Overloaded as e:
                raise overloaded(e, served.requests) from None

        async def work() -> str:
            return await served.departures.until_gone(request.receive, collect())

        text = await in_slot(served.requests, "requests", work)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return json_response({**meta, "object": "chat.completion", "choices": [choice]})

    return chat


def conversation(messages: Any, want: Any) -> Any:
    if not isinstance(messages, list) or not messages:
        raise HttpError(422, "bad_input", "`messages` must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise HttpError(
                422, "bad_input", f"messages[{i}] needs a `role` and a `content`", param=f"messages[{i}]"
            )
    if isinstance(want, type) and issubclass(want, Text):
        users = [m for m in messages if m["role"] == "user"]
        if not users or not isinstance(users[-1]["content"], str):
            raise HttpError(422, "bad_input", "no user message with text content", param="messages")
        return want(text=users[-1]["content"])
    return convert({"messages": messages}, want, "", "messages")


async def _pieces(outputs: AsyncIterator[Any]) -> AsyncGenerator[str, None]:
    """The reply's text as it comes: ``TextDelta``s and ``Text``s of the data outputs."""
    try:
        async for out in outputs:
            if out.name == "error":
                ev = out.value
                raise node_failure(NodeError(ev.node, ev.message, code=ev.code))
            v = out.value
            if isinstance(v, TextDelta | Text):
                if v.text:
                    yield v.text
            elif isinstance(v, str):
                yield v
    except NodeError as e:
        raise node_failure(e) from None
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]


async def _chat_stream(served: Any, rt: Any, value: Any, meta: dict[str, Any]) -> Response:
    slots = served.requests
    if not await slots.take():
        raise HttpError(503, "overloaded", "the server is at its request limit", headers={"Retry-After": "1"})
    pieces = _pieces(rt.stream(value))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return encode(
            {
                **meta,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    async def rest() -> AsyncGenerator[bytes, None]:
        try:
            async for piece in pieces:
                yield chunk({"content": piece})
            yield chunk({}, "stop")
        except HttpError as e:
            yield encode(e.body())
        except Overloaded as e:
            yield encode(overloaded(e, slots).body())
        yield b"[DONE]"

    async def close() -> None:
        with anyio.CancelScope(shield=True):
            await lines.aclose()
            await pieces.aclose()
        slots.give()

    # The stream opens with the role chunk at once; a failure before the first token
    # (admission, a node) comes as an error event in the stream, before [DONE].
    lines = rest()
    first = chunk({"role": "assistant", "content": ""})
    return StreamResponse(first, lines, True, close, served.limits.stall_timeout_s)


__all__ = ["SSE", "openai_routes"]
