"""The lock through the CLI: `chains lock` writes it, `chains lock --check` exits 1 on
drift, and `chains run` refuses a mismatch before any model loads."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chains.cli import main
from tests.lock_fixtures.helpers import Project, flip_byte

LOADED_AS = "chains_user_tagged"  # the name chains.loader gives tagged.py


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    p = Project(tmp_path, monkeypatch)
    (tmp_path / "pyproject.toml").write_text("")  # the project root the CLI finds chains.lock at
    (tmp_path / "doc.txt").write_text("hello\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield p
    sys.modules.pop(LOADED_AS, None)


def _cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return int(e.value.code or 0)


def test_lock_then_check_then_drift(proj: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("lock", "tagged.py") == 0
    assert proj.lock.exists()
    first = proj.lock.read_bytes()
    assert _cli("lock", "tagged.py:tagged") == 0
    assert proj.lock.read_bytes() == first
    assert _cli("lock", "--check", "tagged.py") == 0
    capsys.readouterr()

    flip_byte(proj.weights)
    assert _cli("lock", "--check", "tagged.py") == 1
    err = capsys.readouterr().err
    assert "chains.lock does not match" in err
    assert "node 'Tagger' model 'fake-tagger' file {project}/models/weights.bin" in err


def test_run_refuses_a_mismatch_before_loading_a_model(
    proj: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("lock", "tagged.py") == 0
    sys.modules.pop(LOADED_AS, None)
    proj.edit("BATCH = 4", "BATCH = 16")
    assert _cli("run", "tagged.py", "--input", "doc.txt") == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "node 'Tagger' option batch.max_size: expected 4, found 16" in err
    assert sys.modules[LOADED_AS].LOADS == []  # refused before Tagger.__init__


def test_run_with_no_verify_and_with_a_matching_lock(
    proj: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("lock", "tagged.py") == 0
    sys.modules.pop(LOADED_AS, None)
    assert _cli("run", "tagged.py", "--input", "doc.txt") == 0
    assert "HELLO!" in capsys.readouterr().out
    proj.edit("BATCH = 4", "BATCH = 16")
    sys.modules.pop(LOADED_AS, None)
    assert _cli("run", "tagged.py", "--input", "doc.txt", "--no-verify") == 0
    loaded = sys.modules[LOADED_AS].LOADS
    assert loaded == [str(proj.models)]


def test_malformed_lock_is_one_line_not_a_traceback(
    proj: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("lock", "tagged.py") == 0
    proj.lock.write_text(proj.lock.read_text()[:200])
    sys.modules.pop(LOADED_AS, None)
    assert _cli("lock", "--check", "tagged.py") == 2
    err = capsys.readouterr().err
    assert err.startswith("chains: error: chains.lock: ") and "Traceback" not in err
