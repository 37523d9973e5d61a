"""Random bytes and random JSON thrown at the server: it answers errors, never fails
a connection with an internal error, and keeps serving a well-behaved session."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.test_transport_server import CHAINS, check_voice, voice_session
from tests.transport_fixtures import FAKE
from transport.server import Limits, serve

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

protocolish = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "input", "interrupt", "end", "bogus", ""])},
    optional={
        "sample_rate": st.one_of(
            st.integers(-10, 200_000), st.sampled_from([8000, 16000, 48000]), st.text(max_size=5)
        ),
        "output_sample_rate": st.one_of(st.integers(0, 200_000), st.none()),
        "chain": st.one_of(st.none(), st.sampled_from(["voice", "shout", "echo", "nope"]), st.integers()),
        "token": st.one_of(st.text(max_size=4), st.none()),
        "data": json_values,
        "input": st.one_of(st.none(), st.sampled_from(["doc", "audio", "x"]), st.integers()),
        "reason": json_values,
    },
).map(json.dumps)

messages = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=300),
    json_values.map(json.dumps),
    protocolish,
    protocolish,
)


async def throw(url: str, msgs: list[Any]) -> None:
    async with connect(url, compression=None, max_size=None) as ws:
        try:
            for m in msgs:
                await ws.send(m)
            with anyio.move_on_after(0.2):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass


@pytest.mark.anyio
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(messages, min_size=1, max_size=12), min_size=1, max_size=3))
async def test_random_bytes_and_json_never_break_the_server(batches: list[list[Any]]):
    FAKE.reset()
    limits = Limits(max_message_bytes=2048, max_errors=8, start_timeout_s=2.0)
    async with serve(CHAINS, port=0, limits=limits) as srv:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for msgs in batches:  # several hostile connections at once
                    tg.start_soon(throw, srv.url, msgs)
                tg.start_soon(_good, srv.url)
        assert srv.stats["internal_errors"] == 0, srv.stats
        check_voice(await voice_session(srv.url))


async def _good(url: str) -> None:
    check_voice(await voice_session(url))
