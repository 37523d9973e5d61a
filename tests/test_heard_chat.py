"""VLLMChat keeps only the heard part of an interrupted reply: the real node class with
its real tokenizer and chat template, driving a fake engine that streams a scripted
reply and records the prompt of every request (no vLLM engine starts)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from chains import Text
from chains.context import NodeContext, reset_context, set_context
from chains.history import MARK, record
from chains.messages import Heard
from nodes import VLLMChat

REPLY = ["The capital", " of France", " is Paris,", " a city on", " the Seine."]


class FakeEngine:
    """Streams ``REPLY`` piece by piece; ``hold`` makes it wait after ``stop_after`` pieces."""

    def __init__(self, chat: Any) -> None:
        self.chat = chat
        self.prompts: list[str] = []
        self.hold = anyio.Event()
        self.stop_after: int | None = None

    async def generate(self, prompt_ids: list[int], params: Any) -> AsyncIterator[Any]:
        self.prompts.append(self.chat.tokenizer.decode(prompt_ids))
        for i, piece in enumerate(REPLY):
            if self.stop_after is not None and i == self.stop_after:
                await self.hold.wait()
            ids = self.chat.encode(piece)
            yield SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=piece)])


@pytest.fixture(scope="module")
def chat() -> Any:
    return VLLMChat.spec.impl(system="Be brief.")  # the class itself: loads only the tokenizer


def _context(state: dict[str, Any], meta: dict[str, Any], epoch: list[int]) -> NodeContext:
    return NodeContext("s1", "VLLMChat", state, lambda: epoch[0], meta)


async def _turn(chat: Any, text: str) -> str:
    return "".join([d.text async for d in chat(Text(text=text))])


async def test_an_interrupted_reply_keeps_only_the_heard_words_in_the_next_prompt(chat: Any) -> None:
    engine = FakeEngine(chat)
    chat.generate = engine.generate
    state: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    epoch = [1]
    token = set_context(_context(state, meta, epoch))
    try:
        assert await _turn(chat, "What is the capital of France?") == "".join(REPLY)
        # the user talked over it: the transport says what was played
        epoch[0] = 2
        record(meta, Heard(epoch=1, text="The capital of France is", played_ms=900, sent_ms=1500))
        await _turn(chat, "And of Spain?")
    finally:
        reset_context(token)
    second = engine.prompts[1]
    assert "The capital of France is" + MARK in second
    assert "Paris" not in second and "Seine" not in second
    assert state["history"][1]["interrupted"] is True


async def test_a_reply_cancelled_mid_stream_is_cut_at_the_next_turn(chat: Any) -> None:
    engine = FakeEngine(chat)
    engine.stop_after = 3  # generation stalls after " is Paris,"
    chat.generate = engine.generate
    state: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    epoch = [5]
    token = set_context(_context(state, meta, epoch))
    try:
        got: list[str] = []
        with anyio.move_on_after(0.2):  # the runtime cancels the call at the interrupt
            async for d in chat(Text(text="Capital of France?")):
                got.append(d.text)
        assert "".join(got) == "The capital of France is Paris,"
        assert state["history"][1]["content"] == "The capital of France is Paris,"
        epoch[0] = 6
        record(meta, Heard(epoch=5, text="The capital", played_ms=400, sent_ms=800))
        engine.stop_after = None
        await _turn(chat, "Sorry, go on.")
    finally:
        reset_context(token)
    reply_part = engine.prompts[1].split("Capital of France?")[-1]
    assert "The capital" + MARK in reply_part and "France is" not in reply_part


async def test_a_fully_heard_reply_stays_whole(chat: Any) -> None:
    engine = FakeEngine(chat)
    chat.generate = engine.generate
    state: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    epoch = [1]
    token = set_context(_context(state, meta, epoch))
    try:
        await _turn(chat, "Capital of France?")
        epoch[0] = 2
        record(meta, Heard(epoch=1, text="".join(REPLY), played_ms=3000, sent_ms=3000))
        await _turn(chat, "Thanks.")
    finally:
        reset_context(token)
    assert "".join(REPLY) in engine.prompts[1] and MARK not in engine.prompts[1]
