"""Pacing on our own websocket protocol, through the real server, on the voice chain of
fakes (tests/voice_fakes.py): reply audio never gets more than the lead ahead of
playback (the connection's pacer's own accounting), and an ``interrupt`` brings a
``truncated`` event with the heard words, no more audio of the old turn, and a chat
history cut to those words."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from chains.history import MARK
from tests.voice_fakes import PROMPTS, fake_voice, silence, speech
from transport.server import serve
from transport.settings import Limits

pytestmark = pytest.mark.timeout(60)
START = {"type": "start", "sample_rate": 24000}


async def test_reply_audio_is_paced_and_an_interrupt_brings_truncated_with_the_heard_words() -> None:
    PROMPTS.clear()
    async with (
        serve(fake_voice, port=0, limits=Limits(lead_ms=120)) as srv,
        connect(srv.url, compression=None, max_size=None) as ws,
    ):
        await ws.send(json.dumps(START))
        assert json.loads(await ws.recv())["type"] == "ready"
        for b in speech(3) + silence(2):
            await ws.send(b)
        got = 0
        with anyio.fail_after(20):
            while got < 2 * 24 * 700:  # 700 ms of the reply received
                msg = await ws.recv()
                if isinstance(msg, bytes):
                    got += len(msg)
        await ws.send(json.dumps({"type": "interrupt"}))
        events: list[dict[str, Any]] = []
        late_audio = 0
        with anyio.fail_after(20):
            while not any(e.get("event") == "truncated" for e in events):
                msg = await ws.recv()
                if isinstance(msg, bytes):
                    late_audio += len(msg)
                else:
                    events.append(json.loads(msg))
        for b in speech(4) + silence(2):  # "And of Spain?"
            await ws.send(b)
        with anyio.fail_after(20):
            while len(PROMPTS) < 2:
                await ws.recv()
        (conn,) = srv.connections
        pacer = conn._paced.pacer
    truncated = next(e for e in events if e.get("event") == "truncated")["data"]
    full = "The capital of France is Paris, a city on the Seine."
    assert truncated["text"] == full[: len(truncated["text"])]
    assert truncated["heard"] and full.startswith(truncated["heard"]) and truncated["heard"] != full
    assert 0 < truncated["played_ms"] <= truncated["sent_ms"]
    assert late_audio <= 2 * 24 * 40  # at most the one frame that was being sent
    assert max(pacer.leads) <= 120 + 1e-6
    assert f"assistant: {truncated['heard']}{MARK}" in PROMPTS[-1] and "Seine" not in PROMPTS[-1]
