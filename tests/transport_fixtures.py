"""Fake chains and helpers for the transport tests: no models, scripted timing.

The voice chain mimics the real one's shapes: a per-session energy VAD (stream
node), a fake STT (map) whose transcript reports how long the utterance was, a
fake LLM (streaming map) that streams a scripted reply word by word, and a fake
TTS (streaming map) that speaks each word as 20 ms of tone at 24 kHz. Timing
knobs (``FAKE.*``) let a test slow a stage down.

This file is also loaded by path in a second process (``chains serve
tests/transport_fixtures.py:remote_map --only shout``), so it imports nothing from
the test package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import chains
from chains import AudioFrame, SpeechStarted, Stream, Text, TextDelta, Utterance
from chains.audio import peak, silence, split_frames, tone

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
OUT_RATE = 24000


class _Knobs:
    """Timing and counters the tests set and read (one process: module globals)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.word_delay_s = 0.0
        self.tts_frames_per_word = 1
        self.amplify = 1  # echo chain: output frames per input frame
        self.produced = 0  # items produced by the echo chain's amplifier
        self.slow_s = float(os.environ.get("CHAINS_TEST_SLOW_S", "0"))


FAKE = _Knobs()


# --- the fake voice chain ----------------------------------------------------------------
@chains.node
async def energy_vad(frames: Stream[AudioFrame]) -> AsyncIterator[Utterance | SpeechStarted]:
    """Speech is any frame louder than 1000; four quiet frames end the utterance."""
    buf: list[bytes] = []
    quiet = 0
    rate = RATE
    async for f in frames:
        rate = f.sample_rate
        loud = peak(f.pcm) > 1000
        if loud:
            if not buf:
                yield SpeechStarted()
            buf.append(f.pcm)
            quiet = 0
        elif buf:
            quiet += 1
            buf.append(f.pcm)
            if quiet >= 4:
                yield Utterance(pcm=b"".join(buf), sample_rate=rate)
                buf, quiet = [], 0
    if buf:
        yield Utterance(pcm=b"".join(buf), sample_rate=rate)


@chains.node
async def fake_stt(u: Utterance) -> Text:
    return Text(text=f"heard {round(u.duration_ms / 100) * 100:.0f} ms")


@chains.node
async def fake_llm(t: Text) -> AsyncIterator[TextDelta]:
    words = f"you said: {t.text}".split()
    for i, w in enumerate(words):
        if FAKE.word_delay_s:
            await asyncio.sleep(FAKE.word_delay_s)
        yield TextDelta(text=w + (" " if i < len(words) - 1 else ""), final=i == len(words) - 1)


@chains.node
async def fake_tts(d: TextDelta) -> AsyncIterator[AudioFrame]:
    for _ in range(FAKE.tts_frames_per_word):
        yield AudioFrame(pcm=tone(20, OUT_RATE, 330), sample_rate=OUT_RATE)


@chains.chain(budget_ms=5000)
def voice(audio: Stream[AudioFrame]):
    turns = energy_vad(audio)
    text = fake_stt(turns)
    reply = fake_llm(text)
    return {"transcript": text, "reply": reply, "audio": fake_tts(reply)}


# --- a text chain: one value in, outputs out, done --------------------------------------
class Doc(msgspec.Struct, frozen=True):
    title: str
    body: str


@chains.node
async def upper(d: Text) -> Text:
    if d.text == "boom":
        raise ValueError("boom requested")
    return Text(text=d.text.upper())


@chains.node
async def count_words(d: Text) -> int:
    return len(d.text.split())


@chains.chain
def shout(doc: Text):
    return {"loud": upper(doc), "words": count_words(doc)}


# --- an echo chain: every audio frame comes back (amplify: N frames per input) -------------
@chains.node
async def amplifier(f: AudioFrame) -> AsyncIterator[AudioFrame]:
    if FAKE.slow_s:  # a slow consumer: the session's audio input fills
        await asyncio.sleep(FAKE.slow_s)
    for _ in range(FAKE.amplify):
        FAKE.produced += 1
        yield f


@chains.chain
def echo(audio: Stream[AudioFrame]):
    return {"audio": amplifier(audio)}


# --- chains for the remote-stage tests (the node is served by a second process) --------------
@chains.node
async def shout_word(t: Text) -> Text:
    if FAKE.slow_s:
        await asyncio.sleep(FAKE.slow_s)
    if t.text == "boom":
        raise ValueError("boom requested")
    if t.text == "skip":
        return None  # type: ignore[return-value]  # a map returning None filters the item
    return Text(text=t.text.upper() + "!")


@chains.node
async def words_of(doc: Text) -> AsyncIterator[Text]:
    for w in doc.text.split():
        yield Text(text=w)


@chains.node
async def join_words(ws: Stream[Text]) -> AsyncIterator[Text]:
    got = [w.text async for w in ws]
    yield Text(text=" ".join(got))


@chains.chain(budget_ms=5000)
def remote_map(doc: Text):
    loud = shout_word(words_of(doc))
    return {"words": loud, "joined": join_words(loud)}


@chains.node(batch=chains.Batch(max_size=8, max_wait_ms=2))
def lengths(ts: list[Text]) -> list[int]:
    return [len(t.text) for t in ts]


@chains.node
async def spell(t: Text) -> AsyncIterator[Text]:
    for ch in t.text:
        if ch == "#":
            raise ValueError("no hashes")
        yield Text(text=ch)


@chains.node
async def running_total(xs: Stream[int]) -> AsyncIterator[int]:
    total = 0
    async for x in xs:
        total += x
        yield total


@chains.chain
def remote_shapes(doc: Text):
    ws = words_of(doc)
    return {"lengths": running_total(lengths(ws)), "letters": spell(ws)}


@chains.node(batch=chains.Batch(max_size=4, max_wait_ms=5))
class KnownLengths:
    """A batched class node whose ``=N`` words carry their answer (``known_result``): they
    never reach a batch, which would fail them. ``~`` words come after the others and
    apart (``batch_priority``): a batch that mixes them answers -1 for every item."""

    @staticmethod
    def known_result(t: Text) -> int | None:
        return int(t.text[1:]) if t.text.startswith("=") else None

    @staticmethod
    def batch_priority(t: Text) -> int:
        return 1 if t.text.startswith("~") else 0

    def __call__(self, ts: list[Text]) -> list[int]:
        if any(t.text.startswith("=") for t in ts):
            raise ValueError("an item with a known result was batched")
        if len({t.text.startswith("~") for t in ts}) > 1:
            return [-1] * len(ts)
        time.sleep(0.02)  # the items after the first gather while it runs
        return [len(t.text) for t in ts]


@chains.chain
def remote_known(doc: Text):
    return {"lengths": KnownLengths()(words_of(doc))}


@chains.node
async def slow_echo(x: int) -> int:
    await asyncio.sleep(FAKE.slow_s or 0.02)
    return x


@chains.chain
def slow_chain(xs: Stream[int]):
    return slow_echo(xs)


# --- helpers -------------------------------------------------------------------------------
def speech_pcm(speech_ms: int = 300, pause_ms: int = 200, rate: int = RATE) -> bytes:
    """Audio the energy VAD hears as one utterance: tone then silence."""
    return tone(speech_ms, rate) + silence(pause_ms, rate)


def frames(pcm: bytes, rate: int = RATE) -> list[bytes]:
    return split_frames(pcm, rate)


async def raw_session(url: str, *msgs: Any, read_until: str = "done", timeout: float = 10.0) -> list[Any]:
    """Send ``msgs`` (dict -> JSON text, bytes -> binary) over a bare websocket and
    collect what comes back (decoded JSON dicts, or bytes) until a message of type
    ``read_until`` or the close; the close code is appended as ("close", code)."""
    got: list[Any] = []
    async with connect(url, compression=None, max_size=None) as ws:
        try:
            for m in msgs:
                await ws.send(m if isinstance(m, bytes | str) else json.dumps(m))
        except ConnectionClosed:
            pass  # the server closed first (a refusal): read what it said
        with anyio.move_on_after(timeout):
            try:
                async for raw in ws:
                    item = raw if isinstance(raw, bytes) else json.loads(raw)
                    got.append(item)
                    if isinstance(item, dict) and item.get("type") == read_until:
                        break
            except Exception:
                pass
        if read_until != "close":
            await ws.close()
        got.append(("close", ws.close_code))
    return got


def json_of(got: list[Any], kind: str) -> list[dict[str, Any]]:
    return [m for m in got if isinstance(m, dict) and m.get("type") == kind]


@contextlib.contextmanager
def node_server(target: str, node: str, env: dict[str, str] | None = None):
    """Run ``chains serve TARGET --only NODE --port 0`` in a second process; yield its url."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chains", "serve", target, "--only", node, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "ws://" in line:
                url = line[line.index("ws://") :].split()[0]
                break
        if url is None:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"the node server did not start:\n{err}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- slow remote stages (flow control across processes) --------------------------------------
@chains.node
async def slow_total(xs: Stream[int]) -> AsyncIterator[int]:
    total = 0
    async for x in xs:
        await asyncio.sleep(FAKE.slow_s or 0.005)
        total += x
        yield total


@chains.chain
def slow_stream(xs: Stream[int]):
    return slow_total(xs)


@chains.node
async def slow_spell(t: Text) -> AsyncIterator[Text]:
    for ch in t.text:
        await asyncio.sleep(FAKE.slow_s or 0.01)
        yield Text(text=ch)


@chains.chain
def spelling(doc: Stream[Text]):
    return slow_spell(doc)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """A plain HTTP GET (run it in a thread from async code). The headers come as
    ``http.client``'s message: looked up without regard to case, as HTTP names are."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


async def aget(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    return await anyio.to_thread.run_sync(lambda: http_get(url, headers))
