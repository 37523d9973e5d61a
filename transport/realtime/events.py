"""The OpenAI Realtime (GA) client events this server accepts, as msgspec Structs.

The reference is the ``openai`` package's ``types/realtime`` (its pydantic models
are the protocol's schema). Only the fields we act on are declared; unknown fields
are ignored (clients send more than we use, and the protocol grows), a wrong type in a
declared field is a ``invalid_request_error`` naming the field and the offending
event's ``event_id``. ``decode`` turns one websocket text message into an event or a
``BadEvent`` (never raises), so a malformed event costs an ``error`` and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType


class Format(Struct, kw_only=True):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: int | None = None


class ServerVad(Struct, kw_only=True):
    type: Literal["server_vad", "semantic_vad"]
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None


class AudioInput(Struct, kw_only=True):
    format: Format | UnsetType = UNSET
    turn_detection: ServerVad | UnsetType | None = UNSET  # null: manual turns


class AudioOutput(Struct, kw_only=True):
    format: Format | UnsetType = UNSET
    voice: str | None = None


class Audio(Struct, kw_only=True):
    input: AudioInput | UnsetType = UNSET
    output: AudioOutput | UnsetType = UNSET


class SessionConfig(Struct, kw_only=True):
    type: str | None = None
    model: str | None = None
    instructions: str | UnsetType = UNSET
    audio: Audio | UnsetType = UNSET
    output_modalities: list[str] | None = None


class ContentPart(Struct, kw_only=True):
    type: str
    text: str | None = None
    transcript: str | None = None
    audio: str | None = None


class ItemIn(Struct, kw_only=True):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system"] = "user"
    id: str | None = None
    content: list[ContentPart] = []


class ClientEvent(Struct, tag_field="type", kw_only=True):  # (subclasses: kw_only too)
    event_id: str | None = None


class SessionUpdate(ClientEvent, tag="session.update", kw_only=True):
    session: SessionConfig


class BufferAppend(ClientEvent, tag="input_audio_buffer.append", kw_only=True):
    audio: str


class BufferCommit(ClientEvent, tag="input_audio_buffer.commit", kw_only=True):
    pass


class BufferClear(ClientEvent, tag="input_audio_buffer.clear", kw_only=True):
    pass


class ItemCreate(ClientEvent, tag="conversation.item.create", kw_only=True):
    item: ItemIn
    previous_item_id: str | None = None


class ItemRetrieve(ClientEvent, tag="conversation.item.retrieve", kw_only=True):
    item_id: str


class ItemTruncate(ClientEvent, tag="conversation.item.truncate", kw_only=True):
    item_id: str
    content_index: int = 0
    audio_end_ms: int


class ItemDelete(ClientEvent, tag="conversation.item.delete", kw_only=True):
    item_id: str


class ResponseCreate(ClientEvent, tag="response.create", kw_only=True):
    response: dict[str, Any] | None = None


class ResponseCancel(ClientEvent, tag="response.cancel", kw_only=True):
    response_id: str | None = None


Event = (
    SessionUpdate
    | BufferAppend
    | BufferCommit
    | BufferClear
    | ItemCreate
    | ItemRetrieve
    | ItemTruncate
    | ItemDelete
    | ResponseCreate
    | ResponseCancel
)
KNOWN = {c.__struct_config__.tag for c in Event.__args__}

_decoder = msgspec.json.Decoder(Event)


class BadEvent(Struct, kw_only=True):
    """An event we cannot act on: the ``error`` to send back."""

    code: str
    message: str
    event_id: str | None = None
    param: str | None = None


def decode(raw: str | bytes) -> Event | BadEvent:
    """One client message as an event, or what is wrong with it."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as e:
        head = _peek(raw)
        if head is None:
            return BadEvent(code="invalid_json", message=f"the event is not a JSON object: {e}")
        kind, event_id = head
        if kind not in KNOWN:
            what = "has no `type`" if kind is None else f"type {kind!r} is not supported"
            return BadEvent(
                code="invalid_event", message=f"the event {what}", event_id=event_id, param="type"
            )
        param = str(e).rsplit("`$.", 1)[-1].rstrip("`") if "`$." in str(e) else None
        return BadEvent(code="invalid_value", message=f"{kind}: {e}", event_id=event_id, param=param)


def _peek(raw: str | bytes) -> tuple[str | None, str | None] | None:
    """The ``type`` and ``event_id`` of a JSON object, if it is one."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    kind, eid = obj.get("type"), obj.get("event_id")
    return (kind if isinstance(kind, str) else None), (eid if isinstance(eid, str) else None)


__all__ = ["KNOWN", "BadEvent", "Event", "Format", "ServerVad", "decode"]
