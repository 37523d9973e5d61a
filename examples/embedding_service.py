"""Task 1, an embedding service: one batched model node, served over websockets and
HTTP, called from the Python client, which hands back the chain's own types.

    python examples/embedding_service.py

What it shows: ``chains.serve`` (what ``chains run FILE`` does) with its health and
metrics endpoints; ``chains.Client(url, chain=embed)``, whose outputs come back as
``Embedding`` values, not JSON dicts; several clients at once batched together by the
``Embed`` node (``batch_size`` in the metrics snapshot is an integer count).
"""

from __future__ import annotations

import json
import urllib.request

import anyio

import chains
from chains import Embedding, Text
from nodes import Embed
from transport.protocol import OutputMsg

DOCS = [
    "The cat sat on the mat.",
    "A kitten was sitting on a rug.",
    "Quarterly revenue grew by four percent.",
]


@chains.chain
def embed(doc: Text):
    return Embed()(doc)


async def embed_remotely(url: str, text: str) -> Embedding:
    """One client session: send the text, read the output (an ``Embedding``)."""
    async with chains.Client(url, chain=embed) as c:
        await c.send_input(Text(text=text))
        await c.end()
        async for msg in c:
            if isinstance(msg, OutputMsg):
                assert isinstance(msg.data, Embedding)
                return msg.data
    raise chains.ChainsError(f"no embedding came back for {text!r}")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


async def main() -> None:
    async with chains.serve(embed, port=0) as srv:
        print(f"serving {srv.url}")
        vectors: dict[str, Embedding] = {}

        async def one(text: str) -> None:
            vectors[text] = await embed_remotely(srv.url, text)

        async with anyio.create_task_group() as tg:  # three clients at once
            for text in DOCS:
                tg.start_soon(one, text)
        base = vectors[DOCS[0]]
        for text in DOCS[1:]:
            sim = sum(a * b for a, b in zip(base.vector, vectors[text].vector, strict=True))
            print(f"similarity to {DOCS[0]!r}: {sim:.2f}  {text!r}")
        health = await anyio.to_thread.run_sync(get, f"{srv.http_url}healthz")
        print(f"GET /healthz: {health.strip()}")
        metrics = await anyio.to_thread.run_sync(get, f"{srv.http_url}metrics")
        items = [line for line in metrics.splitlines() if line.startswith("chains_stage_items_total")]
        print(f"GET /metrics: {items[0]}")
        snap = srv.runtimes["embed"].metrics.snapshot()
        print("batch sizes:", json.dumps(snap["stages"]["Embed"]["batch_size"]))


if __name__ == "__main__":
    anyio.run(main)
