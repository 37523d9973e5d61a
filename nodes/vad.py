"""SileroVAD: a per-session stream node turning audio frames into turns.

Why Silero (the ONNX model faster-whisper bundles) rather than webrtcvad: it is
far more robust to noise and music (webrtcvad is an energy/GMM detector that
fires on keyboard clicks and breathing, which would barge in on the bot), it
costs about 0.1 ms per 32 ms window on one CPU thread, and it comes with the
faster-whisper package the STT node needs anyway: no extra package, no torch.

One 32 ms window (512 samples at 16 kHz) at a time, carrying the model's
recurrent state per session (one generator per session owns it). Speech starts
when ``min_speech_ms`` of audio is above ``threshold``: then it emits
``SpeechStarted`` and ``Interrupt`` (barge-in: the runtime drops the bot's current
turn). Requiring a little speech first keeps a cough or a click from cutting the
bot off. Speech ends after ``min_silence_ms`` below ``threshold - 0.15``
(hysteresis, as Silero's reference does), and the ``Utterance`` carries
``pad_ms`` of audio from before the detected start (the detector reports it
late) and is cut at ``max_speech_s`` (Whisper hears 30 s at most).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import numpy as np

import chains
from chains import AudioFrame, Interrupt, SpeechStarted, Stream, Utterance
from nodes.audio import StreamResampler, float_to_pcm, pcm_to_float

RATE = 16000
WINDOW = 512  # samples per model step at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees


@chains.node
class SileroVAD:
    def __init__(
        self,
        threshold: float = 0.5,
        min_silence_ms: float = 500,
        min_speech_ms: float = 160,
        pad_ms: float = 200,
        max_speech_s: float = 28,
        interrupt: bool = True,
    ):
        import onnxruntime

        from nodes.resolve import loading, silero_path

        path = silero_path()
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        with loading("silero-vad", "faster-whisper", path):
            self.session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=opts
            )
        self.threshold = threshold
        self.neg_threshold = max(0.01, threshold - 0.15)
        self.min_silence = int(min_silence_ms * RATE / 1000)
        self.min_speech = int(min_speech_ms * RATE / 1000)
        self.pad_windows = max(1, int(pad_ms * RATE / 1000) // WINDOW)
        self.max_speech = int(max_speech_s * RATE)
        self.interrupt = interrupt

    @classmethod
    def chains_models(cls, *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import silero_refs

        return silero_refs()

    def new_state(self) -> dict[str, np.ndarray]:
        return {
            "h": np.zeros((1, 1, 128), dtype=np.float32),
            "c": np.zeros((1, 1, 128), dtype=np.float32),
            "context": np.zeros(CONTEXT, dtype=np.float32),
        }

    def probability(self, window: np.ndarray, state: dict[str, np.ndarray]) -> float:
        """Speech probability of one 512-sample window, advancing ``state``."""
        x = np.concatenate([state["context"], window])[None, :].astype(np.float32)
        out, state["h"], state["c"] = self.session.run(None, {"input": x, "h": state["h"], "c": state["c"]})
        state["context"] = window[-CONTEXT:]
        return float(np.asarray(out).reshape(-1)[0])

    async def __call__(
        self, frames: Stream[AudioFrame]
    ) -> AsyncIterator[Utterance | SpeechStarted | Interrupt]:
        state = self.new_state()
        to16k = StreamResampler(RATE)
        pending = np.zeros(0, dtype=np.float32)
        before: deque[np.ndarray] = deque(maxlen=self.pad_windows + 1)  # windows before speech
        speech: list[np.ndarray] = []  # windows of the current utterance (from its pad)
        speaking = confirmed = False
        voiced = silence = 0  # samples

        def utterance() -> Utterance:
            return Utterance(pcm=float_to_pcm(np.concatenate(speech)), sample_rate=RATE)

        async for frame in frames:
            if not isinstance(frame, AudioFrame):
                raise TypeError(f"SileroVAD wants AudioFrame items, got {type(frame).__name__}")
            pending = np.concatenate([pending, to16k(pcm_to_float(frame.pcm), frame.sample_rate)])
            while len(pending) >= WINDOW:
                window, pending = pending[:WINDOW], pending[WINDOW:]
                p = self.probability(window, state)
                if not speaking:
                    before.append(window)
                    if p >= self.threshold:
                        speaking, confirmed = True, False
                        speech, voiced, silence = list(before), WINDOW, 0
                        before.clear()
                    continue
                speech.append(window)
                if p >= self.threshold:
                    voiced, silence = voiced + WINDOW + silence, 0
                elif p < self.neg_threshold:
                    silence += WINDOW
                # (between the two thresholds: neither more speech nor more silence)
                if not confirmed and voiced >= self.min_speech:
                    confirmed = True
                    yield SpeechStarted()
                    if self.interrupt:
                        yield Interrupt(reason="user speech")
                if silence >= self.min_silence:
                    if confirmed:
                        yield utterance()
                    speaking = confirmed = False
                    speech, voiced, silence = [], 0, 0
                elif confirmed and len(speech) * WINDOW >= self.max_speech:
                    yield utterance()  # a long turn goes on: no new barge-in for its next part
                    speech = []
        if speaking and confirmed:
            yield utterance()
