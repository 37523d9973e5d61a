"""The chain compiler: run the chain function once on symbolic handles, build a
static DAG, and validate it with one clear error per mistake.

A ``Handle`` stands for the output of a node (or a chain input) while the chain
function runs. Calling a node on handles records a ``GraphNode``; the result is a
new handle. Every error names the node, the problem and the file and line of the
chain definition where the mistake is.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

import xxhash

from chains.errors import ChainError
from chains.handles import Handle, call_site
from chains.outputs import RESERVED
from chains.spec import NodeSpec, Shape, _is_stream, compatible, describe_type, strip_control

_building: contextvars.ContextVar[Graph | None] = contextvars.ContextVar("chains_graph", default=None)


@dataclass(frozen=True)
class ChainInput:
    name: str
    type: Any
    stream: bool


@dataclass
class GraphNode:
    index: int
    name: str
    spec: NodeSpec
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    inputs: list[Handle]  # one per spec.params entry, same order
    where: str
    consumers: list[tuple[int, int]] = field(default_factory=list)  # (node index, param index)
    template: Any = None  # the NodeTemplate a class node came from (shared replicas)
    per_input: bool = False  # chains.collect: one value per input of a single-value chain

    @property
    def output_stream(self) -> bool:
        """Does this node emit many items per session?"""
        if self.per_input:
            return False
        if self.spec.shape in (Shape.STREAM, Shape.STREAM_MAP):
            return True
        return any(h.stream for h in self.inputs)


@dataclass
class Graph:
    name: str
    where: str
    inputs: list[ChainInput] = field(default_factory=list)
    input_consumers: list[list[tuple[int, int]]] = field(default_factory=list)
    nodes: list[GraphNode] = field(default_factory=list)
    outputs: dict[str, Handle] = field(default_factory=dict)
    budget_ms: float | None = None

    def add_node(
        self,
        spec: NodeSpec,
        args: tuple[Any, ...],
        init_args: tuple[Any, ...] = (),
        init_kwargs: dict[str, Any] | None = None,
        template: Any = None,
        collects: bool = False,
    ) -> Handle:
        """Record a node called on ``args``; ``collects`` (``chains.collect``): its output is
        one value per input unless a stream chain input feeds it."""
        where = call_site()
        name = self._unique(spec.name)
        if len(args) != len(spec.params):
            want = ", ".join(p.name for p in spec.params)
            raise ChainError(
                f"takes {len(spec.params)} input(s) ({want}), got {len(args)}", node=name, where=where
            )
        index = len(self.nodes)
        for i, (arg, p) in enumerate(zip(args, spec.params, strict=True)):
            if not isinstance(arg, Handle):
                raise ChainError(
                    f"input {p.name!r} must be a chain input or a node's output, "
                    f"got {type(arg).__name__} {arg!r:.40}",
                    node=name,
                    where=where,
                )
            if arg.graph is not self:
                raise ChainError(
                    f"input {p.name!r} comes from another chain ({arg.label})", node=name, where=where
                )
            if not compatible(arg.type, p.type):
                raise ChainError(
                    f"input {p.name!r} wants {describe_type(p.type)} but {arg.label} gives "
                    f"{describe_type(arg.type)}",
                    node=name,
                    where=where,
                )
            if spec.shape is Shape.STREAM and not p.stream and arg.stream:
                raise ChainError(
                    f"input {p.name!r} wants one value but {arg.label} is a stream "
                    f"(annotate it Stream[...] to take the stream)",
                    node=name,
                    where=where,
                )
            self._consumers_of(arg).append((index, i))
        node = GraphNode(
            index=index,
            name=name,
            spec=spec,
            init_args=init_args,
            init_kwargs=dict(init_kwargs or {}),
            inputs=list(args),
            where=where,
            template=template,
            per_input=collects and not any(self.fed_by_stream_input(h) for h in args),
        )
        self.nodes.append(node)
        out_type = strip_control(spec.out_type)
        return Handle(self, index, out_type, node.output_stream, where, f"node {name!r}")

    def fed_by_stream_input(self, h: Handle) -> bool:
        """Is ``h`` downstream of a chain input declared ``Stream[...]``?"""
        seen: set[int] = set()
        todo = [h]
        while todo:
            x = todo.pop()
            if x.source < 0:
                if self.inputs[-x.source - 1].stream:
                    return True
            elif x.source not in seen:
                seen.add(x.source)
                todo.extend(self.nodes[x.source].inputs)
        return False

    def _consumers_of(self, h: Handle) -> list[tuple[int, int]]:
        if h.source < 0:
            return self.input_consumers[-h.source - 1]
        return self.nodes[h.source].consumers

    def _unique(self, name: str) -> str:
        taken = {n.name for n in self.nodes}
        if name not in taken:
            return name
        k = 2
        while f"{name}_{k}" in taken:
            k += 1
        return f"{name}_{k}"

    def node(self, name: str) -> GraphNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ChainError(f"chain {self.name!r} has no node {name!r}; it has {[n.name for n in self.nodes]}")

    def source_name(self, h: Handle) -> str:
        return self.inputs[-h.source - 1].name if h.source < 0 else self.nodes[h.source].name

    def describe(self) -> dict[str, Any]:
        """A stable, JSON-able description: what the lock hashes and `chains graph` draws."""
        return {
            "chain": self.name,
            "budget_ms": self.budget_ms,
            "inputs": [
                {"name": i.name, "type": describe_type(i.type), "stream": i.stream} for i in self.inputs
            ],
            "nodes": [
                {
                    "name": n.name,
                    "impl": n.spec.qualname,
                    "shape": n.spec.shape.value,
                    "init": {
                        "args": [repr(a) for a in n.init_args],
                        "kwargs": {k: repr(v) for k, v in sorted(n.init_kwargs.items())},
                    },
                    "options": _options_dict(n.spec),
                    "inputs": [self.source_name(h) for h in n.inputs],
                }
                for n in self.nodes
            ],
            "outputs": {k: self.source_name(h) for k, h in self.outputs.items()},
        }

    def hash(self) -> str:
        import json

        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return xxhash.xxh3_128_hexdigest(blob)

    def mermaid(self) -> str:
        """The DAG as Mermaid flowchart text."""
        lines = ["flowchart LR"]
        for i, inp in enumerate(self.inputs):
            kind = "Stream" if inp.stream else "value"
            lines.append(f'    in{i}[/"{inp.name}: {kind}[{describe_type(inp.type)}]"/]')
        for n in self.nodes:
            o = n.spec.options
            bits = []
            if o.batch is not None:
                bits.append(f"batch≤{o.batch.max_size}/{o.batch.max_wait_ms:g}ms")
            if o.replicas > 1:
                bits.append(f"replicas={o.replicas}")
            if o.budget_ms is not None:
                bits.append(f"budget={o.budget_ms:g}ms")
            extra = ", ".join(bits)
            label = f"{n.name}<br/>{n.spec.shape.value}" + (f"<br/>{extra}" if extra else "")
            shape = ("[[", "]]") if n.spec.shape is Shape.STREAM else ("[", "]")
            lines.append(f'    n{n.index}{shape[0]}"{label}"{shape[1]}')
        for n in self.nodes:
            for h in n.inputs:
                src = f"in{-h.source - 1}" if h.source < 0 else f"n{h.source}"
                arrow = "==>" if h.stream else "-->"
                lines.append(f"    {src} {arrow} n{n.index}")
        for k, h in self.outputs.items():
            src = f"in{-h.source - 1}" if h.source < 0 else f"n{h.source}"
            lines.append(f'    out_{_ident(k)}(["{k}"])')
            lines.append(f"    {src} --> out_{_ident(k)}")
        return "\n".join(lines) + "\n"


def _ident(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s)


def _options_dict(spec: NodeSpec) -> dict[str, Any]:
    o = spec.options
    d: dict[str, Any] = {
        "budget_ms": o.budget_ms,
        "batch": None
        if o.batch is None
        else {"max_size": o.batch.max_size, "max_wait_ms": o.batch.max_wait_ms},
        "concurrency": spec.concurrency,
        "replicas": o.replicas,
        "device": o.device,
        "retries": o.retries,
        "timeout_ms": o.timeout_ms,
        "on_late": o.on_late,
    }
    return {k: v for k, v in d.items() if v is not None}


def _run_body(fn: Any, handles: list[Handle]) -> tuple[Any, str | None]:
    """Run the chain body on its handles; also say where it returned (file:line of the
    ``return`` that ran), so that an error about what it returned points there.

    The line comes from a profile hook on the body's own frame, set for the one run of
    the body (a chain is compiled once); when a profiler is already installed it is
    left alone and errors point at the ``def`` line instead."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None or sys.getprofile() is not None:
        return fn(*handles), None
    where: str | None = None

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal where
        if event == "return" and frame.f_code is code:
            where = f"{code.co_filename}:{frame.f_lineno}"

    sys.setprofile(hook)
    try:
        result = fn(*handles)
    finally:
        sys.setprofile(None)
    return result, where


def _what(x: Any) -> str:
    if x is None:
        return "None (a `return` is missing?)"
    return f"{type(x).__name__} {x!r:.40}"


def current_graph() -> Graph | None:
    return _building.get()


def build(fn: Any, name: str, budget_ms: float | None) -> Graph:
    """Run ``fn`` on symbolic handles and validate the resulting DAG."""
    try:
        where_def = f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        where_def = "<unknown>"
    graph = Graph(name=name, where=where_def, budget_ms=budget_ms)
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:
        raise ChainError(f"cannot resolve the type hints of chain {name}: {e}", where=where_def) from e
    handles = []
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ChainError(f"chain {name}: *args/**kwargs are not supported", where=where_def)
        t = hints.get(pname, Any)
        stream = _is_stream(t)
        item = (typing.get_args(t) or (Any,))[0] if stream else t
        graph.inputs.append(ChainInput(pname, item, stream))
        graph.input_consumers.append([])
        handles.append(Handle(graph, -len(graph.inputs), item, stream, where_def, f"chain input {pname!r}"))
    if not handles:
        raise ChainError(f"chain {name} takes no input", where=where_def)
    token = _building.set(graph)
    try:
        result, where_ret = _run_body(fn, handles)
    finally:
        _building.reset(token)
    where_ret = where_ret or where_def
    if isinstance(result, Handle):
        outputs = {"output": result}
    elif isinstance(result, tuple):
        outputs = {str(i): h for i, h in enumerate(result)}
    elif isinstance(result, dict):
        outputs = dict(result)
    else:
        raise ChainError(
            f"chain {name} must return a node's output, or a tuple or dict of them; got {_what(result)}",
            where=where_ret,
        )
    if not outputs:
        raise ChainError(f"chain {name} returns no output", where=where_ret)
    for key, h in outputs.items():
        if not isinstance(key, str):
            raise ChainError(f"chain {name}: output names must be strings, got {key!r}", where=where_ret)
        if key in RESERVED:
            raise ChainError(f"chain {name}: output name {key!r} is reserved", where=where_ret)
        if not isinstance(h, Handle) or h.graph is not graph:
            raise ChainError(
                f"chain {name}: output {key!r} must be a node's output of this chain, got {h!r:.60}",
                where=where_ret,
            )
    graph.outputs = outputs
    used = {h.source for h in outputs.values()}
    for n in graph.nodes:
        if not n.consumers and n.index not in used and n.spec.out_type is not None:
            raise ChainError(
                "its output is never used (pass it to another node or return it)",
                node=n.name,
                where=n.where,
            )
    for i, inp in enumerate(graph.inputs):
        if not graph.input_consumers[i] and -(i + 1) not in used:
            raise ChainError(f"chain input {inp.name!r} is never used", where=where_def)
    return graph
