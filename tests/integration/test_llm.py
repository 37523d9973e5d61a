"""VLLMChat on the real vLLM engine serving SmolLM2-135M-Instruct: it streams a
reply, keeps each session's history apart, and a cancelled stream aborts its
request in the engine process (asked through the engine, not our bookkeeping).

The engine starts once for the module (~25 s) on one event loop that every test
reuses: an AsyncLLM belongs to the loop that first used it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from chains import Text, TextDelta
from chains.context import NodeContext, reset_context, set_context
from nodes import VLLMChat

# vLLM starts in ~25-55 s (and converts SmolLM2 once, ~25 s): more than a short --timeout allows.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def chat(loop) -> Iterator[VLLMChat]:
    node = VLLMChat(
        system="You are a helpful assistant. Answer in one short sentence.", max_tokens=48
    ).instantiate()
    loop.run_until_complete(node.setup())
    try:
        yield node
    finally:
        loop.run_until_complete(node.close())


async def reply(chat: VLLMChat, text: str, state: dict[str, Any] | None = None) -> list[TextDelta]:
    token = set_context(NodeContext("s", "llm", state if state is not None else {}, lambda: 0))
    try:
        return [d async for d in chat(Text(text=text))]
    finally:
        reset_context(token)


def test_streams_a_reply(chat, loop) -> None:
    deltas = loop.run_until_complete(reply(chat, "What is the capital of France?"))
    assert len(deltas) > 2  # streamed, not one lump
    assert deltas[-1].final and not any(d.final for d in deltas[:-1])
    text = "".join(d.text for d in deltas)
    assert text.strip()
    assert "paris" in text.lower(), text


def test_history_is_per_session(chat, loop) -> None:
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    loop.run_until_complete(reply(chat, "My name is Zorblax.", a))
    loop.run_until_complete(reply(chat, "Hello!", b))
    assert [m["role"] for m in a["history"]] == ["user", "assistant"]
    assert a["history"][0]["content"] == "My name is Zorblax."
    assert "Zorblax" not in str(b["history"])
    ids = chat.prompt_ids(a["history"], "What is my name?")
    assert "Zorblax" in chat.tokenizer.decode(ids)


def test_cancelling_the_consumer_aborts_the_engine_request(chat, loop) -> None:
    async def go() -> tuple[bool, bool, int, int]:
        got: list[TextDelta] = []

        async def consume() -> None:
            async for d in chat(Text(text="Tell me a very long story about a dragon and a knight.")):
                got.append(d)

        task = asyncio.create_task(consume())
        while len(got) < 3:  # the request is generating
            await asyncio.sleep(0.01)
        busy_before = await chat.engine_busy()
        aborted_before = chat.aborted
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the abort reaches the engine process within a step or two
            if not await chat.engine_busy():
                break
            await asyncio.sleep(0.02)
        return busy_before, await chat.engine_busy(), chat.aborted - aborted_before, chat.unfinished()

    chat.max_tokens = 1500  # a reply long enough to be surely cut
    try:
        busy_before, busy_after, aborted, unfinished = loop.run_until_complete(go())
    finally:
        chat.max_tokens = 48
    assert busy_before
    assert not busy_after, "the engine still schedules the cancelled request"
    assert aborted == 1 and unfinished == 0


def test_closing_the_stream_early_aborts_too(chat, loop) -> None:
    """A consumer that stops iterating (aclose) must not leave the request running."""

    async def go() -> bool:
        chat.max_tokens = 1500
        agen = chat(Text(text="Count from one to one thousand."))
        await agen.__anext__()
        await agen.aclose()
        for _ in range(100):
            if not await chat.engine_busy():
                return False
            await asyncio.sleep(0.02)
        return True

    try:
        assert loop.run_until_complete(go()) is False
    finally:
        chat.max_tokens = 48
    assert chat.unfinished() == 0


def test_an_anyio_cancel_scope_aborts_too(chat, loop) -> None:
    """The runtime cancels through anyio scopes (level-triggered: every await in
    the scope is cancelled again); the abort must still reach the engine."""

    async def go() -> bool:
        got: list[TextDelta] = []
        with anyio.CancelScope() as scope:
            async for d in chat(Text(text="Tell me a very long story about a castle.")):
                got.append(d)
                if len(got) == 3:
                    scope.cancel()
        for _ in range(100):
            if not await chat.engine_busy():
                return False
            await asyncio.sleep(0.02)
        return True

    chat.max_tokens = 1500
    try:
        assert loop.run_until_complete(go()) is False
    finally:
        chat.max_tokens = 48
    assert chat.unfinished() == 0


def test_engine_serves_after_aborts(chat, loop) -> None:
    deltas = loop.run_until_complete(reply(chat, "Name a colour."))
    assert "".join(d.text for d in deltas).strip()
