"""Keep the model engines' chatter out of ``chains run``'s console output.

Why at the file-descriptor level: vLLM, torch, transformers, ctranslate2 and
onnxruntime log through Python ``logging``, ``warnings``, tqdm, C++ ``std::cerr`` and,
for vLLM, worker processes that inherit the parent's stdout and stderr. Redirecting
``sys.stdout``/``sys.stderr`` catches only the first few; pointing fds 1 and 2 at the
log file catches all of them, including what child processes write. The lines that
are ours (the transcript, the reply, the stage table, the one-line errors) go to
duplicates of the original terminal fds, which the redirect does not touch.

``-v`` on the command line skips all this and the engines log to stderr as usual.

From Python (a script calling ``chains.call``, not ``chains run``) the user's own
output must stay on the terminal, so fds 1 and 2 are not taken for the whole run:
``engine_output_to_log`` points them at the same log file only while an engine
starts its processes (which keep the file as their stdout and stderr) and moves the
engine's Python logger there, then gives the terminal back. ``CHAINS_ENGINE_LOGS``
says otherwise: ``terminal`` (what ``-v`` means) or another log file's path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from chains.home import chains_home

# Set before any engine is imported (the engines read them at import time); a value
# the user exported wins.
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "warning",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TQDM_DISABLE": "1",  # progress bars (weights loading, tokenizers)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # its fork warning
    "ORT_LOGGING_LEVEL": "3",  # onnxruntime: errors only
}


ENGINE_LOGS_ENV = "CHAINS_ENGINE_LOGS"  # "terminal", or a log file's path
_redirected: Path | None = None  # the log fds 1 and 2 point at inside engine_logs_to
_told = False  # the user was told once where the engine output goes


def default_log_path() -> Path:
    """``$CHAINS_HOME/logs/run.log`` (rewritten by each run)."""
    return chains_home() / "logs" / "run.log"


@dataclass
class Console:
    """The terminal, as it was before the redirect: write the user's lines here."""

    out: TextIO
    err: TextIO
    log_path: Path | None = None


@contextlib.contextmanager
def engine_logs_to(path: Path | None = None) -> Iterator[Console]:
    """Send everything written to fds 1 and 2 (and Python warnings and logging at
    WARNING and above) to ``path`` while the block runs; yield the terminal streams.

    On exit the fds are restored, so a one-line error printed afterwards reaches the
    terminal. Child processes started inside the block keep writing to the log.
    """
    path = path or default_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    log = open(path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in finally
    log.write(f"# chains run: {' '.join(sys.argv)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    out, own_out = _terminal(sys.stdout, 1)
    err, own_err = _terminal(sys.stderr, 2)
    console = Console(out=out, err=err, log_path=path)
    root = logging.getLogger()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or logging.WARNING, logging.WARNING))
    logging.captureWarnings(True)
    global _redirected
    try:
        with _fds_to(log):
            _redirected = path
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("default")  # each distinct warning once, into the log
                    yield console
            finally:
                _redirected = None
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(old_level)
        for stream, own in ((out, own_out), (err, own_err)):
            if own:
                stream.close()
            else:
                stream.flush()
        log.close()


@contextlib.contextmanager
def engine_output_to_log(logger: str = "vllm") -> Iterator[Path | None]:
    """Around the start of a model engine's processes (vLLM's): what they write goes to
    the run log (``$CHAINS_HOME/logs/run.log``, or ``CHAINS_ENGINE_LOGS``'s path) as it
    does under ``chains run``, and so does the engine's Python ``logger`` in this
    process afterwards; the terminal is this process's again when the block ends.
    Yields the log's path, or None when the output stays where it is (inside
    ``chains run``'s own redirect, or ``CHAINS_ENGINE_LOGS=terminal``)."""
    want = os.environ.get(ENGINE_LOGS_ENV, "")
    if _redirected is not None or want == "terminal":
        yield _redirected
        return
    path = Path(want) if want else default_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    global _told
    with open(path, "a", buffering=1, encoding="utf-8") as log:
        log.write(
            f"# {logger} engine started by {' '.join(sys.argv)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n"
        )
        with _fds_to(log):
            yield path
    _log_to_file(logging.getLogger(logger), path)
    if not _told:
        _told = True
        print(
            f"chains: {logger} engine output: {path} ({ENGINE_LOGS_ENV}=terminal shows it here)",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _fds_to(log: TextIO) -> Iterator[None]:
    """Point fds 1 and 2 at ``log`` while the block runs (what was buffered for the
    terminal flushed first, and the block's own output flushed into the log), then give
    them back."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, dup in saved.items():
            os.dup2(dup, fd)
            os.close(dup)


def _log_to_file(log: logging.Logger, path: Path) -> None:
    """Replace ``log``'s handlers that write to the terminal by one on ``path``."""
    terminal = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for h in list(log.handlers):
        if type(h) is logging.StreamHandler and h.stream in terminal:
            log.removeHandler(h)
            f = logging.FileHandler(path, encoding="utf-8")
            f.setLevel(h.level)
            f.setFormatter(h.formatter)
            log.addHandler(f)


def _terminal(stream: TextIO, fd: int) -> tuple[TextIO, bool]:
    """A stream to the terminal that survives the redirect of ``fd``: a duplicate of
    the fd when ``stream`` writes to it, else ``stream`` itself (a test runner's or an
    embedding application's capture object, which the redirect does not reach)."""
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8"), True
    except (AttributeError, OSError, ValueError):  # no fd behind it
        pass
    return stream, False


__all__ = [
    "ENGINE_LOGS_ENV",
    "QUIET_ENV",
    "Console",
    "default_log_path",
    "engine_logs_to",
    "engine_output_to_log",
]
