"""Realtime audio formats: ``audio/pcm`` (PCM16 24 kHz mono), ``audio/pcmu`` (G.711
μ-law 8 kHz) and ``audio/pcma`` (G.711 A-law 8 kHz), base64 on the wire.

The chain sees PCM16 at the format's own rate (the VAD resamples what it gets, and
the TTS is asked for the format's rate through the session's ``output_sample_rate``),
so nothing is resampled here except audio a node made at another rate.
"""

from __future__ import annotations

import base64
import binascii

from chains.audio import PcmResampler
from transport.g711 import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16

RATES = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}


class Codec:
    """One direction's audio format."""

    def __init__(self, kind: str = "audio/pcm"):
        if kind not in RATES:
            raise ValueError(f"unsupported audio format {kind!r}; use one of {', '.join(RATES)}")
        self.kind = kind
        self.rate = RATES[kind]
        self._resamplers: dict[int, PcmResampler] = {}

    def decode(self, b64: str) -> bytes:
        """PCM16 at ``rate`` from a base64 payload (ValueError when it is not valid)."""
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"`audio` is not valid base64: {e}") from None
        if self.kind == "audio/pcm":
            if len(data) % 2:
                raise ValueError(f"`audio` has {len(data)} bytes: PCM16 needs an even count")
            return data
        return ulaw_to_pcm16(data) if self.kind == "audio/pcmu" else alaw_to_pcm16(data)

    def encode(self, pcm: bytes, rate: int) -> str:
        """Base64 of PCM16 audio made at ``rate``, in this format."""
        if rate != self.rate:
            r = self._resamplers.get(rate)
            if r is None:
                r = self._resamplers[rate] = PcmResampler(rate, self.rate)
            pcm = r.process(pcm)
        if self.kind == "audio/pcmu":
            pcm = pcm16_to_ulaw(pcm)
        elif self.kind == "audio/pcma":
            pcm = pcm16_to_alaw(pcm)
        return base64.b64encode(pcm).decode()

    def ms(self, pcm: bytes, rate: int) -> float:
        return 1000.0 * (len(pcm) // 2) / rate


__all__ = ["RATES", "Codec"]
