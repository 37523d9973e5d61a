"""WhisperSTT remembers the words of the clips it heard lately: the VAD sends a pause's
audio as a snapshot, then the same audio as the turn's utterance (whose turn drops the
snapshot's own transcript), and the second must not cost a second Whisper pass. A fake
pass stands in for the model."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from nodes.whisper import RECENT, WhisperSTT


def stt_with_fake_pass() -> tuple[WhisperSTT, list[int]]:
    impl = WhisperSTT.spec.impl
    stt = impl.__new__(impl)  # no model: the pass is faked below
    stt._recent = OrderedDict()
    passes: list[int] = []

    def fake(clips: list[np.ndarray]) -> list[str]:
        passes.append(len(clips))
        return [f"{len(c)} samples" for c in clips]

    stt._transcribe = fake
    return stt, passes


def test_a_clip_heard_lately_is_answered_without_a_pass() -> None:
    stt, passes = stt_with_fake_pass()
    a, b = np.ones(1600, np.float32), np.full(800, 0.5, np.float32)
    assert stt.transcribe([a, b, a]) == ["1600 samples", "800 samples", "1600 samples"]
    assert passes == [2]  # identical clips once
    assert stt.transcribe([a.copy()]) == ["1600 samples"] and passes == [2]  # remembered
    assert stt.transcribe([np.ones(1601, np.float32), b]) == ["1601 samples", "800 samples"]
    assert passes == [2, 1]


def test_the_memory_is_bounded() -> None:
    stt, passes = stt_with_fake_pass()
    clips = [np.full(160, i, np.float32) for i in range(RECENT + 8)]
    for c in clips:
        stt.transcribe([c])
    assert len(stt._recent) == RECENT
    stt.transcribe([clips[0]])  # forgotten: heard again
    assert len(passes) == RECENT + 9
