"""An embedding service: one text in, its MiniLM embedding out (batched across every
caller by the Embed node).

    chains run demos/embed.py
    curl -d '{"text": "The quick brown fox."}' http://127.0.0.1:8765/v1/chains/embed

or with any OpenAI client: ``OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="-")
.embeddings.create(model="embed", input=["one", "two"])``.
"""

from __future__ import annotations

import chains
from chains import Text
from nodes import Embed


@chains.chain(budget_ms=2000)
def embed(text: Text):
    return Embed()(text)
