"""The Python client and the `chains client` command against a real server."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import anyio
import pytest

from chains import AudioFrame
from chains.audio import read_wav, write_wav
from tests.test_transport_server import CHAINS
from tests.transport_fixtures import FAKE, RATE, speech_pcm
from transport.client import Client, ClientError, run_client
from transport.protocol import Metrics, TextOut
from transport.server import serve

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _reset_fakes():
    FAKE.reset()


@pytest.fixture
def question(tmp_path: Path) -> Path:
    p = tmp_path / "question.wav"
    write_wav(p, speech_pcm(), RATE)
    return p


@pytest.mark.parametrize("fast", [True, False])
async def test_run_client_streams_a_wav_and_writes_the_reply(tmp_path: Path, question: Path, fast: bool):
    out = io.StringIO()
    reply = tmp_path / "reply.wav"
    async with serve(CHAINS, port=0) as srv:
        code = await run_client(srv.url, question, reply, fast=fast, chain="voice", out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "transcript: heard 400 ms" in text
    assert "reply: you said: heard 400 ms" in text
    assert "turn 1:" in text and "first audio" in text
    pcm, rate = read_wav(reply)
    assert rate == RATE and len(pcm) // 2 == 5 * 320
    assert f"wrote {reply}" in text


async def test_run_client_sends_a_text_file(tmp_path: Path):
    doc = tmp_path / "doc.txt"
    doc.write_text("make this loud\n")
    out = io.StringIO()
    async with serve(CHAINS, port=0) as srv:
        code = await run_client(srv.url, doc, None, chain="shout", out=out)
        assert code == 0
        assert "loud: MAKE THIS LOUD" in out.getvalue()
        assert "words: 3" in out.getvalue()
        doc.write_text("boom")
        assert await run_client(srv.url, doc, None, chain="shout", out=io.StringIO()) == 1


async def test_client_api_and_refusals():
    async with serve(CHAINS, port=0, token="tok") as srv:
        async with Client(srv.url, sample_rate=RATE, chain="voice", token="tok") as c:
            assert c.session.startswith("s") and c.output_sample_rate == RATE
            for i in range(0, len(speech_pcm()), 640):
                await c.send_audio(speech_pcm()[i : i + 640])
            await c.end()
            kinds = {type(m).__name__ async for m in c}
        assert {"Transcript", "TextOut", "AudioFrame", "Metrics", "Done", "Event"} <= kinds
        with pytest.raises(ClientError, match="unauthorized"):
            async with Client(srv.url, sample_rate=RATE):
                pass
        with pytest.raises(ClientError, match="bad_sample_rate"):
            async with Client(srv.url, sample_rate=12345, token="tok"):
                pass
    with pytest.raises(ClientError, match="cannot connect"):
        async with Client(srv.url, sample_rate=RATE):
            pass


async def test_interrupt_from_the_client_api():
    FAKE.word_delay_s = 0.05
    async with serve(CHAINS, port=0) as srv, Client(srv.url, sample_rate=RATE, chain="voice") as c:
        pcm = speech_pcm()
        for i in range(0, len(pcm), 640):
            await c.send_audio(pcm[i : i + 640])
        async for m in c:
            if isinstance(m, TextOut):
                await c.interrupt()
                break
        await c.end()
        rest = [m async for m in c]
        metrics = [m for m in rest if isinstance(m, Metrics)]
        assert metrics and metrics[0].interrupted
        assert not [m for m in rest if isinstance(m, AudioFrame | TextOut) and m is not None][5:]


async def test_chains_client_command(tmp_path: Path, question: Path):
    reply = tmp_path / "reply.wav"
    async with serve(CHAINS, port=0) as srv:
        url = srv.url
        result = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "chains",
                "client",
                url,
                "--input",
                str(question),
                "--output",
                str(reply),
                "--fast",
            ],
            cwd=ROOT,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "transcript: heard 400 ms" in out
    assert reply.exists()
