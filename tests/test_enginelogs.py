"""`chains run --input` keeps the engines' chatter (fd-level writes, child processes,
Python logging and warnings) in a log file and shows the user only its own lines;
``-v`` shows the chatter on the terminal as before.

Both tests run a fresh interpreter: the redirect works on fds 1 and 2, which pytest's
own capture also owns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REDIRECT = textwrap.dedent(
    """
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from chains.enginelogs import engine_logs_to

    with engine_logs_to(Path(sys.argv[1])) as c:
        print("ours-out", file=c.out)
        print("ours-err", file=c.err)
        print("noise-print")
        sys.stderr.write("noise-stderr\\n")
        os.write(1, b"noise-fd1\\n")
        os.write(2, b"noise-fd2\\n")
        logging.getLogger("engine").warning("noise-logging")
        logging.getLogger("engine").info("hidden-info")
        warnings.warn("noise-warning", stacklevel=1)
        child = "import os, sys; print('noise-child', os.environ['VLLM_LOGGING_LEVEL'], file=sys.stderr)"
        subprocess.run([sys.executable, "-c", child], check=True)
    print("after-out")
    sys.stderr.write("after-err\\n")
    """
)

NOISY_CHAIN = textwrap.dedent(
    """
    import logging, os

    import chains
    from chains import Text


    @chains.node
    class Engine:
        def __init__(self):
            os.write(2, b"noise-load-fd2\\n")
            os.write(1, b"noise-load-fd1\\n")
            logging.getLogger("vllm").warning("noise-load-logging")

        async def __call__(self, t: Text) -> Text:
            return Text(text=t.text.upper())


    @chains.chain
    def noisy(doc: Text) -> Text:
        return Engine()(doc)
    """
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CHAINS_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(ROOT)
    env.pop("VLLM_LOGGING_LEVEL", None)
    return env


def test_fd_level_redirect_keeps_our_lines_and_logs_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.log"
    p = subprocess.run(
        [sys.executable, "-c", REDIRECT, str(log)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=ROOT,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "ours-out\nafter-out\n"
    assert p.stderr == "ours-err\nafter-err\n"
    text = log.read_text()
    for noise in ("noise-print", "noise-stderr", "noise-fd1", "noise-fd2", "noise-logging", "noise-warning"):
        assert noise in text, noise
    assert "noise-child WARNING" in text  # a child process inherits the redirect and the quiet env
    assert "hidden-info" not in text  # engines log at WARNING


def _run_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    chain = tmp_path / "noisy.py"
    chain.write_text(NOISY_CHAIN)
    doc = tmp_path / "doc.txt"
    doc.write_text("hello\n")
    return subprocess.run(
        [sys.executable, "-m", "chains", *extra, "run", str(chain), "--input", str(doc)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )


def test_chains_run_shows_the_outputs_and_says_where_the_engine_logs_are(tmp_path: Path) -> None:
    p = _run_cli(tmp_path)
    assert p.returncode == 0, p.stderr
    log = (tmp_path / "home" / "logs" / "run.log").resolve()
    assert p.stdout.splitlines()[0] == f"engine logs: {log} (-v shows them here)"
    assert ": HELLO" in p.stdout and "stage" in p.stdout
    assert "noise" not in p.stdout + p.stderr
    text = log.read_text()
    for noise in ("noise-load-fd2", "noise-load-fd1", "noise-load-logging"):
        assert noise in text, noise


def test_verbose_shows_the_engine_logs_on_the_terminal(tmp_path: Path) -> None:
    p = _run_cli(tmp_path, "-v")
    assert p.returncode == 0, p.stderr
    assert ": HELLO" in p.stdout
    assert "engine logs:" not in p.stdout
    assert "noise-load-fd2" in p.stderr and "noise-load-logging" in p.stderr
    assert not (tmp_path / "home" / "logs" / "run.log").exists()
