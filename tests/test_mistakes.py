"""The usual newcomer mistakes raise errors that point at the mistake: a node's output
used as a value in a chain body, a node returning what its annotation does not say,
a chain body returning something that is not a node's output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import chains
from chains import Text, TextDelta
from chains.handles import HandleMisuse

HERE = Path(__file__).resolve()
SOURCE = HERE.read_text().splitlines()


def where(marker: str) -> str:
    hits = [i + 1 for i, line in enumerate(SOURCE) if line.rstrip().endswith(f"# <-- {marker}")]
    assert len(hits) == 1, marker
    return f"{HERE}:{hits[0]}"


@chains.node
async def shout(t: Text) -> Text:
    return Text(text=t.text.upper())


# --- a node's output used as a value in the chain body --------------------------------------
def test_attribute_access_on_a_nodes_output_is_a_definition_error_at_that_line():
    with pytest.raises(chains.DefinitionError) as e:

        @chains.chain
        def c(t: Text):
            out = shout(t)
            return out.text + "!"  # <-- attr

    msg = str(e.value)
    assert where("attr") in msg
    assert "`.text` on the output of node 'shout'" in msg
    assert "only wires nodes together; value logic belongs in a node" in msg


def test_arithmetic_on_a_nodes_output_is_a_definition_error_at_that_line():
    with pytest.raises(chains.DefinitionError) as e:

        @chains.chain
        def c(t: Text):
            return shout(t) + "!"  # <-- arith

    assert where("arith") in str(e.value) and "`+` on the output of node 'shout'" in str(e.value)
    with pytest.raises(chains.DefinitionError, match="`\\*` on chain input 't'"):

        @chains.chain
        def d(t: Text):
            return 2 * t


def test_a_handle_still_answers_protocol_probes():
    @chains.chain
    def c(t: Text):
        h = shout(t)
        assert not hasattr(h, "text")  # hasattr sees an AttributeError
        return h

    h = c.graph.outputs["output"]
    with pytest.raises(HandleMisuse):
        h.text  # noqa: B018
    assert isinstance(HandleMisuse(h, "x"), AttributeError | TypeError | chains.DefinitionError)


# --- the chain body returns something else ----------------------------------------------------
def test_a_non_node_return_points_at_the_return_line():
    with pytest.raises(chains.DefinitionError) as e:

        @chains.chain
        def c(t: Text):
            shout(t)
            if t is not None:  # a body may have several returns: the one that ran is named
                return {"out": "done"}  # <-- ret
            return shout(t)

    assert where("ret") in str(e.value) and "output 'out' must be a node's output" in str(e.value)


def test_a_missing_return_says_so():
    with pytest.raises(chains.DefinitionError, match=r"got None \(a `return` is missing\?\)"):

        @chains.chain
        def c(t: Text):
            shout(t)


# --- a node's result checked against its annotation ------------------------------------------
@chains.node
async def wrong(t: Text) -> Text:
    return t.text  # type: ignore[return-value]  # the mistake: a str, not a Text


@chains.node
async def exclaim(t: Text) -> Text:
    return Text(text=t.text + "!")


@chains.chain
def two_steps(t: Text):
    return exclaim(wrong(t))


async def test_a_wrong_return_type_names_the_node_the_declared_and_the_actual_type():
    with pytest.raises(chains.NodeError) as e:
        await chains.call(two_steps, Text(text="hi"))
    err = e.value
    assert isinstance(err, chains.WrongResultType) and err.code == "wrong_type"
    assert err.node == "wrong"  # not 'exclaim', which would trip over the str
    assert str(err) == "node 'wrong' failed: returned str 'hi', but it is annotated to return Text"


@chains.node
async def tokens(t: Text) -> AsyncIterator[TextDelta]:
    yield TextDelta(text="a")
    yield "b"  # type: ignore[misc]


@chains.chain
def streamed(t: Text):
    return tokens(t)


async def test_a_streaming_node_is_checked_per_item():
    with pytest.raises(chains.WrongResultType) as e:  # through a session, the same exception
        await chains.call(streamed, Text(text="x"))
    assert (e.value.code, e.value.declared, e.value.actual) == ("wrong_type", "TextDelta", "str 'b'")
    assert str(e.value) == ("node 'tokens' failed: returned str 'b', but it is annotated to return TextDelta")


@chains.node(batch=chains.Batch(max_size=4, max_wait_ms=1))
def lengths(ts: list[Text]) -> list[int]:
    return [str(len(t.text)) for t in ts]  # type: ignore[misc]


@chains.node
class Counter:
    def __call__(self, t: Text) -> float:
        return len(t.text)  # an int where a float is declared is fine


@chains.node
async def maybe(t: Text) -> Text | None:
    return None  # a map's None filters: never a type error


@chains.chain
def batched(t: Text):
    return lengths(t)


@chains.chain
def counted(t: Text):
    return Counter()(t), maybe(t)


async def test_batched_and_class_nodes_are_checked_and_numbers_widen():
    with pytest.raises(
        chains.NodeError, match=r"node 'lengths'.*returned str '1', but it is annotated to return int"
    ):
        await chains.call(batched, Text(text="x"))
    assert await chains.call(counted, Text(text="abc")) == (3, None)
