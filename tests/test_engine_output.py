"""From Python (not ``chains run``) a model engine's output goes to the same run log:
what its processes write, then and later, and its Python logger in this process;
the user's own prints stay on the terminal. ``CHAINS_ENGINE_LOGS=terminal`` keeps it
all on the terminal.

The engine here is a stand-in with the same habits as vLLM's (a child process that
inherits fds 1 and 2 and keeps writing after the start, a ``vllm`` logger with a
stream handler on stdout), in a fresh interpreter: the fds are pytest's otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import logging, subprocess, sys
    from chains.enginelogs import engine_output_to_log

    engine_log = logging.getLogger("vllm")
    engine_log.addHandler(logging.StreamHandler(sys.stdout))
    engine_log.propagate = False
    print("user-before", flush=True)
    child = (
        "import sys; print('child-early', flush=True); sys.stdin.readline();"
        "print('child-late', flush=True); print('child-err', file=sys.stderr)"
    )
    with engine_output_to_log("vllm"):
        engine = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE)
        engine_log.warning("parent-during")
    engine_log.warning("parent-after")
    print("user-after", flush=True)
    engine.communicate(b"go\\n")  # the engine process writes on, after the start
    """
)


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "CHAINS_ENGINE_LOGS"}
    full.update(CHAINS_HOME=str(tmp_path), PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=full, cwd=ROOT
    )


def test_engine_output_goes_to_the_run_log_and_the_users_prints_do_not(tmp_path: Path):
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "logs" / "run.log").read_text()
    for line in ("child-early", "child-late", "child-err", "parent-during", "parent-after"):
        assert line in log, line
        assert line not in r.stdout + r.stderr.replace(str(tmp_path), ""), line
    assert r.stdout.split() == ["user-before", "user-after"]
    assert f"vllm engine output: {tmp_path / 'logs' / 'run.log'}" in r.stderr  # said once


def test_engine_logs_terminal_keeps_it_on_the_terminal(tmp_path: Path):
    r = run(tmp_path, CHAINS_ENGINE_LOGS="terminal")
    assert r.returncode == 0, r.stderr
    for line in ("child-early", "child-late", "parent-during", "parent-after", "user-after"):
        assert line in r.stdout, line
    assert "child-err" in r.stderr
    assert not (tmp_path / "logs" / "run.log").exists()
