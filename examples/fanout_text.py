"""Task 2, a fan-out text chain: a paragraph goes to an LLM for a one-line summary
and, side by side, to a constrained LLM call for a label; a small node combines both.

    python examples/fanout_text.py

What it shows: ``chains.collect`` joins the LLM's streamed ``TextDelta``s into one
``Text``, so the chain's output is one value per input and ``chains.call_sync``
(like ``chains.call``) returns one ``Result``, not a list; both LLM nodes share one
vLLM engine (SmolLM2-135M, offline). vLLM's own output goes to the run log
(``$CHAINS_HOME/logs/run.log``); ``CHAINS_ENGINE_LOGS=terminal`` shows it here.
"""

from __future__ import annotations

import chains
from chains import Text
from nodes import VLLMChat, VLLMExtract

LABELS = ["science", "sport", "money"]


class Result(chains.Message, frozen=True):
    summary: str
    label: str


@chains.node
async def combine(summary: Text, label: str) -> Result:
    return Result(summary=summary.text.strip(), label=label)


@chains.chain
def digest(paragraph: Text):
    reply = VLLMChat(system="Summarise the text in one short sentence.", max_tokens=40)(paragraph)
    summary = chains.collect(reply)  # the streamed deltas joined: one Text per reply
    label = VLLMExtract(choice=LABELS)(paragraph)
    return combine(summary, label)


PARAGRAPH = (
    "The striker scored twice in the second half, and the home team won the cup final "
    "three to one in front of a full stadium."
)

if __name__ == "__main__":
    result = chains.call_sync(digest, Text(text=PARAGRAPH))
    print(f"{type(result).__name__}: label={result.label!r}")
    print(f"summary: {result.summary}")
