"""The OpenAI Realtime endpoint of the real server (Starlette + uvicorn), driven by the
real ``openai`` package's realtime client, on the voice chain of fakes
(tests/voice_fakes.py): a spoken turn, a truncate and the next prompt, the token,
and bad input (malformed JSON, unknown items, a 64 MiB frame) that gets an error
while another session goes on unaware."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from openai import AsyncOpenAI
from openai._websocket_connection import AsyncWebSocketConnectionBase  # the client's raw send
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from chains.history import MARK
from tests.voice_fakes import PROMPTS, fake_voice, silence, speech
from transport.server import serve

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    async with serve(fake_voice, port=0, token="tok") as srv:
        yield srv


def client(srv: Any, key: str = "tok") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key=key, max_retries=0)


async def say(conn: Any, frames: int) -> None:
    for b in speech(frames) + silence(2):
        await conn.input_audio_buffer.append(audio=base64.b64encode(b).decode())


async def until(conn: Any, kind: str, log: list[Any] | None = None) -> Any:
    while True:
        ev = await conn.recv()
        if log is not None:
            log.append(ev)
        if ev.type == kind:
            return ev


async def test_the_openai_client_hears_an_answer_and_truncates_it(server: Any) -> None:
    PROMPTS.clear()
    with anyio.fail_after(60):
        async with client(server).realtime.connect(model="fake_voice", max_retries=0) as conn:
            assert (await conn.recv()).type == "session.created"
            await say(conn, 3)
            log: list[Any] = []
            done = await until(conn, "response.done", log)
            kinds = [e.type for e in log]
            assert "conversation.item.input_audio_transcription.completed" in kinds
            assert kinds.count("response.output_audio.delta") == 2200 // 40
            assert done.response.status == "completed"
            item_id = done.response.output[0].id
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=600)
            truncated = await until(conn, "conversation.item.truncated")
            await conn.conversation.item.retrieve(item_id=item_id)
            retrieved = await until(conn, "conversation.item.retrieved")
            await say(conn, 4)
            await until(conn, "response.done")
    assert truncated.audio_end_ms == 600
    assert retrieved.item.content[0].transcript == "The capital of"
    assert "assistant: The capital of" + MARK in PROMPTS[-1] and "Paris" not in PROMPTS[-1]


async def test_a_wrong_token_gets_an_error(server: Any) -> None:
    with anyio.fail_after(30):
        async with client(server, key="nope").realtime.connect(model="fake_voice", max_retries=0) as conn:
            ev = await conn.recv()
    assert ev.type == "error" and ev.error.code == "invalid_api_key"


async def test_bad_input_gets_errors_and_another_session_does_not_notice(server: Any) -> None:
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=fake_voice"
    with anyio.fail_after(60):
        async with (
            client(server).realtime.connect(model="fake_voice", max_retries=0) as good,
            client(server).realtime.connect(model="fake_voice", max_retries=0) as bad,
        ):
            assert (await good.recv()).type == "session.created"
            assert (await bad.recv()).type == "session.created"
            await AsyncWebSocketConnectionBase.send_raw(bad, "{this is not json")
            e1 = await until(bad, "error")
            await bad.send({"type": "conversation.item.retrieve", "item_id": "item_nope", "event_id": "r1"})
            e2 = await until(bad, "error")
            await bad.send({"type": "input_audio_buffer.append", "audio": "@@@", "event_id": "a1"})
            e3 = await until(bad, "error")
            await bad.send({"type": "response.cancel", "event_id": "c1"})  # out of order: nothing to cancel
            e4 = await until(bad, "error")
            # a 64 MiB frame on a third connection: refused, that connection only
            async with ws_connect(
                url, additional_headers={"Authorization": "Bearer tok"}, max_size=None
            ) as raw:
                await raw.recv()  # session.created
                closed = None
                try:
                    await raw.send("x" * (64 << 20))
                    while True:
                        await raw.recv()
                except ConnectionClosed as e:
                    closed = e.rcvd.code if e.rcvd is not None else None
            await say(good, 3)
            done = await until(good, "response.done")
            await say(bad, 5)
            done_bad = await until(bad, "response.done")
    assert e1.error.code == "invalid_json"
    assert (e2.error.code, e2.error.event_id) == ("item_not_found", "r1")
    assert (e3.error.code, e3.error.event_id) == ("invalid_audio", "a1")
    assert (e4.error.code, e4.error.event_id) == ("response_cancel_not_active", "c1")
    assert closed == 1009  # message too big
    assert done.response.status == "completed" and done_bad.response.status == "completed"
