"""Smart Turn v3.2: an audio model of whether the speaker has finished their turn.

Why a model and not a rule: how a sentence ends (the melody of "...France?" against
the flat, held "...for" of someone looking for the next word) is in the audio; the
words-based rule in nodes/turn.py sees only the text, and only once Whisper has
transcribed it. Smart Turn v3.2 (Daily, BSD-2-Clause; about 8M parameters, an int8
ONNX file of 8.7 MB) is a Whisper-tiny-style encoder with a classifier head: it hears
the last 8 s of the turn (the speech and the silence after it) and gives the
probability that the turn is complete. Its weights come out of the ``pipecat-ai``
wheel at set-up (scripts/install_models.sh; nodes/resolve.py finds them); no Pipecat
code is installed or run: the features are computed here with transformers'
``WhisperFeatureExtractor`` (80 log-mel bins, 8 s, zero-mean unit-variance waveform),
the input the model was trained on.

Cost on this 2-core CPU: about 35 ms per clip on one ORT thread, growing linearly
with the batch (the encoder's work is per clip), so batching across sessions saves
the per-call overhead and, more, keeps one model run at a time instead of one per
session fighting for the cores.

``SmartTurnModel`` is the model (``predict`` a batch at once, synchronously);
``probability`` is the shared, batched, async entry point that the VAD of every
session calls (nodes/vad.py, ``SileroVAD(turn_model=...)``): requests arriving
within ``max_wait_ms`` of each other go in one ``predict`` call, run in a worker
thread so the event loop (every session's audio) keeps going.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import numpy as np

RATE = 16000
SECONDS = 8  # the model hears the last 8 s of the turn
SAMPLES = RATE * SECONDS


def last_8s(clip: np.ndarray) -> np.ndarray:
    """The clip's last 8 s, zero-padded at the start to exactly 8 s (how the model was
    trained: the end of the turn always sits at the end of the window)."""
    x = np.asarray(clip, dtype=np.float32).reshape(-1)
    if len(x) >= SAMPLES:
        return x[-SAMPLES:]
    return np.pad(x, (SAMPLES - len(x), 0))


class SmartTurnModel:
    """Smart Turn v3.2 on ONNX Runtime (CPU): ``predict(clips)`` gives each 16 kHz
    float32 clip's probability that the turn is complete."""

    def __init__(
        self, model: str = "smart-turn-v3.2", threads: int = 1, max_batch: int = 8, max_wait_ms: float = 5
    ):
        import onnxruntime
        from transformers import WhisperFeatureExtractor

        from nodes.resolve import loading, smart_turn_path

        path = smart_turn_path(model)
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        with loading(model, "pipecat-ai", path):
            self.session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=opts
            )
        self.extractor = WhisperFeatureExtractor(chunk_length=SECONDS)
        self.input = self.session.get_inputs()[0].name
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_ms / 1000.0
        self.runs = self.clips = 0  # model calls and clips scored (batching at work: clips / runs)
        self._pending: list[tuple[np.ndarray, anyio.Event, list[Any]]] = []
        self._lock: anyio.Lock | None = None

    def features(self, clips: list[np.ndarray]) -> np.ndarray:
        """(batch, 80, 800) log-mel features of the clips' last 8 s."""
        out = self.extractor(
            [last_8s(c) for c in clips],
            sampling_rate=RATE,
            return_tensors="np",
            padding="max_length",
            max_length=SAMPLES,
            truncation=True,
            do_normalize=True,
        )
        return np.asarray(out["input_features"], dtype=np.float32)

    def predict(self, clips: list[np.ndarray]) -> list[float]:
        """Each clip's probability that the turn is complete, in batches of ``max_batch``."""
        probs: list[float] = []
        for i in range(0, len(clips), self.max_batch):
            part = clips[i : i + self.max_batch]
            (out,) = self.session.run(None, {self.input: self.features(part)})
            probs += [float(p) for p in np.asarray(out).reshape(-1)]
            self.runs += 1
            self.clips += len(part)
        return probs

    async def probability(self, clip: np.ndarray) -> float:
        """``predict`` for one clip, batched with the other sessions' clips that arrive
        within ``max_wait_ms``: the first caller of a batch waits that long, then runs
        every clip pending (one batch at a time) in a worker thread."""
        if self._lock is None:
            self._lock = anyio.Lock()
        slot: list[Any] = []
        done = anyio.Event()
        self._pending.append((clip, done, slot))
        if len(self._pending) == 1:  # this caller leads the batch
            # shielded: the batch holds other sessions' clips, so it runs even if this
            # caller's session ends meanwhile (a few tens of ms)
            with anyio.CancelScope(shield=True):
                await self._run_pending()
        await done.wait()
        result = slot[0]
        if isinstance(result, Exception):
            raise result
        return float(result)

    async def _run_pending(self) -> None:
        assert self._lock is not None
        await anyio.sleep(self.max_wait_s)
        async with self._lock:
            batch, self._pending = self._pending, []
            try:
                probs: list[Any] = await anyio.to_thread.run_sync(self.predict, [c for c, _, _ in batch])
            except Exception as e:  # every caller of the batch gets the error
                probs = [e] * len(batch)
            for (_, ev, out), p in zip(batch, probs, strict=True):
                out.append(p)
                ev.set()


__all__ = ["RATE", "SAMPLES", "SmartTurnModel", "last_8s"]
