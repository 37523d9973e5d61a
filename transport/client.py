"""The Python client of the websocket protocol (``chains.Client``) and ``chains client``.

    async with Client("ws://127.0.0.1:8765", sample_rate=16000) as c:
        await c.send_audio(pcm)           # PCM16LE mono at sample_rate
        await c.end()
        async for msg in c:               # Transcript, TextOut, Metrics, Error, Event, OutputMsg, AudioFrame
            ...                           # ends after Done

Server messages arrive as the Structs of ``transport.protocol``; binary reply audio
as ``chains.AudioFrame`` at the rate announced in ``ready``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from chains.audio import FRAME_MS, read_wav, silence, split_frames, write_wav
from chains.errors import ChainsError
from chains.messages import AudioFrame
from chains.spec import describe_type
from transport.protocol import (
    Done,
    End,
    Error,
    Event,
    Input,
    InterruptMsg,
    Metrics,
    OutputMsg,
    Ready,
    ServerMessage,
    Start,
    TextOut,
    Transcript,
    decode_server,
    encode,
)


class ClientError(ChainsError):
    """Every failure of the client: it cannot connect, the server refused the session
    (``code``: ``overloaded``, ``unauthorized``, ...) or closed it (``close_code``, and the
    server's ``reason``), a message it cannot decode, an output that is not of the
    chain's declared type."""

    def __init__(
        self,
        message: str,
        code: str | None = None,
        close_code: int | None = None,
        reason: str = "",
    ):
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.reason = reason


_CLOSE_CODES = {1013: "overloaded", 1008: "policy", 1009: "too_big", 1011: "internal", 1001: "going_away"}


def _closed(e: ConnectionClosed, doing: str) -> ClientError:
    """A ``ClientError`` for a connection the server (or the network) closed."""
    frame = e.rcvd if e.rcvd is not None else e.sent
    code = frame.code if frame is not None else None
    reason = frame.reason if frame is not None else ""
    said = f"{code} {reason}".strip() if code is not None else "no close frame"
    return ClientError(
        f"connection closed while {doing} ({said})",
        code=_CLOSE_CODES.get(code) if code is not None else None,
        close_code=code,
        reason=reason,
    )


def output_types(chain: Any) -> dict[str, Any]:
    """The item type of each output of a ``@chains.chain`` (what the client decodes into)."""
    graph = getattr(chain, "graph", None)
    if graph is None:
        raise ChainsError(f"expected a @chains.chain, got {chain!r}")
    return {name: h.type for name, h in graph.outputs.items()}


class Client:
    """One session with a chains server; ``async with`` opens it and waits for ``ready``.

    ``chain`` names the server's chain to run, or is the ``@chains.chain`` itself: then
    its name is sent, and each generic ``output`` message's data comes back decoded into
    the output's declared type (an ``Embedding``, a ``chains.Message`` of yours, ...), not
    as plain JSON. ``types`` gives those types by output name when the chain is not at
    hand. Every failure raises ``ClientError``."""

    def __init__(
        self,
        url: str,
        *,
        sample_rate: int = 16000,
        chain: Any = None,
        token: str | None = None,
        output_sample_rate: int | None = None,
        max_size: int | None = 4 << 20,
        open_timeout: float = 10.0,
        types: dict[str, Any] | None = None,
    ):
        self.url = url
        self.sample_rate = sample_rate
        self.types: dict[str, Any] = {}
        if chain is not None and not isinstance(chain, str):
            self.types = output_types(chain)
            chain = chain.name
        self.types.update(types or {})
        self.chain = chain
        self.token = token
        self.requested_output_rate = output_sample_rate
        self.max_size = max_size
        self.open_timeout = open_timeout
        self.ready: Ready | None = None
        self.ws: ClientConnection | None = None
        self.done = False

    @property
    def session(self) -> str:
        assert self.ready is not None
        return self.ready.session

    @property
    def output_sample_rate(self) -> int:
        assert self.ready is not None
        return self.ready.sample_rate

    async def __aenter__(self) -> Client:
        try:
            self.ws = await connect(
                self.url, compression=None, max_size=self.max_size, open_timeout=self.open_timeout
            )
        except (OSError, TimeoutError) as e:
            raise ClientError(f"cannot connect to {self.url}: {e}") from e
        except Exception as e:  # websockets' handshake errors (InvalidURI, InvalidStatus, ...)
            raise ClientError(f"cannot open a websocket to {self.url}: {e}") from e
        try:
            # Refused before it read `start` (at its session limit): its error message or
            # close frame, read next, says why.
            with contextlib.suppress(ClientError):
                await self._send(
                    Start(
                        sample_rate=self.sample_rate,
                        chain=self.chain,
                        token=self.token,
                        output_sample_rate=self.requested_output_rate,
                    )
                )
            msg = await self._recv()
            if isinstance(msg, Error):
                close = self.ws.close_code
                raise ClientError(f"{msg.code}: {msg.message}", msg.code, close, self.ws.close_reason or "")
            if not isinstance(msg, Ready):
                raise ClientError(f"expected `ready`, got {type(msg).__name__}")
            self.ready = msg
        except BaseException:
            await self.ws.close()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.ws is not None:
            await self.ws.close()

    # --- sending ------------------------------------------------------------------------
    async def _send(self, msg: msgspec.Struct) -> None:
        await self._send_raw(encode(msg), text=True)

    async def _send_raw(self, data: bytes, text: bool = False) -> None:
        assert self.ws is not None
        try:
            await self.ws.send(data, text=text)
        except ConnectionClosed as e:
            raise _closed(e, "sending") from None
        except (OSError, WebSocketException) as e:
            raise ClientError(f"cannot send to {self.url}: {type(e).__name__}: {e}") from e

    async def send_audio(self, pcm: bytes) -> None:
        """One chunk of PCM16LE mono audio at ``sample_rate`` (20 ms is the usual size)."""
        await self._send_raw(pcm)

    async def send_input(self, data: Any, input: str | None = None) -> None:
        """One item for a non-audio chain input, as JSON: a ``chains.Message`` (a ``Text``,
        your own Struct) or plain JSON data (a string becomes a ``Text`` on a ``Text``
        input). ``input`` names the chain input; by default the first non-audio one.
        ``end()`` afterwards says there is no more input."""
        await self._send(Input(data=data, input=input))

    async def interrupt(self, reason: str = "client") -> None:
        """Barge-in: the server drops the current turn's work and outputs."""
        await self._send(InterruptMsg(reason=reason))

    async def end(self) -> None:
        """No more input: the server finishes the session, sends ``done`` and closes."""
        await self._send(End())

    # --- receiving ----------------------------------------------------------------------
    async def _recv(self) -> ServerMessage | AudioFrame:
        assert self.ws is not None
        try:
            raw = await self.ws.recv()
        except ConnectionClosed as e:
            raise _closed(e, "receiving") from None
        except (OSError, WebSocketException) as e:
            raise ClientError(f"cannot receive from {self.url}: {type(e).__name__}: {e}") from e
        if isinstance(raw, bytes):
            rate = self.ready.sample_rate if self.ready is not None else self.sample_rate
            return AudioFrame(pcm=raw, sample_rate=rate)
        try:
            msg = decode_server(raw)
        except msgspec.MsgspecError as e:
            raise ClientError(f"cannot decode a server message ({e}): {raw[:80]!r}") from e
        if isinstance(msg, OutputMsg) and msg.name in self.types:
            return OutputMsg(name=msg.name, data=self._decode(msg.name, msg.data))
        return msg

    def _decode(self, name: str, data: Any) -> Any:
        """``data`` of output ``name`` as its declared type (left as is where the type is
        not a concrete one msgspec can build)."""
        t = self.types[name]
        if t is Any or t is object or t is None:
            return data
        try:
            return msgspec.convert(data, t)
        except msgspec.ValidationError as e:
            raise ClientError(f"output {name!r} is not a {describe_type(t)}: {e}") from e
        except TypeError:
            return data  # a type msgspec cannot build (a Protocol, a plain class)

    async def receive(self) -> ServerMessage | AudioFrame:
        """The next message; ``Done`` last, after which the server closes."""
        msg = await self._recv()
        if isinstance(msg, Done):
            self.done = True
        return msg

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> ServerMessage | AudioFrame:
        if self.done:
            raise StopAsyncIteration
        try:
            return await self.receive()
        except ClientError as e:
            if e.close_code == 1000:
                raise StopAsyncIteration from None
            raise


# --- `chains client URL --input a.wav --output b.wav` -----------------------------------------
async def run_client(
    url: str,
    input_path: Path | str,
    output_path: Path | str | None = None,
    *,
    fast: bool = False,
    token: str | None = None,
    chain: str | None = None,
    tail_silence_ms: float = 800.0,
    out: TextIO | None = None,
) -> int:
    """Stream a wav file (at real-time pace unless ``fast``) or send a text/JSON file as
    the input, print transcript and reply text as they arrive and the per-turn
    latencies, write the reply audio to ``output_path``. Returns the exit code: 0, or
    1 when the server reported an error."""
    out = out or sys.stdout
    path = Path(input_path)
    if not path.exists():
        raise ChainsError(f"--input: no such file: {path}")
    if path.suffix.lower() == ".wav":
        try:
            pcm, rate = read_wav(path)
        except ValueError as e:
            raise ChainsError(str(e)) from e
    else:
        pcm, rate = b"", 16000
    audio: list[bytes] = []
    failures = 0
    async with Client(url, sample_rate=rate, token=token, chain=chain) as c:
        print(f"[{c.ready.chain if c.ready else ''}] session {c.session}", file=out, flush=True)
        t0 = time.monotonic()
        out_rate = c.output_sample_rate

        async def feed() -> None:
            if path.suffix.lower() == ".wav":
                frames = split_frames(pcm + silence(tail_silence_ms, rate), rate, FRAME_MS)
                for i, frame in enumerate(frames):
                    await c.send_audio(frame)
                    if not fast:  # real-time pace, against drift: sleep until this frame's due time
                        await anyio.sleep(max(0.0, t0 + (i + 1) * FRAME_MS / 1000.0 - time.monotonic()))
            elif path.suffix.lower() == ".json":
                await c.send_input(msgspec.json.decode(path.read_bytes()))
            else:
                await c.send_input(path.read_text(encoding="utf-8").strip())
            await c.end()

        streaming: str | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            async for msg in c:
                if isinstance(msg, AudioFrame):
                    audio.append(msg.pcm)
                    continue
                if isinstance(msg, TextOut) and (not msg.final or streaming == msg.name):
                    if streaming != msg.name:  # a new streamed text starts
                        if streaming is not None:
                            print(file=out)
                        print(f"{msg.name or 'text'}: ", end="", file=out)
                        streaming = msg.name
                    print(msg.text, end="", flush=True, file=out)
                    if msg.final:  # its last delta
                        print(file=out, flush=True)
                        streaming = None
                    continue
                if streaming is not None:
                    print(file=out)
                    streaming = None
                if isinstance(msg, Transcript):
                    print(f"transcript: {msg.text}", file=out, flush=True)
                elif isinstance(msg, TextOut):
                    print(f"{msg.name or 'text'}: {msg.text}", file=out, flush=True)
                elif isinstance(msg, Metrics):
                    print(_format_metrics(msg), file=out, flush=True)
                elif isinstance(msg, Error):
                    failures += 1
                    where = f" in node {msg.node!r}" if msg.node else ""
                    print(f"error{where} ({msg.code}): {msg.message}", file=sys.stderr, flush=True)
                elif isinstance(msg, Event):
                    continue
                elif isinstance(msg, OutputMsg):
                    print(f"{msg.name}: {msgspec.json.encode(msg.data).decode()}", file=out, flush=True)
            tg.cancel_scope.cancel()
        if streaming is not None:
            print(file=out)
    reply = b"".join(audio)
    if reply:
        secs = len(reply) / 2 / out_rate
        if output_path is None:
            print(f"(reply audio: {secs:.1f} s; pass --output reply.wav to keep it)", file=out)
        else:
            write_wav(output_path, reply, out_rate)
            print(f"wrote {output_path} ({secs:.1f} s of audio)", file=out)
    return 1 if failures else 0


def _format_metrics(m: Metrics) -> str:
    parts = [f"turn {m.turn}:"]
    for label, v in (
        ("transcript", m.first_transcript_ms),
        ("first text", m.first_text_ms),
        ("first audio", m.first_audio_ms),
        ("last output", m.last_output_ms),
    ):
        if v is not None:
            parts.append(f"{label} {v:.0f} ms")
    if m.audio_ms:
        parts.append(f"audio {m.audio_ms / 1000:.1f} s")
    if m.interrupted:
        parts.append("(interrupted)")
    return "  ".join(parts)


__all__ = ["Client", "ClientError", "output_types", "run_client"]
