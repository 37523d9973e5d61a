"""A chat completion service: a whole conversation in (OpenAI's ``messages``), the
assistant's reply streamed out token by token (vLLM, SmolLM2).

    chains run demos/chat.py
    curl -N -H 'Accept: application/x-ndjson' \\
        -d '{"messages": [{"role": "user", "content": "Say hi."}]}' \\
        http://127.0.0.1:8765/v1/chains/chat

or ``OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="-").chat.completions.create(
model="chat", messages=[...], stream=True)``.

``ConversationChat`` is ``VLLMChat`` taking the conversation from the request instead
of keeping it per session: a request is a session of its own, so the earlier turns
are its history and a system message its instructions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import chains
from chains import Text, TextDelta
from chains.history import INSTRUCTIONS_KEY
from nodes import VLLMChat


class ChatMessage(chains.Message, frozen=True):
    role: str
    content: str


class Conversation(chains.Message, frozen=True):
    messages: list[ChatMessage]


def _split(conv: Conversation) -> tuple[str | None, list[dict[str, Any]], str]:
    """(the system message, the earlier turns, the last user message)."""
    system = next((m.content for m in conv.messages if m.role == "system"), None)
    turns = [{"role": m.role, "content": m.content} for m in conv.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    return system, turns[:-1], turns[-1]["content"]


@chains.node(concurrency=16, device="auto")
class ConversationChat(VLLMChat.spec.impl):  # type: ignore[misc,name-defined]
    """``VLLMChat`` on a whole conversation (its options are VLLMChat's)."""

    def _seed(self, conv: Conversation) -> str:
        system, history, user = _split(conv)
        self._state()["history"] = history
        if system:
            chains.context().meta[INSTRUCTIONS_KEY] = system
        return user

    def route_tokens(self, conv: Conversation) -> list[int]:
        _, history, user = _split(conv)
        return self.prompt_ids(history, user)

    async def __call__(self, conv: Conversation) -> AsyncIterator[TextDelta]:  # type: ignore[override]
        user = self._seed(conv)
        async for delta in super().__call__(Text(text=user)):
            yield delta


@chains.chain(budget_ms=30000)
def chat(conversation: Conversation):
    return ConversationChat(system="You are a helpful assistant. Be brief.", max_tokens=48)(conversation)


if __name__ == "__main__":  # vLLM's workers re-import the launching script
    import sys

    from chains.cli import main

    main(["run", __file__, *sys.argv[1:]])
