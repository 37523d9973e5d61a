"""Speech to text: a wav in, its transcript out (Silero VAD cuts the utterances,
Whisper tiny.en transcribes them, batched across callers).

    chains run demos/transcribe.py
    curl -F model=transcribe -F file=@demos/assets/question.wav \\
        http://127.0.0.1:8765/v1/audio/transcriptions

or ``OpenAI(base_url=...).audio.transcriptions.create(model="transcribe", file=open(..., "rb"))``.
"""

from __future__ import annotations

import chains
from chains import AudioFrame, Stream
from nodes import SileroVAD, WhisperSTT


@chains.chain(budget_ms=10000)
def transcribe(audio: Stream[AudioFrame]):
    return {"transcript": WhisperSTT(model="tiny.en")(SileroVAD()(audio))}
