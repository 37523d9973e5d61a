"""The websocket server with real clients over loopback: a full session, every bad
input while a well-behaved session is served at the same time, the token, the
session limit, the idle limit, a client that stops reading, interrupts, and the
plain-HTTP routes on the same port."""

from __future__ import annotations

import json
from typing import Any

import anyio
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chains import AudioFrame
from tests.transport_fixtures import (
    FAKE,
    RATE,
    aget,
    echo,
    frames,
    json_of,
    raw_session,
    shout,
    speech_pcm,
    voice,
)
from transport.audioin import AudioInput
from transport.client import Client, ClientError
from transport.protocol import Done, Error, Metrics, TextOut, Transcript
from transport.server import Limits, serve

pytestmark = pytest.mark.anyio

CHAINS = {"voice": voice, "shout": shout, "echo": echo}
START = {"type": "start", "sample_rate": RATE}


@pytest.fixture(autouse=True)
def _reset_fakes():
    FAKE.reset()
    yield
    FAKE.reset()


async def voice_session(url: str, **client_kw: Any) -> dict[str, Any]:
    """A well-behaved voice session: one utterance, end, read to done."""
    got: dict[str, Any] = {
        "transcripts": [],
        "text": "",
        "audio": b"",
        "metrics": [],
        "errors": [],
        "done": False,
    }
    async with Client(url, sample_rate=RATE, chain="voice", **client_kw) as c:
        got["ready"] = c.ready
        for f in frames(speech_pcm()):
            await c.send_audio(f)
        await c.end()
        async for m in c:
            if isinstance(m, AudioFrame):
                got["audio"] += m.pcm
            elif isinstance(m, Transcript):
                got["transcripts"].append(m.text)
            elif isinstance(m, TextOut):
                got["text"] += m.text
            elif isinstance(m, Metrics):
                got["metrics"].append(m)
            elif isinstance(m, Error):
                got["errors"].append(m)
            elif isinstance(m, Done):
                got["done"] = True
    return got


def check_voice(got: dict[str, Any]) -> None:
    assert got["done"], got
    assert got["transcripts"] == ["heard 400 ms"]
    assert got["text"] == "you said: heard 400 ms"
    assert got["errors"] == []


# --- a full session ---------------------------------------------------------------------
async def test_full_voice_session():
    async with serve(CHAINS, port=0) as srv:
        got = await voice_session(srv.url)
        check_voice(got)
        ready = got["ready"]
        assert ready.chain == "voice" and ready.sample_rate == RATE
        assert ready.outputs == ["transcript", "reply", "audio"]
        # 5 words, each spoken as 20 ms at 24 kHz, resampled to the 16 kHz announced in `ready`
        assert abs(len(got["audio"]) / 2 - 5 * 0.020 * RATE) <= 5
        (m,) = got["metrics"]
        assert m.turn == 1 and m.outputs == 11 and not m.interrupted
        assert m.first_transcript_ms is not None and m.first_text_ms is not None
        assert m.first_transcript_ms <= m.first_text_ms <= m.first_audio_ms <= m.last_output_ms
        assert srv.stats["done"] == 1
        rt = srv.runtimes["voice"]
        assert rt.sessions == {}


def _numbered(n: int, samples: int = 32) -> list[bytes]:
    """``n`` distinct frames (frame i holds the value i), 2 ms each at 16 kHz."""
    return [np.full(samples, i, dtype=np.int16).tobytes() for i in range(n)]


async def _echoed(url: str, msgs: list[Any]) -> tuple[list[bytes], list[dict[str, Any]]]:
    start = {"type": "start", "sample_rate": RATE, "chain": "echo"}
    got = await raw_session(url, start, *msgs, {"type": "end"})
    return [m for m in got if isinstance(m, bytes)], json_of(got, "error")


async def test_audio_frames_take_the_sockets_lane_in_order_and_bad_ones_are_still_refused(monkeypatch):
    """Good frames go from the protocol straight into the session (the lane); a bad
    frame among them is declined there and refused by the reader, in its place."""
    taken: list[bool] = []
    offer = AudioInput.offer

    def counting(self: AudioInput, raw: bytes) -> bool:
        taken.append(offer(self, raw))
        return taken[-1]

    monkeypatch.setattr(AudioInput, "offer", counting)
    good = _numbered(120)
    async with serve(CHAINS, port=0) as srv:
        echoed, errors = await _echoed(srv.url, [*good[:60], b"\x01\x02\x03", *good[60:]])
    assert b"".join(echoed) == b"".join(good)
    assert [e["code"] for e in errors] == ["bad_audio"]
    # sent in a burst: most frames before the bad one by the lane; after it, the queued
    # ones by the reader until it has caught up
    assert sum(taken) >= 30


async def test_a_full_audio_input_sends_frames_the_waiting_way_and_loses_none():
    """A slow chain: the lane declines while the input is full; the reader waits for
    room (backpressure on the socket) and every frame arrives, in order."""
    FAKE.slow_s = 0.004
    good = _numbered(200)
    async with serve(CHAINS, port=0) as srv:
        echoed, errors = await _echoed(srv.url, good)
    assert errors == []
    assert b"".join(echoed) == b"".join(good)


async def test_output_sample_rate_asked_by_the_client():
    async with serve(CHAINS, port=0) as srv:
        async with Client(srv.url, sample_rate=RATE, chain="voice", output_sample_rate=24000) as c:
            assert c.output_sample_rate == 24000
            for f in frames(speech_pcm()):
                await c.send_audio(f)
            await c.end()
            audio = b"".join([m.pcm async for m in c if isinstance(m, AudioFrame)])
        assert len(audio) == 5 * 480 * 2  # the TTS's own 24 kHz frames, untouched


async def test_value_input_session_and_node_error():
    async with serve(CHAINS, port=0) as srv:
        got = await raw_session(
            srv.url, {**START, "chain": "shout"}, {"type": "input", "data": "hello big world"}
        )
        assert json_of(got, "text") == [
            {"type": "text", "text": "HELLO BIG WORLD", "name": "loud", "final": True}
        ]
        assert json_of(got, "output") == [{"type": "output", "name": "words", "data": 3}]
        assert json_of(got, "done") and got[-1] == ("close", 1000)
        got = await raw_session(
            srv.url, {**START, "chain": "shout"}, {"type": "input", "data": {"text": "boom"}}
        )
        (err,) = json_of(got, "error")
        assert err == {
            "type": "error",
            "code": "node_error",
            "message": "ValueError: boom requested",
            "node": "upper",
        }
        assert json_of(got, "done")


# --- bad input, each next to a well-behaved session --------------------------------------
BAD_CASES: dict[str, tuple[list[Any], str, str, int | None]] = {
    # name: (messages, error code, text the error must contain, close code or None if the session goes on)
    "malformed_json": ([START, "{not json"], "bad_json", "malformed JSON", None),
    "not_an_object": ([START, "[1, 2]"], "bad_message", "JSON object", None),
    "unknown_type": ([START, {"type": "dance"}], "unknown_type", "'dance'", None),
    "missing_type": ([START, {"data": 1}], "missing_field", "`type`", None),
    "missing_field": ([START, {"type": "input"}], "missing_field", "`$.data`", None),
    "wrong_field_type": ([{"type": "start", "sample_rate": "fast"}], "bad_field", "`$.sample_rate`", None),
    "binary_before_start": ([b"\x00\x01" * 160], "not_started", "before `start`", None),
    "input_before_start": ([{"type": "input", "data": 1}], "not_started", "before `start`", None),
    "odd_length_pcm": ([START, b"\x00" * 321], "bad_audio", "odd-length", None),
    "empty_binary": ([START, b""], "bad_audio", "empty", None),
    "wrong_sample_rate": (
        [{"type": "start", "sample_rate": 12345}],
        "bad_sample_rate",
        "`$.sample_rate`",
        None,
    ),
    "absurd_sample_rate": ([{"type": "start", "sample_rate": 5}], "bad_field", "`$.sample_rate`", None),
    "unknown_chain": ([{**START, "chain": "nope"}], "unknown_chain", "'nope'", None),
    "start_twice": ([START, START], "already_started", "already started", None),
    "unknown_input": (
        [START, {"type": "input", "data": 1, "input": "nope"}],
        "unknown_input",
        "'nope'",
        None,
    ),
    "audio_to_text_chain": (
        [{**START, "chain": "shout"}, b"\x00\x00" * 160],
        "no_audio_input",
        "no audio",
        None,
    ),
    "bad_input_value": (
        [{**START, "chain": "shout"}, {"type": "input", "data": [1]}],
        "bad_input",
        "`$.data`",
        None,
    ),
    "oversized": ([START, b"\x00" * 70_000], "too_big", "70000 bytes", 1009),
    "oversized_text": (
        [START, json.dumps({"type": "input", "data": "x" * 70_000})],
        "too_big",
        "exceeds",
        1009,
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
async def test_bad_input_gets_an_error_while_another_session_is_served(case: str):
    msgs, code, text, close = BAD_CASES[case]
    limits = Limits(max_message_bytes=64 * 1024)
    async with serve(CHAINS, port=0, limits=limits) as srv:
        result: dict[str, Any] = {}

        async def bad() -> None:
            result["bad"] = await raw_session(srv.url, *msgs, read_until="error")

        async def good() -> None:
            result["good"] = await voice_session(srv.url)

        async with anyio.create_task_group() as tg:
            tg.start_soon(bad)
            tg.start_soon(good)
        check_voice(result["good"])
        errors = json_of(result["bad"], "error")
        assert errors, result["bad"]
        assert errors[0]["code"] == code, errors
        assert text in errors[0]["message"], errors
        if close is not None:
            assert result["bad"][-1] == ("close", close)

        if close is None:  # the connection went on: it can still be used properly
            fix = (
                []
                if any(
                    isinstance(m, dict)
                    and m.get("type") == "start"
                    and m.get("sample_rate") == RATE
                    and m.get("chain") is None
                    for m in msgs
                )
                else [START]
            )
            after = await _continue_after(srv.url, msgs, fix)
            assert json_of(after, "done"), after


async def _continue_after(url: str, msgs: list[Any], fix: list[Any]) -> list[Any]:
    """Send the bad messages, then a valid session's worth, on one connection."""
    pcm_frames = frames(speech_pcm())
    got: list[Any] = []
    async with connect(url, compression=None) as ws:
        for m in [*msgs, *fix]:
            await ws.send(m if isinstance(m, bytes | str) else json.dumps(m))
        started = any(isinstance(m, dict) and m.get("type") == "start" for m in [*msgs, *fix])
        assert started
        text_chain = any(isinstance(m, dict) and m.get("chain") == "shout" for m in msgs)
        if text_chain:
            await ws.send(json.dumps({"type": "input", "data": "ok"}))
        else:
            for f in pcm_frames:
                await ws.send(f)
            await ws.send(json.dumps({"type": "end"}))
        with anyio.fail_after(10):
            async for raw in ws:
                if isinstance(raw, str):
                    got.append(json.loads(raw))
                    if got[-1]["type"] == "done":
                        break
    return got


async def test_too_many_errors_close_the_connection():
    async with serve(CHAINS, port=0, limits=Limits(max_errors=5)) as srv:
        got = await raw_session(srv.url, *(["{"] * 20), read_until="close")
        assert len(json_of(got, "error")) == 6
        assert got[-1] == ("close", 1008)


async def test_no_start_in_time_closes():
    async with serve(CHAINS, port=0, limits=Limits(start_timeout_s=0.2)) as srv:
        got = await raw_session(srv.url, read_until="close")
        assert json_of(got, "error")[0]["code"] == "start_timeout"
        assert got[-1] == ("close", 1008)


async def test_idle_session_is_closed():
    async with serve(CHAINS, port=0, limits=Limits(idle_timeout_s=0.3)) as srv:
        got = await raw_session(srv.url, START, read_until="close")
        assert json_of(got, "ready")
        assert json_of(got, "error")[-1]["code"] == "idle_timeout"
        assert got[-1] == ("close", 1001)
        assert srv.stats["idle"] == 1


async def test_keepalive_pings_keep_a_quiet_session_open():
    limits = Limits(ping_interval_s=0.05, ping_timeout_s=1.0)
    async with (
        serve(CHAINS, port=0, limits=limits) as srv,
        Client(srv.url, sample_rate=RATE, chain="voice") as c,
    ):
        await anyio.sleep(0.3)
        (conn,) = srv.connections
        assert conn.ws.latency > 0  # a ping went out and its pong came back
        for f in frames(speech_pcm()):
            await c.send_audio(f)
        await c.end()
        assert [m for m in [m async for m in c] if isinstance(m, Transcript)]


# --- auth and admission -------------------------------------------------------------------
async def test_token_is_required_when_configured():
    async with serve(CHAINS, port=0, token="s3cret") as srv:
        for start in (START, {**START, "token": "wrong"}, {**START, "token": ""}):
            got = await raw_session(srv.url, start, read_until="close")
            assert json_of(got, "error")[0]["code"] == "unauthorized"
            assert got[-1] == ("close", 1008)
        check_voice(await voice_session(srv.url, token="s3cret"))
        # the token may also come with the handshake (header), as non-browser clients prefer
        async with connect(srv.url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            await ws.send(json.dumps(START))
            assert json.loads(await ws.recv())["type"] == "ready"
        with pytest.raises(ClientError) as e:
            async with Client(srv.url, sample_rate=RATE, token="nope"):
                pass
        assert e.value.code == "unauthorized"
        assert srv.stats["unauthorized"] == 4


async def test_session_limit_refuses_with_overloaded_then_admits_again():
    async with serve(CHAINS, port=0, max_sessions=2) as srv:
        async with Client(srv.url, sample_rate=RATE) as a, Client(srv.url, sample_rate=RATE) as b:
            assert a.session != b.session
            got = await raw_session(srv.url, START, read_until="close")
            assert json_of(got, "error")[0]["code"] == "overloaded"
            assert got[-1] == ("close", 1013)
        with anyio.fail_after(5):
            while srv.connections:
                await anyio.sleep(0.01)
        check_voice(await voice_session(srv.url))
        assert srv.stats["overloaded"] == 1


# --- turns and interrupts -----------------------------------------------------------------
async def test_client_interrupt_drops_the_rest_of_the_turn():
    FAKE.word_delay_s = 0.1
    async with serve(CHAINS, port=0) as srv, Client(srv.url, sample_rate=RATE, chain="voice") as c:
        for f in frames(speech_pcm()):
            await c.send_audio(f)
        texts: list[str] = []
        metrics: list[Metrics] = []
        async for m in c:
            if isinstance(m, TextOut):
                texts.append(m.text)
                await c.interrupt()
                break
        # a second utterance after the interrupt is a full new turn
        FAKE.word_delay_s = 0.0
        for f in frames(speech_pcm()):
            await c.send_audio(f)
        await c.end()
        async for m in c:
            if isinstance(m, TextOut):
                texts.append(m.text)
            elif isinstance(m, Metrics):
                metrics.append(m)
        assert metrics[0].interrupted and metrics[0].turn == 1
        assert metrics[-1].turn == 2 and not metrics[-1].interrupted
        # the interrupted turn stopped after a word or so; the second turn is complete
        assert "".join(texts).endswith("you said: heard 400 ms")
        assert len(texts) < 10


async def test_chain_events_reach_the_client():
    async with serve(CHAINS, port=0) as srv:
        pcm = b"".join(frames(speech_pcm()))
        got = await raw_session(srv.url, {**START, "chain": "voice"}, *frames(pcm), {"type": "end"})
        assert {"type": "event", "event": "speech_started"} in json_of(got, "event")


# --- a client that stops reading ------------------------------------------------------------
async def test_client_that_stops_reading_pauses_its_session_and_is_closed():
    FAKE.amplify = 40  # each input frame comes back 40 times: the reply outgrows any socket buffer
    # unpaced (lead_ms=inf): the flood must outgrow the socket buffer, not leave at real time
    limits = Limits(stall_timeout_s=1.5, write_limit=16 * 1024, lead_ms=float("inf"))
    async with serve(CHAINS, port=0, limits=limits) as srv:
        sent = 0

        async def flood(ws: Any) -> None:
            nonlocal sent
            frame = b"\x01\x00" * 320
            with anyio.move_on_after(30):
                try:
                    for _ in range(20_000):
                        await ws.send(frame)
                        sent += 1
                except ConnectionClosed:
                    pass

        # max_queue=1: this client's socket reader stops after one unread message
        async with connect(srv.url, compression=None, max_queue=1, max_size=None) as ws:
            await ws.send(json.dumps({**START, "chain": "echo"}))
            async with anyio.create_task_group() as tg:
                tg.start_soon(flood, ws)
                # the session pauses: production stops while the connection is still open
                with anyio.fail_after(20):
                    stable, last = 0, -1
                    while stable < 3:
                        await anyio.sleep(0.1)
                        stable = stable + 1 if FAKE.produced == last else 0
                        last = FAKE.produced
                assert srv.stats["stalled"] == 0
                paused_at = FAKE.produced
                (conn,) = srv.connections
                # then the server gives up on it
                with anyio.fail_after(20):
                    while srv.stats["stalled"] == 0 or srv.connections:
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        assert FAKE.produced == paused_at  # nothing more was produced for it
        assert FAKE.produced < sent * FAKE.amplify  # and far less than it asked for
        # the server's socket buffer stayed at its high-water mark (+ one message), not more
        assert conn.max_buffered <= limits.write_limit + 640 + 64
        assert srv.runtimes["echo"].sessions == {}
        check_voice(await voice_session(srv.url))  # and the server serves on


# --- plain HTTP on the same port ---------------------------------------------------------------
async def test_http_routes():
    async with serve(CHAINS, port=0) as srv:
        await voice_session(srv.url)
        base = srv.http_url
        status, headers, body = await aget(base)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"<title>chains" in body and b"app.js" in body
        for name in ("app.js", "worklet.js"):
            status, headers, body = await aget(base + name)
            assert status == 200 and "javascript" in headers["Content-Type"], name
        status, headers, body = await aget(base + "metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b'chains_sessions_total{chain="voice"} 1.0' in body
        assert b"chains_stage_items_total" in body
        status, _, body = await aget(base + "healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["sessions"] == 0
        assert set(health["chains"]) == set(CHAINS)
        for bad in ("nope", "..%2Fpyproject.toml", "../pyproject.toml"):
            status, _, _ = await aget(base + bad)
            assert status == 404, bad


async def test_metrics_need_the_token_when_one_is_set():
    async with serve(CHAINS, port=0, token="t0k") as srv:
        status, _, _ = await aget(srv.http_url + "metrics")
        assert status == 401
        status, _, body = await aget(srv.http_url + "metrics", {"Authorization": "Bearer t0k"})
        assert status == 200 and b"chains_sessions" in body
        status, _, _ = await aget(srv.http_url + "healthz")
        assert status == 200
