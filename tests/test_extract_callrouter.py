"""The call-router demo's wiring and branches, without models: the chain compiles
(both extractors checked at definition), and each department answers its own
intent only, so the merge speaks exactly one confirmation per call."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import msgspec

from chains import Text

ROOT = Path(__file__).resolve().parents[1]


def load() -> Any:
    spec = importlib.util.spec_from_file_location(
        "chains_demo_callrouter_unit", ROOT / "demos" / "callrouter.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the demo's annotations through it
    spec.loader.exec_module(module)
    return module


def test_the_chain_compiles_with_a_branch_per_intent() -> None:
    m = load()
    names = [n.name for n in m.callrouter.graph.nodes]
    assert {"billing", "support", "cancel", "merge", "PiperTTS"} <= set(names)
    assert sum(n.startswith("VLLMExtract") for n in names) == 2
    assert set(m.callrouter.graph.outputs) == {"transcript", "call", "reply", "audio"}


def test_each_branch_answers_only_its_own_intent() -> None:
    m = load()
    caller = m.Caller(name="Maria Lopez", issue="charged twice")
    branches = {"billing": m.billing, "support": m.support, "cancel": m.cancel}
    for intent in m.INTENTS:
        c = m.Call(intent=intent, caller=caller)
        answers = {k: b(c) for k, b in branches.items()}
        assert [k for k, v in answers.items() if v is not None] == [intent]
        reply = answers[intent]
        assert isinstance(reply, Text) and "Maria" in reply.text


def test_examples_cover_every_intent_and_fit_the_schema() -> None:
    m = load()
    assert {label for _, label in m.INTENT_EXAMPLES} == set(m.INTENTS)
    for _, caller in m.CALLER_EXAMPLES:
        assert msgspec.json.decode(msgspec.json.encode(caller), type=m.Caller) == caller
    assert m.first_name(m.Caller(name=" ", issue="x")) == "there"
