"""Document enrichment: one text to named entities and an embedding in parallel,
merged into one result.

    chains run demos/enrich.py --input doc.txt
"""

from __future__ import annotations

import chains
from chains import Embedding, Entities, Entity, Text
from nodes import Embed, SpacyNER


class Enriched(chains.Message, frozen=True):
    text: str
    entities: list[Entity]
    embedding: list[float]


@chains.node
async def combine(ents: Entities, emb: Embedding) -> Enriched:
    return Enriched(text=ents.text, entities=ents.entities, embedding=emb.vector)


@chains.chain(budget_ms=2000)
def enrich(doc: Text):
    return combine(SpacyNER()(doc), Embed()(doc))
