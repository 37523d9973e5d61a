"""sentences: a per-session stream node turning token deltas into whole sentences,
so TTS can start speaking the first sentence while the LLM writes the second.

A sentence ends at ``.``, ``!`` or ``?`` followed by whitespace, except after a
known abbreviation ("Dr.", "e.g."), a single initial ("J."), or inside a number
("3.14", "1,000.5" never see the whitespace). What is left when the reply ends is
flushed as the last sentence.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import chains
from chains import Stream, Text, TextDelta

ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "a.m",
    "p.m",
    "inc",
    "ltd",
    "co",
    "corp",
    "no",
    "fig",
    "approx",
    "dept",
    "est",
    "u.s",
    "u.k",
    "mt",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
}
_END = re.compile(r"[.!?]+[\"')\]]*\s+")


def split_complete(buffer: str) -> tuple[list[str], str]:
    """Complete sentences in ``buffer`` and the unfinished rest."""
    out: list[str] = []
    start = 0
    for m in _END.finditer(buffer):
        candidate = buffer[start : m.end()].strip()
        words = buffer[start : m.start()].split()
        last = words[-1].lower().rstrip(".") if words else ""
        if buffer[m.start()] == "." and (last in ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            continue
        if candidate:
            out.append(candidate)
        start = m.end()
    return out, buffer[start:]


@chains.node
async def sentences(deltas: Stream[TextDelta]) -> AsyncIterator[Text]:
    buffer = ""
    async for d in deltas:
        buffer += d.text
        done, buffer = split_complete(buffer)
        for s in done:
            yield Text(text=s)
        if d.final and buffer.strip():
            yield Text(text=buffer.strip())
            buffer = ""
    if buffer.strip():
        yield Text(text=buffer.strip())
