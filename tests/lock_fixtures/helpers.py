"""A throwaway project for the lock tests: the ``tagged`` chain copied into a temp
folder, tiny fake model files beside it, and a private ``CHAINS_HOME`` (so the
hash cache is the test's own)."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

import chains

FIXTURE = Path(__file__).with_name("tagged.py")
MODULE = "lockfix_tagged"
PAST = 1_600_000_000  # a mtime well outside the hash cache's "too recent to trust" window


class Project:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.mp = monkeypatch
        self.models = root / "models"
        self.models.mkdir()
        self.weights = self.models / "weights.bin"
        self.config = self.models / "config.json"
        self.weights.write_bytes(random.Random(7).randbytes(64 * 1024))
        self.config.write_text('{"labels": ["PER", "ORG"]}\n')
        for f in (self.weights, self.config):
            os.utime(f, ns=(PAST * 10**9, PAST * 10**9))
        self.source = root / "tagged.py"
        self.source.write_text(FIXTURE.read_text())
        self.lock = root / "chains.lock"
        self.home = root / "home"
        monkeypatch.setenv("CHAINS_HOME", str(self.home))
        monkeypatch.setenv("CHAINS_LOCK_TEST_MODELS", str(self.models))

    def load(self) -> ModuleType:
        """Import the chain file afresh, as a new process would."""
        spec = importlib.util.spec_from_file_location(MODULE, self.source)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        self.mp.setitem(sys.modules, MODULE, module)
        spec.loader.exec_module(module)
        return module

    def chain(self) -> chains.Chain:
        return self.load().tagged

    def edit(self, old: str, new: str) -> None:
        text = self.source.read_text()
        assert old in text, old
        self.source.write_text(text.replace(old, new))


def flip_byte(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
