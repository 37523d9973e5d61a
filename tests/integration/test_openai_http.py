"""The demos served by ``chains run`` (a real server process each, one per chain for the
module), called over HTTP on the real models: the stock ``openai`` client gets
embeddings from ``demos/embed.py``, chat completions streamed and not from
``demos/chat.py`` and a transcription from ``demos/transcribe.py``; and
``POST /v1/chains/enrich`` (``demos/enrich.py``) answers the entities and the
embedding, as JSON and as NDJSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from tests.integration.conftest import QUESTION_WAV, ROOT, words


def _served(demo: str) -> Iterator[str]:
    """``chains run demos/DEMO --port 0`` until the module is done; its HTTP base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chains", "run", f"demos/{demo}", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        line = ""
        while "ws://" not in line:
            line = proc.stdout.readline()
            if (not line and proc.poll() is not None) or time.monotonic() > deadline:
                _, err = proc.communicate(timeout=30)
                raise RuntimeError(f"chains run demos/{demo} did not start:\n{err[-3000:]}")
        hostport = line.split("ws://", 1)[1].split("/", 1)[0]
        yield f"http://{hostport}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def embed_url() -> Iterator[str]:
    yield from _served("embed.py")


@pytest.fixture(scope="module")
def chat_url() -> Iterator[str]:
    yield from _served("chat.py")


@pytest.fixture(scope="module")
def transcribe_url() -> Iterator[str]:
    yield from _served("transcribe.py")


@pytest.fixture(scope="module")
def enrich_url() -> Iterator[str]:
    yield from _served("enrich.py")


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=300)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_embeddings_with_the_openai_client(embed_url: str):
    oa = client(embed_url)
    texts = ["A cat sat on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    r = oa.embeddings.create(model="embed", input=texts)
    vecs = [d.embedding for d in r.data]
    assert r.model == "embed" and [d.index for d in r.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vecs)  # all-MiniLM-L6-v2
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.2  # the cat sentences are near
    one = oa.embeddings.create(model="embed", input=texts[0], encoding_format="float").data[0].embedding
    assert _cos(one, vecs[0]) > 0.9999  # base64 (the default on the wire) and float agree
    assert r.usage.prompt_tokens > 0


def test_chat_completions_with_the_openai_client(chat_url: str):
    oa = client(chat_url)
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    r = oa.chat.completions.create(model="chat", messages=msgs)  # type: ignore[arg-type]
    text = r.choices[0].message.content or ""
    assert r.choices[0].finish_reason == "stop" and "paris" in text.lower(), text
    stream = oa.chat.completions.create(model="chat", messages=msgs, stream=True)  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content for c in stream if c.choices[0].delta.content]
    assert len(pieces) > 1 and "paris" in "".join(pieces).lower(), pieces


def test_transcription_with_the_openai_client(transcribe_url: str):
    oa = client(transcribe_url)
    with QUESTION_WAV.open("rb") as f:
        r = oa.audio.transcriptions.create(model="transcribe", file=f)
    assert {"capital", "france"} <= words(r.text), r.text


def test_enrich_over_http_as_json_and_ndjson(enrich_url: str):
    body = json.dumps({"text": "Marie Curie worked in Paris."}).encode()
    req = urllib.request.Request(f"{enrich_url}/v1/chains/enrich", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        out = json.load(r)
    assert {e["text"] for e in out["entities"]} >= {"Marie Curie", "Paris"}
    assert len(out["embedding"]) == 384
    req = urllib.request.Request(
        f"{enrich_url}/v1/chains/enrich", data=body, method="POST", headers={"Accept": "application/x-ndjson"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        lines = [json.loads(x) for x in r if x.strip()]
    assert lines[-1] == {"done": True}
    (item,) = [x for x in lines if "name" in x]
    assert item["name"] == "output" and item["data"]["entities"] == out["entities"]
