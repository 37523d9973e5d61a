"""First audio sooner: ``speech_chunks`` speaks each reply's first clause (up to a
comma or its first 4 words) on its own, then whole sentences; ``sentences`` stays as
it was."""

from __future__ import annotations

import asyncio

import pytest

from chains import TextDelta
from nodes.sentences import first_clause, sentences, speech_chunks


def run(node, deltas: list[TextDelta]) -> list[str]:
    async def go() -> list[str]:
        async def source():
            for d in deltas:
                yield d

        return [t.text async for t in node(source())]

    return asyncio.run(go())


def tokens(text: str, final: bool = True) -> list[TextDelta]:
    """``text`` streamed a word at a time, as an LLM does."""
    parts = text.split(" ")
    out = [TextDelta(text=(" " if i else "") + w) for i, w in enumerate(parts)]
    return out + ([TextDelta(text="", final=True)] if final else [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "The capital of France is Paris, a city of light. It is lovely.",
            ["The capital of France", "is Paris, a city of light.", "It is lovely."],
        ),
        (
            "Paris is the capital and largest city of France and its heart. Yes.",
            ["Paris is the capital", "and largest city of France and its heart.", "Yes."],
        ),
        ("Paris. It is the capital, of course.", ["Paris.", "It is the capital, of course."]),
        ("It costs 1,000 euros. Cheap, really.", ["It costs 1,000 euros.", "Cheap, really."]),
        ("Yes, it is Paris.", ["Yes, it is Paris."]),  # a one-word clause waits for more
        ("Short reply", ["Short reply"]),
    ],
)
def test_the_first_clause_goes_alone_then_sentences(text: str, expected: list[str]) -> None:
    assert run(speech_chunks, tokens(text)) == expected
    assert " ".join(expected) == text


def test_each_reply_starts_with_a_clause_again() -> None:
    two = tokens("Well now, that is Paris. Next one.") + tokens("Of course, it is Rome. Bye.")
    assert run(speech_chunks, two) == [
        "Well now,",
        "that is Paris.",
        "Next one.",
        "Of course,",
        "it is Rome.",
        "Bye.",
    ]


def test_the_first_chunk_comes_before_the_first_sentence_ends() -> None:
    deltas = tokens("The capital of France is Paris, the city of light", final=False)
    assert run(speech_chunks, deltas) == ["The capital of France", "is Paris, the city of light"]
    assert run(sentences, deltas) == ["The capital of France is Paris, the city of light"]


def test_first_clause_rules() -> None:
    assert first_clause("one, two") == (None, "one, two")  # a clause needs two words
    assert first_clause("one two, three") == ("one two,", " three")
    assert first_clause("a b c d") == (None, "a b c d")  # the 4th word may go on
    assert first_clause("a b c d e") == ("a b c d", "e")
    assert first_clause("a b c d e", max_words=8) == (None, "a b c d e")
    assert first_clause("1,000 is a lot") == (None, "1,000 is a lot")
