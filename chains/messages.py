"""The message vocabulary that flows along a chain's edges.

Every payload is a frozen msgspec Struct: cheap to create, immutable (so fan-out
can hand the same object to every consumer), and encodable as-is by the
transport's msgpack/JSON codecs. Control events subclass ``Control``: the runtime
routes them out of band (an ``Interrupt`` bumps the session's turn epoch) instead
of feeding them to data nodes.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every built-in payload."""


class WordTiming(Message, frozen=True):
    """When a word is spoken, in ms from the start of its TTS chunk."""

    word: str
    start_ms: float
    end_ms: float


class Spoken(Message, frozen=True):
    """What a TTS chunk says: its text, its audio's length and, where the TTS knows it,
    each word's timing. A TTS puts it on the first frame of the chunk, so whoever plays
    the audio can tell which words were heard when a reply is cut (runtime/heard.py)."""

    text: str
    duration_ms: float
    words: list[WordTiming] | None = None


class AudioFrame(Message, frozen=True):
    """A chunk of PCM16LE mono audio at ``sample_rate`` Hz (``spoken``: set on the first
    frame of a TTS chunk, see ``Spoken``)."""

    pcm: bytes
    sample_rate: int
    spoken: Spoken | None = None

    @property
    def duration_ms(self) -> float:
        return 1000.0 * (len(self.pcm) // 2) / self.sample_rate


class Utterance(Message, frozen=True):
    """A VAD-bounded span of speech (PCM16LE mono)."""

    pcm: bytes
    sample_rate: int
    start_ms: float = 0.0

    @property
    def duration_ms(self) -> float:
        return 1000.0 * (len(self.pcm) // 2) / self.sample_rate


class Text(Message, frozen=True):
    """A complete piece of text: a transcript, a sentence, a document."""

    text: str


class TextDelta(Message, frozen=True):
    """A streamed fragment of text (an LLM token or a few)."""

    text: str
    final: bool = False


class Entity(Message, frozen=True):
    text: str
    label: str
    start: int
    end: int


class Entities(Message, frozen=True):
    """Named entities found in ``text`` (character offsets)."""

    text: str
    entities: list[Entity]


class Embedding(Message, frozen=True):
    """A dense vector for ``text``."""

    text: str
    vector: list[float]

    @property
    def dim(self) -> int:
        return len(self.vector)


class Control(Message, frozen=True):
    """Base of the out-of-band control events."""


class SpeechStarted(Control, frozen=True):
    """The VAD heard the user start speaking."""


class EndOfTurn(Control, frozen=True):
    """The current turn's output is complete."""


class Interrupt(Control, frozen=True):
    """Barge-in: drop the current turn's queued and in-flight work."""

    reason: str = ""


class Heard(Control, frozen=True):
    """What the user heard of the reply of turn ``epoch`` when it was cut: its text up
    to the played position (``played_ms`` of the ``sent_ms`` sent). The runtime hands it
    to every node of the session (``chains.history.heard()``), so a node that keeps a
    history keeps only what was heard; ``text`` is empty for a turn nobody heard (an
    abandoned speculative turn)."""

    epoch: int
    text: str
    played_ms: float = 0.0
    sent_ms: float = 0.0
    reason: str = ""


class SpeculativeTurn(Control, frozen=True):
    """Start a speculative turn (a stream node that guesses the user is done, e.g. the
    VAD at the first silence). Work of the new turn runs at once, but its outputs are
    held by the session until ``ConfirmTurn``; an ``Interrupt`` before that discards
    them (in-flight calls cancelled, queued items dropped), and the client sees nothing."""

    reason: str = ""


class ConfirmTurn(Control, frozen=True):
    """The current speculative turn is the real one: its held outputs go out, in order."""


class ToolCall(Control, frozen=True):
    """A chat model called a tool (``nodes.tools``); ``id`` pairs it with its ``ToolResult``.
    A control event: the client sees it (``tool_call``), downstream nodes do not."""

    id: str
    name: str
    args: dict[str, Any]


class ToolResult(Control, frozen=True):
    """What a tool call gave: ``result`` (JSON-able), or ``error`` with its ``code``
    (``tool_error``, ``tool_timeout``); the conversation goes on either way."""

    id: str
    name: str
    result: Any = None
    error: str | None = None
    code: str = ""
    elapsed_ms: float = 0.0


class ErrorEvent(Message, frozen=True):
    """An item failed or was shed at ``node``; the session goes on."""

    node: str
    code: str
    message: str


__all__ = [
    "AudioFrame",
    "ConfirmTurn",
    "Control",
    "Embedding",
    "EndOfTurn",
    "Entities",
    "Entity",
    "ErrorEvent",
    "Heard",
    "Interrupt",
    "Message",
    "SpeculativeTurn",
    "SpeechStarted",
    "Spoken",
    "Text",
    "TextDelta",
    "ToolCall",
    "ToolResult",
    "Utterance",
    "WordTiming",
]
