"""WhisperSTT remembers the words of the clips it heard lately: the VAD sends a pause's
audio as a snapshot, then the same audio as the turn's utterance (whose turn drops the
snapshot's own transcript), and the second must not cost a second Whisper pass. A fake
pass stands in for the model."""

from __future__ import annotations

import numpy as np
import pytest

import nodes.whisper as whisper
from chains import Text, Utterance
from nodes.heard import Heard, Interim, Snapshot
from nodes.whisper import RECENT, ClipMemory, WhisperSTT


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch: pytest.MonkeyPatch) -> ClipMemory:
    memory = ClipMemory(RECENT)
    monkeypatch.setattr(whisper, "MEMORY", memory)
    return memory


def stt_with_fake_pass(model: str = "tiny") -> tuple[WhisperSTT, list[int]]:
    impl = WhisperSTT.spec.impl
    stt = impl.__new__(impl)  # no model: the pass is faked below
    stt.model_id = model
    whisper.MEMORY.models.add(model)
    passes: list[int] = []

    stt.window, stt.interim_window = 0, 0

    def fake(clips: list[np.ndarray], window: int) -> list[str]:
        passes.append(len(clips))
        return [f"{len(c)} samples" for c in clips]

    stt._transcribe = fake
    return stt, passes


def said(n: int, value: int = 1000) -> bytes:
    return np.full(n, value, np.int16).tobytes()


def test_a_clip_heard_lately_is_answered_without_a_pass() -> None:
    stt, passes = stt_with_fake_pass()
    a, b = said(1600), said(800, 500)
    out = stt([Utterance(pcm=a, sample_rate=16000), Utterance(pcm=b, sample_rate=16000)])
    assert [o.text for o in out] == ["1600 samples", "800 samples"] and passes == [2]
    snap = Snapshot(pcm=a, sample_rate=16000, turn=3, settled=True)  # the same audio again
    (again,) = stt([snap])
    assert isinstance(again, Interim) and again.text == "1600 samples" and again.turn == 3
    assert passes == [2]
    # an interim snapshot (heard in a shorter window) is neither answered nor kept
    (interim,) = stt([Snapshot(pcm=a, sample_rate=16000, turn=3)])
    assert isinstance(interim, Interim) and passes == [2, 1]
    stt([Snapshot(pcm=said(900), sample_rate=16000, turn=3)])
    assert passes == [2, 1, 1] and len(whisper.MEMORY) == 2
    assert [o.text for o in stt([Utterance(pcm=said(1601), sample_rate=16000)])] == ["1601 samples"]
    assert passes == [2, 1, 1, 1]
    # the same samples at another rate are other audio
    stt([Utterance(pcm=a, sample_rate=8000)])
    assert passes == [2, 1, 1, 1, 1]


def test_identical_clips_in_one_batch_are_transcribed_once() -> None:
    stt, passes = stt_with_fake_pass()
    a = said(1600)
    out = stt([Utterance(pcm=a, sample_rate=16000), Utterance(pcm=a, sample_rate=16000)])
    assert [o.text for o in out] == ["1600 samples"] * 2 and passes == [1]


def test_the_runtime_hook_reads_the_memory_of_the_one_model_loaded() -> None:
    stt, _ = stt_with_fake_pass()
    a = Utterance(pcm=said(1600), sample_rate=16000)
    assert WhisperSTT.known_result(a) is None  # not heard yet: it joins a batch
    stt([a])
    assert WhisperSTT.known_result(Utterance(pcm=said(1600), sample_rate=16000)) == Text(text="1600 samples")
    assert WhisperSTT.known_result(Heard(pcm=b"", sample_rate=16000, text="hi")) == Text(text="hi")
    stt_with_fake_pass("base")  # a second model in the process hears the same audio its own way
    assert WhisperSTT.known_result(a) is None


def test_the_memory_is_bounded() -> None:
    stt, passes = stt_with_fake_pass()
    clips = [Utterance(pcm=said(160, i), sample_rate=16000) for i in range(RECENT + 8)]
    for c in clips:
        stt([c])
    assert len(whisper.MEMORY) == RECENT
    stt([clips[0]])  # forgotten: heard again
    assert len(passes) == RECENT + 9
