"""Compile-time validation: each mistake in a chain or node definition raises one
``chains.ChainError`` naming the node, the problem, and the file:line where the
mistake is (the marker comment on that line: ``# <-- name``)."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import chains
from chains import Stream, Text

HERE = Path(__file__).resolve()
SOURCE = HERE.read_text().splitlines()


def where(marker: str) -> str:
    """``file:line`` of the line carrying ``# <-- marker``."""
    hits = [i + 1 for i, line in enumerate(SOURCE) if line.rstrip().endswith(f"# <-- {marker}")]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times"
    return f"{HERE}:{hits[0]}"


def check(err: pytest.ExceptionInfo[chains.ChainError], marker: str, node: str | None, *problem: str) -> None:
    msg = str(err.value)
    assert where(marker) in msg, msg
    if node is not None:
        assert f"node {node!r}" in msg or f"node {node}" in msg, msg
    for p in problem:
        assert p in msg, msg


@chains.node
async def length(t: Text) -> int:
    return len(t.text)


@chains.node
async def shout(t: Text) -> Text:
    return Text(text=t.text.upper())


@chains.node
async def labelled(xs: Stream[Text], label: str) -> AsyncIterator[Text]:
    async for x in xs:
        yield Text(text=label + x.text)


@chains.node
async def pair(a: Text, b: Text) -> Text:
    return Text(text=a.text + b.text)


@chains.node
class Model:
    def __init__(self, size: int = 1) -> None:
        self.size = size

    async def __call__(self, t: Text) -> Text:
        return t


# --- edges --------------------------------------------------------------------------


def test_wrong_type_on_an_edge() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(t: Text):
            return shout(length(t))  # <-- edge-type

    check(e, "edge-type", "shout", "input 't' wants Text but node 'length' gives int")


def test_wrong_type_from_a_chain_input() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(n: int):
            return shout(n)  # <-- input-type

    check(e, "input-type", "shout", "wants Text", "chain input 'n' gives int")


def test_unused_output() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(t: Text):
            length(t)  # <-- unused
            return shout(t)

    check(e, "unused", "length", "output is never used")


def test_unused_chain_input() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain  # <-- unused-input
        def c(t: Text, extra: Text):
            return shout(t)

    check(e, "unused-input", None, "chain input 'extra' is never used")


def test_a_stream_passed_where_a_stream_node_wants_one_value() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(xs: Stream[Text], labels: Stream[str]):
            return labelled(xs, labels)  # <-- stream-for-value

    check(e, "stream-for-value", "labelled", "input 'label' wants one value", "is a stream")


@pytest.mark.parametrize("args", [1, 3])
def test_wrong_number_of_inputs(args: int) -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(a: Text, b: Text, d: Text):
            return pair(*[a, b, d][:args])  # <-- arity

    check(e, "arity", "pair", "takes 2 input(s) (a, b)", f"got {args}")


def test_a_plain_value_among_the_inputs() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(a: Text):
            return pair(a, "literal")  # <-- non-handle

    check(e, "non-handle", "pair", "input 'b' must be a chain input or a node's output", "got str")


def test_a_class_template_given_a_plain_value() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(a: Text):
            return pair(a, Model(2)(Text(text="x")))  # <-- template-literal

    check(e, "template-literal", "Model", "must be a chain input or a node's output", "got Text")


def test_a_class_node_called_on_a_handle_before_it_is_created() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(a: Text):
            return Model(a)  # <-- class-not-created

    check(e, "class-not-created", "Model", "create it first", "Model()(x)")


def test_a_handle_from_another_chain() -> None:
    leaked: list[Any] = []

    @chains.chain
    def first(a: Text):
        leaked.append(a)
        return shout(a)

    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def second(b: Text):
            return pair(b, leaked[0])  # <-- other-chain

    check(e, "other-chain", "pair", "comes from another chain")


def test_branching_on_a_handle() -> None:
    with pytest.raises(chains.ChainError, match="symbolic handle: branch on data inside a node"):

        @chains.chain
        def c(a: Text):
            n = length(a)
            if n:
                return shout(a)
            return n


def test_a_chain_must_return_handles() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(a: Text):
            shout(a)
            return "done"  # <-- bad-return

    check(e, "bad-return", None, "must return a node's output", "got str")


def test_reserved_output_names() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.chain
        def c(a: Text):
            return {"error": shout(a)}  # <-- reserved

    check(e, "reserved", None, "output name 'error' is reserved")


# --- node definitions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"replicas": 0}, "replicas must be >= 1, got 0"),
        ({"on_late": "x"}, "on_late must be 'shed' or 'serve', got 'x'"),
        ({"concurrency": 0}, "concurrency must be >= 1, got 0"),
        ({"retries": -1}, "retries must be >= 0, got -1"),
        ({"timeout_ms": 0}, "timeout_ms must be > 0, got 0"),
        ({"budget_ms": -5}, "budget_ms must be > 0, got -5"),
        ({"device": "tpu"}, "device must be 'cpu', 'cuda' or 'auto', got 'tpu'"),
    ],
)
def test_bad_option_values_name_the_problem_and_the_line(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node(**options)  # <-- bad-option
        async def tuned(t: Text) -> Text:
            return t

    check(e, "bad-option", None, problem)


def test_bad_option_values_name_the_node() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node(replicas=0)  # <-- bad-option-node
        async def tuned(t: Text) -> Text:
            return t

    check(e, "bad-option-node", "tuned", "replicas must be >= 1")


def test_an_unknown_option() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node(replica=2)  # <-- unknown-option
        async def tuned(t: Text) -> Text:
            return t

    check(e, "unknown-option", None, "replica")


def test_a_bad_batch_size() -> None:
    with pytest.raises(chains.ChainError, match=r"Batch\.max_size must be >= 1, got 0"):
        chains.Batch(max_size=0)


def test_a_batched_node_must_take_a_list() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node(batch=chains.Batch())  # <-- batch-param
        async def embed(t: Text) -> list[Text]:
            return [t]

    check(e, "batch-param", None, "batched node embed", "parameter 't' must be annotated list[T]", "got Text")


def test_a_batched_node_must_return_a_list() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node(batch=chains.Batch())  # <-- batch-return
        async def embed(ts: list[Text]) -> Text:
            return ts[0]

    check(e, "batch-return", None, "batched node embed must be annotated to return list[T]", "got Text")


def test_a_batched_node_takes_one_parameter() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node(batch=chains.Batch())  # <-- batch-arity
        async def embed(ts: list[Text], us: list[Text]) -> list[Text]:
            return ts

    check(e, "batch-arity", None, "batched node embed must take exactly one list parameter, got 2")


def test_a_stream_node_must_be_an_async_generator() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node  # <-- stream-not-gen
        async def vad(xs: Stream[Text]) -> Text:
            return Text(text="")

    check(e, "stream-not-gen", None, "stream node vad must be an async generator")


def test_a_sync_stream_node_is_refused() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node  # <-- stream-sync
        def vad(xs: Stream[Text]) -> AsyncIterator[Text]:
            return xs

    check(e, "stream-sync", None, "stream node vad must be an `async def` generator")


def test_a_streaming_map_must_be_an_async_generator() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node  # <-- stream-map-not-gen
        async def llm(t: Text) -> AsyncIterator[Text]:
            return None  # type: ignore[return-value]

    check(e, "stream-map-not-gen", None, "streaming map llm must be an `async def` generator")


def test_a_node_without_inputs() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node  # <-- no-input
        async def constant() -> Text:
            return Text(text="")

    check(e, "no-input", None, "node constant takes no input parameter")


def test_a_class_node_without_call() -> None:
    with pytest.raises(chains.ChainError) as e:

        @chains.node  # <-- no-call
        class Empty:
            pass

    check(e, "no-call", None, "must define __call__")


def test_a_filtering_map_annotated_optional_feeds_a_node_wanting_the_value() -> None:
    @chains.node
    async def non_empty(t: Text) -> Text | None:
        return t if t.text else None

    @chains.chain
    def c(t: Text):
        return shout(non_empty(t))

    assert [n.name for n in c.graph.nodes] == ["non_empty", "shout"]


def test_a_valid_chain_compiles_to_the_expected_graph() -> None:
    @chains.chain
    def c(xs: Stream[Text], label: str):
        m = Model(3)
        return {"n": length(m(xs)), "l": labelled(shout(xs), label)}

    g = c.graph
    assert [(i.name, i.stream) for i in g.inputs] == [("xs", True), ("label", False)]
    assert [n.name for n in g.nodes] == ["Model", "length", "shout", "labelled"]
    assert {k: g.source_name(h) for k, h in g.outputs.items()} == {"n": "length", "l": "labelled"}
    assert g.describe()["nodes"][0]["init"] == {"args": ["3"], "kwargs": {}}
