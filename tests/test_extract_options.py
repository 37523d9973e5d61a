"""VLLMExtract / VLLMChat options, checked when a chain is defined (no model loads),
and the shared-engine registry on a fake engine (no vLLM)."""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

import anyio
import msgspec
import pytest

import chains
from chains import Text
from nodes import VLLMChat, VLLMExtract, vllm_engine
from nodes.llm_options import ENGINE_OPTIONS, SAMPLING_OPTIONS, check_options, make_constraint


class Ticket(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(max_length=30)]
    intent: Literal["billing", "support", "cancel"]
    account: int | None = None


def define(template: Any) -> chains.Chain:
    @chains.chain
    def c(t: Text):
        return template(t)

    return c


# --- definition-time checks -------------------------------------------------------------
def test_a_valid_extractor_defines_a_chain_without_loading_anything() -> None:
    c = define(VLLMExtract(schema=Ticket, system="x", max_tokens=64, enable_prefix_caching=True))
    assert len(c.graph.nodes) == 1
    assert vllm_engine.registry() == {}


def test_unknown_engine_option_names_the_node_the_option_and_the_valid_ones() -> None:
    with pytest.raises(chains.ChainError) as e:
        VLLMExtract(schema=Ticket, quantisation="fp8")
    msg = str(e.value)
    assert "'VLLMExtract'" in msg and "'quantisation'" in msg
    assert "did you mean 'quantization'" in msg
    assert "enable_prefix_caching" in msg and "temperature" in msg  # the valid ones are listed
    assert __file__ in msg  # where the node was defined


def test_the_chat_checks_its_options_too() -> None:
    with pytest.raises(chains.ChainError, match=r"'VLLMChat'.*unknown option 'max_token'"):
        VLLMChat(system="x", max_token=5)
    with pytest.raises(chains.ChainError, match="history_turns"):
        VLLMChat(history_turns=-1)
    with pytest.raises(chains.ChainError, match="bad arguments"):
        VLLMChat("a", "b", "c")  # too many positional arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs a constraint"),
        ({"schema": object()}, "has no JSON schema"),
        ({"schema": {"type": "object"}}, "takes a type"),
        ({"choice": []}, "non-empty list"),
        ({"choice": "abc"}, "non-empty list"),
        ({"choice": ["a", "a"]}, "twice"),
        ({"regex": "[0-9"}, "not a valid regular expression"),
        ({"regex": "(?=a)b"}, "cannot constrain decoding"),  # the Python re takes it, the compiler does not
        ({"grammar": "root ::= missing"}, "cannot constrain decoding"),
        ({"grammar": "  "}, "non-empty"),
        ({"schema": Ticket, "choice": ["a"]}, "give one of"),
        ({"choice": ["a", "b"], "examples": [("x", "c")]}, r"examples\[0\] breaks the constraint"),
        ({"schema": Ticket, "examples": [("x", {"name": "A", "intent": "refund"})]}, "examples"),
        ({"schema": Ticket, "temperature": -1}, "temperature"),
        ({"schema": Ticket, "top_p": 0}, "top_p"),
        ({"schema": Ticket, "max_tokens": 0}, "max_tokens"),
        ({"schema": Ticket, "enable_prefix_caching": "yes"}, "True or False"),
        ({"schema": Ticket, "speculative_config": "ngram"}, "dict"),
        ({"schema": Ticket, "gpu": 0.5, "gpu_memory_utilization": 0.3}, "either gpu or"),
        ({"schema": Ticket, "gpu": 1.5}, "share of the GPU"),
        ({"choice": ["a", "b"], "prompt_style": "raw"}, "prompt_style"),
    ],
)
def test_bad_options_are_chain_errors_at_definition(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(chains.ChainError, match=match) as e:
        VLLMExtract(**kwargs)
    assert e.value.node == "VLLMExtract"


def test_examples_may_be_structs_or_dicts_of_the_schema() -> None:
    VLLMExtract(
        schema=Ticket,
        examples=[
            ("I'm Bo", Ticket(name="Bo", intent="billing")),
            ("Al here", {"name": "Al", "intent": "cancel"}),
        ],
    )


def test_inputs_given_at_creation_are_refused_by_the_framework() -> None:
    with pytest.raises(chains.ChainError, match="class node"):

        @chains.chain
        def c(t: Text):
            return VLLMExtract(t)


def test_option_split_and_constraint_params() -> None:
    engine, sampling = check_options("n", {"max_model_len": 1024, "temperature": 0.2, "kv_cache_gib": 2})
    assert engine == {"max_model_len": 1024, "kv_cache_gib": 2} and sampling == {"temperature": 0.2}
    assert not set(ENGINE_OPTIONS) & set(SAMPLING_OPTIONS)
    c = make_constraint("n", schema=Ticket)
    assert c is not None and c.kind == "json"
    p = c.params()
    assert sorted(p["json"]["properties"]["intent"]["enum"]) == ["billing", "cancel", "support"]
    assert "$ref" not in p["json"]  # the top-level reference is inlined
    assert make_constraint("n") is None
    assert make_constraint("n", choice=["a", "b"]).params() == {"choice": ["a", "b"]}  # type: ignore[union-attr]


def test_constraint_decode_validates() -> None:
    c = make_constraint("n", schema=Ticket)
    assert c is not None
    assert c.decode('{"name":"Al","intent":"cancel"}') == Ticket(name="Al", intent="cancel")
    with pytest.raises(ValueError, match="intent"):
        c.decode('{"name":"Al","intent":"refund"}')
    with pytest.raises(ValueError):
        c.decode('{"name":"Al","inte')  # cut short
    r = make_constraint("n", regex=r"[0-9]{3}-[0-9]{4}")
    assert r is not None and r.decode("555-1234") == "555-1234"
    with pytest.raises(ValueError, match="does not match"):
        r.decode("555-12345")
    lead = msgspec.structs.replace(make_constraint("n", choice=["a.b", "c"]), lead_space=True)  # type: ignore[arg-type]
    assert lead.params() == {"regex": r" ?(a\.b|c)"}
    assert lead.decode(" a.b") == "a.b" and lead.decode("c") == "c"
    ch = make_constraint("n", choice=["yes", "no"])
    assert ch is not None
    with pytest.raises(ValueError, match="not one of"):
        ch.decode("maybe")


def test_engine_args_defaults_and_gpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_engine, "on_gpu", lambda: False)
    args = vllm_engine.engine_args("/m", {"enable_prefix_caching": True, "gpu": 0.4})
    assert args["model"] == "/m" and args["enforce_eager"] and args["enable_prefix_caching"]
    assert "gpu_memory_utilization" not in args and "gpu" not in args  # meaningless on CPU
    assert args["dtype"] in ("float32", "bfloat16")
    monkeypatch.setattr(vllm_engine, "on_gpu", lambda: True)
    assert vllm_engine.engine_args("/m", {"gpu": 0.4})["gpu_memory_utilization"] == 0.4
    assert vllm_engine.engine_args("/m", {})["gpu_memory_utilization"] == 0.3
    assert vllm_engine.engine_args("/m", {"gpu_memory_utilization": 0.6})["gpu_memory_utilization"] == 0.6
    a, b = object(), object()
    assert vllm_engine.engine_args("/m", {}, a) == vllm_engine.engine_args("/m", {}, b)  # shared
    own_a = vllm_engine.engine_args("/m", {"share_engine": False}, a)
    assert own_a != vllm_engine.engine_args("/m", {"share_engine": False}, b)  # an engine each


# --- the shared-engine registry on a fake engine ------------------------------------------
class FakeEngine:
    def __init__(self) -> None:
        self.errored = False
        self.shut = 0

    def shutdown(self) -> None:
        self.shut += 1


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``_build`` replaced by one that waits for ``go`` (a controllable start time)."""
    box: dict[str, Any] = {"built": [], "go": threading.Event(), "fail": None}
    box["go"].set()

    def build(entry: vllm_engine.SharedEngine) -> None:
        box["go"].wait(5)
        if box["fail"]:
            raise box["fail"]
        entry.engine = FakeEngine()
        box["built"].append(entry.engine)

    monkeypatch.setattr(vllm_engine, "_build", build)
    yield box
    assert vllm_engine.registry() == {}, "a test left an engine in the registry"


def test_one_engine_per_key_refcounted(fake_build: dict[str, Any]) -> None:
    async def go() -> None:
        a = await vllm_engine.acquire({"model": "m", "x": 1})
        b = await vllm_engine.acquire({"x": 1, "model": "m"})  # same arguments, any order
        c = await vllm_engine.acquire({"model": "m", "x": 2})
        assert a is b and a is not c and len(fake_build["built"]) == 2
        engine = a.engine
        vllm_engine.release(a)
        assert engine.shut == 0 and len(vllm_engine.registry()) == 2
        vllm_engine.release(b)
        assert engine.shut == 1 and len(vllm_engine.registry()) == 1
        vllm_engine.release(c)

    anyio.run(go)


def test_concurrent_starts_build_once(fake_build: dict[str, Any]) -> None:
    async def go() -> None:
        fake_build["go"].clear()
        got: list[vllm_engine.SharedEngine] = []

        async def one() -> None:
            got.append(await vllm_engine.acquire({"model": "m"}))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            await anyio.sleep(0.05)
            assert got == []  # all wait for the one build
            fake_build["go"].set()
        assert len(fake_build["built"]) == 1 and got[0] is got[1] is got[2] and got[0].users == 3
        for e in got:
            vllm_engine.release(e)

    anyio.run(go)


def test_a_dead_engine_is_replaced_and_released_by_its_holders(fake_build: dict[str, Any]) -> None:
    async def go() -> None:
        old = await vllm_engine.acquire({"model": "m"})
        old_engine = old.engine
        old_engine.errored = True  # the engine process died
        assert old.dead
        new = await vllm_engine.acquire({"model": "m"})
        assert new is not old and not new.dead and len(fake_build["built"]) == 2
        vllm_engine.release(old)  # its last holder: shut down, the new one untouched
        assert old_engine.shut == 1 and vllm_engine.registry() == {new.key: new}
        vllm_engine.release(new)

    anyio.run(go)


def test_a_failed_start_is_an_error_for_every_waiter_and_leaves_nothing(fake_build: dict[str, Any]) -> None:
    async def go() -> None:
        fake_build["fail"] = RuntimeError("no memory")
        with pytest.raises(RuntimeError, match="no memory"):
            await vllm_engine.acquire({"model": "m"})
        fake_build["fail"] = None
        e = await vllm_engine.acquire({"model": "m"})  # a later start tries again
        vllm_engine.release(e)

    anyio.run(go)


def test_a_ray_replicas_gpu_share_sizes_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_engine, "on_gpu", lambda: True)
    monkeypatch.setenv("CHAINS_GPU_SHARE", "0.5")
    assert vllm_engine.engine_args("/m", {})["gpu_memory_utilization"] == 0.5
    assert vllm_engine.engine_args("/m", {"gpu": 0.25})["gpu_memory_utilization"] == 0.25  # the node's own
