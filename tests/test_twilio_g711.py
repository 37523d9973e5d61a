"""transport/g711.py: μ-law and A-law by tables, bit-exact on the G.711 reference values,
and transport/realtime/codec.py's base64 formats built on them."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from transport.g711 import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16
from transport.realtime.codec import Codec


def pcm(*xs: int) -> bytes:
    return np.array(xs, dtype="<i2").tobytes()


def test_reference_codes() -> None:
    # the codes audioop.lin2ulaw / lin2alaw give (G.711)
    assert pcm16_to_ulaw(pcm(0, 32767, -32768, 100, -100)) == bytes([0xFF, 0x80, 0x00, 0xF2, 0x72])
    assert pcm16_to_alaw(pcm(0, 32767, -32768, 100, -100)) == bytes([0xD5, 0xAA, 0x2A, 0xD3, 0x53])
    assert np.frombuffer(ulaw_to_pcm16(bytes([0xFF, 0x80, 0x00])), "<i2").tolist() == [0, 32124, -32124]
    assert np.frombuffer(alaw_to_pcm16(bytes([0xD5, 0xAA, 0x2A])), "<i2").tolist() == [8, 32256, -32256]


@pytest.mark.parametrize(("enc", "dec"), [(pcm16_to_ulaw, ulaw_to_pcm16), (pcm16_to_alaw, alaw_to_pcm16)])
def test_round_trip_error_is_within_the_law_s_step(enc, dec) -> None:
    x = np.arange(-32768, 32768, 7, dtype=np.int32)
    y = np.frombuffer(dec(enc(x.astype("<i2").tobytes())), "<i2").astype(np.int32)
    err = np.abs(y - x)
    # logarithmic steps: the error grows with the magnitude, at most 1/16 of it (+ the smallest step)
    assert np.all(err <= np.abs(x) / 16 + 16)
    assert len(enc(b"\x01")) == 0  # an odd trailing byte is not a sample


def test_realtime_codec_formats() -> None:
    tone = (np.sin(np.arange(2400) / 5) * 10000).astype("<i2").tobytes()
    assert Codec("audio/pcm").decode(base64.b64encode(tone).decode()) == tone
    ulaw = Codec("audio/pcmu")
    back = ulaw.decode(ulaw.encode(tone[:1600], 8000))
    assert len(back) == 1600 and ulaw.rate == 8000
    assert 0 < len(base64.b64decode(ulaw.encode(tone, 24000))) <= 800  # resampled to 8 kHz (less: look-ahead)
    with pytest.raises(ValueError, match="base64"):
        Codec("audio/pcm").decode("not base64!")
    with pytest.raises(ValueError, match="even"):
        Codec("audio/pcm").decode(base64.b64encode(b"abc").decode())
    with pytest.raises(ValueError, match="unsupported"):
        Codec("audio/opus")
