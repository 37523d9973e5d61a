"""One websocket connection of the client protocol: one session of a chain.

Three tasks serve it once ``start`` is accepted: the reader turns client messages
into session inputs (it waits while the chain is full, so a fast sender is slowed
by TCP, not buffered), the writer turns session outputs into messages (it waits
while the socket is full, which pauses the session: a client that stops reading
holds bounded buffers only), and a watchdog closes the connection when the
client has stopped reading for ``stall_timeout_s`` or when nothing moved for
``idle_timeout_s``. Every way out goes through ``_finish``: an ``error`` naming
the reason when it can still be delivered, then the close code.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
import msgspec

from chains.errors import Overloaded
from transport.audioin import AudioInput
from transport.http import token_from, token_matches
from transport.httpapi.inputs import as_input
from transport.outputs import OutputMapper
from transport.paced import PacedAudio
from transport.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_OVERLOADED,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    Done,
    End,
    Error,
    Input,
    InterruptMsg,
    ProtocolError,
    Ready,
    Start,
    decode_client,
    encode,
)
from transport.settings import ConnectionSettings
from transport.wsocket import AsgiSocket, Lane, SocketClosed


class Connection:
    """One websocket, one session. It sees the server only through ``settings``."""

    def __init__(self, settings: ConnectionSettings, ws: AsgiSocket):
        self.settings = settings
        self.ws = ws
        self.limits = settings.limits
        self.session_id: str | None = None
        self.errors = 0
        now = time.monotonic()
        self.last_rx = now
        self.last_tx = now
        self._pending = 0  # sends in progress
        self._pending_since = now
        self._scope: anyio.CancelScope | None = None
        self._close: tuple[int, str, Error | None] | None = None
        self.stalled = False
        self.max_buffered = 0  # largest socket write buffer seen (bytes): tests read it
        self._mapper: OutputMapper | None = None
        self._closed_inputs: set[int] = set()
        self._reader_idle = False  # the reader waits for a message: the lane may take audio

    # --- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                await self._run()
            except SocketClosed:
                pass
            except Exception as e:  # a bug in chains: log it, tell the client, close with 1011
                self.settings.log.error(
                    "connection_failed", session=self.session_id, error=repr(e), exc_info=True
                )
                self.internal_error(e)
        await self._finish()

    def stop(self, code: int, reason: str, error: Error | None = None) -> None:
        """End the connection with ``code`` after sending ``error`` (first caller wins)."""
        if self._close is None:
            self._close = (code, reason, error)
        if self._scope is not None:
            self._scope.cancel()

    async def _finish(self) -> None:
        code, reason, error = self._close or (CLOSE_NORMAL, "", None)
        ws = self.ws
        with anyio.CancelScope(shield=True):
            if self.stalled:
                ws.abort()  # the client reads nothing: no close frame can get through
                return
            with anyio.move_on_after(self.limits.close_timeout_s):
                if error is not None and ws.open:
                    with contextlib.suppress(SocketClosed):
                        await ws.send(encode(error).decode())
                await ws.close(code, reason[:120])
            if ws.open:
                ws.abort()

    # --- sending ------------------------------------------------------------------------
    async def send(self, msg: Any) -> None:
        if isinstance(msg, bytes | bytearray | memoryview):
            data: str | bytes = bytes(msg) if not isinstance(msg, bytes) else msg
        else:
            data = encode(msg).decode()
        if self._pending == 0:
            self._pending_since = time.monotonic()
        self._pending += 1
        try:
            await self.ws.send(data)
        finally:
            self._pending -= 1
            self.last_tx = time.monotonic()

    async def error(self, code: str, message: str, *, fatal: bool = False) -> None:
        """Tell the client what was wrong; too many errors end the connection."""
        self.errors += 1
        self.settings.stats["errors"] += 1
        if self.errors > self.limits.max_errors:
            self.stop(CLOSE_POLICY, "too many protocol errors", Error(code=code, message=message))
            await anyio.sleep(0)  # let the cancellation land
            return
        await self.send(Error(code=code, message=message))

    # --- the protocol -------------------------------------------------------------------
    async def _run(self) -> None:
        start = await self._await_start()
        if start is None:
            return
        rt = self.settings.runtime_for(start.chain)
        assert rt is not None
        in_rate = self.settings.input_sample_rate or start.sample_rate
        out_rate = start.output_sample_rate or self.settings.output_sample_rate or start.sample_rate
        meta = {"input_sample_rate": in_rate, "output_sample_rate": out_rate, "transport": "websocket"}
        try:
            async with rt.session(meta=meta) as sess:
                self.session_id = sess.id
                self.settings.stats["sessions"] += 1
                await self._serve(sess, start, in_rate, out_rate)
        except Overloaded as e:
            self.settings.stats["overloaded"] += 1
            self.stop(CLOSE_OVERLOADED, "overloaded", Error(code="overloaded", message=str(e)))

    async def _await_start(self) -> Start | None:
        timeout = self.limits.start_timeout_s
        with anyio.move_on_after(timeout):
            while True:
                try:
                    raw = await self.ws.recv()
                except SocketClosed:
                    return None  # the client went away
                self.last_rx = time.monotonic()
                if not self._size_ok(raw):
                    return None
                if not isinstance(raw, str):
                    await self.error(
                        "not_started", 'binary audio before `start`: send {"type": "start", ...} first'
                    )
                    continue
                try:
                    msg = decode_client(raw)
                except ProtocolError as e:
                    await self.error(e.code, e.message)
                    continue
                if not isinstance(msg, Start):
                    await self.error("not_started", f"`{_type_of(msg)}` before `start`: send `start` first")
                    continue
                if not self._authorized(msg):
                    self.settings.stats["unauthorized"] += 1
                    self.stop(
                        CLOSE_POLICY,
                        "unauthorized",
                        Error(code="unauthorized", message="start: missing or wrong `$.token`"),
                    )
                    return None
                problem = self._start_problem(msg)
                if problem is not None:
                    await self.error(*problem)
                    continue
                return msg
        self.stop(
            CLOSE_POLICY,
            "no start",
            Error(code="start_timeout", message=f"no `start` message within {timeout:g} s"),
        )
        return None

    def _authorized(self, start: Start) -> bool:
        """The token in ``start``, else the one the websocket handshake carried."""
        ws = self.ws
        return token_matches(
            start.token or token_from(ws.header("authorization"), ws.query_string), self.settings.token
        )

    def _start_problem(self, start: Start) -> tuple[str, str] | None:
        rates = self.limits.sample_rates
        if self.settings.runtime_for(start.chain) is None:
            names = ", ".join(self.settings.runtimes)
            return "unknown_chain", f"start: `$.chain`: no chain {start.chain!r}; this server has: {names}"
        for field, rate in (
            ("sample_rate", start.sample_rate),
            ("output_sample_rate", start.output_sample_rate),
        ):
            if rate is not None and rate not in rates:
                return (
                    "bad_sample_rate",
                    f"start: `$.{field}`: {rate} Hz is not supported; use one of "
                    + ", ".join(str(r) for r in rates),
                )
        return None

    def _size_ok(self, raw: str | bytes) -> bool:
        limit = self.limits.max_message_bytes
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if size > limit:
            self.settings.stats["too_big"] += 1
            self.stop(
                CLOSE_TOO_BIG,
                "message too big",
                Error(code="too_big", message=f"message of {size} bytes exceeds the limit of {limit} bytes"),
            )
            return False
        return True

    # --- a running session ----------------------------------------------------------------
    async def _serve(self, sess: Any, start: Start, in_rate: int, out_rate: int) -> None:
        graph = sess.graph
        self._mapper = OutputMapper(out_rate)
        self._paced = PacedAudio(sess, self.limits.lead_ms)  # reply audio at real time; `truncated`
        await self.send(
            Ready(
                session=sess.id,
                sample_rate=out_rate,
                chain=graph.name,
                inputs=[i.name for i in graph.inputs],
                outputs=list(graph.outputs),
            )
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reader, sess, start.sample_rate, in_rate, tg.cancel_scope)
            tg.start_soon(self._watchdog, tg.cancel_scope)
            await self._writer(sess)
            tg.cancel_scope.cancel()

    async def _writer(self, sess: Any) -> None:
        mapper = self._mapper
        assert mapper is not None
        mono = time.monotonic
        ws = self.ws
        try:
            while True:
                try:
                    out = await sess.receive()
                except anyio.EndOfStream:
                    break
                msgs = mapper.map(out.name, out.value, out.origin, out.epoch, mono())
                await self._paced.send(out.value, out.epoch, msgs, self.send)  # audio paced; `truncated`
                buffered = ws.buffered()
                if buffered > self.max_buffered:
                    self.max_buffered = buffered
            await self._flush_audio(mapper)
            for msg in mapper.close_turn(mono()):
                await self.send(msg)
            await self.send(Done())
        except SocketClosed:
            self.stop(CLOSE_NORMAL, "client went away")
            return
        self.settings.stats["done"] += 1
        self.stop(CLOSE_NORMAL, "done")

    async def _flush_audio(self, mapper: OutputMapper) -> None:
        """Send what the output resamplers still hold (the soxr filter's look-ahead, the
        last few ms of the reply) at the end of the session.

        Reaches into the mapper because ``OutputMapper`` has no flush of its own yet;
        once it flushes at ``close_turn`` this goes."""
        for r in getattr(mapper, "_resamplers", {}).values():
            tail = r.flush()
            if tail:
                await self.send(tail)

    async def _reader(self, sess: Any, client_rate: int, in_rate: int, scope: anyio.CancelScope) -> None:
        audio = AudioInput(sess, client_rate, in_rate, self.limits.max_message_bytes)
        if audio.index is not None:
            self.ws.set_lane(self._lane(audio))
        try:
            while True:
                self._reader_idle = True
                raw = await self.ws.recv()
                self._reader_idle = False
                self.last_rx = time.monotonic()
                if not self._size_ok(raw):
                    return
                if isinstance(raw, bytes):
                    refusal = audio.refusal(raw)
                    if refusal is not None:
                        await self.error(*refusal)
                    else:
                        await audio.send(raw)
                    continue
                try:
                    msg = decode_client(raw)
                except ProtocolError as e:
                    await self.error(e.code, e.message)
                    continue
                if isinstance(msg, Input):
                    await self._input(sess, msg, audio)
                elif isinstance(msg, InterruptMsg):
                    sess.interrupt(msg.reason or "client")
                    assert self._mapper is not None
                    closing = self._mapper.close_turn(time.monotonic(), interrupted=True)
                    for m in [*self._paced.take(), *closing]:
                        await self.send(m)
                elif isinstance(msg, End):
                    await audio.end()
                    sess.close_inputs()
                elif isinstance(msg, Start):
                    await self.error("already_started", f"session {sess.id} has already started")
        except SocketClosed:
            pass
        finally:
            self.ws.set_lane(None)  # the protocol must not hold the session past the reader
        self.stop(CLOSE_NORMAL, "client went away")
        scope.cancel()

    def _lane(self, audio: AudioInput) -> Lane:
        """The audio frame's fast lane: a good frame goes from the socket's protocol
        straight into the session, with no ASGI message or reader wake-up. Only while
        the reader waits with nothing queued, so that messages keep their order;
        anything declined takes the reader's path, which reports it or waits."""

        def take(raw: bytes) -> bool:
            if self._reader_idle and audio.offer(raw):
                self.last_rx = time.monotonic()
                return True
            return False

        return take

    async def _input(self, sess: Any, msg: Input, audio: AudioInput) -> None:
        audio_input = audio.index
        graph = sess.graph
        names = [i.name for i in graph.inputs]
        if msg.input is None:
            idx = next((i for i in range(len(names)) if i != audio_input), audio_input)
        elif msg.input in names:
            idx = names.index(msg.input)
        else:
            await self.error(
                "unknown_input",
                f"input: `$.input`: no input {msg.input!r}; the chain has: {', '.join(names)}",
            )
            return
        assert idx is not None
        inp = graph.inputs[idx]
        if audio.closed or idx in self._closed_inputs:
            await self.error("input_closed", f"input {inp.name!r} takes no more items")
            return
        try:
            value = as_input(msg.data, inp.type)
        except msgspec.ValidationError as e:
            text = str(e).replace("`$", "`$.data")
            if " - at `" not in text:
                text += " - at `$.data`"
            await self.error("bad_input", f"input {inp.name!r}: {text}")
            return
        await sess.send(value, idx)
        if not inp.stream:  # a value input takes exactly one item
            self._closed_inputs.add(idx)
            sess.close_input(idx)

    async def _watchdog(self, scope: anyio.CancelScope) -> None:
        lim = self.limits
        tick = max(0.01, min(lim.stall_timeout_s, lim.idle_timeout_s) / 4)
        while True:
            await anyio.sleep(tick)
            now = time.monotonic()
            if self._pending and now - max(self._pending_since, self.last_tx) > lim.stall_timeout_s:
                self.stalled = True
                self.settings.stats["stalled"] += 1
                self.stop(CLOSE_POLICY, "client not reading")
                return
            if not self._pending and now - max(self.last_rx, self.last_tx) > lim.idle_timeout_s:
                self.settings.stats["idle"] += 1
                self.stop(
                    CLOSE_GOING_AWAY,
                    "idle",
                    Error(code="idle_timeout", message=f"no traffic for {lim.idle_timeout_s:g} s"),
                )
                return

    def internal_error(self, exc: BaseException) -> None:
        self.stop(CLOSE_INTERNAL, "internal error", Error(code="internal", message=type(exc).__name__))


def _type_of(msg: Any) -> str:
    return type(msg).__struct_config__.tag


__all__ = ["Connection"]
