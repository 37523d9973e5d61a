"""A model-free text chain: split a document into sentences, measure each in a
batched stage, and summarise. It runs anywhere in a second:

    chains run demos/textstats.py --input README.md
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import chains
from chains import Stream, Text


@chains.node
async def split_sentences(doc: Text) -> AsyncIterator[Text]:
    for s in re.split(r"(?<=[.!?])\s+", doc.text):
        if s.strip():
            yield Text(text=s.strip())


@chains.node(batch=chains.Batch(max_size=16, max_wait_ms=5))
def word_counts(sentences: list[Text]) -> list[int]:
    return [len(s.text.split()) for s in sentences]


@chains.node
async def summary(counts: Stream[int]) -> AsyncIterator[Text]:
    n = total = 0
    async for c in counts:
        n += 1
        total += c
    yield Text(text=f"{n} sentences, {total} words, {total / max(n, 1):.1f} words per sentence")


@chains.chain(budget_ms=2000)
def textstats(doc: Text):
    sentences = split_sentences(doc)
    return {"sentences": sentences, "summary": summary(word_counts(sentences))}
