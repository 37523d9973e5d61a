"""Twilio Media Streams (transport/twilio/) with a fake Twilio caller
(tests/twilio_caller.py) on the voice chain of fakes: a spoken answer in μ-law with
marks echoed, barge-in bringing ``clear`` and a history cut to what was played, bad
messages that the call survives without another call noticing, and the token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import structlog

import chains
from chains.audio import write_wav
from chains.history import MARK
from tests.twilio_caller import FakeTwilioCaller
from tests.voice_fakes import PROMPTS, MemorySocket, fake_voice, silence, speech
from transport.twilio import TwilioOptions, serve

LOG = structlog.get_logger()


def wav(tmp_path: Path, name: str, frames: int) -> str:
    path = tmp_path / f"{name}.wav"
    write_wav(path, b"".join(speech(frames, 8000, 20) + silence(3, 8000, 20)), 8000)
    return str(path)


@contextlib.asynccontextmanager
async def phone(
    rt: Any, token: str | None = None, params: dict[str, str] | None = None, calls: list[Any] | None = None
) -> AsyncIterator[FakeTwilioCaller]:
    ws = MemorySocket()
    caller = FakeTwilioCaller(ws, params=params)

    async def serve_call() -> None:
        call = await serve(ws, {"fake_voice": rt}, token, None, TwilioOptions(), LOG)
        if calls is not None:
            calls.append(call)
        await ws.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_call)
        tg.start_soon(caller.listen)
        await caller.start()
        with anyio.fail_after(30):  # a hang guard
            yield caller
        await caller.stop()


async def wait_for(cond: Any) -> None:
    while not cond():
        await anyio.sleep(0.01)


async def test_a_spoken_question_gets_a_spoken_answer_in_mulaw_and_marks_echo(tmp_path: Path) -> None:
    calls: list[Any] = []
    async with chains.Runtime(fake_voice) as rt, phone(rt, calls=calls) as caller:
        await caller.say_wav(wav(tmp_path, "q", 3))
        full = 8 * 11 * 200  # 11 words of 200 ms at 8000 one-byte samples a second
        await wait_for(lambda: len(caller.played_ulaw) >= full)
        await wait_for(lambda: bool(caller.marks_echoed) and caller.marks_echoed[-1].endswith(":2200.0"))
    assert len(caller.received) == full and caller.clears == 0
    names = caller.marks_echoed
    assert len(names) == 2200 // 40 and names == sorted(names, key=lambda n: float(n.split(":")[1]))
    assert calls[0].problems == {}


async def test_talking_over_the_reply_brings_clear_and_a_truncated_history(tmp_path: Path) -> None:
    PROMPTS.clear()
    calls: list[Any] = []
    async with chains.Runtime(fake_voice) as rt, phone(rt, calls=calls) as caller:
        await caller.say_wav(wav(tmp_path, "q", 3))
        await wait_for(lambda: len(caller.played_ulaw) >= 8 * 700)  # 700 ms of the reply played
        await caller.say_wav(wav(tmp_path, "q2", 4))  # "And of Spain?" over the reply
        await wait_for(lambda: caller.clears == 1)
        await wait_for(lambda: len(PROMPTS) == 2)
        await wait_for(
            lambda: len(caller.received) > 0 and caller.marks_echoed[-1].endswith(":200.0")
        )  # "Madrid."
    call = calls[0]
    cut = call.pacer.replies[0]
    assert cut.interrupted and cut.played_ms < 11 * 200
    # the history keeps the words whose audio was played by the last mark echoed
    assert cut.heard and "Seine" not in cut.heard
    assert f"assistant: {cut.heard}{MARK}" in PROMPTS[-1]
    assert "Seine" not in PROMPTS[-1]


async def test_bad_messages_are_survived_and_another_call_does_not_notice(tmp_path: Path) -> None:
    calls: list[Any] = []
    async with (
        chains.Runtime(fake_voice) as rt,
        phone(rt, calls=calls) as good,
        phone(rt, calls=calls) as bad,
    ):
        for junk in (
            "{not json",
            '{"event": "bogus"}',
            '{"event": "media", "media": {"payload": 5}}',
            '{"event": "media", "media": {"payload": "%%%"}}',
            '{"event": "start", "start": {}}',
            '{"event": "mark", "mark": {"name": "no-colon"}}',
            "x" * (2 << 20),
        ):
            await bad.ws.put(junk)
        async with anyio.create_task_group() as tg:
            tg.start_soon(good.say_wav, wav(tmp_path, "a", 5))
            tg.start_soon(bad.say_wav, wav(tmp_path, "b", 5))
        for c in (good, bad):
            await wait_for(lambda c=c: len(c.played_ulaw) >= 8 * 600)  # "It is big." both
    problems = sorted((sorted(c.problems) for c in calls), key=len)
    assert problems[0] == []
    assert problems[1] == ["bad_audio", "bad_mark", "malformed", "out_of_order", "too_big"]


async def test_a_wrong_token_closes_the_call(tmp_path: Path) -> None:
    async with chains.Runtime(fake_voice) as rt:
        ws = MemorySocket()
        caller = FakeTwilioCaller(ws, params={"token": "wrong"})
        await caller.start()
        with anyio.fail_after(10):
            await serve(ws, {"fake_voice": rt}, "sekrit", None, TwilioOptions(), LOG)
        assert ws.closed == (1008, "unauthorized")
        ws2 = MemorySocket()
        caller2 = FakeTwilioCaller(ws2, params={"token": "sekrit"})
        await caller2.start()
        await caller2.stop()
        with anyio.fail_after(10):
            call = await serve(ws2, {"fake_voice": rt}, "sekrit", None, TwilioOptions(), LOG)
        assert ws2.closed is None and call is not None and call.sid == "MZ0001"
