"""Structured output defaults, without a model: compact JSON is the engine default, a
schema's reply-length bound, engine-option errors named as such, and the extractor's
output typed by its schema in the graph."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

import chains
from chains import Text
from nodes import VLLMExtract, vllm_engine
from nodes.jsonbound import max_chars
from nodes.llm_options import _json_schema, make_constraint


class Item(msgspec.Struct):
    sku: Annotated[str, msgspec.Meta(max_length=8)]
    qty: Annotated[int, msgspec.Meta(ge=1, le=99)]


class Order(msgspec.Struct):
    items: Annotated[list[Item], msgspec.Meta(max_length=2)]
    rush: bool
    size: Literal["small", "large"] | None = None


class Free(msgspec.Struct):
    item: str
    quantity: int


def test_the_engine_writes_compact_json_unless_told_otherwise() -> None:
    assert vllm_engine.structured_config(None) == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert vllm_engine.structured_config({"backend": "guidance"})["disable_any_whitespace"] is True
    # a backend that cannot drop whitespace gets no such key (vLLM would refuse it)
    assert vllm_engine.structured_config({"backend": "outlines"}) == {"backend": "outlines"}
    assert vllm_engine.structured_config({"disable_any_whitespace": False})["disable_any_whitespace"] is False
    args = vllm_engine.engine_args("/m", {})
    assert args["structured_outputs_config"]["disable_any_whitespace"] is True


def test_a_bounded_schema_has_a_length_ceiling_that_holds_for_its_longest_value() -> None:
    n, why = max_chars(_json_schema("x", Order))
    assert why == "" and n is not None
    longest = Order(items=[Item("\u00e9" * 8, 99)] * 2, rush=False, size="small")
    text = msgspec.json.encode(longest).decode().replace("\u00e9", "\\u00e9")  # the escaped form
    assert len(text) <= n


def test_an_unbounded_field_is_named() -> None:
    assert max_chars(_json_schema("x", Free)) == (None, "$.item (a string without maxLength)")

    class Loose(msgspec.Struct):
        n: int

    assert "$.n (an integer" in max_chars(_json_schema("x", Loose))[1]


def test_engine_option_errors_name_the_option_and_the_engines_message() -> None:
    e = ValueError(
        "1 validation error for VllmConfig\nStructuredOutputsConfig\n  Value error, only for guidance"
    )
    err = vllm_engine.option_error(e, {"model": "/m", "structured_outputs_config": {"x": 1}, "dtype": "auto"})
    assert isinstance(err, chains.ModelError)
    assert "structured_outputs_config={'x': 1}" in str(err) and "only for guidance" in str(err)
    assert "pip install" not in str(err)
    assert vllm_engine.option_error(ValueError("disk full"), {"model": "/m", "dtype": "auto"}) is None


def test_the_extractor_output_is_typed_by_its_schema() -> None:
    @chains.node
    def want_order(o: Order) -> str:
        return str(o)

    @chains.node
    def want_text(t: Text) -> str:
        return t.text

    @chains.chain
    def ok(t: Text):
        return want_order(VLLMExtract(schema=Order)(t))

    assert ok.graph.outputs
    with pytest.raises(chains.ChainError, match="wants Text but node 'VLLMExtract' gives Order"):

        @chains.chain
        def bad(t: Text):
            return want_text(VLLMExtract(schema=Order)(t))

    with pytest.raises(chains.ChainError, match="gives str"):

        @chains.chain
        def bad_choice(t: Text):
            return want_text(VLLMExtract(choice=["a", "b"])(t))


def test_the_evaluation_set_is_broad_and_its_schemas_bound_their_replies() -> None:
    from benchmarks import structured_eval as ev
    from nodes.extract import example_reply

    assert len(ev.SCHEMAS) >= 5 and sum(len(v) for v in ev.INPUTS.values()) >= 200
    for name, schema in ev.SCHEMAS.items():
        assert len(set(ev.INPUTS[name])) == len(ev.INPUTS[name]), name  # no input twice
        n, why = max_chars(_json_schema(name, schema))
        assert n is not None, why  # a constrained reply is never cut
        c = VLLMExtract(schema=schema)  # defines (the constraint compiles)
        assert c is not None
        for _, value in ev.EXAMPLES[name]:
            example_reply(make_constraint(name, schema=schema), value)  # the examples validate
