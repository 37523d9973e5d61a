"""sentences: a per-session stream node turning token deltas into whole sentences.

Why: TTS sounds right only on whole sentences, and speaking the first sentence
while the LLM still writes the second is what keeps a voice reply's first audio
early. So the splitter emits a sentence as soon as its end is certain: a ``.``,
``!`` or ``?`` (closing quotes/brackets allowed) followed by whitespace, except
after an abbreviation ("Dr.", "e.g.", "U.S."), a single initial ("J. Smith"), or a
list number ("1. "). Decimals and numbers ("3.14", "1,000.5") never have the
whitespace, so they never split; an end with no whitespace after it yet waits
for the next delta. What is left when the reply ends (a ``final`` delta, or the
stream closing) is flushed as the last sentence.

First audio sooner: ``speech_chunks`` is the same splitter, except that the
first chunk of each reply is its first clause: the text up to a ``,``, ``;``,
``:`` or dash followed by whitespace (at least ``MIN_CLAUSE_WORDS`` words), or its
first ``CLAUSE_WORDS`` words, whichever is complete first (a whole sentence before
either is the first chunk as it is). Piper can then start speaking after a few
tokens instead of a whole sentence; later chunks are whole sentences. Four words:
on the voice benchmark (``python -m benchmarks.voice``, 2-core CPU, one caller) the
first audio came ~200 ms after the first token against ~520 ms with eight words
(first clause ~4-5 tokens instead of ~10 at ~30 tokens/s, and Piper synthesises a
shorter chunk); the price is a phrase break after the fourth word when the reply's
first sentence has no comma.

Barge-in: an interrupted LLM reply never sends its ``final`` delta, so a stream
node must not carry its half sentence into the next turn. The splitter watches
the session's turn epoch (``chains.context().epoch``) and drops the buffer when
it moves.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import chains
from chains import Stream, Text, TextDelta

_ABBREVIATIONS = """
    mr mrs ms mx dr prof sr jr st mt ft vs etc e.g i.e cf viz al approx dept est no nos fig figs
    vol eq inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri
    sat sun u.s u.k u.n a.m p.m ph.d b.a m.a b.sc
"""
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split())  # lower case, without the final period
CLOSERS = "\"')]\u201d\u2019"  # what may follow the end mark: quotes, brackets
OPENERS = "(\"'\u201c\u2018"
CLAUSE_WORDS = 4  # the first chunk is at most this many words (8 before: measured, see below)...
MIN_CLAUSE_WORDS = 2  # ...and a clause cut at a comma at least this many
_CLAUSE_END = re.compile(r"[,;:\u2013\u2014]+(?=\s)|\s-+(?=\s)")
_END = re.compile(r"[.!?]+[" + re.escape(CLOSERS) + r"]*(?=\s)")


def _is_abbreviation(before: str) -> bool:
    """Whether the word ending just before a ``.`` makes it a non-final period."""
    words = before.split()
    if not words:
        return False
    word = words[-1].lstrip(OPENERS).lower()
    if word in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
        return True
    # a list number opening the sentence: "1. Preheat the oven."
    return len(words) == 1 and word.isdigit() and len(word) <= 2


def split_complete(buffer: str) -> tuple[list[str], str]:
    """The complete sentences in ``buffer`` and the unfinished rest."""
    out: list[str] = []
    start = 0
    for m in _END.finditer(buffer):
        if (
            buffer[m.start()] == "."
            and m.group().rstrip(CLOSERS) == "."
            and _is_abbreviation(buffer[start : m.start()])
        ):
            continue
        sentence = buffer[start : m.end()].strip()
        if sentence:
            out.append(sentence)
        start = m.end()
    return out, buffer[start:]


def first_clause(
    buffer: str, max_words: int = CLAUSE_WORDS, min_words: int = MIN_CLAUSE_WORDS
) -> tuple[str | None, str]:
    """The first clause of ``buffer`` if it is complete, and the rest: cut after a
    clause mark followed by whitespace once ``min_words`` words precede it, or after
    the ``max_words``-th word once whitespace follows it; (None, buffer) if neither."""
    for m in _CLAUSE_END.finditer(buffer):
        head = buffer[: m.end()]
        if len(head.split()) >= min_words:
            return head.strip(), buffer[m.end() :]
    words = re.match(rf"\s*(?:\S+\s+){{{max_words}}}", buffer)
    if words:
        return buffer[: words.end()].strip(), buffer[words.end() :]
    return None, buffer


def _epoch() -> int | None:
    try:
        return chains.context().epoch
    except RuntimeError:  # called directly, outside a runtime
        return None


async def chunk_reply(deltas: AsyncIterator[TextDelta], clause_first: bool) -> AsyncIterator[Text]:
    """Chunks of the streamed replies in ``deltas`` for TTS: whole sentences, each
    reply's first clause alone when ``clause_first`` (the body of both nodes)."""
    buffer = ""
    epoch = _epoch()
    first = clause_first  # the next chunk is a reply's first: a clause may go alone
    async for d in deltas:
        now = _epoch()
        if now != epoch:  # a barge-in happened: the old reply's tail is never spoken
            buffer, epoch, first = "", now, clause_first
        buffer += d.text
        done, rest = split_complete(buffer)
        if first and not done:
            clause, rest = first_clause(buffer)
            done = [clause] if clause else []
        buffer = rest
        for s in done:
            first = False
            yield Text(text=s)
        if d.final:
            if buffer.strip():
                yield Text(text=buffer.strip())
            buffer, first = "", clause_first
    if buffer.strip():
        yield Text(text=buffer.strip())


@chains.node
async def sentences(deltas: Stream[TextDelta]) -> AsyncIterator[Text]:
    async for t in chunk_reply(deltas, clause_first=False):
        yield t


@chains.node
async def speech_chunks(deltas: Stream[TextDelta]) -> AsyncIterator[Text]:
    """Like ``sentences``, but each reply's first chunk is its first clause."""
    async for t in chunk_reply(deltas, clause_first=True):
        yield t
