"""`chains lock --check` with no FILE checks every chain the lock names (it used to be
a usage error); `chains lock` with no FILE re-locks them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from chains.cli import main
from chains.lock import locked_targets, read
from chains.lock.lockfile import dumps, make_lock
from tests.lock_fixtures.helpers import Project, flip_byte

LOADED_AS = ("chains_user_tagged", "chains_user_other")


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    p = Project(tmp_path, monkeypatch)
    (tmp_path / "pyproject.toml").write_text("")
    sub = tmp_path / "more"
    sub.mkdir()
    # a second chain, in another folder, with another name
    (sub / "other.py").write_text(p.source.read_text().replace("def tagged(", "def other("))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield p
    for m in LOADED_AS:
        sys.modules.pop(m, None)


def _cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return int(e.value.code or 0)


def test_the_lock_records_each_chains_file(proj: Project) -> None:
    assert _cli("lock", "tagged.py", "more/other.py") == 0
    lock = read(proj.lock)
    assert {n: e.file for n, e in lock.chains.items()} == {"tagged": "tagged.py", "other": "more/other.py"}
    assert sorted(locked_targets(proj.lock)) == sorted(
        [f"{proj.root / 'tagged.py'}:tagged", f"{proj.root / 'more' / 'other.py'}:other"]
    )


def test_check_with_no_file_checks_every_chain_in_the_lock(
    proj: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("lock", "tagged.py", "more/other.py") == 0
    capsys.readouterr()
    assert _cli("lock", "--check") == 0
    assert "matches (2 chain(s))" in capsys.readouterr().out

    # drift in the second file only: the plain check finds it
    other = proj.root / "more" / "other.py"
    other.write_text(other.read_text().replace("BATCH = 4", "BATCH = 16"))
    for m in LOADED_AS:
        sys.modules.pop(m, None)
    assert _cli("lock", "--check") == 1
    err = capsys.readouterr().err
    assert "other" in err and "batch.max_size: expected 4, found 16" in err

    # `chains lock` with no FILE re-locks every chain the lock names
    for m in LOADED_AS:
        sys.modules.pop(m, None)
    assert _cli("lock") == 0
    for m in LOADED_AS:
        sys.modules.pop(m, None)
    assert _cli("lock", "--check") == 0


def test_check_with_no_file_sees_model_drift(proj: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("lock", "tagged.py") == 0
    flip_byte(proj.weights)
    assert _cli("lock", "--check") == 1
    assert "model 'fake-tagger' file {project}/models/weights.bin" in capsys.readouterr().err


def test_check_with_no_lock_names_the_fix(proj: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("lock", "--check") == 2
    err = capsys.readouterr().err
    assert "chains.lock does not exist" in err and "chains lock FILE" in err
    assert _cli("lock") == 2


def test_a_lock_written_before_files_were_recorded_says_so(
    proj: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("lock", "tagged.py") == 0
    # the same lock as a chains that did not record files would have written it
    lock = read(proj.lock)
    entries = {n: msgspec.structs.replace(e, file="") for n, e in lock.chains.items()}
    proj.lock.write_text(dumps(make_lock(entries)))
    assert "file = " not in proj.lock.read_text()
    assert _cli("lock", "--check", "tagged.py") == 0  # naming the file still works
    capsys.readouterr()
    assert _cli("lock", "--check") == 2
    assert "does not record its file" in capsys.readouterr().err
