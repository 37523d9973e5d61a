"""``chains.collect``: a streamed reply joined into one value per input, so a chain of
single-value inputs returns single values from ``chains.call`` whatever streamed
upstream (the rule stated in ``chains.call``'s docstring and the README)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

import chains
from chains import Stream, Text, TextDelta


@chains.node
async def reply(t: Text) -> AsyncIterator[TextDelta]:
    """An LLM-like streaming map: a few deltas, then the final (empty) one."""
    for word in t.text.split():
        yield TextDelta(text=word[::-1] + " ")
    yield TextDelta(text="", final=True)


@chains.node
async def label(t: Text) -> Text:
    return Text(text="long" if len(t.text) > 10 else "short")


class Result(chains.Message, frozen=True):
    summary: str
    label: str


@chains.node
async def combine(summary: Text, lab: Text) -> Result:
    return Result(summary=summary.text.strip(), label=lab.text)


@chains.chain
def summarise(paragraph: Text):
    return combine(chains.collect(reply(paragraph)), label(paragraph))


@chains.chain
def joined(paragraph: Text):
    return chains.collect(reply(paragraph))


@chains.chain
def raw(paragraph: Text):
    return reply(paragraph)


async def test_a_collected_reply_is_one_text_and_a_fan_out_returns_one_value():
    assert await chains.call(joined, Text(text="abc def")) == Text(text="cba fed ")
    got = await chains.call(summarise, Text(text="hello wide world"))
    assert got == Result(summary="olleh ediw dlrow", label="long")  # not [Result(...)]
    # without collect the reply stays a stream: a list of deltas
    assert len(await chains.call(raw, Text(text="a b"))) == 3


@chains.node
async def count_to(t: Text) -> AsyncIterator[int]:
    for i in range(len(t.text)):
        yield i


@chains.chain
def counts(t: Text):
    return chains.collect(count_to(t))


async def test_other_items_are_collected_into_a_list_per_input():
    assert await chains.call(counts, Text(text="abcd")) == [0, 1, 2, 3]
    assert counts.graph.outputs["output"].type == list[int]
    assert not counts.graph.outputs["output"].stream


@chains.chain
def per_line(lines: Stream[Text]):
    return chains.collect(reply(lines))


async def test_with_a_stream_input_collect_gives_one_text_per_reply():
    assert per_line.graph.outputs["output"].stream  # still many per session
    got = await chains.call(per_line, [Text(text="ab"), Text(text="cd ef")])
    assert got == [Text(text="ba "), Text(text="dc fe ")]


def test_collect_of_a_single_value_is_a_definition_error():
    with pytest.raises(chains.DefinitionError, match="already one value per input"):

        @chains.chain
        def pointless(t: Text):
            return chains.collect(label(t))


def test_collect_outside_a_chain_is_a_definition_error():
    with pytest.raises(chains.DefinitionError, match="only usable inside"):
        chains.collect(Text(text="x"))


async def test_the_collected_value_encodes_like_any_message():
    got = await chains.call(summarise, Text(text="ab"))
    assert msgspec.json.decode(msgspec.json.encode(got)) == {"summary": "ba", "label": "short"}
