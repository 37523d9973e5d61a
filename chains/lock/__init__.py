"""chains.lock: pin a chain's graph, code, models and packages, and check them.

``write_lock(chains, path)`` records, per chain, the compiled graph's hash and
description, each node's ``module:qualname`` and source hash, the xxh3-128 and size
of every model file its ``chains_models`` names, and the installed versions of the
distributions its module imports. ``check_lock(chains, path)`` collects the same
now and returns the differences; ``format_differences`` turns them into the short
diff `chains run` refuses with. Large files are hashed once and then cached by
(path, size, mtime) in ``$CHAINS_HOME/hashcache.json``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from chains.errors import LockError
from chains.graph import Graph
from chains.lock.collect import ModelProblem, collect_chain, unique_names
from chains.lock.hashing import FileHash, HashCache, atomic_write, hash_file
from chains.lock.lockfile import ChainEntry, LockFile, dumps, loads, make_lock, read
from chains.lock.verify import Difference, diff_chain, format_differences


class _HasGraph(Protocol):
    name: str
    graph: Graph


def _project(path: Path) -> Path:
    return Path(os.path.abspath(path)).parent


def _chain_file(chain: _HasGraph, project: Path) -> str:
    """Where the chain is defined, relative to the project when inside it."""
    fn = getattr(chain, "fn", None)
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    f = Path(os.path.abspath(code.co_filename))
    try:
        return f.relative_to(project).as_posix()
    except ValueError:
        return f.as_posix()


def locked_targets(path: str | os.PathLike[str]) -> list[str]:
    """``FILE:CHAIN`` for every chain the lock at ``path`` names (what `chains lock
    --check` checks when no FILE is given). Raises ``LockError`` when the lock is
    missing or an entry does not record its file (a lock written before files were
    recorded: run `chains lock FILE...` once to add them)."""
    p = Path(path)
    lock = read(p)
    if not lock.chains:
        raise LockError(f"{p} names no chains: run `chains lock FILE...` first")
    targets: list[str] = []
    for name, entry in lock.chains.items():
        if not entry.file:
            raise LockError(
                f"{p}: chain {name!r} does not record its file; run `chains lock FILE...` "
                "once to add it, or name the files to check"
            )
        f = Path(entry.file)
        targets.append(f"{f if f.is_absolute() else _project(p) / f}:{name}")
    return targets


def lock_data(
    chains: Sequence[_HasGraph], path: str | os.PathLike[str], *, cache: HashCache | None = None
) -> LockFile:
    """The lock these chains would write at ``path`` (other chains already in a valid
    lock there are kept, so locking one chain file does not drop the others)."""
    p = Path(path)
    unique_names(c.name for c in chains)
    own = cache is None
    cache = cache if cache is not None else HashCache()
    try:
        entries: dict[str, ChainEntry] = {}
        if p.exists():
            with contextlib.suppress(LockError):  # an unreadable old lock is replaced whole
                entries.update(read(p).chains)
        for c in chains:
            entry = collect_chain(c.graph, _project(p), cache)
            entries[c.name] = msgspec.structs.replace(entry, file=_chain_file(c, _project(p)))
    finally:
        if own:
            cache.save()
    return make_lock(entries)


def write_lock(
    chains: Sequence[_HasGraph], path: str | os.PathLike[str], *, cache: HashCache | None = None
) -> None:
    """Write (or update) the lock at ``path`` for these chains.

    Raises ``LockError`` when a node's models cannot be resolved or two chains share
    a name. The file is written atomically, and not at all when its bytes would not
    change.
    """
    p = Path(path)
    text = dumps(lock_data(chains, p, cache=cache)).encode("utf-8")
    try:
        if p.read_bytes() == text:
            return
    except OSError:
        pass

    atomic_write(p, text)
    with contextlib.suppress(OSError):
        os.chmod(p, 0o644)


def check_lock(
    chains: Sequence[_HasGraph], path: str | os.PathLike[str], *, cache: HashCache | None = None
) -> list[Difference]:
    """What differs between the lock at ``path`` and these chains as installed now;
    an empty list when they match. Raises ``LockError`` if the lock is missing,
    malformed or truncated. Nothing is loaded: models are hashed from their files."""
    p = Path(path)
    lock = read(p)
    own = cache is None
    cache = cache if cache is not None else HashCache()
    diffs: list[Difference] = []
    try:
        for c in chains:
            expected = lock.chains.get(c.name)
            if expected is None:
                have = ", ".join(sorted(lock.chains)) or "none"
                diffs.append(
                    Difference(
                        c.name,
                        "chain",
                        "lock entry",
                        "the chain in the lock",
                        f"missing (the lock has: {have})",
                    )
                )
                continue
            problems: list[ModelProblem] = []
            found = collect_chain(c.graph, _project(p), cache, on_model_problem=problems.append)
            found = msgspec.convert(msgspec.to_builtins(found), ChainEntry)  # as it would read back
            diffs.extend(diff_chain(c.name, expected, found, problems))
    finally:
        if own:
            cache.save()
    return diffs


def lock_has_chain(path: str | os.PathLike[str], chain: _HasGraph) -> bool:
    """Does the lock at ``path`` have an entry for this chain? (LockError if malformed.)"""
    return chain.name in read(path).chains


__all__ = [
    "Difference",
    "FileHash",
    "HashCache",
    "LockFile",
    "check_lock",
    "format_differences",
    "hash_file",
    "loads",
    "lock_data",
    "lock_has_chain",
    "locked_targets",
    "read",
    "write_lock",
]
