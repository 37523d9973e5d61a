"""G.711 μ-law and A-law <-> PCM16, by lookup tables in numpy.

Why tables: the standard library's ``audioop`` is gone in Python 3.13, and its
``audioop-lts`` backport is one more compiled dependency for two 8-bit companding
laws. A 64 K-entry encode table and a 256-entry decode table per law are built once
(ITU-T G.711, the same bit-exact results as ``audioop.lin2ulaw``/``ulaw2lin``) and
every conversion is then one numpy indexing. Telephony (Twilio Media Streams:
``audio/x-mulaw`` 8 kHz) and the OpenAI Realtime formats ``audio/pcmu`` and
``audio/pcma`` use them.
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84
_CLIP = 32635


def _ulaw_encode_table() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -mag, mag).astype(np.int16)


def _alaw_encode_table() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    sign = np.where(x >= 0, 0x80, 0)
    mag = np.where(x >= 0, x, -x - 1)
    mag = np.minimum(mag, 0xFFF)
    seg = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4)
    seg = np.clip(seg, 0, 7)
    mant = np.where(seg == 0, mag >> 1, mag >> seg) & 0x0F
    return ((sign | (seg << 4) | mant) ^ 0x55).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    seg = (a >> 4) & 0x07
    mant = a & 0x0F
    mag = np.where(seg == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << np.maximum(seg - 1, 0))
    return np.where(sign != 0, mag, -mag).astype(np.int16)


_ULAW_ENC = _ulaw_encode_table()
_ULAW_DEC = _ulaw_decode_table()
_ALAW_ENC = _alaw_encode_table()
_ALAW_DEC = _alaw_decode_table()


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.int32) + 32768
    return _ULAW_ENC[x].tobytes()


def ulaw_to_pcm16(data: bytes) -> bytes:
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def pcm16_to_alaw(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.int32) + 32768
    return _ALAW_ENC[x].tobytes()


def alaw_to_pcm16(data: bytes) -> bytes:
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


__all__ = ["alaw_to_pcm16", "pcm16_to_alaw", "pcm16_to_ulaw", "ulaw_to_pcm16"]
