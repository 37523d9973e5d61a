"""SileroVAD: a per-session stream node turning audio frames into turns.

It runs Silero VAD v6 (the ONNX model bundled with faster-whisper, so no extra
download and no torch) one 32 ms window at a time, carrying the model's recurrent
state per session. When the user starts speaking it emits ``SpeechStarted`` and
``Interrupt`` (barge-in: the runtime drops the bot's current turn); when they stop
for ``min_silence_ms`` it emits the ``Utterance`` (with ``pad_ms`` of audio before
the detected start, which the detector reports a little late).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import numpy as np

import chains
from chains import AudioFrame, Interrupt, SpeechStarted, Stream, Utterance
from nodes.audio import float_to_pcm, pcm_to_float, resample

RATE = 16000
WINDOW = 512  # samples per model step at 16 kHz
CONTEXT = 64


@chains.node
class SileroVAD:
    def __init__(
        self,
        threshold: float = 0.5,
        min_silence_ms: float = 500,
        min_speech_ms: float = 250,
        pad_ms: float = 200,
        interrupt: bool = True,
    ):
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"], sess_options=opts
        )
        self.threshold = threshold
        self.min_silence = int(min_silence_ms * RATE / 1000)
        self.min_speech = int(min_speech_ms * RATE / 1000)
        self.pad = int(pad_ms * RATE / 1000)
        self.interrupt = interrupt

    @classmethod
    def chains_models(cls, *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from faster_whisper.utils import get_assets_path

        from nodes.resolve import version

        path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
        return [
            chains.ModelRef(
                name="silero-vad-v6",
                package="faster-whisper",
                version=version("faster-whisper"),
                paths=[path],
            )
        ]

    def probability(self, window: np.ndarray, state: dict) -> float:
        x = np.concatenate([state["context"], window])[None, :].astype(np.float32)
        out, state["h"], state["c"] = self.session.run(None, {"input": x, "h": state["h"], "c": state["c"]})
        state["context"] = window[-CONTEXT:]
        return float(np.asarray(out).reshape(-1)[0])

    async def __call__(
        self, frames: Stream[AudioFrame]
    ) -> AsyncIterator[Utterance | SpeechStarted | Interrupt]:
        state = {
            "h": np.zeros((1, 1, 128), dtype=np.float32),
            "c": np.zeros((1, 1, 128), dtype=np.float32),
            "context": np.zeros(CONTEXT, dtype=np.float32),
        }
        pending = np.zeros(0, dtype=np.float32)
        history: list[np.ndarray] = []  # windows since (pad before) the current speech
        speaking = False
        speech_samples = silence_samples = 0
        async for frame in frames:
            if not isinstance(frame, AudioFrame):
                raise TypeError(f"SileroVAD wants AudioFrame items, got {type(frame).__name__}")
            x = pcm_to_float(frame.pcm)
            if frame.sample_rate != RATE:
                x = resample(x, frame.sample_rate, RATE)
            pending = np.concatenate([pending, x])
            while len(pending) >= WINDOW:
                window, pending = pending[:WINDOW], pending[WINDOW:]
                voiced = self.probability(window, state) >= self.threshold
                history.append(window)
                if not speaking:
                    keep = max(1, self.pad // WINDOW)
                    if len(history) > keep + 1:
                        history = history[-(keep + 1) :]
                    if voiced:
                        speaking = True
                        speech_samples, silence_samples = WINDOW, 0
                        yield SpeechStarted()
                        if self.interrupt:
                            yield Interrupt(reason="user speech")
                    continue
                if voiced:
                    speech_samples += WINDOW + silence_samples
                    silence_samples = 0
                else:
                    silence_samples += WINDOW
                    if silence_samples >= self.min_silence:
                        if speech_samples >= self.min_speech:
                            yield Utterance(pcm=float_to_pcm(np.concatenate(history)), sample_rate=RATE)
                        speaking = False
                        history = []
        if speaking and speech_samples >= self.min_speech:
            yield Utterance(pcm=float_to_pcm(np.concatenate(history)), sample_rate=RATE)
