"""One OpenAI Realtime websocket: one session of a voice chain.

The chain needs one audio ``Stream`` input and audio + text outputs (the voice demo's
VAD -> STT -> LLM -> TTS). Client events go in by ``ClientSide`` (client.py); the
chain's outputs come out here as server events: the VAD's ``SpeechStarted`` as
``input_audio_buffer.speech_started``, the final transcript as the user item
(``committed``, ``conversation.item.added``/``done``, ``...transcription.completed``),
the reply's text and audio as one response (``response.created`` ...
``response.output_audio.delta`` ... ``response.done``), its audio paced at real time
(transport/pacing.py). A response is complete when its text is done and its audio has
said all of it (the TTS's ``Spoken`` marks), or when no more audio came for
``response_idle_s`` after its text was done. A chat's tool calls and results
(``ToolCall`` / ``ToolResult`` events) are items of that response (tools.py): the
reply's message item is announced only with its first words or audio, after them.

At every interrupt of the chain's turn (the VAD heard the user talk over the reply,
or the client sent ``response.cancel`` or truncated the item being played) the
response still open is cancelled (``response.done`` with status ``cancelled``), its
item is cut to the words played (``conversation.item.truncated``), and the session's
nodes are told what was heard (``chains.Heard``), so the LLM's history keeps only that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from chains.errors import Overloaded
from chains.history import INSTRUCTIONS_KEY
from chains.messages import (
    AudioFrame,
    ConfirmTurn,
    ErrorEvent,
    Heard,
    Interrupt,
    SpeechStarted,
    Text,
    TextDelta,
    ToolCall,
    ToolResult,
)
from chains.outputs import ERROR, EVENTS, TRANSCRIPT
from transport.pacing import DEFAULT_LEAD_MS, Pacer
from transport.peer import Gone, Socket
from transport.realtime.codec import Codec
from transport.realtime.conversation import Conversation, Item, Response, new_id
from transport.realtime.tools import tool_call, tool_result

_ALNUM = re.compile(r"\W+")


@dataclass(frozen=True)
class RealtimeOptions:
    lead_ms: float = DEFAULT_LEAD_MS  # paced audio: how far ahead of playback
    max_message_bytes: int = 4 << 20  # a larger client message: `error`, dropped
    max_errors: int = 256  # protocol errors before the connection is closed
    max_buffer_ms: float = 120_000  # manual-turn audio held until commit
    response_idle_s: float = 2.0  # text done and no audio for this long: the response is done


class RealtimeSession:
    """The state both directions share: the chain session, the conversation, the open
    response, the formats, and the socket (one send at a time, in order)."""

    def __init__(self, ws: Socket, runtime: Any, options: RealtimeOptions, log: Any, chain: str):
        self.ws = ws
        self.runtime = runtime
        self.options = options
        self.log = log
        self.chain = chain
        self.sess: Any = None
        self.pacer = Pacer(options.lead_ms)
        self.in_codec = Codec("audio/pcm")
        self.out_codec = Codec("audio/pcm")
        self.turn_detection: dict[str, Any] | None = {"type": "server_vad"}
        self.instructions = ""
        self.conv = Conversation()
        self.resp: Response | None = None
        self.by_epoch: dict[int, Item] = {}  # assistant items by the chain turn they answer
        self.user_item: Item | None = None  # the user turn being spoken
        self.awaiting: list[Item] = []  # committed user items (manual turns) awaiting their transcript
        self.stopped_sent = False
        self.errors = 0
        self.audio_in_ms = 0.0
        self._lock = anyio.Lock()
        self._outbox: list[dict[str, Any]] = []
        self.closed = False

    # --- sending ------------------------------------------------------------------------
    async def emit(self, type_: str, **fields: Any) -> None:
        await self.send({"type": type_, "event_id": new_id("event"), **fields})

    async def send(self, event: dict[str, Any]) -> None:
        data = msgspec.json.encode(event).decode()
        async with self._lock:
            await self.ws.send_text(data)

    def later(self, type_: str, **fields: Any) -> None:
        """An event decided where nothing may wait (the interrupt listener): the next
        ``flush`` sends it, in order."""
        self._outbox.append({"type": type_, "event_id": new_id("event"), **fields})

    def unsay(self, type_: str) -> None:
        """Take back the events of ``type_`` not yet sent."""
        self._outbox = [e for e in self._outbox if e["type"] != type_]

    async def flush(self) -> None:
        while self._outbox:
            await self.send(self._outbox.pop(0))

    async def error(
        self, code: str, message: str, event_id: str | None = None, param: str | None = None
    ) -> None:
        """Tell the client about a bad event; the session goes on (up to ``max_errors``)."""
        self.errors += 1
        err = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
        err["event_id"] = event_id
        await self.emit("error", error=err)
        if self.errors >= self.options.max_errors:
            raise Gone("too many errors")

    def session_json(self) -> dict[str, Any]:
        def fmt(c: Codec) -> dict[str, Any]:
            return {"type": c.kind, "rate": c.rate} if c.kind == "audio/pcm" else {"type": c.kind}

        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.sess.id if self.sess is not None else None,
            "model": self.chain,
            "output_modalities": ["audio"],
            "instructions": self.instructions,
            "audio": {
                "input": {"format": fmt(self.in_codec), "turn_detection": self.turn_detection},
                "output": {"format": fmt(self.out_codec)},
            },
        }

    # --- the chain's outputs ------------------------------------------------------------
    async def writer(self) -> None:
        """Chain outputs -> server events, until the session ends."""
        sess = self.sess
        while True:
            resp = self.resp
            wait = self.options.response_idle_s if resp is not None and resp.text_done else None
            out = None
            with anyio.move_on_after(wait if wait is not None else float("inf")):
                try:
                    out = await sess.receive()
                except anyio.EndOfStream:
                    break
            if out is None:
                await self.finish_response()
            else:
                await self.output(out.name, out.value, out.epoch)
            await self.flush()
        await self.finish_response()
        await self.flush()

    async def output(self, name: str, value: Any, epoch: int) -> None:
        if name == ERROR:
            if isinstance(value, ErrorEvent):
                err = {
                    "type": "server_error",
                    "code": value.code,
                    "message": f"{value.node}: {value.message}",
                }
            else:
                err = {"type": "server_error", "code": "node_error", "message": str(value)}
            await self.emit("error", error=err)
        elif name == EVENTS:
            await self._event(value, epoch)
        elif name == TRANSCRIPT:
            if isinstance(value, Text | TextDelta) and not (isinstance(value, TextDelta) and not value.final):
                await self.user_said(value.text, self.awaiting.pop(0) if self.awaiting else None)
        elif isinstance(value, AudioFrame):
            await self.audio(value, epoch)
        elif isinstance(value, TextDelta | Text):
            resp = await self.open_response(epoch)
            if resp is None:
                return
            if value.text:
                resp.reply += value.text
                resp.item.text = resp.reply
                await self.emit(
                    "response.output_audio_transcript.delta", **self._where(resp), delta=value.text
                )
            if not isinstance(value, TextDelta) or value.final:
                resp.text_done = True
                await self._maybe_done(resp)

    async def _event(self, ev: Any, epoch: int) -> None:
        if isinstance(ev, ToolCall):
            await tool_call(self, ev, epoch)
        elif isinstance(ev, ToolResult):
            await tool_result(self, ev, epoch)
        elif isinstance(ev, SpeechStarted):
            self.user_item = Item("user", kind="input_audio")
            self.stopped_sent = False
            await self.emit(
                "input_audio_buffer.speech_started",
                audio_start_ms=int(self.audio_in_ms),
                item_id=self.user_item.id,
            )
        elif isinstance(ev, ConfirmTurn) or getattr(ev, "end_of_turn", False):
            await self._speech_stopped()
        elif isinstance(ev, Interrupt):
            pass  # the interrupt listener has cut the response (flushed after this)

    async def _speech_stopped(self) -> None:
        if self.user_item is not None and not self.stopped_sent:
            self.stopped_sent = True
            await self.emit(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=int(self.audio_in_ms),
                item_id=self.user_item.id,
            )

    async def user_said(self, text: str, item: Item | None = None) -> None:
        """The final transcript of the user's turn: the user item, committed and done."""
        if item is None:
            await self._speech_stopped()
            item = self.user_item or Item("user", kind="input_audio")
            self.user_item = None
            item.text = text
            prev = self.conv.add(item)
            await self.emit("input_audio_buffer.committed", item_id=item.id, previous_item_id=prev)
            await self.emit("conversation.item.added", item=item.json(), previous_item_id=prev)
            await self.emit("conversation.item.done", item=item.json(), previous_item_id=prev)
        else:
            item.text = text
        await self.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=0,
            transcript=text,
            usage={"type": "duration", "seconds": 0},
        )

    async def open_response(self, epoch: int, message: bool = True) -> Response | None:
        """The response of chain turn ``epoch`` (opened on its first output), with its
        message item announced unless ``message`` is false (a tool call comes first);
        None for output of a turn already cut."""
        if epoch != self.sess.epoch:
            return None
        resp = self.resp if self.resp is not None and self.resp.epoch == epoch else None
        if resp is None:
            if epoch in self.by_epoch:
                return None  # that turn's response is over
            await self.finish_response()
            resp = self.resp = Response(epoch, Item("assistant", kind="output_audio", epoch=epoch))
            self.by_epoch[epoch] = resp.item
            await self.emit("response.created", response=resp.json())
        if not message or resp.announced:
            return resp
        item = resp.item
        resp.outputs.append(item)
        prev = self.conv.add(item)
        await self.emit("conversation.item.added", item=item.json(), previous_item_id=prev)
        await self.emit(
            "response.output_item.added", response_id=resp.id, output_index=resp.index(item), item=item.json()
        )
        await self.emit(
            "response.content_part.added",
            **self._where(resp),
            part={"type": "audio", "transcript": ""},
        )
        return resp

    @staticmethod
    def _where(resp: Response) -> dict[str, Any]:
        return {
            "response_id": resp.id,
            "item_id": resp.item.id,
            "output_index": resp.index(resp.item),
            "content_index": 0,
        }

    async def audio(self, frame: AudioFrame, epoch: int) -> None:
        resp = await self.open_response(epoch)
        if resp is None:
            return
        delta = self.out_codec.encode(frame.pcm, frame.sample_rate)
        where = self._where(resp)

        async def send() -> None:
            await self.emit("response.output_audio.delta", **where, delta=delta)

        if await self.pacer.send(frame.duration_ms, epoch, lambda: self.sess.epoch, send, frame.spoken):
            if self.pacer.epoch == epoch:
                resp.item.track = self.pacer.track
                resp.item.sent_ms = self.pacer.sent_ms
            await self._maybe_done(resp)

    async def _maybe_done(self, resp: Response) -> None:
        """Done when the text is done and the audio has said all of it."""
        track = resp.item.track
        if not resp.text_done or track is None or not track.chunks:
            return
        last = track.chunks[-1]
        said = _ALNUM.sub("", track.text).lower()
        if (
            said == _ALNUM.sub("", resp.reply).lower()
            and track.ms >= last.start_ms + last.spoken.duration_ms - 1
        ):
            await self.finish_response()

    async def finish_response(self) -> None:
        """The open response completed: its closing events, in the protocol's order."""
        resp, self.resp = self.resp, None
        if resp is None:
            return
        resp.status = resp.item.status = "completed"
        resp.item.text = resp.reply
        for ev in _closing(resp):
            await self.emit(ev.pop("type"), **ev)

    # --- interrupts (the session calls this; it must not wait) ----------------------------
    def on_interrupt(self, old_epoch: int, reason: str) -> None:
        pb = self.pacer.cut(old_epoch)
        item = self.by_epoch.get(old_epoch)
        resp = self.resp if self.resp is not None and self.resp.epoch == old_epoch else None
        if item is None or item.truncated_ms is not None:
            return  # no reply of that turn, or the client already said where it stopped
        sent = pb.sent_ms if pb is not None else item.sent_ms
        played = pb.played_ms if pb is not None else (0.0 if resp is not None else sent)
        item.sent_ms = sent
        if resp is None and played >= sent - 1:
            return  # a finished reply, all of it played
        end = item.cut(played)
        self.sess.tell_heard(
            Heard(epoch=old_epoch, text=item.text, played_ms=end, sent_ms=sent, reason=reason)
        )
        if resp is not None:
            self.resp = None
            resp.status = "cancelled"
            for ev in _closing(resp):
                self._outbox.append({"event_id": new_id("event"), **ev})
        if resp is None or resp.announced:  # (an item never shown is not truncated)
            self.later("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=int(end))


def error_event(err: dict[str, Any]) -> str:
    """An ``error`` server event (JSON text) outside a session (a refused connection)."""
    return msgspec.json.encode({"type": "error", "event_id": new_id("event"), "error": err}).decode()


def _closing(resp: Response) -> list[dict[str, Any]]:
    """The closing events of the message item (if it was announced) and ``response.done``."""
    item = resp.item
    if not resp.announced:
        return [{"type": "response.done", "response": resp.json()}]
    where = {"response_id": resp.id, "item_id": item.id, "output_index": resp.index(item), "content_index": 0}
    return [
        {"type": "response.output_audio.done", **where},
        {"type": "response.output_audio_transcript.done", **where, "transcript": item.text},
        {"type": "response.content_part.done", **where, "part": {"type": "audio", "transcript": item.text}},
        {
            "type": "response.output_item.done",
            "response_id": resp.id,
            "output_index": resp.index(item),
            "item": item.json(),
        },
        {"type": "conversation.item.done", "item": item.json()},
        {"type": "response.done", "response": resp.json()},
    ]


async def run_session(state: RealtimeSession, client: Any) -> None:
    """Serve one connection: ``session.created`` first, then both directions until
    either side ends."""
    meta = {
        "input_sample_rate": state.in_codec.rate,
        "output_sample_rate": state.out_codec.rate,
        "transport": "realtime",
    }
    try:
        async with state.runtime.session(meta=meta) as sess:
            state.sess = sess
            sess.interrupt_listeners.append(state.on_interrupt)
            await state.emit("session.created", session=state.session_json())
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.reader, tg.cancel_scope)
                await state.writer()
                tg.cancel_scope.cancel()
    except Overloaded as e:
        await state.emit("error", error={"type": "server_error", "code": "overloaded", "message": str(e)})
    except Gone:
        pass


def set_instructions(state: RealtimeSession, text: str) -> None:
    state.instructions = text
    state.sess.meta[INSTRUCTIONS_KEY] = text


__all__ = ["RealtimeOptions", "RealtimeSession", "error_event", "run_session", "set_instructions"]
