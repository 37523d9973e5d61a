"""Where websocket frames start and end in received bytes (RFC 6455 section 5.2), so
that the socket's protocol can take a plain binary frame (an audio frame, nearly all
the traffic of a voice session) without running the ``websockets`` parser: that
parser is a generator stepping through a stream reader, about 4 us a frame, and
uvicorn adds its event dispatch. Everything else (text, control frames, fragments,
compressed frames, anything odd) still goes to the ``websockets`` parser, as whole
frames, so it always sees frame boundaries and keeps every rule it enforces."""

from __future__ import annotations

from websockets.speedups import apply_mask

PLAIN_BINARY = 0x82  # first byte: FIN, no RSV bit (no extension), opcode 2 (binary)
MASKED = 0x80


def frame_at(data: bytes, pos: int) -> tuple[int, int] | None:
    """(payload start, payload length) of the frame starting at ``data[pos]``, or None
    when ``data`` ends inside its header."""
    n = len(data)
    if n - pos < 2:
        return None
    b1 = data[pos + 1]
    size = b1 & 0x7F
    head = pos + 2
    if size == 126:
        if n - pos < 4:
            return None
        size = int.from_bytes(data[pos + 2 : pos + 4], "big")
        head = pos + 4
    elif size == 127:
        if n - pos < 10:
            return None
        size = int.from_bytes(data[pos + 2 : pos + 10], "big")
        head = pos + 10
    if b1 & MASKED:
        head += 4
        if n < head:
            return None
    return head, size


def plain_binary(data: bytes, pos: int) -> bool:
    """The frame at ``pos`` is a whole, uncompressed, masked binary message (what a
    client sends as one audio frame)."""
    return data[pos] == PLAIN_BINARY and bool(data[pos + 1] & MASKED)


def unmasked(data: bytes, head: int, size: int) -> bytes:
    """The payload of a masked frame whose payload starts at ``head``."""
    return bytes(apply_mask(data[head : head + size], data[head - 4 : head]))


__all__ = ["PLAIN_BINARY", "frame_at", "plain_binary", "unmasked"]
