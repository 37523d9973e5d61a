"""Which words of a reply were heard, from how much of its audio was played.

A reply's audio is a run of TTS chunks (a sentence, a clause); the TTS marks the
first frame of each chunk with its text and, where it knows them, each word's
timing (``chains.Spoken``). ``SpokenTrack`` lays the chunks on the reply's audio
timeline as the frames go out; ``heard(played_ms)`` is then every chunk played to
its end plus, of the chunk being played, the words whose end was played: by the
TTS's word timing where it gave one, else by the share of the chunk's characters
equal to the share of its audio played (whole words only). Why whole words: a
history that ends in half a word reads as a typo to the model, and a word cut in
its middle was not understood.
"""

from __future__ import annotations

import re

from chains.messages import AudioFrame, Spoken

_WORD = re.compile(r"\S+")


class _Chunk:
    __slots__ = ("spoken", "start_ms")

    def __init__(self, start_ms: float, spoken: Spoken):
        self.start_ms = start_ms
        self.spoken = spoken


class SpokenTrack:
    """The spoken timeline of one reply, fed with its frames in the order they went out."""

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.ms = 0.0  # audio of the reply fed so far

    def add(self, frame: AudioFrame) -> None:
        self.add_ms(frame.duration_ms, frame.spoken)

    def add_ms(self, ms: float, spoken: Spoken | None = None) -> None:
        if spoken is not None:
            self.chunks.append(_Chunk(self.ms, spoken))
        self.ms += ms

    @property
    def text(self) -> str:
        """Everything the reply's audio says so far."""
        return " ".join(c.spoken.text.strip() for c in self.chunks if c.spoken.text.strip())

    def heard(self, played_ms: float) -> str:
        """The words of the reply whose audio was played by ``played_ms``."""
        parts: list[str] = []
        for i, c in enumerate(self.chunks):
            end = c.start_ms + c.spoken.duration_ms
            if i + 1 < len(self.chunks):
                end = min(end, self.chunks[i + 1].start_ms)
            if played_ms >= end:
                parts.append(c.spoken.text.strip())
                continue
            if played_ms > c.start_ms:
                parts.append(words_heard(c.spoken, played_ms - c.start_ms))
            break
        return " ".join(p for p in parts if p)


def words_heard(spoken: Spoken, offset_ms: float) -> str:
    """The words of one chunk heard when ``offset_ms`` of its audio was played."""
    if offset_ms >= spoken.duration_ms:
        return spoken.text.strip()
    if spoken.words:
        return " ".join(w.word for w in spoken.words if w.end_ms <= offset_ms)
    text = spoken.text
    cut = len(text) * max(0.0, offset_ms) / spoken.duration_ms if spoken.duration_ms > 0 else 0
    return " ".join(m.group() for m in _WORD.finditer(text) if m.end() <= cut)


def word_error(heard: str, truth: str) -> int:
    """How many words two heard texts differ by (the longer one's extra words: both are
    prefixes of the same reply)."""
    a, b = heard.split(), truth.split()
    same = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        same += 1
    return max(len(a), len(b)) - same


__all__ = ["SpokenTrack", "word_error", "words_heard"]
