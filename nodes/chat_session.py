"""A chat session's conversation, kept in one place: its messages, and the token ids
its last request sent and generated (the engine's KV-cached prefix).

Why one module: what a turn leaves in the history (the user's words, the calls and
results of its tools, the reply, or the part of it that was heard) is decided here,
by ``record``, and nowhere else; the chat node only renders it.

The history is a flat list of chat messages, a turn being its ``user`` message and
what follows it up to the next one: ``{"role": "assistant", "content": words}`` for a
spoken reply (the words, never the JSON a tool-using model wrote them in), an
assistant message with ``tool_call`` (its ``content`` the call as the model wrote it)
and ``{"role": "tool", "name": ..., "content": result JSON}`` for a tool round.
"""

from __future__ import annotations

from typing import Any


class ChatSession:
    """A session's conversation: its messages, and the token ids its last request sent
    and generated with the template text they stand for (the KV-cached prefix)."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.history: list[dict[str, Any]] = state.setdefault("history", [])

    @property
    def ids(self) -> list[int]:
        return self.state.get("ids", [])

    @property
    def rendered(self) -> str:
        return self.state.get("rendered", "")

    def keep(self, ids: list[int], rendered: str) -> None:
        self.state["ids"] = ids
        self.state["rendered"] = rendered

    def record(self, user: str, messages: list[dict[str, Any]], max_turns: int) -> None:
        """Add a turn (the user's words and what followed them: tool rounds, the reply
        or its part said so far) when anything followed; keep the last ``max_turns``."""
        if not messages:
            return
        self.history += [{"role": "user", "content": user}, *messages]
        drop_turns(self.history, max_turns)


def turn_starts(messages: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(messages) if m.get("role") == "user"]


def drop_turns(history: list[dict[str, Any]], keep: int) -> None:
    """Drop whole turns from the front until ``keep`` remain (a tool result never loses
    its call)."""
    starts = turn_starts(history)
    if len(starts) > keep:
        cut = starts[len(starts) - keep] if keep > 0 else len(history)
        del history[:cut]


def without_first_turn(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages after the first turn (for fitting a prompt into the context)."""
    starts = turn_starts(turns)
    return turns[starts[1] :] if len(starts) > 1 else []
