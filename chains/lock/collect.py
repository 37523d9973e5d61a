"""Collect what a chain depends on, as lock entries: the compiled graph, each node's
code, the model files it loads and the installed packages its module imports.

Nothing here loads a model: a node class names its files through the optional
classmethod ``chains_models(*init_args, **init_kwargs) -> list[ModelRef]``, which
resolves paths only. So the lock can be written, and checked before `chains run`
starts anything heavy.

Model file paths are stored portably (``{site}/pkg/model.bin``,
``{chains_home}/...``, ``{project}/...``) so a lock written in one virtualenv
checks in another.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.metadata
import inspect
import linecache
import marshal
import os
import re
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chains.errors import LockError
from chains.graph import Graph, GraphNode
from chains.home import chains_home
from chains.lock.hashing import HashCache, hash_bytes
from chains.lock.lockfile import ChainEntry, FileEntry, ModelEntry, NodeEntry
from chains.models import ModelRef

# The framework's own layers: their dependencies are chains' pinned dependencies,
# recorded as the `chains` distribution itself, so imports into them are not followed.
FRAMEWORK = frozenset({"chains", "runtime", "transport"})


class ModelProblem(Exception):
    """A node's models cannot be resolved or read (collected as a difference when verifying)."""

    def __init__(self, node: str, model: str | None, message: str):
        self.node = node
        self.model = model
        super().__init__(message)


# --- node code ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeCode:
    """A node implementation's source as its file holds it now (dedented, decorators
    excluded) and its syntax tree; ``source`` is None for code without a file."""

    source: str | None
    tree: tuple[ast.AST, ...]


_PARSED: dict[str, tuple[str, list[str], ast.Module]] = {}  # file -> (content hash, lines, tree)


def _parse_file(file: str) -> tuple[list[str], ast.Module] | None:
    """A source file's lines and tree, parsed once per content (read every time: an
    edit that keeps the size and the mtime tick must still be seen)."""
    try:
        raw = Path(file).read_bytes()
    except OSError:
        return None
    digest = hash_bytes(raw)
    hit = _PARSED.get(file)
    if hit is not None and hit[0] == digest:
        return hit[1], hit[2]
    try:
        tree = ast.parse(raw, filename=file)
        lines = raw.decode("utf-8").splitlines()
    except (SyntaxError, ValueError):
        return None
    _PARSED[file] = (digest, lines, tree)
    return lines, tree


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _find_definition(tree: ast.Module, impl: Any) -> ast.AST | None:
    """The ``def``/``class`` of ``impl`` in its module's tree, by qualified name (and,
    for a function defined twice, by its first line)."""
    parts = [p for p in impl.__qualname__.split(".") if p != "<locals>"]
    body: list[ast.stmt] = tree.body
    found: list[ast.AST] = []
    for i, part in enumerate(parts):
        found = [n for n in body if isinstance(n, _DEFS) and n.name == part]
        if not found:
            return None
        if i < len(parts) - 1:
            body = found[-1].body  # type: ignore[attr-defined]
    code = getattr(inspect.unwrap(impl), "__code__", None)
    if code is not None:
        for n in found:
            first = min([n.lineno, *(d.lineno for d in n.decorator_list)])  # type: ignore[attr-defined]
            if code.co_firstlineno in (first, n.lineno):
                return n
    return found[-1]


def node_code(impl: Any) -> NodeCode:
    try:
        file = inspect.getsourcefile(impl)
    except TypeError:
        file = None
    parsed = _parse_file(file) if file else None
    if parsed is not None:
        lines, tree = parsed
        node = _find_definition(tree, impl)
        if node is not None:
            text = "\n".join(lines[node.lineno - 1 : node.end_lineno])  # type: ignore[attr-defined]
            return NodeCode(textwrap.dedent(text), (node,))
    # Not found by name (defined under an `if`, generated): ask inspect, strip decorators.
    try:
        if file:
            linecache.cache.pop(file, None)
        src = textwrap.dedent(inspect.getsource(impl))
    except (OSError, TypeError):
        return NodeCode(None, ())
    try:
        body = ast.parse(src).body
    except SyntaxError:
        return NodeCode(src, ())
    if body and isinstance(body[0], _DEFS):
        src = "\n".join(src.splitlines()[body[0].lineno - 1 :])
    return NodeCode(src, tuple(body))


def source_hash(impl: Any, code: NodeCode | None = None) -> str:
    """xxh3-128 of the function's or class's source, decorators excluded (options are
    locked through the graph, so an option change is reported as such, not as code).

    Code without source (built in a REPL or ``exec``) is hashed from its bytecode.
    """
    code = code if code is not None else node_code(impl)
    if code.source is None:
        return hash_bytes(b"bytecode:" + _bytecode(impl))
    return hash_bytes(code.source.encode("utf-8"))


def _bytecode(impl: Any) -> bytes:
    code = getattr(impl, "__code__", None)
    if code is not None:
        return marshal.dumps(code)
    parts = []
    for k, v in sorted(vars(impl).items()) if isinstance(impl, type) else []:
        c = getattr(v, "__code__", None) or getattr(getattr(v, "__func__", None), "__code__", None)
        if c is not None:
            parts.append(k.encode() + marshal.dumps(c))
    return b"".join(parts) or repr(impl).encode()


# --- packages ------------------------------------------------------------------------------------
def canonical(dist: str) -> str:
    """PEP 503 name: ``Faster_Whisper`` and ``faster-whisper`` are one distribution."""
    return re.sub(r"[-_.]+", "-", dist).lower()


@functools.cache
def _packages_distributions() -> dict[str, tuple[str, ...]]:
    return {
        k: tuple(sorted({canonical(d) for d in v}))
        for k, v in importlib.metadata.packages_distributions().items()
    }


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, or None (tests monkeypatch this)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _site_dirs() -> tuple[str, ...]:
    return _dirs(tuple(sys.path))[0]


def _stdlib_dirs() -> tuple[str, ...]:
    return _dirs(tuple(sys.path))[1]


@functools.lru_cache(maxsize=8)
def _dirs(path: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    paths = sysconfig.get_paths()
    site = {paths[k] for k in ("purelib", "platlib")}
    site.update(p for p in path if os.path.basename(p) in ("site-packages", "dist-packages"))
    std = {paths[k] for k in ("stdlib", "platstdlib")}
    return tuple(sorted(os.path.abspath(d) for d in site)), tuple(sorted(os.path.abspath(d) for d in std))


def module_file(name: str) -> str | None:
    """The source file of a module, found without importing it."""
    mod = sys.modules.get(name)
    if mod is not None:
        f = getattr(mod, "__file__", None)
        return f if f and f.endswith(".py") else None
    parent, _, leaf = name.rpartition(".")
    search: list[str] | None = None
    if parent:
        pfile = module_file(parent)
        if pfile is None or os.path.basename(pfile) != "__init__.py":
            return None
        search = [os.path.dirname(pfile)]
    spec = importlib.machinery.PathFinder.find_spec(leaf, search)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return spec.origin


def _first_party(file: str) -> bool:
    """Project code (not installed in a site-packages, not the standard library)."""
    f = os.path.abspath(file)
    return not any(f.startswith(d + os.sep) for d in (*_site_dirs(), *_stdlib_dirs()))


def _imports(stmts: Iterable[ast.AST], *, nested: bool) -> set[str]:
    """Absolute module names imported by these statements and the blocks under them
    (``if``, ``try``, ``with``...); inside function and class bodies too when ``nested``."""
    found: set[str] = set()
    todo = list(stmts)
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level == 0 and n.module:
                found.add(n.module)
        elif nested or not isinstance(n, _DEFS):
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                block = getattr(n, field, None)
                if isinstance(block, list):
                    todo.extend(block)
    return found


def module_imports(file: str) -> set[str]:
    """The imports a module runs when it is imported (top level, including those
    under ``if``/``try``; not those inside functions and classes)."""
    parsed = _parse_file(file)
    return _imports(parsed[1].body, nested=False) if parsed else set()


def impl_imports(impl: Any, code: NodeCode | None = None) -> set[str]:
    """The imports inside the node's own function or class, at any depth: model nodes
    import their heavy libraries lazily in ``__init__``."""
    code = code if code is not None else node_code(impl)
    return _imports(code.tree, nested=True)


def node_distributions(impl: Any, code: NodeCode | None = None) -> set[str]:
    """The installed distributions a node imports (canonical names): its module's
    top-level imports and the imports inside the node's own code.

    First-party helper modules it imports (a plain ``.py`` of the project, e.g.
    ``nodes/audio.py``) are followed to their own top-level imports, because those
    run as part of the node; package ``__init__`` files are not (they re-export
    everything), nor is the framework (recorded as the ``chains`` distribution).
    """
    pd = _packages_distributions()
    dists: set[str] = set()
    start = module_file(impl.__module__)
    seen = {start} if start else set()
    names = impl_imports(impl, code) | (module_imports(start) if start else set())
    while True:
        follow: list[str] = []
        for name in sorted(names):
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names:
                continue
            dists.update(pd.get(top, ()))
            if top in FRAMEWORK:
                continue
            f = module_file(name)
            if f is not None and f not in seen and os.path.basename(f) != "__init__.py" and _first_party(f):
                seen.add(f)
                follow.append(f)
        if not follow:
            return dists
        names = set().union(*(module_imports(f) for f in follow))


# --- models --------------------------------------------------------------------------------------
def _roots(project: Path) -> list[tuple[str, str]]:
    roots = [(d, "{site}") for d in _site_dirs()]
    roots.append((os.path.abspath(chains_home()), "{chains_home}"))
    roots.append((os.path.abspath(project), "{project}"))
    return sorted(roots, key=lambda r: len(r[0]), reverse=True)


def portable_path(path: str, project: Path) -> str:
    """``/venv/lib/python3.11/site-packages/pkg/m.bin`` -> ``{site}/pkg/m.bin``."""
    p = os.path.abspath(path)
    for root, tag in _roots(project):
        if p.startswith(root + os.sep):
            return tag + "/" + Path(os.path.relpath(p, root)).as_posix()
    return Path(p).as_posix()


def model_refs(node: GraphNode) -> list[ModelRef]:
    """What ``chains_models`` says this node loads (nothing for a node without it)."""
    fn: Callable[..., Any] | None = getattr(node.spec.impl, "chains_models", None)
    if fn is None:
        return []
    try:
        refs = fn(*node.init_args, **node.init_kwargs)
    except Exception as e:
        raise ModelProblem(node.name, None, f"chains_models() failed: {type(e).__name__}: {e}") from e
    refs = list(refs or [])
    for r in refs:
        if not isinstance(r, ModelRef):
            raise ModelProblem(
                node.name, None, f"chains_models() must return chains.ModelRef items, got {type(r).__name__}"
            )
    return refs


def model_entry(node: str, ref: ModelRef, project: Path, cache: HashCache) -> ModelEntry:
    files: dict[str, FileEntry] = {}
    for p in ref.paths:
        key = portable_path(p, project)
        try:
            fh = cache.hash(p)
        except FileNotFoundError:
            raise ModelProblem(node, ref.name, f"file {key} is missing ({p})") from None
        except OSError as e:
            raise ModelProblem(node, ref.name, f"file {key} cannot be read: {e.strerror or e}") from None
        files[key] = FileEntry(size=fh.size, xxh3=fh.xxh3)
    return ModelEntry(package=ref.package, version=ref.version, files=files)


# --- chains --------------------------------------------------------------------------------------
def collect_chain(
    graph: Graph,
    project: Path,
    cache: HashCache,
    on_model_problem: Callable[[ModelProblem], None] | None = None,
) -> ChainEntry:
    """The lock entry of one compiled chain.

    A model that cannot be resolved raises ``LockError`` when writing the lock; when
    verifying, ``on_model_problem`` receives it and the node is collected without it.
    """
    desc = graph.describe()
    nodes: dict[str, NodeEntry] = {}
    packages: dict[str, str] = {}
    for n, d in zip(graph.nodes, desc["nodes"], strict=True):
        code = node_code(n.spec.impl)
        dists = sorted(node_distributions(n.spec.impl, code))
        for dist in dists:
            if dist not in packages:
                packages[dist] = installed_version(dist) or "not-installed"
        models: dict[str, ModelEntry] = {}
        try:
            for ref in model_refs(n):
                models[ref.name] = model_entry(n.name, ref, project, cache)
        except ModelProblem as e:
            if on_model_problem is None:
                what = f"model {e.model!r}" if e.model else "its models"
                raise LockError(f"node {n.name!r}: {what}: {e}") from None
            on_model_problem(e)
        nodes[n.name] = NodeEntry(
            impl=d["impl"],
            source=source_hash(n.spec.impl, code),
            shape=d["shape"],
            inputs=list(d["inputs"]),
            init_args=list(d["init"]["args"]),
            init_kwargs=dict(d["init"]["kwargs"]),
            options=dict(d["options"]),
            packages=dists,
            models=models,
        )
    return ChainEntry(
        graph=graph.hash(),
        budget_ms=desc["budget_ms"],
        inputs=[_input_text(i) for i in desc["inputs"]],
        outputs=dict(desc["outputs"]),
        packages=dict(sorted(packages.items())),
        nodes=nodes,
    )


def _input_text(i: dict[str, Any]) -> str:
    return f"{i['name']}: Stream[{i['type']}]" if i["stream"] else f"{i['name']}: {i['type']}"


def unique_names(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise LockError(f"two chains are named {name!r}: a lock keys chains by name")
        seen.add(name)
