"""The chains.lock format: msgspec structs, stable TOML bytes, validated reading.

Why a schema: a lock that is wrong must fail with a sentence naming the field and
the line ("chains.voice.nodes.WhisperSTT.source (line 31): expected a string"),
never with a KeyError deep in the verifier. Why a digest: a lock truncated at a
table boundary is still valid TOML, so the file carries an xxh3-128 of its own
content and a cut or hand-edited file is refused as such.

Stable bytes: keys are sorted at every level and the header is constant, so the
same inputs always write the same file (a clean diff in review, and `chains lock`
twice is a no-op).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
import tomli_w

from chains.errors import LockError
from chains.lock.hashing import atomic_write, hash_bytes

LOCK_VERSION = 1
HEADER = (
    "# chains.lock: written by `chains lock`; do not edit by hand.\n"
    "# `chains run` refuses to start when this no longer matches; `chains lock --check` exits 1.\n\n"
)

Hex128 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
Size = Annotated[int, msgspec.Meta(ge=0)]


class _Entry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class FileEntry(_Entry):
    """One weight file: its size in bytes and its xxh3-128."""

    size: Size
    xxh3: Hex128


class ModelEntry(_Entry):
    """A model a node loads: the distribution that ships it and its files, keyed by
    portable path (see ``collect.portable_path``)."""

    package: str
    version: str
    files: dict[str, FileEntry] = {}


class NodeEntry(_Entry):
    """A node of the compiled graph (as ``Graph.describe()`` gives it), the hash of
    its implementation's source and what it depends on."""

    impl: str  # module:qualname
    source: Hex128  # xxh3-128 of the source, decorators excluded
    shape: str
    inputs: list[str]
    init_args: list[str] = []
    init_kwargs: dict[str, str] = {}
    options: dict[str, Any] = {}
    packages: list[str] = []  # distributions its module imports (names into ChainEntry.packages)
    models: dict[str, ModelEntry] = {}


class ChainEntry(_Entry):
    graph: Hex128  # Graph.hash()
    # The chain's file, relative to the lock's folder when inside it ("demos/voice.py"),
    # so `chains lock --check` with no FILE can find every chain the lock names.
    # Not compared by the check: it says where the chain is, not what it is.
    file: str = ""
    budget_ms: float | None = None
    inputs: list[str] = []
    outputs: dict[str, str] = {}
    packages: dict[str, str] = {}  # distribution -> version, for every node's imports
    nodes: dict[str, NodeEntry] = {}


class LockFile(_Entry):
    lock_version: int
    digest: Hex128  # xxh3-128 of the rest of the lock: a cut or edited file is refused
    chains: dict[str, ChainEntry] = {}


# dict-of-struct fields, converted one entry at a time so an error names its key
_NESTED: dict[type, dict[str, type]] = {
    LockFile: {"chains": ChainEntry},
    ChainEntry: {"nodes": NodeEntry},
    NodeEntry: {"models": ModelEntry},
    ModelEntry: {"files": FileEntry},
}


def content_digest(chains: dict[str, ChainEntry]) -> str:
    blob = msgspec.json.encode({"lock_version": LOCK_VERSION, "chains": chains}, order="sorted")
    return hash_bytes(blob)


def normalize(chains: dict[str, ChainEntry]) -> dict[str, ChainEntry]:
    """The entries as they will read back from TOML (ints where floats are declared
    become floats, tuples become arrays), so the digest and the bytes are those of
    the file and a round trip is byte for byte."""
    data = tomllib.loads(tomli_w.dumps({"chains": msgspec.to_builtins(chains, order="sorted")}))
    return msgspec.convert(data.get("chains", {}), dict[str, ChainEntry])


def make_lock(chains: dict[str, ChainEntry]) -> LockFile:
    chains = normalize(dict(sorted(chains.items())))
    return LockFile(lock_version=LOCK_VERSION, digest=content_digest(chains), chains=chains)


def dumps(lock: LockFile) -> str:
    """The lock as TOML text: sorted keys, constant header, same input -> same bytes."""
    data = msgspec.to_builtins(lock, order="sorted")
    return HEADER + tomli_w.dumps(data)


def write(lock: LockFile, path: str | os.PathLike[str]) -> None:
    """Write atomically: a crash mid-write leaves the old lock, never half a new one."""
    p = Path(path)
    atomic_write(p, dumps(lock).encode("utf-8"))


def read(path: str | os.PathLike[str]) -> LockFile:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise LockError(f"{p} does not exist: run `chains lock` first") from None
    except OSError as e:
        raise LockError(f"{p}: cannot read: {e.strerror or e}") from None
    return loads(raw, name=str(p))


def loads(raw: bytes | str, name: str = "chains.lock") -> LockFile:
    """Parse and validate a lock; any problem is a ``LockError`` naming the line or field."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise LockError(f"{name}: line {line}: not UTF-8 text") from None
    else:
        text = raw
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e).replace(
            "at end of document", f"at the end of the file, line {len(text.splitlines()) or 1}"
        )
        raise LockError(f"{name}: not valid TOML: {msg} (the file may be truncated or edited)") from None
    if not data:
        raise LockError(f"{name}: empty lock (no lock_version, digest or chains)")
    version = data.get("lock_version")
    if isinstance(version, int) and version != LOCK_VERSION:
        raise LockError(
            f"{name}: lock_version {version} is not the version this chains reads ({LOCK_VERSION}); "
            "run `chains lock` to rewrite it"
        )
    lock = _convert(data, LockFile, (), text, name)
    if content_digest(lock.chains) != lock.digest:
        raise LockError(
            f"{name}: content does not match its digest: the file is truncated or was edited by hand; "
            "run `chains lock` to rewrite it"
        )
    return lock


def _convert(obj: Any, typ: type, path: tuple[str, ...], text: str, name: str) -> Any:
    if not isinstance(obj, dict):
        raise _error(f"must be a table, got {_toml_type(obj)}", path, text, name)
    obj = dict(obj)
    for field, sub in _NESTED.get(typ, {}).items():
        if field not in obj:
            continue
        table = obj[field]
        if not isinstance(table, dict):
            raise _error(f"must be a table, got {_toml_type(table)}", (*path, field), text, name)
        obj[field] = {k: _convert(v, sub, (*path, field, k), text, name) for k, v in table.items()}
    try:
        return msgspec.convert(obj, typ)
    except msgspec.ValidationError as e:
        msg, _, at = str(e).partition(" - at `$")
        sub_path = tuple(s for s in at.rstrip("`").replace("[", ".[").split(".") if s)
        where = (*path, *sub_path)
        if msg.startswith("Object missing required field"):
            msg = msg.replace("Object missing required field", "missing required key")
        elif msg.startswith("Object contains unknown field"):
            msg = msg.replace("Object contains unknown field", "unknown key")
        return_err = _error(msg[0].lower() + msg[1:], where, text, name)
        raise return_err from None


def _toml_type(v: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", int: "an integer", float: "a float"}.get(
        type(v), type(v).__name__
    )


def dotted(path: tuple[str, ...]) -> str:
    """A key path as TOML writes it: chains.voice.models."whisper-tiny.en"."""
    out = []
    for k in path:
        if k.startswith("["):
            out[-1:] = [(out[-1] if out else "") + k]
        elif k.replace("_", "").replace("-", "").isalnum():
            out.append(k)
        else:
            out.append(json.dumps(k))
    return ".".join(out)


def _error(msg: str, path: tuple[str, ...], text: str, name: str) -> LockError:
    keys = tuple(k for k in path if not k.startswith("["))
    line = find_line(text, keys)
    where = f"line {line}: " if line else ""
    field = dotted(path) or "the top level"
    return LockError(f"{name}: {where}{field}: {msg}")


def find_line(text: str, keys: tuple[str, ...]) -> int | None:
    """Best effort: the line where the key path is defined (its table header, or the
    ``key =`` line inside the deepest table that holds it)."""
    best: tuple[int, int] | None = None  # (prefix length, line)
    table: tuple[str, ...] = ()
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            table = _header_keys(s) or table
            if keys[: len(table)] == table and (best is None or len(table) > best[0]):
                best = (len(table), i)
            continue
        key = _line_keys(s)
        if key is None:
            continue
        full = table + key
        n = len(full)
        if keys[:n] == full and (best is None or n > best[0]):
            best = (n, i)
    return best[1] if best else None


def _header_keys(s: str) -> tuple[str, ...] | None:
    try:
        d: Any = tomllib.loads(s)
    except tomllib.TOMLDecodeError:
        return None
    keys = []
    while isinstance(d, dict) and len(d) == 1:
        k, d = next(iter(d.items()))
        keys.append(k)
        if isinstance(d, list):  # [[array of tables]]
            d = d[0] if d else {}
    return tuple(keys)


def _line_keys(s: str) -> tuple[str, ...] | None:
    key_part = s.split("=", 1)[0] if "=" in s else None
    if key_part is None:
        return None
    try:
        d: Any = tomllib.loads(f"{key_part}= 0")
    except tomllib.TOMLDecodeError:
        return None
    keys = []
    while isinstance(d, dict) and len(d) == 1:
        k, d = next(iter(d.items()))
        keys.append(k)
    return tuple(keys)
