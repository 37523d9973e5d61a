"""Task 3, a custom stream node: one instance per session that keeps state across the
items of its input stream. Here, ``dedupe`` drops a line the session has already
seen (case and spacing aside) and numbers the others; ``shout`` is a plain map after it.

    python examples/custom_stream_node.py          # runs it on a few lines
    pytest examples/test_custom_stream_node.py     # its tests, on chains.testing

What it shows: a stream node is ``async def f(xs: Stream[A]) -> AsyncIterator[B]``
(state lives in the function's locals: one run per session); a chain with a stream
input returns a list of outputs from ``chains.call``; ``chains.collect`` would turn
them into one list per input instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import chains
from chains import Stream, Text


@chains.node
async def dedupe(lines: Stream[Text]) -> AsyncIterator[Text]:
    """Each line once per session, numbered in the order first seen."""
    seen: set[str] = set()
    async for line in lines:
        key = " ".join(line.text.lower().split())
        if key and key not in seen:
            seen.add(key)
            yield Text(text=f"{len(seen)}. {line.text.strip()}")


@chains.node
async def shout(t: Text) -> Text:
    return Text(text=t.text.upper())


@chains.chain
def unique_lines(lines: Stream[Text]):
    return shout(dedupe(lines))


LINES = ["hello world", "Hello   World", "bye", "hello world", "again"]

if __name__ == "__main__":
    for out in chains.call_sync(unique_lines, [Text(text=x) for x in LINES]):
        print(out.text)
