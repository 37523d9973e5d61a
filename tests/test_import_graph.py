"""The import graph of chains/, runtime/, transport/ and nodes/, read from the source
with ``ast`` (nothing is imported), and the size of the runtime's and transport's
modules.

Three kinds of import are told apart: module-level (run when the module loads),
type-only (under ``if TYPE_CHECKING:``) and function-level (run when the function
is called: the lazy imports that let the vocabulary reach the runtime on demand).
Module-level imports must form no cycle and must follow the layers: ``chains/`` (the
vocabulary) <- ``runtime/`` <- ``transport/``; ``nodes/`` use only ``chains``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("chains", "runtime", "transport", "nodes")
# What each layer may import at module level (besides itself).
ALLOWED = {
    "chains": set(),
    "runtime": {"chains"},
    "transport": {"chains", "runtime"},
    "nodes": {"chains"},
}
# The vocabulary modules that may reach up into the runtime or the transport lazily,
# inside a function: the facade (chains.Runtime, chains.call, chains.serve), the CLI,
# file mode and the test kit.
LAZY_UP = {"chains", "chains.api", "chains.cli", "chains.filemode", "chains.testing.leaks"}
MAX_LINES = 420
TYPE_CHECKING = ("TYPE_CHECKING", "typing.TYPE_CHECKING")


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    out: dict[str, tuple[Path, bool]] = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _resolve(name: str) -> str | None:
    """The first-party module an imported name lives in (None for third-party)."""
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, mod: str, is_pkg: bool) -> Iterator[str]:
    mods = modules()
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod if is_pkg else mod.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            src = f"{base}.{node.module}" if node.module else base
        else:
            src = node.module or ""
        # `from pkg import sub` imports the submodule `pkg.sub`; `from mod import name` imports `mod`
        names = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
    for n in names:
        target = _resolve(n)
        if target is not None and target != mod:
            yield target


@cache
def imports(mod: str) -> dict[str, frozenset[str]]:
    """``{"module": ..., "type": ..., "function": ...}``: the first-party modules ``mod`` imports."""
    path, is_pkg = modules()[mod]
    found: dict[str, set[str]] = {"module": set(), "type": set(), "function": set()}

    def walk(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                walk(child, "function")
                continue
            if isinstance(child, ast.If) and ast.unparse(child.test) in TYPE_CHECKING:
                for stmt in child.body:
                    walk(ast.Module(body=[stmt], type_ignores=[]), "type" if kind == "module" else kind)
                for stmt in child.orelse:
                    walk(ast.Module(body=[stmt], type_ignores=[]), kind)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found[kind].update(_targets(child, mod, is_pkg))
            walk(child, kind)

    walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), "module")
    return {k: frozenset(v) for k, v in found.items()}


def cycles(kinds: tuple[str, ...]) -> list[list[str]]:
    """Strongly connected components (more than one module) of the graph of these kinds."""
    edges = {m: set().union(*(imports(m)[k] for k in kinds)) for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_known_imports() -> None:
    """The walker itself: known edges of each kind are found (a walker that saw
    nothing would pass every other test here)."""
    assert "transport.connection" in imports("transport.server")["module"]
    assert "chains.errors" in imports("chains.node")["module"]
    assert "runtime" in imports("chains")["function"]  # chains.Runtime, imported on first use
    assert "runtime.engine" in imports("chains.filemode")["function"]
    assert len(modules()) > 40


def test_no_module_level_import_cycle() -> None:
    assert cycles(("module",)) == []


def test_the_connection_no_longer_imports_the_server() -> None:
    every = set().union(*imports("transport.connection").values())
    assert "transport.server" not in every


def test_no_cycle_through_type_only_imports() -> None:
    assert cycles(("module", "type")) == []


def test_no_cycle_even_through_function_level_imports_in_the_runtime() -> None:
    """The default runtime builds on the engine, never the other way round (the engine
    once reached back lazily for it)."""
    inner = [c for c in cycles(("module", "type", "function")) if all(m.startswith("runtime") for m in c)]
    assert inner == []
    assert "runtime.default" not in set().union(*imports("runtime.engine").values())


def test_module_level_imports_follow_the_layers() -> None:
    wrong = [
        f"{m} -> {t}"
        for m in modules()
        for t in imports(m)["module"]
        if t.split(".")[0] != m.split(".")[0] and t.split(".")[0] not in ALLOWED[m.split(".")[0]]
    ]
    assert wrong == []


def test_lazy_imports_up_the_layers_only_from_the_facade() -> None:
    """A function-level import from a lower layer into a higher one hides a dependency;
    only the facade, the CLI, file mode and the test kit may do it."""
    wrong = [
        f"{m} -> {t}"
        for m in modules()
        for t in imports(m)["function"]
        if t.split(".")[0] not in ALLOWED[m.split(".")[0]] | {m.split(".")[0]} and m not in LAZY_UP
    ]
    assert wrong == []


def _line_counts() -> dict[str, int]:
    return {
        m: len(path.read_text(encoding="utf-8").splitlines())
        for m, (path, _) in modules().items()
        if m.split(".")[0] in ("runtime", "transport")
    }


def test_runtime_and_transport_modules_are_small() -> None:
    over = {m: n for m, n in _line_counts().items() if n > MAX_LINES}
    assert over == {}
