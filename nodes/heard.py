"""What the voice nodes hear and tell each other about a turn: the interim snapshots
of an utterance and their transcripts, an utterance whose words are already known,
the VAD's timing and preemption marks, the words-based end-of-turn rule, and the
per-session board through which the words heard so far reach the VAD.

Why a board: the VAD decides when the turn ends, and the words it would like to
know (does the utterance end like a finished question, or on a trailing "and"? did
the transcript it started a reply from hear everything?) come out of Whisper,
downstream of it. A chain is a DAG, so they cannot flow back along an edge.
``transcripts`` (the node that passes final transcripts on to the LLM and drops
interim ones) posts every transcript it sees on a small object kept in the
session's ``meta`` (the one dict every node of a session shares), and the VAD reads
it at its next audio frame. Without ``transcripts`` in the chain the board stays
empty and the VAD uses its fixed end-of-turn silence.

The state machine that uses all this is nodes/turn.py.
"""

from __future__ import annotations

import re
from collections import deque

import chains
from chains import Control, Text, TextDelta, Utterance

BOARD_KEY = "nodes.turn.board"
ABANDONED = "speculation_abandoned"  # the Interrupt reason when a speculative turn is dropped


class Snapshot(Utterance, frozen=True):
    """The utterance so far while the user still speaks (or has just stopped):
    transcribed for an interim transcript only (never answered). ``turn`` counts the
    VAD's utterances. ``settled``: taken once the caller stopped (its transcript is the
    final one), so the STT transcribes it apart from the mid-word snapshots, like a
    final utterance."""

    turn: int = 0
    settled: bool = False


class Interim(TextDelta, frozen=True):
    """The interim transcript of ``Snapshot`` ``turn`` (``final`` stays False): sent to
    the client as ``transcript`` with ``final: false``. ``audio_ms``: how much of the
    utterance it heard."""

    turn: int = 0
    audio_ms: float = 0.0


class Heard(Utterance, frozen=True):
    """An utterance whose words are already known (an interim transcript that covers
    it): the STT passes ``text`` on as the final transcript without transcribing it,
    so the reply starts at once (``pcm`` is empty)."""

    text: str = ""
    turn: int = 0


class TurnTiming(Control, frozen=True):
    """The VAD's mark of where the user's speech ended: ``silence_ms`` of silence had
    been heard when it was emitted. ``end_of_turn`` is true when the turn is decided
    (no speculation), false for the mark before a speculative turn. The transport
    dates the end of speech from it for the per-turn latency breakdown.
    ``preheard``: the turn starts from an interim transcript (preemptive generation);
    ``probability``: the end-of-turn model's last verdict (None: no model, or not run)."""

    silence_ms: float
    end_of_turn: bool = False
    preheard: bool = False
    probability: float | None = None


class Preempted(Control, frozen=True):
    """The verdict on a reply started from an interim transcript: a hit when the final
    transcript (of the whole utterance, taken once the user stopped) has the same
    words, a miss when not (the turn was then redone from the final words: the
    runtime discarded the first one, nothing of it was sent)."""

    hit: bool
    interim: str = ""
    final: str = ""


class TurnBoard:
    """What the VAD and ``transcripts`` of one session share: the VAD's current
    utterance number, the latest words heard for it, and the last few interim
    transcripts by (utterance, audio heard)."""

    __slots__ = ("interims", "posts", "text", "text_ms", "text_turn", "turn")

    def __init__(self) -> None:
        self.turn = 0  # the utterance the VAD is in (or last was in)
        self.text = ""
        self.text_turn = -1  # which utterance ``text`` belongs to
        self.text_ms: float | None = None  # how much of it ``text`` heard (None: all of it)
        self.posts = 0  # how many transcripts were posted (the VAD waits for its snapshot's)
        self.interims: deque[tuple[int, float, str]] = deque(maxlen=8)

    def post(self, text: str, turn: int | None = None, audio_ms: float | None = None) -> None:
        """Record words heard for ``turn`` (None: the VAD's current utterance), from its
        first ``audio_ms`` (None: a transcript of the whole utterance so far)."""
        turn = self.turn if turn is None else turn
        self.posts += 1
        if audio_ms is not None:
            self.interims.append((turn, audio_ms, text))
        if turn >= self.text_turn:
            self.text, self.text_turn, self.text_ms = text, turn, audio_ms

    def words(self, turn: int, spoken_ms: float | None = None, stale_ms: float = 300) -> str | None:
        """The latest words heard of utterance ``turn`` (None when none yet); with
        ``spoken_ms`` (how long the utterance's speech went on), None when they come
        from a snapshot that missed more than ``stale_ms`` of it: a snapshot cut
        mid-sentence ("... the capital of") says nothing about how the speech ended."""
        if self.text_turn != turn:
            return None
        if spoken_ms is not None and self.text_ms is not None and spoken_ms - self.text_ms > stale_ms:
            return None
        return self.text

    def interim(self, turn: int, audio_ms: float) -> str | None:
        """The interim transcript of utterance ``turn``'s snapshot of ``audio_ms`` (None
        until it came back)."""
        for t, ms, text in reversed(self.interims):
            if t == turn and abs(ms - audio_ms) < 0.5:
                return text
        return None


def board() -> TurnBoard | None:
    """This session's board (None when called outside a running session)."""
    try:
        meta = chains.context().meta
    except RuntimeError:
        return None
    b = meta.get(BOARD_KEY)
    if b is None:
        b = meta[BOARD_KEY] = TurnBoard()
    return b


# Words after which a speaker usually goes on: a pause after them is a pause, not an end.
_CONTINUATIONS = """
    and so but or because um uh er erm like the a an of to with for in on at from my your
    his her their our is are was were if then which that who whose where when than as
"""
CONTINUATIONS = frozenset(_CONTINUATIONS.split())
_WORD = re.compile(r"[A-Za-z0-9']+")


def word_list(text: str | None) -> list[str]:
    """The words of ``text``, lower case, without punctuation: what two transcripts
    must share to be "the same words"."""
    return _WORD.findall((text or "").lower())


def trails_off(text: str | None) -> bool:
    """Whether the words end like a sentence that goes on: a trailing continuation
    word ("and", "um", "for", "the"), comma, dash or ellipsis."""
    t = (text or "").strip()
    words = word_list(t)
    return bool(t) and (
        t.endswith((",", "-", "\u2014", "...", "\u2026", ";", ":")) or (words or [""])[-1] in CONTINUATIONS
    )


def end_of_turn_ms(text: str | None, base_ms: float, min_ms: float, max_ms: float) -> float:
    """The silence that ends a turn whose words so far are ``text``.

    ``max_ms`` after a trailing continuation word, comma, dash or ellipsis ("and",
    "so", "um", "the capital of..."); ``min_ms`` when the words end like a finished
    question or sentence; ``base_ms`` otherwise (and when nothing was heard yet).
    The result always lies within [min_ms, max_ms]."""
    lo, hi = min(min_ms, max_ms), max(min_ms, max_ms)
    base = min(max(base_ms, lo), hi)
    t = (text or "").strip()
    if not t:
        return base
    words = word_list(t)
    if trails_off(t):
        return hi
    if t.endswith(("?", "!")) or (t.endswith(".") and len(words) >= 2):  # ("Paris." may go on)
        return lo
    return base


@chains.node
def transcripts(heard: Text | TextDelta) -> Text | None:
    """Pass final transcripts on (to the LLM); drop interim ones. Both are posted on
    the session's ``TurnBoard`` for the VAD (adaptive end of turn, preemption checks)."""
    b = board()
    if isinstance(heard, TextDelta) and not heard.final:
        if b is not None:
            b.post(heard.text, getattr(heard, "turn", None), getattr(heard, "audio_ms", None))
        return None
    if b is not None:
        b.post(heard.text)
    return heard if isinstance(heard, Text) else Text(text=heard.text)


__all__ = [
    "ABANDONED",
    "BOARD_KEY",
    "CONTINUATIONS",
    "Heard",
    "Interim",
    "Preempted",
    "Snapshot",
    "TurnBoard",
    "TurnTiming",
    "board",
    "end_of_turn_ms",
    "trails_off",
    "transcripts",
    "word_list",
]
