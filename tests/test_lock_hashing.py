"""Hashing: streamed xxh3-128 with flat memory, cached by (path, size, mtime)."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest
import xxhash

from chains.lock import hashing
from chains.lock.hashing import HashCache, hash_file


def _file(path: Path, data: bytes, mtime_s: int = 1_600_000_000) -> Path:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def test_hash_file_is_xxh3_128_of_the_bytes_across_chunk_boundaries(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    f = _file(tmp_path / "w.bin", data)
    for chunk in (1, 1024, 3 * 1024 + 17, 1 << 20):
        fh = hash_file(f, chunk=chunk)
        assert fh.xxh3 == xxhash.xxh3_128_hexdigest(data)
        assert fh.size == len(data)
    assert hash_file(_file(tmp_path / "empty", b"")).size == 0


def test_memory_stays_flat_whatever_the_file_size(tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    with open(f, "wb") as out:
        for _ in range(24):
            out.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        hash_file(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * (1 << 20), f"hashing a 24 MiB file peaked at {peak} bytes"


def test_cache_hit_after_reload_and_rehash_of_a_stale_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = hashing.hash_file
    monkeypatch.setattr(
        hashing, "hash_file", lambda p, chunk=hashing.CHUNK: calls.append(str(p)) or real(p, chunk)
    )
    f = _file(tmp_path / "w.bin", b"a" * 5000)
    cache_path = tmp_path / "home" / "hashcache.json"

    c1 = HashCache(cache_path)
    first = c1.hash(f)
    c1.save()
    assert len(calls) == 1 and cache_path.exists()

    c2 = HashCache(cache_path)  # a later process: served from the file
    assert c2.hash(f) == first
    assert (c2.hits, c2.misses, len(calls)) == (1, 0, 1)

    # Same size, new contents, new mtime: the entry is stale and the file is hashed again.
    _file(f, b"b" * 5000, mtime_s=1_600_000_100)
    again = c2.hash(f)
    assert again.size == first.size and again.xxh3 != first.xxh3
    assert again.xxh3 == xxhash.xxh3_128_hexdigest(b"b" * 5000)
    assert (c2.misses, len(calls)) == (1, 2)
    c2.save()
    stored = json.loads(cache_path.read_text())["files"][os.path.abspath(f)]
    assert stored == {"size": 5000, "mtime_ns": 1_600_000_100 * 10**9, "xxh3": again.xxh3}


def test_a_file_modified_just_now_is_not_cached(tmp_path: Path) -> None:
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"x" * 100)  # mtime = now: a same-tick rewrite could keep it
    c = HashCache(tmp_path / "cache.json")
    c.hash(f)
    c.hash(f)
    assert c.misses == 2 and len(c) == 0


def test_cache_file_lives_in_chains_home_and_is_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINS_HOME", str(tmp_path / "ch"))
    c = HashCache()
    assert c.path == tmp_path / "ch" / "hashcache.json"
    c.hash(_file(tmp_path / "w.bin", b"1234"))
    c.save()
    assert [p.name for p in (tmp_path / "ch").iterdir()] == ["hashcache.json"]  # no temp file left


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "files": {}}', '["x"]', ""])
def test_a_corrupt_cache_is_ignored_not_trusted(tmp_path: Path, content: str) -> None:
    cache_path = tmp_path / "hashcache.json"
    cache_path.write_text(content)
    f = _file(tmp_path / "w.bin", b"data")
    c = HashCache(cache_path)
    assert c.hash(f).xxh3 == xxhash.xxh3_128_hexdigest(b"data")
    assert c.misses == 1
    c.save()
    assert json.loads(cache_path.read_text())["format"] == hashing.CACHE_FORMAT


def test_entries_for_deleted_files_are_dropped_on_save(tmp_path: Path) -> None:
    cache_path = tmp_path / "hashcache.json"
    a, b = _file(tmp_path / "a", b"a"), _file(tmp_path / "b", b"b")
    c = HashCache(cache_path)
    c.hash(a)
    c.hash(b)
    b.unlink()
    c.save()
    assert list(json.loads(cache_path.read_text())["files"]) == [os.path.abspath(a)]
