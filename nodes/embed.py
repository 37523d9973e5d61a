"""Embed: sentence embeddings with all-MiniLM-L6-v2 (shipped in a PyPI package),
batched across sessions, unit-normalised (384 dimensions)."""

from __future__ import annotations

import chains
from chains import Embedding, Text


@chains.node(batch=chains.Batch(max_size=32, max_wait_ms=10))
class Embed:
    def __init__(self, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        from nodes.resolve import minilm_path

        self.model = SentenceTransformer(str(minilm_path()), device=device, local_files_only=True)

    @classmethod
    def chains_models(cls, *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import minilm_refs

        return minilm_refs()

    def __call__(self, docs: list[Text]) -> list[Embedding]:
        vectors = self.model.encode([d.text for d in docs], normalize_embeddings=True, batch_size=len(docs))
        return [
            Embedding(text=d.text, vector=[float(x) for x in v]) for d, v in zip(docs, vectors, strict=True)
        ]
