"""Each mistake in a chain definition is one ChainError naming the node, the
problem, and the file and line of the chain definition."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest

import chains
from chains import Stream, Text

HERE = __file__


@chains.node
async def to_int(t: Text) -> int:
    return len(t.text)


@chains.node
async def wants_text(t: Text) -> Text:
    return t


@chains.node
async def per_session(xs: Stream[int], label: str) -> AsyncIterator[str]:
    async for x in xs:
        yield f"{label}{x}"


def line_of(marker: str) -> int:
    src, _ = inspect.getsourcelines(inspect.getmodule(line_of))
    for i, line in enumerate(src):
        if marker in line and "line_of" not in line:
            return i + 1
    raise AssertionError(marker)


def test_wrong_type_on_an_edge():
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(t: Text):
            return wants_text(to_int(t))  # MARK-type

    msg = str(e.value)
    assert f"{HERE}:{line_of('MARK-type')}" in msg
    assert "node 'wants_text'" in msg and "wants Text but node 'to_int' gives int" in msg


def test_unused_output():
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(t: Text):
            to_int(t)  # MARK-unused
            return wants_text(t)

    msg = str(e.value)
    assert f"{HERE}:{line_of('MARK-unused')}" in msg
    assert "node 'to_int'" in msg and "never used" in msg


def test_stream_passed_where_a_value_is_wanted():
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(xs: Stream[int], labels: Stream[str]):
            return per_session(xs, labels)  # MARK-stream

    msg = str(e.value)
    assert f"{HERE}:{line_of('MARK-stream')}" in msg
    assert "node 'per_session'" in msg and "wants one value" in msg and "is a stream" in msg


def test_wrong_number_of_inputs():
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(t: Text):
            return wants_text(t, t)  # MARK-arity

    msg = str(e.value)
    assert f"{HERE}:{line_of('MARK-arity')}" in msg
    assert "node 'wants_text'" in msg and "takes 1 input(s) (t), got 2" in msg


def test_constant_instead_of_a_handle():
    with pytest.raises(chains.ChainError, match="must be a chain input or a node's output"):

        @chains.chain
        def c(t: Text):
            return per_session(to_int(t), "label")


def test_bad_options_name_the_option():
    with pytest.raises(chains.ChainError, match="replicas must be >= 1, got 0"):

        @chains.node(replicas=0)
        async def a(x: int) -> int:
            return x

    with pytest.raises(chains.ChainError, match="on_late must be 'shed' or 'serve'"):

        @chains.node(on_late="later")
        async def b(x: int) -> int:
            return x

    with pytest.raises(chains.ChainError, match=r"(?i)unexpected keyword argument 'batch_size'"):

        @chains.node(batch_size=3)
        async def c(x: int) -> int:
            return x


def test_batched_node_must_take_and_return_lists():
    with pytest.raises(chains.ChainError, match=r"parameter 'x' must be annotated list\[T\], got int"):

        @chains.node(batch=chains.Batch(max_size=4))
        def a(x: int) -> list[int]:
            return [x]


def test_stream_node_must_be_an_async_generator():
    with pytest.raises(chains.ChainError, match="must be an async generator"):

        @chains.node
        async def s(xs: Stream[int]) -> int:
            return 1


def test_chain_must_return_handles_and_use_its_inputs():
    with pytest.raises(chains.ChainError, match="must return a node's output"):

        @chains.chain
        def c(t: Text):
            return 42

    with pytest.raises(chains.ChainError, match="chain input 'u' is never used"):

        @chains.chain
        def d(t: Text, u: Text):
            return wants_text(t)


def test_class_node_must_be_instantiated_before_use():
    @chains.node
    class Model:
        async def __call__(self, t: Text) -> Text:
            return t

    with pytest.raises(
        chains.ChainError, match=r"create it first, then call it on inputs, e.g. Model\(\)\(x\)"
    ):

        @chains.chain
        def c(t: Text):
            return Model(t)


def test_graph_describe_and_mermaid():
    @chains.chain(budget_ms=500)
    def c(t: Text):
        return {"n": to_int(t)}

    d = c.graph.describe()
    assert d["budget_ms"] == 500 and d["nodes"][0]["name"] == "to_int" and d["outputs"] == {"n": "to_int"}
    assert c.graph.hash() == c.graph.hash()
    assert "flowchart LR" in c.graph.mermaid()
