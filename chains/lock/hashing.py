"""xxh3-128 of files, streamed, with a (path, size, mtime) cache.

Why streamed: model weights run to gigabytes; reading them in 1 MiB chunks into
one reused buffer keeps memory flat whatever the file size. Why cached: `chains
run` verifies the lock on every start, and rehashing unchanged weights each time
would cost seconds; a file whose path, size and mtime are what they were when it
was hashed is taken to be unchanged (the rule make, git and rsync use).

The cache lives in ``$CHAINS_HOME/hashcache.json`` (default ``~/.cache/chains``),
is written atomically (temporary file + rename) so a crash or a concurrent writer
never leaves a torn file, and a corrupt cache is ignored rather than trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from chains.home import chains_home

CHUNK = 1 << 20  # 1 MiB
CACHE_FORMAT = 1
# A file modified this recently may be modified again within the same mtime tick
# (coarse-timestamp filesystems), so its hash is not cached ("racy git" rule).
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class FileHash:
    xxh3: str  # xxh3-128, 32 hex digits
    size: int


def hash_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> FileHash:
    """Hash a file in ``chunk``-sized reads into one reused buffer (flat memory)."""
    h = xxhash.xxh3_128()
    buf = bytearray(chunk)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return FileHash(h.hexdigest(), size)


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class HashCache:
    """File hashes keyed by absolute path, valid while size and mtime_ns match.

    Load once, hash many files, ``save()`` once: the JSON file is rewritten only
    when something new was hashed.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path is not None else chains_home() / "hashcache.json"
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self.hits = 0
        self.misses = 0
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # missing or corrupt: start empty, rebuild as we go
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return
        entries = data.get("files")
        if isinstance(entries, dict):
            self._entries = {
                k: v
                for k, v in entries.items()
                if isinstance(v, dict)
                and isinstance(v.get("size"), int)
                and isinstance(v.get("mtime_ns"), int)
                and isinstance(v.get("xxh3"), str)
            }

    def hash(self, path: str | os.PathLike[str]) -> FileHash:
        """The file's hash, from the cache when its size and mtime are unchanged."""
        key = os.path.abspath(path)
        st = os.stat(key)
        entry = self._entries.get(key)
        if entry is not None and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            self.hits += 1
            return FileHash(entry["xxh3"], st.st_size)
        self.misses += 1
        fh = hash_file(key)
        after = os.stat(key)
        unchanged = (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        if unchanged and time.time_ns() - st.st_mtime_ns > RACY_NS:
            self._entries[key] = {"size": fh.size, "mtime_ns": st.st_mtime_ns, "xxh3": fh.xxh3}
            self._dirty = True
        elif entry is not None:
            del self._entries[key]
            self._dirty = True
        return fh

    def clear(self) -> None:
        """Forget every entry (and the file, on the next ``save``)."""
        self._entries.clear()
        self._dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    def save(self) -> None:
        """Write the cache atomically, dropping entries for files that are gone.

        A cache that cannot be written (read-only home) is not an error: the next
        run just hashes again.
        """
        if not self._dirty:
            return
        live = {k: v for k, v in sorted(self._entries.items()) if os.path.exists(k)}
        blob = json.dumps({"format": CACHE_FORMAT, "files": live}, indent=0, sort_keys=True)
        try:
            atomic_write(self.path, blob.encode())
        except OSError:
            return
        self._entries = live
        self._dirty = False


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
