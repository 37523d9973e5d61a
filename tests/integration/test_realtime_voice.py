"""The real ``openai`` realtime client against demos/voice.py served by the real server,
on the real models: a spoken question gets its transcript, audio deltas and
``response.done``; after a truncate at 600 ms the retrieved item holds only the words
played by then (by Piper's word timing), and the next reply's prompt, read from the LLM
node, holds only those words of the cut reply.

One server (one vLLM engine, ~30-55 s to start) for the module.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import pytest
from openai import AsyncOpenAI

from chains.history import MARK
from nodes import VLLMChat
from nodes.audio import float_to_pcm, resample
from transport.server import serve

from .conftest import to_float, words
from .test_voice_chain import load_voice_chain

pytestmark = pytest.mark.timeout(900)
CHUNK = 24000 * 2 * 40 // 1000  # 40 ms of PCM16 at 24 kHz


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every prompt the chat node renders (its template text), in order."""
    seen: list[str] = []
    impl = VLLMChat.spec.impl
    render = impl.render

    def recording(self: Any, *args: Any, **kwargs: Any) -> str:
        text = render(self, *args, **kwargs)
        seen.append(text)
        return text

    monkeypatch.setattr(impl, "render", recording)
    yield seen


def audio_24k(question: tuple[bytes, int], silence_s: float = 0.5) -> bytes:
    pcm, rate = question
    pad = np.zeros(int(silence_s * rate), dtype=np.float32)
    return float_to_pcm(resample(np.concatenate([pad[: rate // 4], to_float(pcm), pad]), rate, 24000))


class Mic:
    """A microphone that never stops: 40 ms chunks at real-time pace, what ``say`` was
    given, else silence (the VAD needs the silence after a question to end the turn)."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.queue: list[bytes] = []

    def say(self, audio: bytes) -> None:
        self.queue += [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]

    async def run(self) -> None:
        silence = base64.b64encode(b"\x00" * CHUNK).decode()
        while True:
            chunk = base64.b64encode(self.queue.pop(0)).decode() if self.queue else silence
            await self.conn.input_audio_buffer.append(audio=chunk)
            await anyio.sleep(0.04)


async def until(conn: Any, kind: str, log: list[Any]) -> Any:
    while True:
        ev = await conn.recv()
        log.append(ev)
        if ev.type == "error":
            raise AssertionError(f"error event: {ev}")
        if ev.type == kind:
            return ev


def test_openai_realtime_client_on_the_voice_demo(question: tuple[bytes, int], prompts: list[str]) -> None:
    voice = load_voice_chain()
    audio = audio_24k(question)

    async def main() -> dict[str, Any]:
        async with serve(voice, port=0) as srv:
            client = AsyncOpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="unused", max_retries=0)
            async with (
                client.realtime.connect(model="voice", max_retries=0) as conn,
                anyio.create_task_group() as tg,
            ):
                got: dict[str, Any] = {}
                log: list[Any] = []
                mic = Mic(conn)
                with anyio.fail_after(300):
                    assert (await conn.recv()).type == "session.created"
                    tg.start_soon(mic.run)
                    mic.say(audio)
                    got["done"] = await until(conn, "response.done", log)
                    got["log"] = log
                    item = got["done"].response.output[0]
                    await conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=600)
                    got["truncated"] = await until(conn, "conversation.item.truncated", [])
                    await conn.conversation.item.retrieve(item_id=item.id)
                    got["retrieved"] = await until(conn, "conversation.item.retrieved", [])
                    got["prompts_before"] = len(prompts)
                    mic.say(audio)
                    got["done2"] = await until(conn, "response.done", [])
                tg.cancel_scope.cancel()
                return got

    got = anyio.run(main)
    log = got["log"]
    transcripts = [
        e.transcript for e in log if e.type == "conversation.item.input_audio_transcription.completed"
    ]
    assert transcripts and {"capital", "france"} <= words(transcripts[-1]), transcripts
    deltas = [e for e in log if e.type == "response.output_audio.delta"]
    assert len(deltas) > 10
    done = got["done"]
    assert done.response.status == "completed"
    full = done.response.output[0].content[0].transcript
    heard = got["retrieved"].item.content[0].transcript
    assert got["truncated"].audio_end_ms == 600
    # the words played by 600 ms: a first word or few of the reply, and not all of it
    assert (
        heard
        and full.split()[: len(heard.split())] == heard.split()
        and len(heard.split()) < len(full.split())
    )
    assert len(heard.split()) <= 4, heard
    # the next reply's prompt carries only those words of the cut reply
    later = prompts[got["prompts_before"] :]
    assert later, "the second turn rendered no prompt"
    assert heard + MARK in later[-1]
    assert full not in later[-1]
