"""The client protocol of the websocket server: every message as a msgspec Struct.

Text messages are JSON objects tagged by ``"type"``; binary messages are PCM16LE
mono audio at the rate the client declared in ``start``. Decoding goes through
msgspec tagged unions, and a decoding failure becomes a ``ProtocolError`` whose
code and message name the problem and the field (``$.sample_rate``), which the
server sends back as an ``error`` message. The Python client decodes the server's
messages with the same Structs, so both ends agree by construction.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

# --- client -> server -----------------------------------------------------------------

SampleRate = Annotated[int, msgspec.Meta(ge=1000, le=192000)]


class Start(msgspec.Struct, tag="start", tag_field="type", frozen=True, kw_only=True):
    """First message: which chain, the input audio rate, and the auth token if any."""

    sample_rate: SampleRate
    chain: str | None = None
    token: str | None = None
    output_sample_rate: SampleRate | None = None  # rate wanted for reply audio (default: sample_rate)


class Input(msgspec.Struct, tag="input", tag_field="type", frozen=True, kw_only=True):
    """A non-audio input item; ``input`` names the chain input (default: the first non-audio one)."""

    data: Any
    input: str | None = None


class InterruptMsg(msgspec.Struct, tag="interrupt", tag_field="type", frozen=True, kw_only=True):
    """The user talked over the reply: drop the current turn."""

    reason: str = "client"


class End(msgspec.Struct, tag="end", tag_field="type", frozen=True):
    """No more input: finish the session, then ``done``."""


ClientMessage = Start | Input | InterruptMsg | End
CLIENT_TYPES = ("start", "input", "interrupt", "end")

# --- server -> client -----------------------------------------------------------------


class Ready(msgspec.Struct, tag="ready", tag_field="type", frozen=True, kw_only=True):
    session: str
    sample_rate: int  # the rate of the binary audio the server will send
    chain: str = ""
    inputs: list[str] = []
    outputs: list[str] = []


class Transcript(msgspec.Struct, tag="transcript", tag_field="type", frozen=True, kw_only=True):
    """What the user said: ``final`` false for an interim transcript of speech still
    going on (each replaces the previous one), true for the transcript of a turn."""

    text: str
    final: bool = True


class TextOut(msgspec.Struct, tag="text", tag_field="type", frozen=True, kw_only=True):
    """Streamed reply text: a delta (``final`` false) or a complete piece."""

    text: str
    name: str = ""
    final: bool = False


class Metrics(msgspec.Struct, tag="metrics", tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    """Per-turn latency figures, in ms from the input that started the turn's outputs.

    For a voice chain whose VAD marks the end of the user's speech (``TurnTiming``),
    ``breakdown`` gives ms after that end of speech: ``end_of_turn`` (when the turn
    was decided or its speculation confirmed), ``transcript``, ``first_token`` (the
    first reply text) and ``first_audio``. ``speculative_hits`` is 1 when the turn was
    a confirmed speculative turn, ``speculative_misses`` counts the speculative turns
    abandoned while the user spoke it (the user went on after a pause), and
    ``interim_transcripts`` the interim transcripts sent while they spoke.
    ``preempt_hits`` / ``preempt_misses`` count the verdicts on replies started from
    an interim transcript (``Preempted``, nodes/turn.py): a hit when the final words
    were the same, a miss when the turn was redone from the final words."""

    turn: int
    first_transcript_ms: float | None = None
    first_text_ms: float | None = None
    first_audio_ms: float | None = None
    last_output_ms: float | None = None
    audio_ms: float = 0.0
    outputs: int = 0
    interrupted: bool = False
    breakdown: dict[str, float] | None = None
    speculative_hits: int = 0
    speculative_misses: int = 0
    interim_transcripts: int = 0
    preempt_hits: int = 0
    preempt_misses: int = 0


class Error(msgspec.Struct, tag="error", tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    code: str
    message: str
    node: str | None = None


class Event(msgspec.Struct, tag="event", tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    """A control event of the chain (``speech_started``, ``interrupt``, ``end_of_turn``)."""

    event: str
    data: Any = None


class OutputMsg(msgspec.Struct, tag="output", tag_field="type", frozen=True, kw_only=True):
    """Any other chain output, as JSON."""

    name: str
    data: Any


class Done(msgspec.Struct, tag="done", tag_field="type", frozen=True):
    """The session has finished; the server closes with 1000 next."""


ServerMessage = Ready | Transcript | TextOut | Metrics | Error | Event | OutputMsg | Done

# --- close codes ----------------------------------------------------------------------

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # idle timeout, server shutting down
CLOSE_POLICY = 1008  # unauthorized, too many protocol errors, a client that stops reading
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_OVERLOADED = 1013  # "try again later"

# --- codecs ---------------------------------------------------------------------------


class ProtocolError(Exception):
    """A client message the server cannot accept; ``code`` and ``message`` go to the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_message(self) -> Error:
        return Error(code=self.code, message=self.message)


_client_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_encoder = msgspec.json.Encoder()
_type_probe = msgspec.json.Decoder(dict[str, Any])

_MISSING = re.compile(r"Object missing required field `([^`]+)`(?: - at `([^`]+)`)?")
_AT = re.compile(r" - at `([^`]+)`$")


def _message_type(raw: bytes | str) -> str | None:
    try:
        obj = _type_probe.decode(raw)
    except msgspec.MsgspecError:
        return None
    t = obj.get("type")
    return t if isinstance(t, str) else None


def decode_client(raw: bytes | str) -> ClientMessage:
    """Decode one client text message or raise ``ProtocolError`` naming the problem."""
    try:
        return _client_decoder.decode(raw)
    except msgspec.ValidationError as e:  # (a subclass of DecodeError: test it first)
        raise _validation_error(raw, str(e)) from None
    except msgspec.DecodeError as e:
        raise ProtocolError("bad_json", f"malformed JSON: {e}") from None


def _validation_error(raw: bytes | str, msg: str) -> ProtocolError:
    kind = _message_type(raw)
    if msg.startswith("Expected `object`"):
        return ProtocolError("bad_message", f"a message must be a JSON object with a `type` field ({msg})")
    m = _MISSING.match(msg)
    if m:
        field, where = m.group(1), m.group(2)
        if field == "type" and not where:
            return ProtocolError(
                "missing_field", "missing field `type` (one of: " + ", ".join(CLIENT_TYPES) + ")"
            )
        path = f"{where}.{field}" if where else f"$.{field}"
        return ProtocolError("missing_field", f"{kind or 'message'}: missing required field `{path}`")
    at = _AT.search(msg)
    path = at.group(1) if at else "$"
    if path == "$.type":
        if msg.startswith("Invalid value"):
            return ProtocolError(
                "unknown_type",
                f"unknown message type {kind!r}; expected one of: " + ", ".join(CLIENT_TYPES),
            )
        return ProtocolError(
            "bad_field", "field `$.type` must be a string: one of " + ", ".join(CLIENT_TYPES)
        )
    return ProtocolError("bad_field", f"{kind or 'message'}: field `{path}`: {_AT.sub('', msg)}")


def encode(msg: Any) -> bytes:
    """A server (or client) message Struct as JSON bytes (send with ``text=True``)."""
    return _encoder.encode(msg)


def decode_server(raw: bytes | str) -> ServerMessage:
    return _server_decoder.decode(raw)


__all__ = [
    "CLIENT_TYPES",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_OVERLOADED",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "ClientMessage",
    "Done",
    "End",
    "Error",
    "Event",
    "Input",
    "InterruptMsg",
    "Metrics",
    "OutputMsg",
    "ProtocolError",
    "Ready",
    "ServerMessage",
    "Start",
    "TextOut",
    "Transcript",
    "decode_client",
    "decode_server",
    "encode",
]
