"""The OpenAI-compatible endpoints with the real ``openai`` client against the real
server, on fake chains (no models): embeddings (float and the client's default
base64), chat completions streamed and not, a transcription of a wav upload, the
model list, and the errors a client sees (unknown model, a chain that does not fit,
bad input, no token)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec
import openai
import pytest

import chains
from chains import AudioFrame, Embedding, Stream, Text, TextDelta
from chains.audio import silence, tone, write_wav
from tests.transport_fixtures import energy_vad, fake_stt, shout
from transport.server import Limits, serve

pytestmark = pytest.mark.anyio


@chains.node(batch=chains.Batch(max_size=8, max_wait_ms=5))
def fake_embed(ts: list[Text]) -> list[Embedding]:
    return [Embedding(text=t.text, vector=[float(len(t.text)), 0.5, -1.0]) for t in ts]


@chains.chain
def embed(text: Text):
    return fake_embed(text)


class Msg(msgspec.Struct, frozen=True):
    role: str
    content: str


class Conversation(msgspec.Struct, frozen=True):
    messages: list[Msg]


@chains.node
async def fake_chat(conv: Conversation) -> AsyncIterator[TextDelta]:
    last = conv.messages[-1].content
    words = f"{len(conv.messages)} messages, last: {last}".split()
    for i, w in enumerate(words):
        yield TextDelta(text=w + (" " if i < len(words) - 1 else ""), final=i == len(words) - 1)


@chains.chain
def chat(conversation: Conversation):
    return fake_chat(conversation)


@chains.chain
def transcribe(audio: Stream[AudioFrame]):
    return {"transcript": fake_stt(energy_vad(audio))}


CHAINS = {"embed": embed, "chat": chat, "transcribe": transcribe, "shout": shout}


def client(srv: object, key: str = "-") -> openai.OpenAI:
    """The sync client, called in worker threads (``run``): the async one detects the
    platform in a thread of asyncio's default executor, which outlives a test."""
    return openai.OpenAI(base_url=f"{srv.http_url}v1", api_key=key, max_retries=0)  # type: ignore[attr-defined]


async def run(fn: Any, *args: Any, **kw: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kw))


async def test_models_and_embeddings():
    async with serve(CHAINS, port=0) as srv:
        oa = client(srv)
        assert {m.id for m in (await run(oa.models.list)).data} == set(CHAINS)
        r = await run(oa.embeddings.create, model="embed", input=["hi", "hello"])  # base64 on the wire
        assert [d.embedding for d in r.data] == [[2.0, 0.5, -1.0], [5.0, 0.5, -1.0]]
        assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens == 2
        r = await run(oa.embeddings.create, model="embed", input="one two", encoding_format="float")
        assert r.data[0].embedding == [7.0, 0.5, -1.0] and r.model == "embed"


async def test_chat_completions_streamed_and_not():
    async with serve(CHAINS, port=0) as srv:
        oa = client(srv)
        msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
        r = await run(oa.chat.completions.create, model="chat", messages=msgs)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "2 messages, last: hi there"
        assert r.choices[0].finish_reason == "stop"
        stream = await run(oa.chat.completions.create, model="chat", messages=msgs, stream=True)  # type: ignore[arg-type]
        chunks = await run(list, stream)
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert len(pieces) == 5 and "".join(pieces) == "2 messages, last: hi there"


async def test_transcription_of_a_wav_upload(tmp_path):
    wav = tmp_path / "q.wav"
    write_wav(wav, tone(300, 16000) + silence(200, 16000), 16000)
    async with serve(CHAINS, port=0) as srv:
        oa = client(srv)
        with wav.open("rb") as f:
            r = await run(oa.audio.transcriptions.create, model="transcribe", file=f)
        assert r.text == "heard 400 ms"


async def test_errors_a_client_sees_and_the_server_serves_on():
    async with serve(CHAINS, port=0, token="k") as srv:
        oa = client(srv, key="k")
        with pytest.raises(openai.NotFoundError, match="no chain 'nope'"):
            await run(oa.embeddings.create, model="nope", input="x")
        with pytest.raises(openai.BadRequestError, match="does not take audio"):
            await run(oa.audio.transcriptions.create, model="embed", file=("a.wav", io.BytesIO(b"RIFF")))
        with pytest.raises(openai.UnprocessableEntityError, match="not a readable wav"):
            await run(
                oa.audio.transcriptions.create, model="transcribe", file=("a.wav", io.BytesIO(b"RIFFxx"))
            )
        with pytest.raises(openai.UnprocessableEntityError, match="`input` must be a string"):
            await run(oa.embeddings.create, model="embed", input=[1, 2])  # type: ignore[arg-type]
        with pytest.raises(openai.UnprocessableEntityError, match="needs a `role`"):
            await run(oa.chat.completions.create, model="chat", messages=[{"content": "x"}])  # type: ignore[list-item]
        with pytest.raises(openai.BadRequestError, match="does not fit"):
            await run(
                oa.chat.completions.create, model="transcribe", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.AuthenticationError, match="token"):
            await run(client(srv, key="wrong").models.list)
        async with httpx.AsyncClient(base_url=srv.http_url, headers={"Authorization": "Bearer k"}) as h:
            r = await h.post("/v1/embeddings", content=b"{nope")
            assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
        r = await run(oa.embeddings.create, model="embed", input="still served", encoding_format="float")
        assert r.data[0].embedding[0] == 12.0


ENDPOINTS = {
    "/v1/embeddings": {"model": "embed", "input": "x"},
    "/v1/chat/completions": {"model": "chat", "messages": [{"role": "user", "content": "x"}]},
    "/v1/chains/shout": "x",
}


async def test_every_endpoint_refuses_bad_requests_with_the_right_status():
    lim = Limits(max_body_bytes=2000)
    async with serve(CHAINS, port=0, token="k", limits=lim) as srv:
        auth = {"Authorization": "Bearer k"}
        async with httpx.AsyncClient(base_url=srv.http_url) as h:
            for path, good in ENDPOINTS.items():
                cases = [
                    (json.dumps(good).encode(), {}, 401, "token"),
                    (b'{"model": "embed", ', auth, 400, "malformed JSON"),
                    (json.dumps({"model": "x" * 3000}).encode(), auth, 413, "exceeds the limit of 2000"),
                ]
                if isinstance(good, dict):
                    cases += [
                        (json.dumps({**good, "model": "nope"}).encode(), auth, 404, "no chain 'nope'"),
                        (json.dumps({**good, "model": 5}).encode(), auth, 422, "`model` must be a string"),
                        (json.dumps([good]).encode(), auth, 422, "send a JSON object"),
                    ]
                for body, headers, status, says in cases:
                    r = await h.post(path, content=body, headers=headers)
                    assert r.status_code == status, (path, body[:40], r.text)
                    assert says in r.json()["error"]["message"], (path, r.text)
                r = await h.post(path, content=json.dumps(good).encode(), headers=auth)
                assert r.status_code == 200, (path, r.text)  # and it serves on
            form = {"model": (None, "transcribe")}
            r = await h.post("/v1/audio/transcriptions", files=form)
            assert r.status_code == 401
            r = await h.post("/v1/audio/transcriptions", files=form, headers=auth)
            assert r.status_code == 422 and "missing `file`" in r.json()["error"]["message"]
            big = {"model": (None, "transcribe"), "file": ("a.wav", b"\0" * 3000)}
            r = await h.post("/v1/audio/transcriptions", files=big, headers=auth)
            assert r.status_code == 413
            r = await h.post("/v1/audio/transcriptions", content=b"{}", headers=auth)
            assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]["message"]
