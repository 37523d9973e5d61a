"""A session's audio input from one websocket: the chain input that takes audio, the
client's rate resampled to the chain's, the checks a frame must pass, and the two
ways a frame goes in. ``offer`` is the socket's fast lane (inside the protocol's
callback: it never waits, and declines what it cannot take at once); ``send`` is the
reader's way (it waits while the chain is full). Both resample with one filter, so a
frame is resampled exactly once whichever way it went."""

from __future__ import annotations

from typing import Any

from chains.audio import PcmResampler, pcm_problem
from chains.graph import Graph
from chains.messages import AudioFrame


def audio_input_of(graph: Graph) -> int | None:
    """The index of the chain's audio input (a stream of ``AudioFrame``), if any."""
    for i, inp in enumerate(graph.inputs):
        if inp.stream and isinstance(inp.type, type) and issubclass(inp.type, AudioFrame):
            return i
    return None


class AudioInput:
    """Binary audio messages into ``sess``'s audio input at ``rate`` Hz."""

    __slots__ = ("_rs", "closed", "index", "limit", "rate", "sess")

    def __init__(self, sess: Any, client_rate: int, rate: int, limit: int):
        self.sess = sess
        self.index = audio_input_of(sess.graph)
        self.rate = rate
        self.limit = limit
        self.closed = False  # after `end`: no more input of any kind (the connection reads it too)
        self._rs = PcmResampler(client_rate, rate) if client_rate != rate else None

    def refusal(self, raw: bytes) -> tuple[str, str] | None:
        """(error code, message) when ``raw`` must be refused, None when it goes in."""
        if self.index is None:
            return "no_audio_input", f"chain {self.sess.graph.name!r} has no audio input"
        if self.closed:
            return "input_ended", "audio after `end`"
        problem = pcm_problem(raw, self.limit)
        return None if problem is None else ("bad_audio", problem)

    def offer(self, raw: bytes) -> bool:
        """Feed ``raw`` now if it is good audio and the input has room; else False
        (nothing taken: the reader refuses it or waits for room)."""
        i = self.index
        if i is None or self.closed or pcm_problem(raw, self.limit) is not None:
            return False
        if self._rs is not None and not self.sess.has_room(i):
            return False  # (the resampler must not take a frame that then is not sent)
        return bool(self.sess.offer(self._frame(raw), i))

    async def send(self, raw: bytes) -> None:
        """Feed ``raw`` (checked by ``refusal``), waiting while the chain is full."""
        await self.sess.send(self._frame(raw), self.index)

    async def end(self) -> None:
        """The client's `end` (again: nothing more): the resampler's look-ahead (the
        last few ms) goes in, and no audio after it."""
        if self._rs is not None and self.index is not None and not self.closed:
            tail = self._rs.flush()
            if tail:
                await self.sess.send(AudioFrame(pcm=tail, sample_rate=self.rate), self.index)
        self.closed = True

    def _frame(self, raw: bytes) -> AudioFrame:
        return AudioFrame(pcm=self._rs.process(raw) if self._rs is not None else raw, sample_rate=self.rate)


__all__ = ["AudioInput", "audio_input_of"]
