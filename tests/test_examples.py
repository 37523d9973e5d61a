"""The newcomer examples (examples/) run as a user runs them, and say what they promise.

The model-free ones (the mistakes, the custom stream node and its own tests) run on
every ``make test``; the two that load real models are marked ``models`` (the
embedding service loads MiniLM, the fan-out chain one small vLLM engine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_the_mistakes_each_get_an_error_that_points_at_them():
    r = run(str(EXAMPLES / "mistakes.py"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    src = str(EXAMPLES / "mistakes.py")
    expected = [
        ("value logic in the chain body", "HandleMisuse: " + src, "value logic belongs in a node"),
        ("branching on an output", "DefinitionError: " + src, "branch on data inside a node"),
        ("a wrong return type", "WrongResultType: node 'exclaim'", "annotated to return Text"),
        ("returning a value from the chain", "DefinitionError: " + src, "got str 'done'"),
        ("wiring mismatched types", "DefinitionError: " + src, "wants int but node 'shout' gives Text"),
        ("a class node not created", "DefinitionError: " + src, "e.g. Model()(x)"),
        ("the wrong input", "TypeError: chain 'c' input 't' wants Text, got str", ""),
        ("call sync inside async code", "ChainsError: chains.call_sync", "await chains.call"),
        ("a client with no server", "ClientError: cannot connect to ws://127.0.0.1:9", ""),
    ]
    blocks = out.strip().split("\n\n")
    assert len(blocks) == len(expected), out
    lines = (EXAMPLES / "mistakes.py").read_text().splitlines()
    for block, (title, head, tail) in zip(blocks, expected, strict=True):
        assert block.startswith(title + ":"), block
        assert head in block and tail in block, block
        if src in block:  # the line named is the mistake's own
            line = int(block.split(src + ":", 1)[1].split(":", 1)[0])
            assert "c(t: Text)" not in lines[line - 1] and "@chains" not in lines[line - 1], block


def test_the_custom_stream_node_runs_and_its_tests_pass():
    r = run(str(EXAMPLES / "custom_stream_node.py"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["1. HELLO WORLD", "2. BYE", "3. AGAIN"]
    t = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_custom_stream_node.py"))
    assert t.returncode == 0, t.stdout + t.stderr
    assert "3 passed" in t.stdout


@pytest.mark.models
def test_the_embedding_service_serves_typed_embeddings():
    r = run(str(EXAMPLES / "embedding_service.py"), timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "similarity to 'The cat sat on the mat.'" in out
    sims = [
        float(line.split(": ")[1].split()[0]) for line in out.splitlines() if line.startswith("similarity")
    ]
    assert sims[0] > sims[1]  # the kitten is nearer the cat than the revenue is
    assert 'GET /healthz: {"status":"ok"' in out
    assert 'chains_stage_items_total{chain="embed",node="Embed"} 3.0' in out
    sizes = out.split("batch sizes: ", 1)[1].splitlines()[0]
    assert '"p50": ' in sizes and '"p50": 0.' not in sizes  # whole batches, never a fraction


@pytest.mark.models
def test_the_fan_out_chain_returns_one_result(tmp_path: Path):
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "fanout_text.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "CHAINS_HOME": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    first, second = r.stdout.splitlines()[:2]
    assert first.startswith("Result: label=")  # one value, not [Result(...)]
    assert first.split("label=")[1].strip("'") in ("science", "sport", "money")
    assert second.startswith("summary: ") and len(second) > len("summary: ")
    log = (tmp_path / "logs" / "run.log").read_text()
    assert "vllm engine started by" in log  # the engine's output went to the run log
    terminal = [line for line in (r.stdout + r.stderr).splitlines() if "vllm" in line.lower()]
    where = tmp_path / "logs" / "run.log"
    assert terminal == [  # not to the user's terminal, which is told where it went
        f"chains: vllm engine output: {where} (CHAINS_ENGINE_LOGS=terminal shows it here)"
    ]
