"""``POST /v1/audio/transcriptions`` (OpenAI-compatible, multipart form: ``file`` a wav,
``model`` the chain, optional ``response_format`` ``json`` (default) or ``text``) for a
chain whose one input is a stream of ``AudioFrame``s and which outputs transcripts.

The wav is read with chains' own rules (``chains.audio.read_wav``: mono mix-down,
8/24/32-bit to 16-bit), cut into 20 ms frames and sent as one ``rt.stream``; the
final transcripts (``Text`` items; interim ones skipped) are joined with spaces.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from chains.audio import frames, read_wav
from chains.errors import AudioError, NodeError, Overloaded
from chains.messages import AudioFrame, Text
from chains.outputs import ERROR, TRANSCRIPT
from transport.httpapi.chainapi import runtime_named
from transport.httpapi.common import (
    HttpError,
    check_token,
    endpoint,
    in_slot,
    json_response,
    node_failure,
    overloaded,
    read_body,
)

FORM = ("multipart/form-data",)


def transcriptions_endpoint(served: Any) -> Callable[[Request], Any]:
    @endpoint
    async def transcriptions(request: Request) -> Response:
        check_token(request, served.token)
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(FORM):
            raise HttpError(
                415, "bad_content_type", f"send multipart/form-data with a wav `file`, got {ctype!r}"
            )
        body = await read_body(request, served.limits.max_body_bytes)
        form = await _form(request, body)
        model = form.get("model")
        if not isinstance(model, str):
            raise HttpError(422, "missing_field", "missing `model` (the chain's name)", param="model")
        rt = runtime_named(served, model)
        _check_fits(rt)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HttpError(422, "missing_field", "missing `file` (a wav upload)", param="file")
        audio = await _frames(await upload.read())
        fmt = form.get("response_format", "json")

        async def work() -> str:
            return await served.departures.until_gone(request.receive, _transcribe(served, rt, audio))

        text = await in_slot(served.requests, "requests", work)
        if fmt == "text":
            return PlainTextResponse(text)
        return json_response({"text": text})

    return transcriptions


async def _form(request: Request, body: bytes) -> Any:
    """The multipart form of an already-read body (its size was checked first)."""

    async def replay() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form()
    except Exception as e:  # python-multipart's parse errors, starlette's limits
        raise HttpError(400, "bad_form", f"malformed multipart form: {e}") from None


def _check_fits(rt: Any) -> None:
    g = rt.graph
    ok = len(g.inputs) == 1 and g.inputs[0].stream and _is_audio(g.inputs[0].type)
    if not ok:
        raise HttpError(
            400,
            "wrong_chain",
            f"chain {g.name!r} does not take audio: /v1/audio/transcriptions needs a chain "
            "whose one input is Stream[AudioFrame]",
            param="model",
        )


def _is_audio(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, AudioFrame)


async def _frames(data: bytes) -> list[AudioFrame]:
    def read() -> list[AudioFrame]:
        fd, path = tempfile.mkstemp(suffix=".wav")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                pcm, rate = read_wav(path)
            except AudioError as e:
                raise AudioError(str(e).replace(path, "file")) from None
        finally:
            os.unlink(path)
        if not pcm:
            raise AudioError("the wav file has no audio")
        return frames(pcm, rate)

    try:
        return await anyio.to_thread.run_sync(read)
    except AudioError as e:
        raise HttpError(422, "bad_audio", str(e), param="file") from None


async def _transcribe(served: Any, rt: Any, audio: list[AudioFrame]) -> str:
    texts: list[str] = []
    named = TRANSCRIPT in rt.graph.outputs
    outputs = rt.stream(audio)
    try:
        async for out in outputs:
            if out.name == ERROR:
                ev = out.value
                raise node_failure(NodeError(ev.node, ev.message, code=ev.code))
            if out.is_interim or (named and out.name != TRANSCRIPT):
                continue
            if isinstance(out.value, Text) and out.value.text.strip():
                texts.append(out.value.text.strip())
    except Overloaded as e:
        raise overloaded(e, served.requests) from None
    except NodeError as e:
        raise node_failure(e) from None
    finally:
        await outputs.aclose()
    return " ".join(texts)


__all__ = ["transcriptions_endpoint"]
