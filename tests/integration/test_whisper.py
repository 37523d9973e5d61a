"""WhisperSTT on the real tiny.en (and base) CTranslate2 models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from chains import AudioFrame, Interrupt, SpeechStarted, Text, Utterance
from nodes import SileroVAD, WhisperSTT
from nodes.audio import float_to_pcm, resample

from .conftest import to_float, words


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    return WhisperSTT(model="tiny.en").instantiate()


def test_transcribes_the_question(stt, question) -> None:
    pcm, rate = question
    (out,) = stt([Utterance(pcm=pcm, sample_rate=rate)])
    assert isinstance(out, Text)
    assert {"capital", "france"} <= words(out.text), out.text


def test_two_utterances_in_one_batch_call(stt, question) -> None:
    """Two utterances of different sessions, one call: each gets its own text."""
    pcm, rate = question
    other = Utterance(pcm=float_to_pcm(0.0 * to_float(pcm)[: rate // 2]), sample_rate=rate)  # silence
    at_48k = Utterance(pcm=float_to_pcm(resample(to_float(pcm), rate, 48000)), sample_rate=48000)
    a, b, c = stt([Utterance(pcm=pcm, sample_rate=rate), other, at_48k])
    assert {"capital", "france"} <= words(a.text), a.text
    assert "capital" not in words(b.text), b.text
    assert {"capital", "france"} <= words(c.text), c.text


@pytest.mark.parametrize("strategy", ["packed", "batched"])
def test_batch_strategies_keep_utterances_apart(question, strategy) -> None:
    pcm, _ = question
    stt = WhisperSTT(strategy=strategy).instantiate()
    x = to_float(pcm)
    clips = [x, x[: len(x) // 2] * 0.0, x]
    texts = stt.transcribe(clips)
    assert len(texts) == 3
    assert {"capital", "france"} <= words(texts[0]) and {"capital", "france"} <= words(texts[2]), texts
    assert "capital" not in words(texts[1]), texts


def test_empty_batch(stt) -> None:
    assert stt([]) == []


def test_whisper_base_is_joined_once_and_transcribes(question, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHAINS_HOME", str(tmp_path))
    from nodes.resolve import whisper_path

    folder = whisper_path("base")
    assert (folder / "model.bin").stat().st_size > 100_000_000
    assert {p.name for p in folder.iterdir()} >= {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert whisper_path("base") == folder and (folder / "model.bin").stat().st_mtime_ns == mtime  # reused
    pcm, rate = question
    (out,) = WhisperSTT(model="base").instantiate()([Utterance(pcm=pcm, sample_rate=rate)])
    assert {"capital", "france"} <= words(out.text), out.text


def test_vad_then_whisper(stt, question) -> None:
    """Frames at 48 kHz (a browser's rate) with silence around the question: the
    VAD emits SpeechStarted + Interrupt, then one Utterance that Whisper reads."""
    pcm, rate = question
    x48 = resample(
        np.concatenate([np.zeros(rate), to_float(pcm), np.zeros(rate)]).astype(np.float32), rate, 48000
    )
    data = float_to_pcm(x48)
    vad = SileroVAD().instantiate()

    async def go() -> list:
        async def frames():
            for i in range(0, len(data), 1920):  # 20 ms frames
                yield AudioFrame(pcm=data[i : i + 1920], sample_rate=48000)

        return [e async for e in vad(frames())]

    events = asyncio.run(go())
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, Interrupt, Utterance], kinds
    utt = events[2]
    assert utt.sample_rate == 16000
    assert 2000 < utt.duration_ms < 2800 + 1000  # the speech, its pad and trailing silence
    (out,) = stt([utt])
    assert {"capital", "france"} <= words(out.text), out.text


def test_vad_ignores_silence_and_a_click() -> None:
    vad = SileroVAD().instantiate()
    click = np.zeros(16000, dtype=np.float32)
    click[8000:8040] = 0.9
    data = float_to_pcm(click)

    async def go() -> list:
        async def frames():
            for i in range(0, len(data), 640):
                yield AudioFrame(pcm=data[i : i + 640], sample_rate=16000)

        return [e async for e in vad(frames())]

    assert asyncio.run(go()) == []


def test_a_shorter_window_transcribes_one_or_two_clips_and_longer_ones_as_before(stt, question) -> None:
    """``window_s`` (off by default): one and two clips in 20 s windows, one tensor
    batch; a clip that does not fit, and a batch of three, take the 30 s paths."""
    pcm, rate = question
    short = WhisperSTT(model="tiny.en", window_s=20).instantiate()
    x = to_float(pcm)
    assert short.window == 20 * 16000 and stt.window == 0  # the default hears 30 s
    (one,) = short.transcribe([x])
    a, b = short.transcribe([x, np.zeros(rate // 2, dtype=np.float32)])
    assert {"capital", "france"} <= words(one) and {"capital", "france"} <= words(a), (one, a)
    assert "capital" not in words(b), b
    long = np.concatenate([np.zeros(19 * rate, dtype=np.float32), x])  # 21.7 s: past the window
    assert {"capital", "france"} <= words(short.transcribe([long])[0])
    assert all({"capital", "france"} <= words(t) for t in short.transcribe([x, x * 0.9, x * 0.8]))
    with pytest.raises(ValueError, match="window_s"):
        WhisperSTT(model="tiny.en", window_s=45).instantiate()


def test_interim_snapshots_are_heard_in_the_shorter_window(stt, question) -> None:
    """Interim snapshots (the caller still speaking) go through the 15 s window, finals
    through Whisper's 30 s: an interim's words are provisional, and a pass that holds
    Whisper half as long delays a final that comes behind it half as much."""
    from nodes.heard import Interim, Snapshot

    pcm, rate = question
    assert stt.interim_window == 15 * 16000 and stt.window == 0
    half = pcm[: len(pcm) // 2 // 2 * 2 + rate]  # past "What is the"
    (interim,) = stt([Snapshot(pcm=half, sample_rate=rate, turn=1)])
    assert isinstance(interim, Interim) and {"what", "capital"} & words(interim.text), interim.text
    (final,) = stt([Snapshot(pcm=pcm, sample_rate=rate, turn=1, settled=True)])
    assert {"capital", "france"} <= words(final.text), final.text
    with pytest.raises(ValueError, match="interim_window_s"):
        WhisperSTT(model="tiny.en", interim_window_s=31).instantiate()


def test_silence_in_the_shorter_window_is_no_words(stt) -> None:
    from nodes.heard import Snapshot

    silence = float_to_pcm(np.zeros(16000, dtype=np.float32))
    (interim,) = stt([Snapshot(pcm=silence, sample_rate=16000, turn=1)])
    assert interim.text == ""
