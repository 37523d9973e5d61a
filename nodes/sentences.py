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


def _epoch() -> int | None:
    try:
        return chains.context().epoch
    except RuntimeError:  # called directly, outside a runtime
        return None


@chains.node
async def sentences(deltas: Stream[TextDelta]) -> AsyncIterator[Text]:
    buffer = ""
    epoch = _epoch()
    async for d in deltas:
        now = _epoch()
        if now != epoch:  # a barge-in happened: the old reply's tail is never spoken
            buffer, epoch = "", now
        buffer += d.text
        done, buffer = split_complete(buffer)
        for s in done:
            yield Text(text=s)
        if d.final:
            if buffer.strip():
                yield Text(text=buffer.strip())
            buffer = ""
    if buffer.strip():
        yield Text(text=buffer.strip())
