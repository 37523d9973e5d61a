"""Compare a chain as it is now with its lock entry, and say what changed.

Each difference names the chain, what differs (the graph and which option of which
node, which node's code, which model file, which package) and the expected and
found values, so `chains run` can refuse with a short diff a reviewer can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chains.lock.collect import ModelProblem
from chains.lock.lockfile import ChainEntry, ModelEntry, NodeEntry

SHORT = 16  # hex digits of a hash shown in a message


@dataclass(frozen=True)
class Difference:
    """One mismatch between the lock and what is installed now."""

    chain: str
    kind: str  # "chain", "graph", "code", "model", "file" or "package"
    subject: str  # what differs, e.g. "node 'WhisperSTT' option batch.max_size"
    expected: str
    found: str

    def __str__(self) -> str:
        return f"chain {self.chain!r}: {self.subject}: expected {self.expected}, found {self.found}"


def _short(h: str) -> str:
    return h[:SHORT] + "…" if len(h) > SHORT else h


def _show(v: Any) -> str:
    if v is None:
        return "(none)"
    return repr(v) if isinstance(v, str) else str(v)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff_chain(
    name: str, expected: ChainEntry, found: ChainEntry, problems: list[ModelProblem] | None = None
) -> list[Difference]:
    diffs: list[Difference] = []

    def add(kind: str, subject: str, exp: Any, fnd: Any) -> None:
        diffs.append(
            Difference(
                name,
                kind,
                subject,
                exp if isinstance(exp, str) else _show(exp),
                fnd if isinstance(fnd, str) else _show(fnd),
            )
        )

    if expected.graph != found.graph:
        before = len(diffs)
        _diff_graph(expected, found, add)
        if len(diffs) == before:
            add("graph", "compiled graph hash", _short(expected.graph), _short(found.graph))

    broken = {p.node: p for p in problems or []}
    for node, exp in expected.nodes.items():
        fnd = found.nodes.get(node)
        if fnd is None:
            continue  # reported with the graph
        if exp.impl == fnd.impl and exp.source != fnd.source:
            add(
                "code",
                f"node {node!r} code ({exp.impl})",
                f"source {_short(exp.source)}",
                f"source {_short(fnd.source)} (edited)",
            )
        if node in broken:
            p = broken[node]
            subject = f"node {node!r} model {p.model!r}" if p.model else f"node {node!r} models"
            add("model", subject, "resolvable files", str(p))
            continue
        _diff_models(node, exp, fnd, add)

    users: dict[str, list[str]] = {}
    for entry in (expected, found):
        for node, n in entry.nodes.items():
            for dist in n.packages:
                if node not in users.setdefault(dist, []):
                    users[dist].append(node)
    for dist in sorted(set(expected.packages) | set(found.packages)):
        e, f = expected.packages.get(dist), found.packages.get(dist)
        if e == f:
            continue
        by = f" (imported by {', '.join(users.get(dist, []))})" if users.get(dist) else ""
        add(
            "package",
            f"package {dist}{by}",
            "not imported" if e is None else f"{dist}=={e}",
            "not imported" if f is None else f"{dist}=={f}",
        )
    return diffs


def _diff_graph(expected: ChainEntry, found: ChainEntry, add: Any) -> None:
    if expected.budget_ms != found.budget_ms:
        add("graph", "chain budget_ms", expected.budget_ms, found.budget_ms)
    if expected.inputs != found.inputs:
        add("graph", "chain inputs", ", ".join(expected.inputs), ", ".join(found.inputs))
    for key in sorted(set(expected.outputs) | set(found.outputs)):
        e, f = expected.outputs.get(key), found.outputs.get(key)
        if e != f:
            add(
                "graph",
                f"output {key!r}",
                "(none)" if e is None else f"from {e!r}",
                "(none)" if f is None else f"from {f!r}",
            )
    for node in expected.nodes:
        if node not in found.nodes:
            add("graph", f"node {node!r}", f"present ({expected.nodes[node].impl})", "gone")
    for node in found.nodes:
        if node not in expected.nodes:
            add("graph", f"node {node!r}", "absent", f"new ({found.nodes[node].impl})")
    for node, e in expected.nodes.items():
        f = found.nodes.get(node)
        if f is None:
            continue
        for field in ("impl", "shape", "inputs", "init_args"):
            ev, fv = getattr(e, field), getattr(f, field)
            if ev != fv:
                add("graph", f"node {node!r} {field}", ev, fv)
        for label, ed, fd in (
            ("argument", e.init_kwargs, f.init_kwargs),
            ("option", _flat(e.options), _flat(f.options)),
        ):
            for key in sorted(set(ed) | set(fd)):
                if ed.get(key) != fd.get(key):
                    add("graph", f"node {node!r} {label} {key}", ed.get(key), fd.get(key))


def _diff_models(node: str, exp: NodeEntry, fnd: NodeEntry, add: Any) -> None:
    for model in sorted(set(exp.models) | set(fnd.models)):
        e, f = exp.models.get(model), fnd.models.get(model)
        subject = f"node {node!r} model {model!r}"
        if e is None or f is None:
            add("model", subject, _model_text(e), _model_text(f))
            continue
        if (e.package, e.version) != (f.package, f.version):
            add("model", f"{subject} package", f"{e.package}=={e.version}", f"{f.package}=={f.version}")
        for path in sorted(set(e.files) | set(f.files)):
            ef, ff = e.files.get(path), f.files.get(path)
            fsub = f"{subject} file {path}"
            if ef is None or ff is None:
                add(
                    "file", fsub, "absent" if ef is None else "present", "absent" if ff is None else "present"
                )
            elif ef.size != ff.size:
                add("file", fsub, f"{ef.size} bytes", f"{ff.size} bytes")
            elif ef.xxh3 != ff.xxh3:
                add("file", fsub, f"xxh3 {_short(ef.xxh3)}", f"xxh3 {_short(ff.xxh3)} (contents changed)")


def _model_text(m: ModelEntry | None) -> str:
    return "absent" if m is None else f"{m.package}=={m.version} ({len(m.files)} files)"


def format_differences(diffs: list[Difference]) -> str:
    """A short readable diff, grouped by chain: one line per difference."""
    lines: list[str] = []
    chain = None
    for d in diffs:
        if d.chain != chain:
            chain = d.chain
            lines.append(f"chain {chain!r}:")
        lines.append(f"  {d.kind:<8} {d.subject}: expected {d.expected}, found {d.found}")
    return "\n".join(lines)
