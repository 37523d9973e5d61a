"""POST /v1/chains/CHAIN against the real server on loopback, on fake chains: the
answer shapes, streaming (NDJSON and SSE), every bad input with its status and the
field named, a failing node named, the budget running out, admission and its waiting
room, a client that goes away (its call cancelled), and the server serving everyone
else throughout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

import chains
from chains import Stream, Text, TextDelta
from chains.testing import BatchFake, Gate
from tests.transport_fixtures import shout
from transport.server import Limits, serve

pytestmark = pytest.mark.anyio


@chains.node
async def words(doc: Text) -> AsyncIterator[TextDelta]:
    parts = doc.text.split()
    for i, w in enumerate(parts):
        yield TextDelta(text=w, final=i == len(parts) - 1)


@chains.node
async def count(ws: Stream[TextDelta]) -> AsyncIterator[int]:
    yield len([w async for w in ws])


@chains.chain
def tokens(doc: Text):
    ws = words(doc)
    return {"reply": ws, "count": count(ws)}


@chains.node
async def add(a: int, b: int) -> int:
    return a + b


@chains.chain
def adder(a: int, b: int):
    return add(a, b)


GATE: dict[str, Any] = {}


@chains.node
async def held(t: Text) -> Text:
    GATE["entered"] += 1
    try:
        await GATE["gate"].wait()
    except BaseException:
        GATE["cancelled"] += 1
        raise
    return t


@chains.chain
def slow(t: Text):
    return held(t)


@chains.node(timeout_ms=50)
async def sluggish(t: Text) -> Text:
    await anyio.sleep(5)
    return t


@chains.chain
def late(t: Text):
    return sluggish(t)


CHAINS = {"shout": shout, "tokens": tokens, "adder": adder, "slow": slow, "late": late}


@pytest.fixture(autouse=True)
def _gate():
    GATE.update(gate=Gate(), entered=0, cancelled=0)
    yield
    GATE["gate"].open()


async def post(client: httpx.AsyncClient, chain: str, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(f"/v1/chains/{chain}", content=content, **kw)


def error_of(r: httpx.Response) -> dict[str, Any]:
    return r.json()["error"]  # type: ignore[no-any-return]


async def test_outputs_by_name_and_a_single_output_bare():
    async with serve(CHAINS, port=0) as srv, httpx.AsyncClient(base_url=srv.http_url) as c:
        want = {"loud": {"text": "HELLO BIG WORLD"}, "words": 3}
        for body in ({"doc": {"text": "hello big world"}}, {"text": "hello big world"}, "hello big world"):
            r = await post(c, "shout", body)
            assert r.status_code == 200 and r.json() == want, body
        r = await post(c, "adder", {"a": 2, "b": 40})
        assert r.status_code == 200 and r.json() == 42


async def test_ndjson_and_sse_stream_the_outputs_as_produced():
    async with serve(CHAINS, port=0) as srv, httpx.AsyncClient(base_url=srv.http_url) as c:
        r = await post(c, "tokens", "one two three", headers={"Accept": "application/x-ndjson"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert [x["data"]["text"] for x in lines if x.get("name") == "reply"] == ["one", "two", "three"]
        assert {"name": "count", "data": 3} in lines and lines[-1] == {"done": True}
        r = await post(c, "tokens", "a b", headers={"Accept": "text/event-stream"})
        events = [json.loads(e.removeprefix("data: ")) for e in r.text.split("\n\n") if e]
        assert [e["data"]["text"] for e in events if e.get("name") == "reply"] == ["a", "b"]
        assert events[-1] == {"done": True}


async def test_bad_input_gets_its_status_and_names_the_problem_while_others_are_served():
    lim = Limits(max_body_bytes=1000)
    async with (
        serve(CHAINS, port=0, token="t0k", limits=lim) as srv,
        httpx.AsyncClient(base_url=srv.http_url, headers={"Authorization": "Bearer t0k"}) as c,
    ):
        cases: list[tuple[str, Any, int, str, str | None]] = [
            ("shout", b'{"doc": ', 400, "malformed JSON", None),
            ("shout", b"", 400, "empty body", None),
            ("shout", {"doc": {"text": 5}}, 422, "Expected `str`, got `int`", "doc.text"),
            ("adder", {"a": 1}, 422, "missing input 'b'", "b"),
            ("adder", {"a": 1, "b": 2, "c": 3}, 422, "no input 'c'", "c"),
            ("adder", {"a": "x", "b": 2}, 422, "input 'a'", "a"),
            ("adder", [1, 2], 422, "send a JSON object", None),
            ("nope", {"text": "x"}, 404, "no chain 'nope'", "chain"),
            ("shout", {"text": "x" * 2000}, 413, "exceeds the limit of 1000 bytes", None),
        ]
        good = 0

        async def keep_serving() -> None:
            nonlocal good
            for _ in range(10):
                r = await post(c, "shout", "still here")
                assert r.status_code == 200 and r.json()["words"] == 2
                good += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_serving)
            for chain, body, status, says, param in cases:
                r = await post(c, chain, body)
                assert r.status_code == status, (chain, body, r.text)
                err = error_of(r)
                assert says in err["message"], (says, err)
                assert err["param"] == param, err
        assert good == 10
        async with httpx.AsyncClient(base_url=srv.http_url) as anon:
            r = await post(anon, "shout", "hi")
            assert r.status_code == 401 and "token" in error_of(r)["message"]
            r = await post(anon, "shout", "hi", params={"token": "t0k"})
            assert r.status_code == 200


async def test_a_failing_node_is_named_and_a_budget_that_runs_out_is_504():
    async with serve(CHAINS, port=0) as srv, httpx.AsyncClient(base_url=srv.http_url) as c:
        r = await post(c, "shout", "boom")
        assert r.status_code == 500
        err = error_of(r)
        assert err["node"] == "upper" and "boom requested" in err["message"]
        r = await post(c, "late", "x")
        assert r.status_code == 504 and error_of(r)["node"] == "sluggish"
        r = await post(c, "shout", "fine")
        assert r.status_code == 200


async def test_a_client_that_goes_away_cancels_its_call():
    async with serve(CHAINS, port=0) as srv:
        async with httpx.AsyncClient(base_url=srv.http_url, timeout=httpx.Timeout(0.5)) as c:
            with pytest.raises(httpx.ReadTimeout):
                await post(c, "slow", "x")
        with anyio.fail_after(10):
            while GATE["cancelled"] == 0:
                await anyio.sleep(0.02)
        assert GATE["entered"] == 1
        assert srv.requests.used == 0


async def test_admission_waits_in_the_waiting_room_then_refuses_with_retry_after():
    lim = Limits(max_requests=1, session_wait_s=0.3, retry_after_s=2)
    async with serve(CHAINS, port=0, limits=lim) as srv, httpx.AsyncClient(base_url=srv.http_url) as c:
        results: dict[str, httpx.Response] = {}

        async def first() -> None:
            results["first"] = await post(c, "slow", "a")

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            with anyio.fail_after(5):
                while GATE["entered"] == 0:
                    await anyio.sleep(0.01)
            r = await post(c, "shout", "b")  # no slot within 0.3 s
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert "retry after 2 s" in error_of(r)["message"]
            GATE["gate"].allow(1)
        assert results["first"].json() == {"text": "a"}
        # the waiting room: a request arriving while the slot is held gets it when it frees
        lim2 = Limits(max_requests=1, session_wait_s=10)
        async with (
            serve(CHAINS, port=0, limits=lim2) as srv2,
            httpx.AsyncClient(base_url=srv2.http_url) as c2,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(lambda: post(c2, "slow", "a"))
            with anyio.fail_after(5):
                while GATE["entered"] < 2:
                    await anyio.sleep(0.01)

            async def release() -> None:
                while srv2.requests.waiting == 0:
                    await anyio.sleep(0.01)
                GATE["gate"].allow(1)

            tg.start_soon(release)
            r = await post(c2, "shout", "waited")
            assert r.status_code == 200 and r.json()["words"] == 1


async def test_http_requests_batch_with_each_other():
    model = BatchFake("model", max_size=8, max_wait_ms=50)

    @chains.chain
    def batched(x: str):
        return model.node(x)

    async with serve(batched, port=0) as srv, httpx.AsyncClient(base_url=srv.http_url) as c:
        rs = await asyncio.gather(*(post(c, "batched", f"s{i}/x") for i in range(8)))
        assert all(r.status_code == 200 for r in rs)
    assert max(model.sessions_per_batch()) > 1  # one batch served several requests


PRODUCED = {"n": 0}


@chains.node
async def flood(t: Text) -> AsyncIterator[Text]:
    for _ in range(5000):
        PRODUCED["n"] += 1
        yield Text(text="x" * 10_000)


@chains.chain
def floods(t: Text):
    return flood(t)


async def test_a_stream_reader_that_stops_reading_is_dropped_and_its_call_ends():
    PRODUCED["n"] = 0
    async with serve({"floods": floods}, port=0, limits=Limits(stall_timeout_s=0.5)) as srv:
        body = b'"go"'
        head = (
            f"POST /v1/chains/floods HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        async with await anyio.connect_tcp("127.0.0.1", srv.port) as sock:
            await sock.send(head + body)  # and never reads
            rt = srv.runtimes["floods"]
            with anyio.fail_after(20):
                while PRODUCED["n"] == 0 or rt.sessions or srv.requests.used:
                    await anyio.sleep(0.05)
        assert PRODUCED["n"] < 5000  # paused by the full socket, then ended
