"""The lock file: stable bytes, a byte-for-byte round trip, and a clear LockError
(never a traceback) for a malformed or truncated file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from chains import LockError
from chains.lock import check_lock, lock_has_chain, write_lock
from chains.lock.lockfile import dumps, loads, read
from tests.lock_fixtures.helpers import Project


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    return Project(tmp_path, monkeypatch)


def test_lock_round_trips_byte_for_byte(proj: Project) -> None:
    write_lock([proj.chain()], proj.lock)
    first = proj.lock.read_bytes()
    assert dumps(loads(first)).encode() == first  # parse + write again: same bytes
    write_lock([proj.chain()], proj.lock)  # a fresh import, locked again: same bytes
    assert proj.lock.read_bytes() == first
    proj.lock.unlink()
    write_lock([proj.chain()], proj.lock)  # from nothing: same bytes
    assert proj.lock.read_bytes() == first
    assert check_lock([proj.chain()], proj.lock) == []


def test_lock_records_graph_code_models_and_packages(proj: Project) -> None:
    chain = proj.chain()
    write_lock([chain], proj.lock)
    data = tomllib.loads(proj.lock.read_text())
    entry = data["chains"]["tagged"]
    assert entry["graph"] == chain.graph.hash()
    tagger = entry["nodes"]["Tagger"]
    assert tagger["impl"] == "lockfix_tagged:Tagger"
    assert re.fullmatch("[0-9a-f]{32}", tagger["source"])
    assert tagger["options"]["batch"] == {"max_size": 4, "max_wait_ms": 5}
    model = tagger["models"]["fake-tagger"]
    assert (model["package"], model["version"]) == ("fake-models", "1.0")
    weights = model["files"]["{project}/models/weights.bin"]
    assert weights["size"] == 64 * 1024 and re.fullmatch("[0-9a-f]{32}", weights["xxh3"])
    assert "msgspec" in tagger["packages"]  # the module imports it
    assert entry["packages"]["msgspec"] == __import__("msgspec").__version__
    assert entry["nodes"]["shout"]["inputs"] == ["Tagger"]
    assert "models" not in entry["nodes"]["shout"]


def test_locking_one_chain_keeps_the_others(proj: Project, tmp_path: Path) -> None:
    chain = proj.chain()
    write_lock([chain], proj.lock)
    other = tmp_path / "other.py"
    other.write_text(
        "import chains\nfrom chains import Text\n\n"
        "@chains.node\nasync def echo(t: Text) -> Text:\n    return t\n\n"
        "@chains.chain\ndef other(doc: Text):\n    return echo(doc)\n"
    )
    from chains.loader import load_chain

    write_lock([load_chain(str(other))], proj.lock)
    assert set(read(proj.lock).chains) == {"tagged", "other"}
    assert lock_has_chain(proj.lock, chain)


def test_two_chains_with_one_name_are_refused(proj: Project) -> None:
    with pytest.raises(LockError, match="two chains are named 'tagged'"):
        write_lock([proj.chain(), proj.chain()], proj.lock)


def _locked(proj: Project) -> str:
    write_lock([proj.chain()], proj.lock)
    return proj.lock.read_text()


def test_truncated_lock_is_a_lock_error_at_every_cut(proj: Project) -> None:
    text = _locked(proj)
    cuts = sorted({*range(0, len(text), max(1, len(text) // 40)), len(text.rstrip()) - 1})
    for cut in cuts:
        with pytest.raises(LockError) as err:
            loads(text[:cut], name="chains.lock")
        assert str(err.value).startswith("chains.lock: ")


def test_cut_at_a_table_boundary_is_caught_by_the_digest(proj: Project) -> None:
    text = _locked(proj)
    cut = text.index("\n[chains.tagged.nodes.shout]")
    tomllib.loads(text[:cut])  # still valid TOML
    with pytest.raises(LockError, match="truncated or was edited"):
        loads(text[:cut])


def test_not_toml_names_the_line(proj: Project) -> None:
    text = _locked(proj).replace("lock_version = 1", "lock_version = = 1")
    line = text.splitlines().index("lock_version = = 1") + 1
    with pytest.raises(LockError, match=rf"not valid TOML: .*line {line}"):
        loads(text)


def test_wrong_type_names_the_field_and_its_line(proj: Project) -> None:
    text = _locked(proj)
    lines = text.splitlines()
    # the size of the weights file: the first `size =` after its table header
    header = next(i for i, s in enumerate(lines) if "weights.bin" in s)
    at = next(i for i in range(header, len(lines)) if lines[i].startswith("size = "))
    lines[at] = 'size = "big"'
    with pytest.raises(LockError) as err:
        loads("\n".join(lines) + "\n", name="chains.lock")
    msg = str(err.value)
    assert f"line {at + 1}:" in msg
    assert 'chains.tagged.nodes.Tagger.models.fake-tagger.files."{project}/models/weights.bin".size' in msg
    assert "expected `int`, got `str`" in msg


def test_missing_key_names_the_table(proj: Project) -> None:
    lines = _locked(proj).splitlines()
    header = lines.index("[chains.tagged.nodes.shout]")
    at = next(i for i in range(header, len(lines)) if lines[i].startswith("source = "))
    del lines[at]
    with pytest.raises(
        LockError, match=rf"line {header + 1}: chains\.tagged\.nodes\.shout: missing required key `source`"
    ):
        loads("\n".join(lines) + "\n")


def test_unknown_key_and_bad_hash_are_refused(proj: Project) -> None:
    text = _locked(proj)
    with pytest.raises(LockError, match=r"chains\.tagged\.nodes\.shout: unknown key `colour`"):
        loads(text.replace("[chains.tagged.nodes.shout]\n", '[chains.tagged.nodes.shout]\ncolour = "red"\n'))
    graph = re.search(r'graph = "([0-9a-f]+)"', text)
    assert graph is not None
    with pytest.raises(LockError, match=r"chains\.tagged\.graph: expected `str` matching"):
        loads(text.replace(graph.group(1), "not-a-hash"))


def test_a_table_where_a_value_belongs(proj: Project) -> None:
    text = _locked(proj).replace("lock_version = 1\n", 'lock_version = 1\nchains = "all"\n', 1)
    with pytest.raises(LockError):
        loads(text)
    with pytest.raises(LockError, match=r"chains\.tagged: must be a table, got a string"):
        loads('lock_version = 1\ndigest = "00000000000000000000000000000000"\n[chains]\ntagged = "x"\n')


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "empty lock"),
        (b"# just a comment\n", "empty lock"),
        (b'lock_version = 7\ndigest = "x"\n', "lock_version 7 is not the version"),
        (b"lock_version = 1\n\xff\xfe\n", "line 2: not UTF-8"),
        (b'digest = "00000000000000000000000000000000"\n', "missing required key `lock_version`"),
    ],
)
def test_malformed_locks(raw: bytes, match: str) -> None:
    with pytest.raises(LockError, match=match):
        loads(raw)


def test_missing_lock_file_is_a_lock_error(proj: Project) -> None:
    with pytest.raises(LockError, match="does not exist: run `chains lock` first"):
        check_lock([proj.chain()], proj.lock)


def test_an_unreadable_old_lock_is_replaced_by_write_lock(proj: Project) -> None:
    proj.lock.write_text("[[[ garbage")
    write_lock([proj.chain()], proj.lock)
    assert check_lock([proj.chain()], proj.lock) == []
