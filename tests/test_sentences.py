"""The sentence splitter turns streamed LLM deltas into whole sentences for TTS:
it must cut as soon as a sentence surely ended, and never inside an
abbreviation, an initial, a list number or a number."""

from __future__ import annotations

import asyncio

import pytest

from chains import TextDelta
from chains.context import NodeContext, reset_context, set_context
from nodes.sentences import sentences, split_complete


def run(deltas: list[TextDelta]) -> list[str]:
    async def go() -> list[str]:
        async def source():
            for d in deltas:
                yield d

        return [t.text async for t in sentences(source())]

    return asyncio.run(go())


def chars(text: str, final: bool = True) -> list[TextDelta]:
    """``text`` streamed one character per delta: the hardest case for a splitter."""
    out = [TextDelta(text=c) for c in text]
    if final:
        out.append(TextDelta(text="", final=True))
    return out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
        ("Dr. Smith will see you now. Please wait.", ["Dr. Smith will see you now.", "Please wait."]),
        ("Bring fruit, e.g. apples or pears. Thanks.", ["Bring fruit, e.g. apples or pears.", "Thanks."]),
        ("That is, i.e. the U.S. one. Next.", ["That is, i.e. the U.S. one.", "Next."]),
        (
            "Pi is about 3.14 and e is 2.718. Both are irrational.",
            ["Pi is about 3.14 and e is 2.718.", "Both are irrational."],
        ),
        ("It costs $1,000.50 today. Cheap.", ["It costs $1,000.50 today.", "Cheap."]),
        ("J. R. R. Tolkien wrote it. Read it.", ["J. R. R. Tolkien wrote it.", "Read it."]),
        ("1. Preheat the oven. 2. Bake it.", ["1. Preheat the oven.", "2. Bake it."]),
        ("Wait... what? Really?!", ["Wait...", "what?", "Really?!"]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("The answer is 42. Done", ["The answer is 42.", "Done"]),
        ("Meet me at 5 p.m. tomorrow. Bye.", ["Meet me at 5 p.m. tomorrow.", "Bye."]),
        ("No final punctuation here", ["No final punctuation here"]),
        ("Line one.\nLine two.", ["Line one.", "Line two."]),
    ],
)
def test_splits_streamed_text(text: str, expected: list[str]) -> None:
    assert run(chars(text)) == expected  # one character at a time
    assert run([TextDelta(text=text), TextDelta(text="", final=True)]) == expected  # all at once


def test_a_sentence_is_emitted_before_the_reply_ends() -> None:
    """The first sentence must go to TTS while the LLM still writes the second."""
    done, rest = split_complete("Paris is the capital. It is")
    assert done == ["Paris is the capital."]
    assert rest == " It is"


def test_an_end_without_whitespace_waits_for_the_next_delta() -> None:
    # "3." may become "3.14"; "Dr." may be followed by a name: wait for whitespace.
    assert split_complete("Pi is 3.") == ([], "Pi is 3.")
    assert split_complete("Ask Dr.") == ([], "Ask Dr.")


def test_final_delta_flushes_and_the_next_turn_starts_clean() -> None:
    deltas = [*chars("First turn, no period", final=True), *chars("Second turn. Done.", final=True)]
    assert run(deltas) == ["First turn, no period", "Second turn.", "Done."]


def test_stream_end_flushes_the_rest() -> None:
    assert run(chars("Unfinished thought", final=False)) == ["Unfinished thought"]


def test_empty_and_whitespace_deltas_emit_nothing() -> None:
    assert run([TextDelta(text=""), TextDelta(text="  "), TextDelta(text="", final=True)]) == []


def test_a_barge_in_drops_the_interrupted_half_sentence() -> None:
    """An interrupted reply never sends ``final``: its tail must not be glued onto
    the next turn's first sentence."""
    epoch = [0]

    async def go() -> list[str]:
        async def source():
            yield TextDelta(text="The old reply was cut in the mid")
            epoch[0] += 1  # the runtime bumps the turn epoch on Interrupt
            yield TextDelta(text="New reply. ")
            yield TextDelta(text="", final=True)

        token = set_context(NodeContext("s1", "sentences", {}, lambda: epoch[0]))
        try:
            return [t.text async for t in sentences(source())]
        finally:
            reset_context(token)

    assert asyncio.run(go()) == ["New reply."]
