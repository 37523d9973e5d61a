"""What the lock collects: which packages a node imports, portable model paths, and
a source hash that follows the code but not its decorator."""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from chains.lock.collect import node_distributions, portable_path, source_hash

NODE_MODULE = """
import json
import msgspec
import chains
from chains import Text

try:
    import tomli_w
except ImportError:
    tomli_w = None


def unrelated():
    import structlog  # another function's lazy import: not this node's


@chains.node
class Reader:
    def __init__(self):
        import xxhash
        from lockcol_helper import helper

    def __call__(self, t: Text) -> Text:
        return t
"""

HELPER = """
import anyio


def helper():
    import websockets  # lazy, inside the helper: not followed
"""


def _load(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_node_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lockcol_helper.py").write_text(HELPER)
    (tmp_path / "lockcol_node.py").write_text(NODE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = _load(tmp_path / "lockcol_node.py", "lockcol_node", monkeypatch)
    dists = node_distributions(module.Reader.spec.impl)
    # top level (also under try), the node's own lazy imports, a first-party helper's top level
    assert dists == {"msgspec", "chains", "tomli-w", "xxhash", "anyio"}


def test_source_hash_follows_code_not_decorator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hashed(decorator: str, body: str) -> str:
        path = tmp_path / "lockcol_src.py"
        path.write_text(
            textwrap.dedent(f"""
            import chains
            from chains import Text

            {decorator}
            async def f(t: Text) -> Text:
                return {body}
            """)
        )
        return source_hash(_load(path, "lockcol_src", monkeypatch).f.spec.impl)

    base = hashed("@chains.node", "t")
    assert hashed("@chains.node(retries=3)", "t") == base
    assert hashed("@chains.node", "Text(text=t.text)") != base


def test_source_hash_without_source_falls_back_to_bytecode() -> None:
    ns: dict[str, object] = {}
    exec("def g(x):\n    return x + 1\n", ns)
    h1 = source_hash(ns["g"])
    exec("def g(x):\n    return x + 2\n", ns)
    assert h1 != source_hash(ns["g"])


def test_portable_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sysconfig.get_paths()["purelib"]
    home = tmp_path / "home"
    monkeypatch.setenv("CHAINS_HOME", str(home))
    project = tmp_path / "proj"
    assert portable_path(f"{site}/pkg/model.bin", project) == "{site}/pkg/model.bin"
    assert (
        portable_path(str(home / "whisper-base" / "model.bin"), project)
        == "{chains_home}/whisper-base/model.bin"
    )
    assert portable_path(str(project / "models" / "w.bin"), project) == "{project}/models/w.bin"
    assert portable_path("/opt/elsewhere/w.bin", project) == "/opt/elsewhere/w.bin"
