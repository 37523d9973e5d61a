"""Verification: each kind of drift is refused with a difference naming it
(expected and found), and verification never loads a model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chains.lock import Difference, check_lock, format_differences, write_lock
from chains.lock import collect as collect_mod
from chains.lock.hashing import HashCache
from chains.lock.lockfile import read
from tests.lock_fixtures.helpers import PAST, Project, flip_byte


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    p = Project(tmp_path, monkeypatch)
    write_lock([p.chain()], p.lock)
    return p


def _only(diffs: list[Difference], kind: str) -> Difference:
    assert [d.kind for d in diffs] == [kind], format_differences(diffs)
    return diffs[0]


def test_unchanged_chain_matches_and_loads_nothing(proj: Project) -> None:
    module = proj.load()
    assert check_lock([module.tagged], proj.lock) == []
    assert module.LOADS == []  # Tagger.__init__ never ran


def test_byte_flipped_in_a_model_file(proj: Project) -> None:
    flip_byte(proj.weights)
    d = _only(check_lock([proj.chain()], proj.lock), "file")
    assert d.chain == "tagged"
    assert d.subject == "node 'Tagger' model 'fake-tagger' file {project}/models/weights.bin"
    old = read(proj.lock).chains["tagged"].nodes["Tagger"].models["fake-tagger"].files
    assert d.expected == f"xxh3 {old['{project}/models/weights.bin'].xxh3[:16]}…"
    assert d.found.startswith("xxh3 ") and "contents changed" in d.found
    text = format_differences([d])
    assert text.startswith("chain 'tagged':\n  file")
    assert "weights.bin" in text and "expected xxh3" in text


def test_flipped_byte_found_even_when_the_cache_knew_the_file(proj: Project) -> None:
    cache = HashCache(proj.home / "hashcache.json")
    assert os.path.abspath(proj.weights) in cache._entries  # the lock hashed it and cached it
    flip_byte(proj.weights)  # same size; the write moves its mtime
    os.utime(proj.weights, ns=((PAST + 60) * 10**9,) * 2)
    assert _only(check_lock([proj.chain()], proj.lock), "file").subject.endswith("weights.bin")


def test_model_file_resized_missing_or_added(proj: Project) -> None:
    proj.config.write_text('{"labels": ["PER"]}\n')
    d = _only(check_lock([proj.chain()], proj.lock), "file")
    assert d.subject.endswith("config.json") and d.expected.endswith(" bytes") and d.found.endswith(" bytes")

    proj.config.unlink()
    d = _only(check_lock([proj.chain()], proj.lock), "model")
    assert d.subject == "node 'Tagger' model 'fake-tagger'"
    assert "file {project}/models/config.json is missing" in d.found


def test_edited_node_code(proj: Project) -> None:
    proj.edit("d.text.upper()", "d.text.upper().strip()")
    d = _only(check_lock([proj.chain()], proj.lock), "code")
    assert d.subject == "node 'Tagger' code (lockfix_tagged:Tagger)"
    assert "edited" in d.found


def test_edit_with_the_same_length_is_seen(proj: Project) -> None:
    proj.chain()  # the old text is now in linecache
    proj.edit("d.text.upper()", "d.text.lower()")  # same size, maybe the same mtime tick
    st = proj.source.stat()
    os.utime(proj.source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _only(check_lock([proj.chain()], proj.lock), "code").subject.startswith("node 'Tagger' code")


def test_edited_function_node(proj: Project) -> None:
    proj.edit('t.text + "!"', 't.text + "!!"')
    assert (
        _only(check_lock([proj.chain()], proj.lock), "code").subject
        == "node 'shout' code (lockfix_tagged:shout)"
    )


def test_changed_node_option(proj: Project) -> None:
    proj.edit("BATCH = 4", "BATCH = 8")
    d = _only(check_lock([proj.chain()], proj.lock), "graph")
    assert (d.subject, d.expected, d.found) == ("node 'Tagger' option batch.max_size", "4", "8")
    assert "graph    node 'Tagger' option batch.max_size: expected 4, found 8" in format_differences([d])


def test_option_in_the_decorator_is_not_reported_as_code(proj: Project) -> None:
    proj.edit("max_wait_ms=5)", "max_wait_ms=5), retries=2")
    d = _only(check_lock([proj.chain()], proj.lock), "graph")
    assert (d.subject, d.expected, d.found) == ("node 'Tagger' option retries", "0", "2")


def test_changed_wiring_budget_and_init_argument(proj: Project) -> None:
    proj.edit("@chains.chain(budget_ms=500)", "@chains.chain(budget_ms=700)")
    proj.edit("return shout(Tagger(MODEL_DIR)(doc))", "return {'loud': shout(Tagger(MODEL_DIR + '/')(doc))}")
    diffs = check_lock([proj.chain()], proj.lock)
    subjects = {d.subject: (d.expected, d.found) for d in diffs}
    assert subjects["chain budget_ms"] == ("500.0", "700.0")
    assert subjects["output 'loud'"] == ("(none)", "from 'shout'")
    assert subjects["output 'output'"] == ("from 'shout'", "(none)")
    assert "node 'Tagger' init_args" in subjects


def test_added_node(proj: Project) -> None:
    proj.edit("return shout(Tagger(MODEL_DIR)(doc))", "return shout(shout(Tagger(MODEL_DIR)(doc)))")
    subjects = {d.subject: d.found for d in check_lock([proj.chain()], proj.lock)}
    assert subjects["node 'shout_2'"] == "new (lockfix_tagged:shout)"


def test_different_package_version(proj: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    real = collect_mod.installed_version
    monkeypatch.setattr(collect_mod, "installed_version", lambda d: "99.0" if d == "msgspec" else real(d))
    d = _only(check_lock([proj.chain()], proj.lock), "package")
    import msgspec

    assert d.subject == "package msgspec (imported by Tagger, shout)"  # their module imports it
    assert (d.expected, d.found) == (f"msgspec=={msgspec.__version__}", "msgspec==99.0")


def test_uninstalled_package(proj: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    real = collect_mod.installed_version
    monkeypatch.setattr(collect_mod, "installed_version", lambda d: None if d == "msgspec" else real(d))
    assert _only(check_lock([proj.chain()], proj.lock), "package").found == "msgspec==not-installed"


def test_new_import_is_a_new_package(proj: Project) -> None:
    proj.edit("import msgspec\n", "import msgspec\nimport xxhash  # noqa: F401\n")
    d = _only(check_lock([proj.chain()], proj.lock), "package")
    assert d.subject == "package xxhash (imported by Tagger, shout)"
    assert d.expected == "not imported" and d.found.startswith("xxhash==")


def test_model_package_version_changed(proj: Project) -> None:
    proj.edit('version="1.0"', 'version="1.1"')
    diffs = check_lock([proj.chain()], proj.lock)
    assert [d.kind for d in diffs] == ["code", "model"]  # chains_models is Tagger's code
    d = diffs[1]
    assert (d.subject, d.expected, d.found) == (
        "node 'Tagger' model 'fake-tagger' package",
        "fake-models==1.0",
        "fake-models==1.1",
    )


def test_chain_missing_from_the_lock(proj: Project) -> None:
    proj.edit("def tagged(doc: Text):", "def renamed(doc: Text):")
    chain = proj.load().renamed
    d = _only(check_lock([chain], proj.lock), "chain")
    assert d.chain == "renamed" and "the lock has: tagged" in d.found


def test_several_differences_in_one_report(proj: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    flip_byte(proj.weights)
    proj.edit("BATCH = 4", "BATCH = 2")
    proj.edit('t.text + "!"', 't.text + "?!"')
    monkeypatch.setattr(collect_mod, "installed_version", lambda d: "0.0.1")
    diffs = check_lock([proj.chain()], proj.lock)
    assert {d.kind for d in diffs} == {"graph", "code", "file", "package"}
    text = format_differences(diffs)
    assert text.count("chain 'tagged':") == 1
    assert len(text.splitlines()) == len(diffs) + 1


def test_write_lock_refuses_a_model_it_cannot_hash(proj: Project) -> None:
    from chains import LockError

    proj.weights.unlink()
    with pytest.raises(
        LockError, match=r"node 'Tagger': model 'fake-tagger': file \{project\}/models/weights.bin is missing"
    ):
        write_lock([proj.chain()], proj.lock)


def test_chains_models_that_raises(proj: Project) -> None:
    proj.edit('names = ("weights.bin", "config.json")', "raise RuntimeError('no such voice')")
    diffs = check_lock([proj.chain()], proj.lock)
    assert [d.kind for d in diffs] == ["code", "model"]
    d = diffs[1]
    assert d.subject == "node 'Tagger' models"
    assert "RuntimeError: no such voice" in d.found


def test_second_verification_is_served_from_the_cache(proj: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    from chains.lock import hashing

    calls: list[str] = []
    real = hashing.hash_file
    monkeypatch.setattr(
        hashing, "hash_file", lambda p, chunk=hashing.CHUNK: calls.append(p) or real(p, chunk)
    )
    assert check_lock([proj.chain()], proj.lock) == []
    assert calls == []  # write_lock cached both (old-mtime) files; nothing rehashed
    (proj.home / "hashcache.json").unlink()
    assert check_lock([proj.chain()], proj.lock) == []
    assert len(calls) == 2  # cold: both files hashed
