"""The client's side of a Realtime session: every client event, checked and acted on.

A bad event (not JSON, an unknown ``type``, a wrong field, an unknown item, an event
that makes no sense now) gets an ``error`` naming the offending ``event_id`` and
changes nothing; the session goes on. A message over ``max_message_bytes`` is
refused the same way, without being decoded.

Turns: with ``server_vad`` (the default) the chain's own VAD finds the turns in the
appended audio, and its knobs are handed to the session's nodes (``meta["turn_detection"]``).
With ``turn_detection: null`` the audio is held here until ``commit`` (a user item),
and ``response.create`` feeds the committed audio to the chain, followed by enough
silence for its VAD to close the turn. ``server_vad``'s ``create_response: false``
and ``interrupt_response: false`` are refused (an ``error`` naming the field, the
update not applied) rather than ignored: the chain's own VAD ends the turn and its
chat answers at once, and the same VAD interrupts the reply when the user speaks, so
this adapter can neither hold a reply until ``response.create`` (the chat would have
answered before items created in between) nor keep one going over the user's
speech. A client that starts replies itself uses ``turn_detection: null``.

Items: a text message the client creates goes into the chat node's history at the
chain's next turn (``chains.history.add_message``), a system message into the
session's instructions; the chain answers speech, so ``response.create`` without
committed audio is an ``error`` (``no_input``).
"""

from __future__ import annotations

import anyio
import msgspec

from chains.history import add_message
from chains.messages import AudioFrame, Heard
from transport.peer import Gone
from transport.realtime import events as ev
from transport.realtime.codec import RATES, Codec
from transport.realtime.conversation import Item
from transport.realtime.session import RealtimeSession, set_instructions

FRAME_MS = 40  # committed audio goes to the chain in frames of this length
TRAILING_SILENCE_MS = 1500  # after committed audio: the VAD's longest end-of-turn wait and some
# server_vad knobs that cannot be false here, and why (the chain's own VAD decides)
_CHAIN_DECIDES = {
    "create_response": "the chain's VAD ends the turn and its chat starts the reply at once; "
    "it cannot hold a reply until response.create",
    "interrupt_response": "the chain's VAD interrupts the reply as soon as the user speaks; "
    "it cannot let a reply go on over the user's speech",
}


class ClientSide:
    def __init__(self, state: RealtimeSession):
        self.s = state
        self.held: list[bytes] = []  # manual turns: appended, not committed
        self.held_ms = 0.0
        self.committed: list[tuple[Item, bytes, int]] = []  # awaiting response.create

    async def reader(self, scope: anyio.CancelScope) -> None:
        s = self.s
        try:
            while True:
                raw = await s.ws.recv()
                size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
                if size > s.options.max_message_bytes:
                    await s.error(
                        "message_too_large",
                        f"a message of {size} bytes exceeds the limit of {s.options.max_message_bytes}",
                    )
                elif isinstance(raw, bytes):
                    await s.error(
                        "invalid_event", "binary messages are not part of the protocol: send JSON events"
                    )
                else:
                    event = ev.decode(raw)
                    if isinstance(event, ev.BadEvent):
                        await s.error(event.code, event.message, event.event_id, event.param)
                    else:
                        await self.handle(event)
                await s.flush()
        except Gone:
            pass
        scope.cancel()

    async def handle(self, e: ev.Event) -> None:
        s = self.s
        if isinstance(e, ev.SessionUpdate):
            await self.update(e)
        elif isinstance(e, ev.BufferAppend):
            await self.append(e)
        elif isinstance(e, ev.BufferCommit):
            await self.commit(e)
        elif isinstance(e, ev.BufferClear):
            self.held, self.held_ms = [], 0.0
            await s.emit("input_audio_buffer.cleared")
        elif isinstance(e, ev.ItemCreate):
            await self.create_item(e)
        elif isinstance(e, ev.ItemRetrieve):
            item = s.conv.get(e.item_id)
            if item is None:
                await self._no_item(e.item_id, e.event_id)
            else:
                await s.emit("conversation.item.retrieved", item=item.json())
        elif isinstance(e, ev.ItemTruncate):
            await self.truncate(e)
        elif isinstance(e, ev.ItemDelete):
            item = s.conv.get(e.item_id)
            if item is None:
                await self._no_item(e.item_id, e.event_id)
                return
            s.conv.delete(e.item_id)
            if item.epoch is not None:  # out of the model's context too
                s.sess.tell_heard(Heard(epoch=item.epoch, text="", reason="deleted"))
            await s.emit("conversation.item.deleted", item_id=e.item_id)
        elif isinstance(e, ev.ResponseCreate):
            await self.create_response(e)
        elif isinstance(e, ev.ResponseCancel):
            resp = s.resp
            if resp is None or (e.response_id is not None and e.response_id != resp.id):
                await s.error("response_cancel_not_active", "no response in progress to cancel", e.event_id)
                return
            s.sess.interrupt("response.cancel")

    async def _no_item(self, item_id: str, event_id: str | None) -> None:
        await self.s.error("item_not_found", f"no item with id {item_id!r}", event_id, "item_id")

    # --- session.update --------------------------------------------------------------------
    async def update(self, e: ev.SessionUpdate) -> None:
        s, cfg = self.s, e.session
        audio = cfg.audio if cfg.audio is not msgspec.UNSET else None
        inp = audio.input if audio is not None and audio.input is not msgspec.UNSET else None
        out = audio.output if audio is not None and audio.output is not msgspec.UNSET else None
        codecs: dict[str, Codec] = {}
        for side, part in (("input", inp), ("output", out)):
            fmt = part.format if part is not None and part.format is not msgspec.UNSET else None
            if fmt is None:
                continue
            if fmt.type == "audio/pcm" and fmt.rate not in (None, RATES["audio/pcm"]):
                await s.error(
                    "invalid_value",
                    f"audio/pcm is 24000 Hz here, not {fmt.rate}",
                    e.event_id,
                    f"session.audio.{side}.format.rate",
                )
                return
            codecs[side] = Codec(fmt.type)
        turn = s.turn_detection
        if inp is not None and inp.turn_detection is not msgspec.UNSET:
            td = inp.turn_detection
            if td is not None and td.type != "server_vad":
                await s.error(
                    "invalid_value",
                    f"turn detection {td.type!r} is not supported: use server_vad or null",
                    e.event_id,
                    "session.audio.input.turn_detection.type",
                )
                return
            for knob, does in _CHAIN_DECIDES.items():
                if td is not None and getattr(td, knob) is False:
                    await s.error(
                        "invalid_value",
                        f"turn_detection.{knob} false is not supported: {does} (use turn_detection "
                        "null, then input_audio_buffer.commit and response.create, to start replies "
                        "yourself)",
                        e.event_id,
                        f"session.audio.input.turn_detection.{knob}",
                    )
                    return
            turn = (
                None if td is None else {k: v for k, v in msgspec.structs.asdict(td).items() if v is not None}
            )
        # all checked: apply
        if "input" in codecs:
            s.in_codec = codecs["input"]
        if "output" in codecs:
            s.out_codec = codecs["output"]
            s.sess.meta["output_sample_rate"] = s.out_codec.rate  # the TTS speaks at this rate
        s.turn_detection = turn
        s.sess.meta["turn_detection"] = turn
        if cfg.instructions is not msgspec.UNSET:
            set_instructions(s, cfg.instructions)
        await s.emit("session.updated", session=s.session_json())

    # --- input audio ----------------------------------------------------------------------
    async def append(self, e: ev.BufferAppend) -> None:
        s = self.s
        try:
            pcm = s.in_codec.decode(e.audio)
        except ValueError as err:
            await s.error("invalid_audio", f"input_audio_buffer.append: {err}", e.event_id, "audio")
            return
        if not pcm:
            return
        ms = 1000.0 * (len(pcm) // 2) / s.in_codec.rate
        if s.turn_detection is None:
            if self.held_ms + ms > s.options.max_buffer_ms:
                await s.error(
                    "input_audio_buffer_full",
                    f"more than {s.options.max_buffer_ms:g} ms held: commit or clear first",
                    e.event_id,
                )
                return
            self.held.append(pcm)
            self.held_ms += ms
            return
        s.audio_in_ms += ms
        await s.sess.send(AudioFrame(pcm=pcm, sample_rate=s.in_codec.rate))

    async def commit(self, e: ev.BufferCommit) -> None:
        s = self.s
        if s.turn_detection is not None:
            await s.error(
                "invalid_request",
                "with server_vad the VAD commits the audio (set turn_detection to null)",
                e.event_id,
            )
            return
        if not self.held:
            await s.error("input_audio_buffer_commit_empty", "the input audio buffer is empty", e.event_id)
            return
        item = Item("user", kind="input_audio")
        pcm, self.held, self.held_ms = b"".join(self.held), [], 0.0
        prev = s.conv.add(item)
        self.committed.append((item, pcm, s.in_codec.rate))
        await s.emit("input_audio_buffer.committed", item_id=item.id, previous_item_id=prev)
        await s.emit("conversation.item.added", item=item.json(), previous_item_id=prev)
        await s.emit("conversation.item.done", item=item.json(), previous_item_id=prev)

    # --- items and responses --------------------------------------------------------------
    async def create_item(self, e: ev.ItemCreate) -> None:
        s = self.s
        item = e.item
        if item.role == "system":
            text = " ".join(p.text or "" for p in item.content).strip()
            set_instructions(s, (s.instructions + "\n" + text).strip())
        new = Item(
            item.role, kind="input_text" if item.role != "assistant" else "output_text", item_id=item.id
        )
        if item.id is not None and s.conv.get(item.id) is not None:
            await s.error("item_exists", f"an item with id {item.id!r} exists", e.event_id, "item.id")
            return
        new.text = " ".join(p.text or p.transcript or "" for p in item.content).strip()
        if item.role != "system" and new.text:
            add_message(s.sess.meta, item.role, new.text)  # context for the chain's next turn
        prev = s.conv.add(new)
        await s.emit("conversation.item.added", item=new.json(), previous_item_id=prev)
        await s.emit("conversation.item.done", item=new.json(), previous_item_id=prev)

    async def create_response(self, e: ev.ResponseCreate) -> None:
        s = self.s
        if s.resp is not None:
            await s.error(
                "conversation_already_has_active_response",
                f"response {s.resp.id} is in progress",
                e.event_id,
            )
            return
        if not self.committed:
            await s.error(
                "no_input",
                "nothing to answer: this chain answers speech (commit audio with turn_detection "
                "null, or let server_vad find the turn)",
                e.event_id,
            )
            return
        for item, pcm, rate in self.committed:
            s.awaiting.append(item)  # its transcript comes back from the chain
            step = 2 * rate * FRAME_MS // 1000
            audio = pcm + b"\x00\x00" * (rate * TRAILING_SILENCE_MS // 1000)
            for i in range(0, len(audio), step):
                await s.sess.send(AudioFrame(pcm=audio[i : i + step], sample_rate=rate))
        self.committed.clear()

    async def truncate(self, e: ev.ItemTruncate) -> None:
        s = self.s
        item = s.conv.get(e.item_id)
        if item is None:
            await self._no_item(e.item_id, e.event_id)
            return
        if item.role != "assistant" or item.epoch is None:
            await s.error(
                "invalid_value", "only an assistant audio item can be truncated", e.event_id, "item_id"
            )
            return
        if e.content_index != 0 or e.audio_end_ms < 0:
            await s.error(
                "invalid_value", "content_index must be 0 and audio_end_ms >= 0", e.event_id, "audio_end_ms"
            )
            return
        if s.resp is not None and s.resp.item is item:
            # the client stopped playing the reply in progress: cancel it where it was
            s.pacer.report(item.epoch, float(e.audio_end_ms))
            s.sess.interrupt("truncate")
            s.unsay("conversation.item.truncated")  # (sent below, at the client's own position)
        end = item.cut(e.audio_end_ms)
        heard = Heard(
            epoch=item.epoch, text=item.text, played_ms=end, sent_ms=item.sent_ms, reason="truncate"
        )
        s.sess.tell_heard(heard)
        s.later("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=int(end))


__all__ = ["TRAILING_SILENCE_MS", "ClientSide"]
