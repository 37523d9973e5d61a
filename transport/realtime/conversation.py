"""A Realtime session's conversation: its items and its responses, as the protocol
shows them (``conversation.item.retrieved``, ``response.done``).

Why its own module: the adapter (session.py) moves audio and events; what an item
holds, how an assistant item is cut at a truncate, and what JSON each object is, are
kept here, testable without a socket. An assistant item keeps the ``SpokenTrack`` of
its audio (runtime/heard.py), so a truncate at ``audio_end_ms`` cuts its transcript to
the words played by then.

A chat's tool call is a ``function_call`` item among the response's outputs (before
the reply's message item, which is announced only when the reply's first words or
audio come), and the tool's result a ``function_call_output`` item in the
conversation: the tool runs here, on the server, so the client only sees both.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict
from typing import Any

from runtime.heard import SpokenTrack

_n = itertools.count(1)


def new_id(prefix: str) -> str:
    """An id shaped like OpenAI's (``item_...``, ``resp_...``, ``event_...``)."""
    return f"{prefix}_{secrets.token_hex(6)}{next(_n):04d}"


class Item:
    """One conversation item: a user message (audio or text) or an assistant reply."""

    def __init__(self, role: str, *, kind: str, item_id: str | None = None, epoch: int | None = None):
        self.id = item_id or new_id("item")
        self.role = role
        self.kind = kind  # input_audio | input_text | output_audio | function_call | function_call_output
        self.epoch = epoch  # the chain turn an assistant item was generated in
        self.status = "in_progress" if role == "assistant" else "completed"
        self.text = ""  # transcript (audio) or text
        self.track: SpokenTrack | None = None  # an assistant item's spoken audio
        self.sent_ms = 0.0
        self.truncated_ms: float | None = None
        self.name = self.call_id = self.arguments = self.output = ""  # tool items

    def cut(self, audio_end_ms: float) -> float:
        """Cut an assistant item at ``audio_end_ms`` (clamped to the audio sent): its
        transcript keeps the words played by then. Returns the clamped position."""
        end = max(0.0, min(float(audio_end_ms), self.sent_ms))
        self.truncated_ms = end
        self.text = self.track.heard(end) if self.track is not None else ""
        if self.status == "in_progress":
            self.status = "incomplete"
        return end

    def json(self) -> dict[str, Any]:
        head = {"id": self.id, "object": "realtime.item", "type": self.kind, "status": self.status}
        if self.kind == "function_call":
            return {**head, "name": self.name, "call_id": self.call_id, "arguments": self.arguments}
        if self.kind == "function_call_output":
            return {**head, "call_id": self.call_id, "output": self.output}
        key = "text" if self.kind == "input_text" else "transcript"
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "status": self.status,
            "role": self.role,
            "content": [{"type": self.kind, key: self.text}],
        }


class Response:
    """One response: its output items (tool calls, then the assistant message ``item``
    once announced), the turn it answers, and how it ended."""

    def __init__(self, epoch: int, item: Item):
        self.id = new_id("resp")
        self.epoch = epoch
        self.item = item
        self.outputs: list[Item] = []
        self.status = "in_progress"
        self.reply = ""  # the LLM's text as generated
        self.text_done = False

    @property
    def announced(self) -> bool:
        """Whether the message item is among the outputs (its words or audio came)."""
        return self.item in self.outputs

    def index(self, item: Item) -> int:
        return self.outputs.index(item)

    def json(self) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": (
                {"type": "cancelled", "reason": "turn_detected"} if self.status == "cancelled" else None
            ),
            "output": [i.json() for i in self.outputs],
            "output_modalities": ["audio"],
            "conversation_id": "conv_default",
        }


class Conversation:
    """Items in order, by id."""

    def __init__(self, max_items: int = 512):
        self.items: OrderedDict[str, Item] = OrderedDict()
        self.max_items = max_items

    def add(self, item: Item) -> str | None:
        """Add ``item``; the id of the item before it (``previous_item_id``)."""
        prev = next(reversed(self.items), None)
        self.items[item.id] = item
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)
        return prev

    def get(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def delete(self, item_id: str) -> bool:
        return self.items.pop(item_id, None) is not None


__all__ = ["Conversation", "Item", "Response", "new_id"]
