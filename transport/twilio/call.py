"""One Twilio Media Stream: one phone call, one session of a voice chain.

The caller's μ-law 8 kHz audio goes to the chain's audio input as PCM16 8 kHz (the
VAD resamples it); the chain's reply audio comes back as μ-law ``media`` at 8 kHz
(the TTS is asked for 8 kHz through the session's ``output_sample_rate``), paced at
real time (transport/pacing.py), each frame followed by a ``mark`` named after the
turn and the ms of the reply sent so far. Twilio echoes a mark once the audio
before it has played, which is how the played position is known (``Pacer.report``).
At an interrupt (the VAD heard the caller talk over the reply) the rest of the old
turn is dropped, a ``clear`` empties Twilio's buffer, and the chain is told what was
heard (``chains.Heard``: the reply's words up to the last echoed mark).

Twilio has no error message: a message we cannot use (not JSON, unknown, out of
order, too big) is counted and logged, and the call goes on; a wrong token closes
the socket (1008) before any session starts.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from chains.errors import Overloaded
from chains.messages import AudioFrame, Heard
from chains.outputs import ERROR
from transport.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from transport.pacing import DEFAULT_LEAD_MS, Pacer
from transport.peer import Gone, Socket
from transport.twilio import events as tw

RATE = 8000


@dataclass(frozen=True)
class TwilioOptions:
    lead_ms: float = DEFAULT_LEAD_MS
    max_message_bytes: int = 1 << 20
    start_timeout_s: float = 10.0


class Call:
    def __init__(self, ws: Socket, options: TwilioOptions, log: Any):
        self.ws = ws
        self.options = options
        self.log = log
        self.sid = ""
        self.sess: Any = None
        self.pacer = Pacer(options.lead_ms)
        self.problems: Counter[str] = Counter()  # what the caller sent that we could not use
        self.dtmf: list[str] = []
        self.cleared = 0
        self._clear_pending = False
        self._lock = anyio.Lock()
        self._resample: dict[int, Any] = {}

    async def send(self, data: bytes) -> None:
        async with self._lock:
            await self.ws.send_text(data.decode())

    def problem(self, kind: str, detail: str) -> None:
        self.problems[kind] += 1
        self.log.info("twilio_bad_message", stream=self.sid, kind=kind, detail=detail[:200])

    async def recv(self) -> tw.Event | None:
        raw = await self.ws.recv()
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if size > self.options.max_message_bytes:
            self.problem("too_big", f"{size} bytes")
            return None
        msg = tw.decode(raw)
        if isinstance(msg, str):
            self.problem("malformed", msg)
            return None
        return msg

    async def wait_start(self) -> tw.Start | None:
        with anyio.move_on_after(self.options.start_timeout_s):
            while True:
                msg = await self.recv()
                if isinstance(msg, tw.Start):
                    return msg
                if msg is not None and not isinstance(msg, tw.Connected):
                    self.problem("before_start", type(msg).__name__)
        return None

    # --- the call ---------------------------------------------------------------------------
    async def run(self, runtime: Any) -> None:
        meta = {"input_sample_rate": RATE, "output_sample_rate": RATE, "transport": "twilio"}
        async with runtime.session(meta=meta) as sess:
            self.sess = sess
            sess.interrupt_listeners.append(self.on_interrupt)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.reader, tg.cancel_scope)
                await self.writer()
                tg.cancel_scope.cancel()

    async def reader(self, scope: anyio.CancelScope) -> None:
        try:
            while True:
                msg = await self.recv()
                if isinstance(msg, tw.MediaEvent):
                    try:
                        ulaw = base64.b64decode(msg.media.payload, validate=True)
                    except (binascii.Error, ValueError) as e:
                        self.problem("bad_audio", str(e))
                        continue
                    if ulaw:
                        await self.sess.send(AudioFrame(pcm=ulaw_to_pcm16(ulaw), sample_rate=RATE))
                elif isinstance(msg, tw.Mark):
                    self.echoed(msg.mark.name)
                elif isinstance(msg, tw.DtmfEvent):
                    self.dtmf.append(msg.dtmf.digit)
                elif isinstance(msg, tw.Stop):
                    self.sess.close_inputs()
                    return
                elif isinstance(msg, tw.Start | tw.Connected):
                    self.problem("out_of_order", f"{type(msg).__name__} after start")
        except Gone:
            scope.cancel()

    def echoed(self, name: str) -> None:
        """Twilio played the audio up to mark ``name`` ("<turn>:<ms sent>")."""
        try:
            epoch, ms = name.split(":", 1)
            self.pacer.report(int(epoch), float(ms))
        except ValueError:
            self.problem("bad_mark", name)

    async def writer(self) -> None:
        sess = self.sess
        while True:
            try:
                out = await sess.receive()
            except anyio.EndOfStream:
                break
            if self._clear_pending:
                await self.flush_clear()
            if isinstance(out.value, AudioFrame):
                await self.audio(out.value, out.epoch)
            elif out.name == ERROR:
                self.log.warning("twilio_chain_error", stream=self.sid, error=repr(out.value))
            if self._clear_pending:
                await self.flush_clear()

    async def audio(self, frame: AudioFrame, epoch: int) -> None:
        pcm = frame.pcm
        if frame.sample_rate != RATE:
            from chains.audio import PcmResampler

            r = self._resample.get(frame.sample_rate)
            if r is None:
                r = self._resample[frame.sample_rate] = PcmResampler(frame.sample_rate, RATE)
            pcm = r.process(pcm)
        payload = base64.b64encode(pcm16_to_ulaw(pcm)).decode()
        ms = frame.duration_ms
        sent_after = self.pacer.sent_ms + ms if self.pacer.epoch == epoch else ms

        async def send() -> None:
            async with self._lock:
                await self.ws.send_text(tw.media(self.sid, payload).decode())
                await self.ws.send_text(tw.mark(self.sid, f"{epoch}:{sent_after:.1f}").decode())

        await self.pacer.send(ms, epoch, lambda: self.sess.epoch, send, frame.spoken)

    def on_interrupt(self, old_epoch: int, reason: str) -> None:
        pb = self.pacer.cut(old_epoch)
        if pb is None:
            return
        self._clear_pending = True
        if pb.played_ms < pb.sent_ms or pb.heard != pb.text:
            self.sess.tell_heard(
                Heard(
                    epoch=old_epoch, text=pb.heard, played_ms=pb.played_ms, sent_ms=pb.sent_ms, reason=reason
                )
            )

    async def flush_clear(self) -> None:
        self._clear_pending = False
        self.cleared += 1
        await self.send(tw.clear(self.sid))


async def serve(
    ws: Socket,
    runtimes: Mapping[str, Any],
    token: str | None,
    query_token: str | None,
    options: TwilioOptions,
    log: Any,
) -> Call | None:
    """Serve one accepted Twilio websocket until the call ends (the Call, for tests)."""
    from transport.http import token_matches

    call = Call(ws, options, log)
    try:
        start = await call.wait_start()
        if start is None:
            await ws.close(1008, "no start")
            return call
        params = start.start.customParameters
        call.sid = start.start.streamSid or start.streamSid or ""
        if not token_matches(params.get("token") or query_token, token):
            log.info("twilio_unauthorized", stream=call.sid)
            await ws.close(1008, "unauthorized")
            return call
        fmt = start.start.mediaFormat
        if fmt.encoding != "audio/x-mulaw" or fmt.sampleRate != RATE or fmt.channels != 1:
            log.info("twilio_bad_format", stream=call.sid, format=str(fmt))
            await ws.close(1003, "only audio/x-mulaw 8000 Hz mono")
            return call
        name = params.get("chain")
        rt = runtimes.get(name) if name else (next(iter(runtimes.values())) if len(runtimes) == 1 else None)
        if rt is None:
            await ws.close(1008, f"no chain {name!r}")
            return call
        await call.run(rt)
    except Gone:
        pass
    except Overloaded:
        await ws.close(1013, "overloaded")
    return call


__all__ = ["Call", "TwilioOptions", "serve"]
