"""The socket's own cut of binary frames (transport/wsframes.py, used by the protocol in
transport/wsocket.py): frame boundaries at every header size, and a real server fed
one byte stream (handshake, text, plain binary, a fragmented binary message, a ping,
an oversized frame) split at awkward places: every message arrives once, in order,
whichever parser took it."""

from __future__ import annotations

import json
import random

import anyio
import numpy as np
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from tests.transport_fixtures import RATE, echo, shout, voice
from transport.server import Limits, serve
from transport.wsframes import frame_at, plain_binary, unmasked

pytestmark = pytest.mark.anyio

CHAINS = {"voice": voice, "shout": shout, "echo": echo}


def _client() -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://127.0.0.1/"), max_size=None)


def _wire(*frames: Frame) -> bytes:
    """What a client puts on the wire for ``frames`` (masked), after its handshake."""
    c = _client()
    c.send_request(c.connect())
    c.data_to_send()
    from websockets.protocol import State

    c.state = State.OPEN
    for f in frames:
        c.send_frame(f)
    return b"".join(c.data_to_send())


@pytest.mark.parametrize("size", [0, 1, 125, 126, 640, 65535, 65536, 200_000])
def test_frame_at_finds_the_payload_at_every_header_size(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    data = _wire(Frame(Opcode.BINARY, payload)) + b"next"
    head, n = frame_at(data, 0)  # type: ignore[misc]
    assert n == size and plain_binary(data, 0)
    assert unmasked(data, head, n) == payload
    assert data[head + n :] == b"next"
    for cut in range(head):  # the data ends inside the header: not yet a frame
        assert frame_at(data[:cut], 0) is None


def test_only_whole_uncompressed_binary_frames_are_plain() -> None:
    text = _wire(Frame(Opcode.TEXT, b"hi"))
    part = _wire(Frame(Opcode.BINARY, b"ab", fin=False))
    ping = _wire(Frame(Opcode.PING, b""))
    binary = _wire(Frame(Opcode.BINARY, b"ab"))
    deflated = bytes([binary[0] | 0x40]) + binary[1:]  # RSV1: permessage-deflate
    assert plain_binary(binary, 0)
    assert not any(plain_binary(d, 0) for d in (text, part, ping, deflated))


async def _session(url_port: int, chunks: list[bytes], wait_s: float = 10.0) -> list[object]:
    """Send the handshake then ``chunks`` as separate writes; return the server's messages."""
    c = _client()
    c.send_request(c.connect())
    got: list[object] = []
    async with await anyio.connect_tcp("127.0.0.1", url_port) as sock:
        await sock.send(b"".join(c.data_to_send()))
        with anyio.fail_after(wait_s):
            while c.handshake_exc is None and c.state.name == "CONNECTING":
                c.receive_data(await sock.receive())
            try:
                for chunk in chunks:
                    await sock.send(chunk)
                    await anyio.sleep(0)
            except anyio.BrokenResourceError:
                pass  # the server closed first (a refusal): read what it said
            try:
                while True:
                    c.receive_data(await sock.receive())
                    for ev in c.events_received():
                        if not isinstance(ev, Frame):
                            continue  # the handshake's response
                        if ev.opcode is Opcode.TEXT:
                            got.append(json.loads(ev.data))
                        elif ev.opcode is Opcode.BINARY:
                            got.append(bytes(ev.data))
                        elif ev.opcode is Opcode.CLOSE:
                            got.append(("close", ev.data[:2]))
                    out = c.data_to_send()
                    if out:
                        await sock.send(b"".join(out))
                    if got and isinstance(got[-1], dict) and got[-1].get("type") == "done":
                        break
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
    return got


def _numbered(n: int) -> list[bytes]:
    return [np.full(32, i, dtype=np.int16).tobytes() for i in range(n)]


def _splits(data: bytes, how: str) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "odd":
        return [data[i : i + 7] for i in range(0, len(data), 7)]
    rng = random.Random(int(how[len("random") :] or 3))
    out, i = [], 0
    while i < len(data):
        k = rng.randint(1, 300)
        out.append(data[i : i + k])
        i += k
    return out


@pytest.mark.parametrize("how", ["whole", "odd", "random", "random1", "random2", "random5"])
async def test_every_message_arrives_once_in_order_however_the_bytes_are_split(how: str) -> None:
    frames = _numbered(60)
    start = json.dumps({"type": "start", "sample_rate": RATE, "chain": "echo"}).encode()
    wire = _wire(
        Frame(Opcode.TEXT, start),
        *[Frame(Opcode.BINARY, f) for f in frames[:20]],
        Frame(Opcode.PING, b"p"),
        Frame(Opcode.BINARY, frames[20][:30], fin=False),  # one message in two fragments
        Frame(Opcode.CONT, frames[20][30:]),
        *[Frame(Opcode.BINARY, f) for f in frames[21:40]],
        Frame(Opcode.TEXT, b'{"type": "bogus"}'),  # an error, in its place
        *[Frame(Opcode.BINARY, f) for f in frames[40:]],
        Frame(Opcode.TEXT, b'{"type": "end"}'),
    )
    async with serve(CHAINS, port=0) as srv:
        got = await _session(srv.port, _splits(wire, how))
    audio = b"".join(m for m in got if isinstance(m, bytes))
    assert audio == b"".join(frames)
    errors = [m for m in got if isinstance(m, dict) and m.get("type") == "error"]
    assert len(errors) == 1 and {"type": "done"} in got


async def test_a_frame_over_the_limit_is_refused_by_the_parser_with_1009() -> None:
    start = json.dumps({"type": "start", "sample_rate": RATE, "chain": "echo"}).encode()
    lim = Limits(max_message_bytes=4096)
    big = _wire(Frame(Opcode.BINARY, bytes(3 * 4096)))  # past the websocket limit (2x ours)
    wire = _wire(Frame(Opcode.TEXT, start), *[Frame(Opcode.BINARY, f) for f in _numbered(5)]) + big[:20]
    async with serve(CHAINS, port=0, limits=lim) as srv:
        got = await _session(srv.port, _splits(wire, "random"))
    closes = [m for m in got if isinstance(m, tuple)]
    assert closes and int.from_bytes(closes[-1][1], "big") == 1009


async def test_after_a_big_frame_the_parser_takes_the_stream_and_nothing_is_lost() -> None:
    """A frame over the cut size (64 KiB) hands the rest of the stream to the parser."""
    start = json.dumps({"type": "start", "sample_rate": RATE, "chain": "echo"}).encode()
    small, big = _numbered(30), np.arange(40_000, dtype=np.int16).tobytes()  # 80 KB
    wire = _wire(
        Frame(Opcode.TEXT, start),
        *[Frame(Opcode.BINARY, f) for f in small[:10]],
        Frame(Opcode.BINARY, big),
        *[Frame(Opcode.BINARY, f) for f in small[10:]],
        Frame(Opcode.TEXT, b'{"type": "end"}'),
    )
    async with serve(CHAINS, port=0, limits=Limits(max_message_bytes=1 << 20)) as srv:
        got = await _session(srv.port, _splits(wire, "random"))
    assert b"".join(m for m in got if isinstance(m, bytes)) == b"".join([*small[:10], big, *small[10:]])
