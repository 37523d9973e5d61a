"""Twilio Media Streams messages (bidirectional ``<Connect><Stream>``), as msgspec Structs.

Twilio -> us: ``connected``, ``start`` (the ``streamSid``, the media format: μ-law
8 kHz mono, the TwiML ``<Parameter>``s as ``customParameters``), ``media`` (base64
μ-law, 20 ms each), ``mark`` (the echo of a mark we sent, once the audio before it
has played), ``dtmf``, ``stop``. Us -> Twilio: ``media``, ``mark``, ``clear``
(drop the audio Twilio still buffers). Only the fields we use are declared; the
rest is ignored.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct


class MediaFormat(Struct, kw_only=True, frozen=True):
    encoding: str = "audio/x-mulaw"
    sampleRate: int = 8000  # (camelCase: Twilio's names)
    channels: int = 1


class StartInfo(Struct, kw_only=True):
    streamSid: str | None = None
    callSid: str | None = None
    mediaFormat: MediaFormat = MediaFormat()
    customParameters: dict[str, str] = {}


class Media(Struct, kw_only=True):
    payload: str
    track: str | None = None
    timestamp: str | None = None


class MarkInfo(Struct, kw_only=True):
    name: str


class Dtmf(Struct, kw_only=True):
    digit: str
    track: str | None = None


class TwilioEvent(Struct, tag_field="event", kw_only=True):
    streamSid: str | None = None
    sequenceNumber: str | None = None


class Connected(TwilioEvent, tag="connected", kw_only=True):
    protocol: str | None = None


class Start(TwilioEvent, tag="start", kw_only=True):
    start: StartInfo


class MediaEvent(TwilioEvent, tag="media", kw_only=True):
    media: Media


class Mark(TwilioEvent, tag="mark", kw_only=True):
    mark: MarkInfo


class DtmfEvent(TwilioEvent, tag="dtmf", kw_only=True):
    dtmf: Dtmf


class Stop(TwilioEvent, tag="stop", kw_only=True):
    pass


Event = Connected | Start | MediaEvent | Mark | DtmfEvent | Stop
_decoder = msgspec.json.Decoder(Event)


def decode(raw: str | bytes) -> Event | str:
    """A Twilio message, or what is wrong with it."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as e:
        return str(e)


def media(stream_sid: str, payload: str) -> bytes:
    return msgspec.json.encode({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark(stream_sid: str, name: str) -> bytes:
    return msgspec.json.encode({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear(stream_sid: str) -> bytes:
    return msgspec.json.encode({"event": "clear", "streamSid": stream_sid})


__all__ = ["Event", "clear", "decode", "mark", "media"]
