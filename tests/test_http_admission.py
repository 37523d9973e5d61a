"""The waiting room at the websocket session limit: a session that arrives while the
server is full waits for a free slot (up to ``session_wait_s``) instead of being
refused at once; past the wait it is refused with a retry hint."""

from __future__ import annotations

import anyio
import pytest

from tests.transport_fixtures import RATE, json_of, raw_session, shout
from transport.client import Client
from transport.server import Limits, serve

pytestmark = pytest.mark.anyio
START = {"type": "start", "sample_rate": RATE, "chain": "shout"}


async def test_a_session_waits_for_a_free_slot():
    async with serve({"shout": shout}, port=0, limits=Limits(max_sessions=1, session_wait_s=10)) as srv:
        got: list = []

        async def second() -> None:
            got.extend(await raw_session(srv.url, START, {"type": "input", "data": "hi there"}))

        async with anyio.create_task_group() as tg, Client(srv.url, sample_rate=RATE, chain="shout"):
            tg.start_soon(second)
            with anyio.fail_after(5):
                while srv.sessions.waiting == 0:
                    await anyio.sleep(0.01)
            # the first session ended: the waiting one is served
        assert json_of(got, "ready") and json_of(got, "done") and not json_of(got, "error")
        assert srv.stats["overloaded"] == 0


async def test_past_the_wait_the_refusal_says_when_to_retry():
    lim = Limits(max_sessions=1, session_wait_s=0.2, retry_after_s=3)
    async with serve({"shout": shout}, port=0, limits=lim) as srv:
        async with Client(srv.url, sample_rate=RATE, chain="shout"):
            got = await raw_session(srv.url, START, read_until="close")
        (err,) = json_of(got, "error")
        assert err["code"] == "overloaded" and "retry after 3 s" in err["message"]
        assert "waited 0.2 s" in err["message"] and got[-1] == ("close", 1013)


async def test_the_other_protocols_share_the_slots_and_say_when_to_retry():
    """A Twilio or Realtime socket arriving while our protocol holds the only slot waits,
    then is closed with 1013 and the retry hint: one limit for every protocol."""
    from websockets.asyncio.client import connect

    lim = Limits(max_sessions=1, session_wait_s=0.1, retry_after_s=2)
    async with serve({"shout": shout}, port=0, limits=lim) as srv:
        async with Client(srv.url, sample_rate=RATE, chain="shout"):
            for path in ("/twilio", "/v1/realtime?model=shout"):
                async with connect(srv.url.rstrip("/") + path) as ws:
                    with anyio.fail_after(5):
                        await ws.wait_closed()
                    assert ws.close_code == 1013
                    assert "retry after 2 s" in (ws.close_reason or "")
        assert srv.stats["overloaded"] == 2
