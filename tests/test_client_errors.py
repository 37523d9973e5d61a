"""The Python client: every failure is a ``ClientError`` (with the close code and the
server's reason), and outputs come back as the chain's types when it has the chain.

The server side is scripted here with plain ``websockets`` (what it sends, when it
closes), so each case happens every time rather than by timing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve

import chains
from chains import Embedding, Text
from transport.client import Client, ClientError
from transport.protocol import Done, OutputMsg, Ready, encode

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def ready_then(ws: ServerConnection, *then: Any) -> None:
    await ws.recv()  # start
    await ws.send(encode(Ready(session="s1", sample_rate=16000, chain="c")).decode())
    for msg in then:
        await ws.send(encode(msg).decode())


async def test_a_refusal_before_start_is_a_client_error_with_code_and_reason():
    async def refuse(ws: ServerConnection) -> None:
        await ws.close(1013, "at the limit of 64 sessions")

    async with scripted(refuse) as url:
        with pytest.raises(ClientError) as e:
            async with Client(url):
                pass
    assert e.value.close_code == 1013 and e.value.code == "overloaded"
    assert e.value.reason == "at the limit of 64 sessions"
    assert "1013 at the limit of 64 sessions" in str(e.value)


async def test_sending_on_a_closed_session_is_a_client_error():
    async def close_after_ready(ws: ServerConnection) -> None:
        await ready_then(ws)
        await ws.close(1013, "try again later")

    async with scripted(close_after_ready) as url, Client(url) as c:
        await c.ws.wait_closed()  # type: ignore[union-attr]
        with pytest.raises(ClientError) as e:
            await c.send_input("more")  # was websockets' ConnectionClosedError
        assert e.value.close_code == 1013 and e.value.reason == "try again later"
        with pytest.raises(ClientError):
            await c.send_audio(b"\0\0")


async def test_an_undecodable_server_message_is_a_client_error():
    async def garbage(ws: ServerConnection) -> None:
        await ready_then(ws)
        await ws.send('{"type": "nonsense"}')

    async with scripted(garbage) as url, Client(url) as c:
        with pytest.raises(ClientError, match="cannot decode a server message"):
            await c.receive()


class Label(chains.Message, frozen=True):
    name: str
    score: float


@chains.node
async def embed(t: Text) -> Embedding:
    return Embedding(text=t.text, vector=[1.0])


@chains.node
async def label(t: Text) -> Label:
    return Label(name="x", score=1.0)


@chains.chain
def enrich(t: Text):
    return {"embedding": embed(t), "label": label(t)}


def serve_outputs(ws_outputs: list[Any]) -> Handler:
    async def handler(ws: ServerConnection) -> None:
        await ready_then(ws, *ws_outputs, Done())

    return handler


OUTPUTS = [
    OutputMsg(name="embedding", data={"text": "hi", "vector": [0.5, 0.25]}),
    OutputMsg(name="label", data={"name": "greeting", "score": 0.9}),
]


async def test_outputs_decode_into_the_chains_types():
    async with scripted(serve_outputs(OUTPUTS)) as url, Client(url, chain=enrich) as c:
        assert c.chain == "enrich"  # the chain's name is what the server is asked for
        got = {m.name: m.data async for m in c if isinstance(m, OutputMsg)}
    assert got == {
        "embedding": Embedding(text="hi", vector=[0.5, 0.25]),
        "label": Label(name="greeting", score=0.9),
    }


async def test_types_may_be_given_by_name_and_a_mismatch_is_a_client_error():
    async with scripted(serve_outputs(OUTPUTS[:1])) as url, Client(url, types={"embedding": Embedding}) as c:
        got = [m.data async for m in c if isinstance(m, OutputMsg)]
    assert got == [Embedding(text="hi", vector=[0.5, 0.25])]
    async with scripted(serve_outputs(OUTPUTS[1:])) as url, Client(url, types={"label": Embedding}) as c:
        with pytest.raises(ClientError, match="output 'label' is not a Embedding"):
            [m async for m in c]
    async with scripted(serve_outputs(OUTPUTS)) as url, Client(url) as c:  # no types: JSON
        plain = [m.data async for m in c if isinstance(m, OutputMsg)]
    assert plain[0] == msgspec.to_builtins(Embedding(text="hi", vector=[0.5, 0.25]))


@chains.node
async def shout(t: Text) -> Text:
    return Text(text=t.text.upper())


@chains.chain
def loud(t: Text):
    return {"reply": shout(t), "label": label(t)}


async def test_a_text_chain_on_the_server_gets_its_outputs_and_no_voice_metrics():
    async with chains.serve(loud, port=0) as srv, Client(srv.url, chain=loud) as c:
        await c.send_input(Text(text="hi"))
        await c.end()
        got = [m async for m in c]
    kinds = [type(m).__name__ for m in got]
    assert "Metrics" not in kinds, kinds
    assert any(getattr(m, "text", None) == "HI" for m in got)
    assert [m.data for m in got if isinstance(m, OutputMsg)] == [Label(name="x", score=1.0)]
