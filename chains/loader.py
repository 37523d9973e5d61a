"""Load a chain from ``FILE[:CHAIN]`` the way the CLI names it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from chains.errors import ChainError
from chains.node import Chain


def load_module(path: Path) -> object:
    if not path.exists():
        raise ChainError(f"no such file: {path}")
    if path.suffix != ".py":
        raise ChainError(f"{path}: a chain file must be a Python file (.py)")
    # The file's folder and its project root (where `nodes/` lives) resolve imports.
    for p in (path.parent, Path.cwd()):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    name = f"chains_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ChainError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_chains(module: object) -> dict[str, Chain]:
    return {c.name: c for c in vars(module).values() if isinstance(c, Chain)}


def load_chain(target: str) -> Chain:
    """``demos/voice.py`` or ``demos/voice.py:voice``."""
    file, _, name = target.partition(":")
    if len(file) == 1 and name and "\\" in name:  # a Windows drive letter, not a chain name
        file, name = target, ""
    module = load_module(Path(file))
    found = find_chains(module)
    if not found:
        raise ChainError(f"{file} defines no @chains.chain")
    if name:
        if name not in found:
            raise ChainError(f"{file} has no chain {name!r}; it has {', '.join(sorted(found))}")
        return found[name]
    if len(found) > 1:
        raise ChainError(
            f"{file} defines several chains ({', '.join(sorted(found))}): pick one with FILE:CHAIN"
        )
    return next(iter(found.values()))
