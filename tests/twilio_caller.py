"""A fake Twilio caller for the tests: it plays Twilio's part of a Media Stream.

It sends ``connected`` and ``start``, then the call's audio as 20 ms μ-law ``media``
frames read from a wav, paced at real time; it "plays" the audio it receives at real
time (a play clock), echoes each ``mark`` once the audio sent before it has played,
and honours ``clear`` by dropping the audio it still holds (echoing the marks it
dropped, as Twilio does).
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from typing import Any

import anyio

from chains.audio import read_wav
from tests.voice_fakes import MemorySocket
from transport.g711 import pcm16_to_ulaw, ulaw_to_pcm16

FRAME_MS = 20


class FakeTwilioCaller:
    def __init__(self, ws: MemorySocket, stream_sid: str = "MZ0001", params: dict[str, str] | None = None):
        self.ws = ws
        self.sid = stream_sid
        self.params = params or {}
        self.received = bytearray()  # μ-law audio received, in order
        self.played_ulaw = bytearray()  # what was played (the part of it not cleared)
        self.marks_echoed: list[str] = []
        self.clears = 0
        self.clear_at: list[float] = []
        self._queue: deque[tuple[str, Any]] = deque()  # ("audio", bytes) | ("mark", name)
        self._play_until = 0.0  # when the audio queued so far has played (monotonic)
        self.seq = 0

    async def _send(self, event: dict[str, Any]) -> None:
        self.seq += 1
        await self.ws.put({**event, "sequenceNumber": str(self.seq), "streamSid": self.sid})

    async def start(self) -> None:
        await self.ws.put({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "start": {
                    "streamSid": self.sid,
                    "callSid": "CA0001",
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": self.params,
                },
            }
        )

    async def say_wav(self, path: str) -> None:
        """Stream the wav's audio (8 kHz mono PCM16) as paced 20 ms μ-law media frames."""
        pcm, rate = read_wav(path)
        assert rate == 8000
        step = 2 * rate * FRAME_MS // 1000
        t0 = time.monotonic()
        for i, at in enumerate(range(0, len(pcm), step)):
            payload = base64.b64encode(pcm16_to_ulaw(pcm[at : at + step])).decode()
            await self._send({"event": "media", "media": {"track": "inbound", "payload": payload}})
            await anyio.sleep(max(0.0, t0 + (i + 1) * FRAME_MS / 1000 - time.monotonic()))

    async def stop(self) -> None:
        await self._send({"event": "stop", "stop": {"callSid": "CA0001"}})

    async def listen(self) -> None:
        """Receive Twilio's messages until the socket closes; marks echo as audio plays."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._player)
            try:
                while True:
                    msg = await self.ws.get()
                    kind = msg["event"]
                    assert msg["streamSid"] == self.sid
                    if kind == "media":
                        ulaw = base64.b64decode(msg["media"]["payload"])
                        self.received += ulaw
                        now = time.monotonic()
                        self._play_until = max(self._play_until, now) + len(ulaw) / 8000
                        self._queue.append(("audio", ulaw))
                    elif kind == "mark":
                        self._queue.append(("mark", msg["mark"]["name"]))
                    elif kind == "clear":
                        self.clears += 1
                        self.clear_at.append(time.monotonic())
                        dropped = [x for k, x in self._queue if k == "mark"]
                        self._queue.clear()
                        self._play_until = time.monotonic()
                        for name in dropped:
                            await self._echo(name)
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                pass
            tg.cancel_scope.cancel()

    async def _echo(self, name: str) -> None:
        self.marks_echoed.append(name)
        await self._send({"event": "mark", "mark": {"name": name}})

    async def _player(self) -> None:
        """Plays the queue at real time: an audio chunk takes its length; a mark echoes
        when everything before it has played."""
        while True:
            if not self._queue:
                await anyio.sleep(0.005)
                continue
            kind, x = self._queue[0]
            if kind == "mark":
                self._queue.popleft()
                await self._echo(x)
                continue
            await anyio.sleep(len(x) / 8000)
            if self._queue and self._queue[0] == (kind, x):
                self._queue.popleft()
                self.played_ulaw += x

    @property
    def played_pcm(self) -> bytes:
        return ulaw_to_pcm16(bytes(self.played_ulaw))


def to_json(msg: str) -> dict[str, Any]:
    return json.loads(msg)
