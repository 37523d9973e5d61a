"""What a reader looks up: ``help()`` on a node shows its own options, no docstring
sends the reader to a file the package does not ship, and the API reference builds
without a warning."""

from __future__ import annotations

import ast
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import chains
import nodes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("chains", "runtime", "transport", "nodes")  # pyproject's packages
SHIPPED_FILES = {"README.md"}  # the package's description


def help_text(obj: object) -> str:
    return pydoc.render_doc(obj, renderer=pydoc.plaintext)


def test_help_on_a_class_node_shows_its_constructor_options():
    text = help_text(nodes.Embed)
    assert "Embed(model: 'str' = 'all-MiniLM-L6-v2', device: 'str' = 'cpu')" in text
    assert "sentence embeddings" in text  # its own documentation, not the wrapper's
    assert "Node options: batch=Batch(max_size=32" in text
    assert "A decorated class node" not in text


def test_every_public_node_documents_itself():
    for name in nodes.__all__:
        node = getattr(nodes, name)
        text = help_text(node)
        assert f"\n{name}(" in text or text.startswith(f"{name}("), name
        assert "Shape: " in text, name
        assert "Call self as a function" not in text, name


def test_help_on_a_function_node_shows_its_signature_and_shape():
    @chains.node(budget_ms=50)
    async def shout(t: chains.Text) -> chains.Text:
        """Upper-case a text."""
        return t

    text = help_text(shout)
    assert "shout(t: 'chains.Text') -> 'chains.Text'" in text
    assert "Upper-case a text." in text
    assert "Shape: map; input(s): t: Text; output: Text." in text
    assert "Node options: budget_ms=50" in text


def _docstrings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                line = node.body[0].lineno
                out.append((line, doc))
    return out


def test_no_docstring_refers_to_a_file_the_package_does_not_ship():
    bad = []
    for pkg in SHIPPED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for line, doc in _docstrings(path):
                for ref in re.findall(r"[\w.-]+\.md\b", doc):
                    if ref not in SHIPPED_FILES:
                        bad.append(f"{path.relative_to(ROOT)}:{line}: {ref}")
    assert bad == []


def test_the_api_reference_builds_without_warnings(tmp_path: Path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "build_api.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warn" not in r.stderr
    page = (tmp_path / "nodes.html").read_text()
    assert "all-MiniLM-L6-v2" in page  # Embed's constructor options are in the reference
    assert (tmp_path / "chains.html").exists()
