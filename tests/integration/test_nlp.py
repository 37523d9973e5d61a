"""SpacyNER and Embed on the real en_core_web_sm and all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from chains import Embedding, Entities, Text
from nodes import Embed, SpacyNER


@pytest.fixture(scope="module")
def ner() -> SpacyNER:
    return SpacyNER().instantiate()


@pytest.fixture(scope="module")
def embed() -> Embed:
    return Embed().instantiate()


def test_ner_finds_person_org_and_place(ner) -> None:
    (out,) = ner([Text(text="Tim Cook visited Apple in Paris.")])
    assert isinstance(out, Entities)
    found = {(e.text, e.label) for e in out.entities}
    assert {("Tim Cook", "PERSON"), ("Apple", "ORG"), ("Paris", "GPE")} <= found, found
    for e in out.entities:
        assert out.text[e.start : e.end] == e.text


def test_ner_batch_keeps_order(ner) -> None:
    docs = [
        Text(text="Angela Merkel spoke in Berlin."),
        Text(text="nothing here"),
        Text(text="Google hired Ada."),
    ]
    outs = ner(docs)
    assert [o.text for o in outs] == [d.text for d in docs]
    assert ("Berlin", "GPE") in {(e.text, e.label) for e in outs[0].entities}
    assert outs[1].entities == []
    assert ("Google", "ORG") in {(e.text, e.label) for e in outs[2].entities}


def test_embedding_is_a_384_dim_unit_vector(embed) -> None:
    (e,) = embed([Text(text="The cat sits on the mat.")])
    assert isinstance(e, Embedding) and e.dim == 384
    assert abs(np.linalg.norm(e.vector) - 1.0) < 1e-4


def test_embeddings_rank_by_meaning_and_batch_like_singles(embed) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone plays a musical instrument.",
        "The stock market fell sharply.",
    ]
    a, b, c = (np.array(e.vector) for e in embed([Text(text=t) for t in texts]))
    assert a @ b > a @ c + 0.2
    (single,) = embed([Text(text=texts[0])])
    assert np.allclose(single.vector, a, atol=1e-4)
