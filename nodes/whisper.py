"""WhisperSTT: faster-whisper, one model serving every session, batched across them.

A batch of utterances (from any number of sessions) is transcribed in one call:
the audio is concatenated and each utterance is one ``clip_timestamps`` entry of
faster-whisper's ``BatchedInferencePipeline``, so the 30 s encoder window that
dominates on CPU is paid once per batch of clips rather than per utterance.
"""

from __future__ import annotations

import numpy as np

import chains
from chains import Text, Utterance
from nodes.audio import pcm_to_float, resample

RATE = 16000


def _device(device: str) -> tuple[str, str]:
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:
            device = "cpu"
    return device, ("float16" if device == "cuda" else "int8")


@chains.node(batch=chains.Batch(max_size=8, max_wait_ms=30), device="auto")
class WhisperSTT:
    def __init__(self, model: str = "tiny.en", device: str = "auto", beam_size: int = 1):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        from nodes.resolve import whisper_path

        dev, compute = _device(device)
        self.device = dev
        self.model = WhisperModel(
            str(whisper_path(model)), device=dev, compute_type=compute, cpu_threads=2, local_files_only=True
        )
        self.pipeline = BatchedInferencePipeline(self.model)
        self.beam_size = beam_size
        self.language = "en"

    @classmethod
    def chains_models(cls, model: str = "tiny.en", *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import whisper_refs

        return whisper_refs(model)

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        if not clips:
            return []
        starts, pos = [], 0
        for c in clips:
            starts.append(pos)
            pos += len(c)
        audio = np.concatenate(clips).astype(np.float32)
        stamps = [{"start": s / RATE, "end": (s + len(c)) / RATE} for s, c in zip(starts, clips, strict=True)]
        segments, _ = self.pipeline.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            batch_size=len(clips),
            clip_timestamps=stamps,
            without_timestamps=True,
            vad_filter=False,
        )
        texts = [""] * len(clips)
        for seg in segments:
            t = seg.start * RATE
            i = max(j for j, s in enumerate(starts) if s <= t + 1)  # the clip the segment starts in
            texts[i] = (texts[i] + " " + seg.text.strip()).strip()
        return texts

    def __call__(self, utterances: list[Utterance]) -> list[Text]:
        clips = []
        for u in utterances:
            x = pcm_to_float(u.pcm)
            clips.append(resample(x, u.sample_rate, RATE) if u.sample_rate != RATE else x)
        return [Text(text=t) for t in self.transcribe(clips)]
