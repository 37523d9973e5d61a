"""The `chains` command: one-line errors with a non-zero exit, file mode, graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chains_cmd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chains", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_run_file_mode_prints_outputs_and_figures(tmp_path: Path):
    doc = tmp_path / "doc.txt"
    doc.write_text("One sentence here. And a second one! A third?")
    r = chains_cmd("run", "demos/textstats.py", "--input", str(doc))
    assert r.returncode == 0, r.stderr
    assert "sentences: One sentence here." in r.stdout
    assert "summary: 3 sentences, 9 words" in r.stdout
    assert "word_counts" in r.stdout  # the per-stage table


def test_graph_prints_mermaid():
    r = chains_cmd("graph", "demos/textstats.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("flowchart LR")
    assert "word_counts" in r.stdout and "==>" in r.stdout


def test_missing_file_is_one_line_error():
    r = chains_cmd("run", "no/such/chain.py", "--input", "x.txt")
    assert r.returncode == 2
    assert r.stderr.strip() == "chains: error: no such file: no/such/chain.py"


def test_unknown_chain_name_lists_the_chains():
    r = chains_cmd("graph", "demos/textstats.py:nope")
    assert r.returncode == 2
    assert "has no chain 'nope'; it has textstats" in r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_chain_definition_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import chains\n"
        "from chains import Text\n"
        "@chains.node\n"
        "async def n(x: int) -> int:\n"
        "    return x\n"
        "@chains.chain\n"
        "def c(doc: Text):\n"
        "    return n(doc)\n"
    )
    r = chains_cmd("graph", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert line.startswith("chains: error: ")
    assert f"{bad}:8" in line and "node 'n'" in line and "wants int" in line


def test_bad_input_file_is_one_line_error(tmp_path: Path):
    wav = tmp_path / "broken.wav"
    wav.write_bytes(b"not a wav")
    r = chains_cmd("run", "demos/textstats.py", "--input", str(wav))
    assert r.returncode == 2
    assert "not a readable wav file" in r.stderr and "Traceback" not in r.stderr


def test_unknown_benchmark_lists_them():
    r = chains_cmd("bench", "nope")
    assert r.returncode == 2
    assert "overhead" in r.stderr and "batching" in r.stderr
