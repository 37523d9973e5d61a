"""Fakes for the Realtime and Twilio adapter tests: an in-memory websocket pair and a
voice chain of fake nodes with the real chain's shape (VAD -> STT -> chat -> TTS).

The fake VAD calls a frame speech when its first sample is not zero: it yields
``SpeechStarted`` and ``Interrupt`` when speech begins, and the utterance at the
first silent frame after it. The fake STT "hears" ``QUESTIONS[n]`` for an utterance
of n frames. The fake chat keeps its history as ``VLLMChat`` does (chains.history)
and records every prompt. The fake TTS speaks each word in ``WORD_MS`` with a word
timing, in 40 ms frames of audio at the session's output rate.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np

import chains
from chains import AudioFrame, Interrupt, SpeechStarted, Stream, Text, TextDelta, Utterance
from chains.history import begin_turn, reply_tag, system_prompt
from chains.messages import Spoken, WordTiming
from transport.peer import Gone

WORD_MS = 200.0
FRAME_MS = 40
QUESTIONS = {3: "What is the capital of France?", 4: "And of Spain?", 5: "Tell me more."}
REPLIES = {
    "What is the capital of France?": "The capital of France is Paris, a city on the Seine.",
    "And of Spain?": "Madrid.",
    "Tell me more.": "It is big.",
}
PROMPTS: list[str] = []


def speech(frames: int, rate: int = 24000, ms: int = FRAME_MS) -> list[bytes]:
    n = rate * ms // 1000
    tone = (np.sin(np.arange(n) / 3.0) * 8000).astype("<i2")
    tone[0] = 1000
    return [tone.tobytes()] * frames


def silence(frames: int, rate: int = 24000, ms: int = FRAME_MS) -> list[bytes]:
    return [b"\x00\x00" * (rate * ms // 1000)] * frames


@chains.node
async def fake_vad(frames: Stream[AudioFrame]) -> AsyncIterator[Utterance | SpeechStarted | Interrupt]:
    count = 0
    rate = 24000
    async for f in frames:
        rate = f.sample_rate
        loud = len(f.pcm) >= 2 and f.pcm[:2] != b"\x00\x00"
        if loud:
            if count == 0:
                yield SpeechStarted()
                yield Interrupt(reason="user speech")
            count += 1
        elif count:
            yield Utterance(pcm=b"\x00\x00" * count, sample_rate=rate)
            count = 0


@chains.node
async def fake_stt(u: Utterance) -> Text:
    return Text(text=QUESTIONS.get(len(u.pcm) // 2, "Hmm?"))


@chains.node
async def fake_chat(text: Text) -> AsyncIterator[TextDelta]:
    state = chains.context().state
    history = state.setdefault("history", [])
    epoch = begin_turn(history)
    prompt = [f"system: {system_prompt('Be brief.')}"]
    prompt += [f"{m['role']}: {m['content']}" for m in history] + [f"user: {text.text}"]
    PROMPTS.append("\n".join(prompt))
    reply = REPLIES.get(text.text, "Let me think about that for a moment, then I will answer you in full.")
    said = ""
    try:
        for word in reply.split(" "):
            piece = word if not said else " " + word
            said += piece
            yield TextDelta(text=piece)
            await anyio.sleep(0)
        yield TextDelta(text="", final=True)
    finally:
        history += [
            {"role": "user", "content": text.text},
            {"role": "assistant", "content": said, **reply_tag(epoch)},
        ]


@chains.node
async def fake_sentences(deltas: Stream[TextDelta]) -> AsyncIterator[Text]:
    text = ""
    async for d in deltas:
        text += d.text
        if d.final and text:
            yield Text(text=text)
            text = ""


@chains.node
async def fake_tts(sentence: Text) -> AsyncIterator[AudioFrame]:
    rate = int(chains.context().meta.get("output_sample_rate") or 24000)
    words = sentence.text.split()
    timing = [
        WordTiming(word=w, start_ms=i * WORD_MS, end_ms=(i + 1) * WORD_MS - 20) for i, w in enumerate(words)
    ]
    total = WORD_MS * len(words)
    spoken = Spoken(text=sentence.text, duration_ms=total, words=timing)
    n = rate * FRAME_MS // 1000
    frame = (np.ones(n) * 3000).astype("<i2").tobytes()
    for i in range(math.ceil(total / FRAME_MS)):
        yield AudioFrame(pcm=frame, sample_rate=rate, spoken=spoken if i == 0 else None)


@chains.chain
def fake_voice(audio: Stream[AudioFrame]):
    heard = fake_stt(fake_vad(audio))
    reply = fake_chat(heard)
    return {"transcript": heard, "reply": reply, "audio": fake_tts(fake_sentences(reply))}


class MemorySocket:
    """The server's end of an in-memory websocket; the test holds the client's end."""

    def __init__(self) -> None:
        self._c2s_tx, self._c2s_rx = anyio.create_memory_object_stream[str | bytes](math.inf)
        self._s2c_tx, self._s2c_rx = anyio.create_memory_object_stream[str](math.inf)
        self.closed: tuple[int, str] | None = None

    # the server's side (transport.peer.Socket)
    async def recv(self) -> str | bytes:
        try:
            return await self._c2s_rx.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise Gone() from None

    async def send_text(self, data: str) -> None:
        try:
            await self._s2c_tx.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise Gone() from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self._s2c_tx.close()

    # the client's side
    async def put(self, event: dict[str, Any] | str | bytes) -> None:
        await self._c2s_tx.send(json.dumps(event) if isinstance(event, dict) else event)

    async def get(self) -> dict[str, Any]:
        return json.loads(await self._s2c_rx.receive())

    async def until(self, kind: str, log: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Read events until one of type ``kind`` (the ones before go to ``log``)."""
        while True:
            e = await self.get()
            if log is not None:
                log.append(e)
            if e["type"] == kind:
                return e

    def hang_up(self) -> None:
        self._c2s_tx.close()
