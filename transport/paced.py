"""Our own websocket protocol's reply audio, paced (transport/pacing.py), and what was
heard of a cut reply: the chain's nodes are told (``chains.Heard``) and the client
gets a ``truncated`` event (``{"type": "event", "event": "truncated", "data":
{"heard", "text", "played_ms", "sent_ms", "reason"}}``) so a page can show which
part of the reply was heard.

Why a module of its own: the connection (transport/connection.py) is the server's;
this keeps its part of pacing to a few lines (make one per session, send each audio
output through it, send the events it has for the client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chains.messages import AudioFrame, Heard
from transport.pacing import Pacer
from transport.protocol import Event


class PacedAudio:
    def __init__(self, sess: Any, lead_ms: float):
        self.sess = sess
        self.pacer = Pacer(lead_ms)
        self._events: list[Event] = []
        sess.interrupt_listeners.append(self._cut)

    async def send(
        self, value: Any, epoch: int, msgs: list[Any], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        """Send the messages of one output (``value``): audio paced, the others at once;
        then any ``truncated`` event an interrupt left."""
        audio = [m for m in msgs if isinstance(m, bytes | bytearray | memoryview)]
        for m in msgs:
            if not isinstance(value, AudioFrame) or not isinstance(m, bytes | bytearray | memoryview):
                await send(m)

        async def go() -> None:
            for m in audio:
                await send(m)

        if isinstance(value, AudioFrame):
            await self.pacer.send(value.duration_ms, epoch, lambda: self.sess.epoch, go, value.spoken)
        for ev in self.take():
            await send(ev)

    def _cut(self, old_epoch: int, reason: str) -> None:
        pb = self.pacer.cut(old_epoch)
        if pb is None:
            return
        self.sess.tell_heard(
            Heard(epoch=old_epoch, text=pb.heard, played_ms=pb.played_ms, sent_ms=pb.sent_ms, reason=reason)
        )
        data = {
            "heard": pb.heard,
            "text": pb.text,
            "played_ms": pb.played_ms,
            "sent_ms": pb.sent_ms,
            "reason": reason,
        }
        self._events.append(Event(event="truncated", data=data))

    def take(self) -> list[Event]:
        """The ``truncated`` events not yet sent."""
        out, self._events = self._events, []
        return out


__all__ = ["PacedAudio"]
