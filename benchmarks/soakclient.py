"""One soak caller: streams a wav at real-time pace, turn after turn, and reads the
reply at real-time pace, timing each turn's first audio.

The caller talks to the server through a ``VoiceClient`` (open, send audio, end,
receive events, abort): ``ChainsClient`` is our own websocket protocol
(transport/client.py), ``RealtimeClient`` the OpenAI Realtime one.

A turn: the question's frames at real-time pace, then silence at the same pace while
the reply plays (a phone line never goes quiet), until the reply's audio has
played out and nothing more came for ``quiet_s``. Time to first audio (TTFA) is
from the moment the question's last voiced frame was sent to the first reply audio
received. A turn ends as ``answered`` (audio came), ``error`` (the server said why)
or ``lost`` (neither within ``turn_timeout_s``: what the soak must never see).
Reading follows the playout clock: the caller takes the next message only when
what it holds would play out within ``jitter_s``, so a slow reader is what a real
one is, not an infinitely fast sink.

Faults a caller can play (``fault``): ``drop`` aborts its TCP connection as the
first reply audio arrives; ``stall`` stops reading for ``stall_s`` at that point.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import msgspec
import numpy as np
from websockets.exceptions import ConnectionClosed

from chains.audio import silence, split_frames
from chains.messages import AudioFrame
from transport.client import Client, ClientError
from transport.protocol import Done, Error, Metrics


@dataclass(frozen=True)
class Speech:
    """The question a caller asks: PCM16 mono, its rate, and where its voice ends."""

    pcm: bytes
    rate: int
    speech_end_s: float

    @classmethod
    def from_pcm(cls, pcm: bytes, rate: int, threshold: int = 300, frame_ms: int = 20) -> Speech:
        x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        w = rate * frame_ms // 1000
        voiced = [i for i in range(0, len(x), w) if np.sqrt(np.mean(x[i : i + w] ** 2)) > threshold]
        end = (voiced[-1] + w) / rate if voiced else len(x) / rate
        return cls(pcm, rate, end)


class VoiceClient(Protocol):
    """What a soak caller needs of a protocol."""

    async def open(self) -> None: ...
    async def send_audio(self, pcm: bytes) -> None: ...
    async def end(self) -> None: ...
    async def receive(
        self,
    ) -> tuple[str, Any]: ...  # ("audio", seconds) | ("error", code) | ("done", None) | ("other", msg)
    def abort(self) -> None: ...
    async def close(self) -> None: ...


class ChainsClient:
    """Our websocket protocol, through ``transport.client.Client``."""

    def __init__(self, url: str, rate: int, out_rate: int | None = None):
        self.c = Client(url, sample_rate=rate, output_sample_rate=out_rate or rate, open_timeout=30.0)

    async def open(self) -> None:
        await self.c.__aenter__()

    async def send_audio(self, pcm: bytes) -> None:
        await self.c.send_audio(pcm)

    async def end(self) -> None:
        await self.c.end()

    async def receive(self) -> tuple[str, Any]:
        msg = await self.c.receive()
        if isinstance(msg, AudioFrame):
            return "audio", len(msg.pcm) / 2 / msg.sample_rate
        if isinstance(msg, Error):
            return "error", msg.code
        if isinstance(msg, Done):
            return "done", None
        if isinstance(msg, Metrics):
            return "metrics", msg.breakdown
        return "other", msg

    def abort(self) -> None:
        if self.c.ws is not None:
            self.c.ws.transport.abort()

    async def close(self) -> None:
        await self.c.__aexit__(None, None, None)


@dataclass
class Turn:
    speech_end: float = 0.0  # monotonic time the last voiced frame was sent
    first_audio: float | None = None
    audio_s: float = 0.0
    last_audio: float = 0.0
    error: str | None = None
    outcome: str = "pending"  # answered | error | lost | pending

    @property
    def ttfa_ms(self) -> float | None:
        return None if self.first_audio is None else 1000.0 * (self.first_audio - self.speech_end)


@dataclass
class Result:
    started: float
    ended: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    fault: str | None = None
    done: bool = False  # the server said `done`
    failure: str | None = None  # why the session ended otherwise
    breakdowns: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # the server's, per turn
    send_lag_max: float = 0.0  # the caller's own worst lateness sending a frame (s): its saturation

    @property
    def lost(self) -> bool:
        """A turn that ended in silence, or a session that never finished, on a caller
        that played no fault (a faulted caller's own session may end any way)."""
        if self.fault is not None:
            return False
        return any(t.outcome in ("lost", "pending") for t in self.turns) or not (
            self.done or any(t.outcome == "error" for t in self.turns)
        )


@functools.cache
def _frames(speech: Speech, frame_ms: int) -> list[bytes]:
    """The question's frames, split once for every caller (not once per call)."""
    return split_frames(speech.pcm, speech.rate, frame_ms)


class RealtimeClient:
    """The OpenAI Realtime protocol (``/v1/realtime?model=CHAIN``) as a raw websocket, as
    the ``openai`` SDK speaks it: ``input_audio_buffer.append`` events of base64 PCM16
    at 24 kHz, turns found by the server's VAD (``server_vad``, the default), the reply
    as ``response.output_audio.delta`` events. The protocol has no `end`: the caller
    closes, and the close is this session's ``done``. The question's frames are the same
    for every caller, so each frame's event is encoded once (``_append``)."""

    RATE = 24000

    def __init__(self, url: str, chain: str):
        base = url.replace("http://", "ws://").rstrip("/")
        self.url = f"{base}/v1/realtime?model={chain}"
        self.ws: Any = None
        self._ended = False

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, compression=None, max_size=None, open_timeout=30.0)
        first = msgspec.json.decode(await self.ws.recv())
        if first.get("type") != "session.created":
            raise ClientError(f"realtime: expected session.created, got {first.get('type')}")

    async def send_audio(self, pcm: bytes) -> None:
        try:
            await self.ws.send(_append(pcm))
        except ConnectionClosed as e:
            raise ClientError(f"realtime: closed ({e})") from e

    async def end(self) -> None:
        self._ended = True
        await self.close()

    async def receive(self) -> tuple[str, Any]:
        try:
            raw = await self.ws.recv()
        except ConnectionClosed as e:
            if self._ended:
                return "done", None
            raise ClientError(f"realtime: closed ({e})") from e
        msg = msgspec.json.decode(raw)
        kind = msg.get("type")
        if kind == "response.output_audio.delta":
            return "audio", len(base64.b64decode(msg["delta"])) / 2 / self.RATE
        if kind == "error":
            return "error", msg.get("error", {}).get("code")
        return "other", kind

    def abort(self) -> None:
        if self.ws is not None:
            self.ws.transport.abort()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()


@functools.lru_cache(maxsize=4096)
def _append(pcm: bytes) -> str:
    """One ``input_audio_buffer.append`` event (the same frames recur in every call)."""
    return '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(pcm).decode() + '"}'


@dataclass(frozen=True)
class Script:
    turns: int = 2
    frame_ms: int = 20
    quiet_s: float = 0.6
    jitter_s: float = 0.3
    turn_timeout_s: float = 15.0
    stall_s: float = 12.0


async def call(
    client: VoiceClient, speech: Speech, script: Script, fault: str | None = None, res: Result | None = None
) -> Result:
    """One session: ``script.turns`` questions and their replies, then ``end``; ``res``
    (filled in as the call goes) lets the soak read the turns of live sessions."""
    res = res or Result(started=time.monotonic())
    res.fault = fault
    frame_bytes = speech.rate * script.frame_ms // 1000 * 2
    quiet = silence(script.frame_ms, speech.rate)
    frames = _frames(speech, script.frame_ms)
    dt = script.frame_ms / 1000.0
    voiced_frames = int(np.ceil(speech.speech_end_s / dt))
    state = {"playout": 0.0, "closed": False}
    try:
        await client.open()
    except (ClientError, OSError) as e:
        res.failure = f"open: {e}"
        res.ended = time.monotonic()
        return res

    async def reader() -> None:
        try:
            while True:
                kind, val = await client.receive()
                now = time.monotonic()
                turn = res.turns[-1] if res.turns else None
                if kind == "audio" and turn is not None:
                    if turn.first_audio is None:
                        turn.first_audio = now
                        if fault == "drop":
                            client.abort()
                            res.failure = "dropped (fault)"
                            return
                        if fault == "stall":
                            await anyio.sleep(script.stall_s)
                            now = time.monotonic()
                    turn.audio_s += val
                    turn.last_audio = now
                    state["playout"] = max(state["playout"], now) + val
                    ahead = state["playout"] - now - script.jitter_s
                    if ahead > 0:
                        await anyio.sleep(ahead)  # real-time pace: read no faster than it plays
                elif kind == "error":
                    if turn is not None and turn.outcome == "pending":
                        turn.error = str(val)
                    res.failure = f"error {val}"
                elif kind == "metrics" and val:
                    res.breakdowns.append((now, val))
                elif kind == "done":
                    res.done = True
                    return
        except ClientError as e:
            res.failure = res.failure or str(e)
        finally:
            state["closed"] = True

    async def send_at(pcm: bytes, due: float) -> None:
        await anyio.sleep(max(0.0, due - time.monotonic()))
        res.send_lag_max = max(res.send_lag_max, time.monotonic() - due)
        await client.send_audio(pcm)

    async def sender() -> None:
        t = time.monotonic()
        for _ in range(script.turns):
            turn = Turn()
            res.turns.append(turn)
            for i, f in enumerate(frames):
                if len(f) < frame_bytes:
                    f = f + bytes(frame_bytes - len(f))
                await send_at(f, t)
                t += dt
                if i + 1 == voiced_frames:
                    turn.speech_end = time.monotonic()
            deadline = turn.speech_end + script.turn_timeout_s
            while not state["closed"]:  # silence while the reply comes and plays
                now = time.monotonic()
                if (
                    turn.first_audio is not None
                    and now > max(state["playout"], turn.last_audio) + script.quiet_s
                ):
                    break
                if turn.error is not None or now > deadline:
                    break
                await send_at(quiet, t)
                t += dt
            if turn.first_audio is not None:
                turn.outcome = "answered"
            elif turn.error is not None:
                turn.outcome = "error"
            elif not state["closed"] or time.monotonic() > deadline:
                turn.outcome = "lost"
            if state["closed"]:
                return
        await client.end()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            try:
                await sender()
            except (ClientError, OSError, ConnectionError) as e:
                res.failure = res.failure or f"send: {e}"
                tg.cancel_scope.cancel()
            except Exception as e:  # websockets' ConnectionClosed on send
                res.failure = res.failure or f"send: {type(e).__name__}"
                tg.cancel_scope.cancel()
            with anyio.move_on_after(script.turn_timeout_s):
                while not state["closed"]:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
        for turn in res.turns:  # a turn cut short by the session's end
            if turn.outcome == "pending":
                turn.outcome = (
                    "answered" if turn.first_audio is not None else "error" if turn.error else "pending"
                )
        res.ended = time.monotonic()
    return res


__all__ = ["ChainsClient", "RealtimeClient", "Result", "Script", "Speech", "Turn", "VoiceClient", "call"]
