"""``@chains.node`` and ``@chains.chain``: the decorators users write.

A decorated function called on handles inside a chain adds a node to the graph;
called on plain values anywhere else it is the plain function, so nodes stay
unit-testable. A decorated class called with constructor arguments gives a
``NodeTemplate``: the model is not loaded until a runtime starts the stage, once
per replica, and the template called on handles adds a node.
"""

from __future__ import annotations

import functools
import inspect
import sys
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar, overload

from chains.errors import ChainError
from chains.graph import Graph, Handle, build, call_site, current_graph
from chains.spec import (
    Batch,
    Device,
    NodeSpec,
    OnLate,
    Options,
    Placement,
    RouterName,
    Shape,
    analyse,
    describe_type,
)

F = TypeVar("F")


class _Documented:
    """What ``help()`` and the API reference show of a decorated node: its own
    signature (a class node's constructor options), its docstring, its shape, its
    types and the options it was declared with, not the wrapper's.

    ``__get__`` makes it a descriptor that returns itself (a node kept on a class stays
    that node), which is also what tells ``pydoc`` and ``pdoc`` to document it as a
    callable with a signature rather than as an instance of this wrapper."""

    spec: NodeSpec

    def _document(self, call_doc: str) -> None:
        impl = self.spec.impl
        self.__signature__ = inspect.signature(impl)
        own = impl.__doc__
        if own is None:  # a node in a module of its own is documented by the module
            module = sys.modules.get(impl.__module__)
            mod_doc = getattr(module, "__doc__", None) or ""
            own = mod_doc if self.spec.name in mod_doc.split("\n", 1)[0] else ""
        parts = (inspect.cleandoc(own), textwrap.fill(call_doc, 88), describe_node(self.spec))
        self.__doc__ = "\n\n".join(p for p in parts if p)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self


def describe_node(spec: NodeSpec) -> str:
    """The node's shape, inputs, output and declared options, for its docstring."""
    ins = ", ".join(
        f"{p.name}: {'Stream[' + describe_type(p.type) + ']' if p.stream else describe_type(p.type)}"
        for p in spec.params
    )
    out = "nothing (a sink)" if spec.out_type is None else describe_type(spec.out_type)
    many = spec.shape in (Shape.STREAM, Shape.STREAM_MAP)
    lines = [f"Shape: {spec.shape.value}; input(s): {ins}; output: {out}{' (streamed)' if many else ''}."]
    defaults = Options()
    set_ = [
        f"{k}={getattr(spec.options, k)!r}"
        for k in spec.options.__struct_fields__
        if getattr(spec.options, k) != getattr(defaults, k)
    ]
    if set_:
        lines.append("Node options: " + ", ".join(set_) + ".")
    return "\n".join(lines)


class NodeDef(_Documented):
    """A decorated function node."""

    def __init__(self, spec: NodeSpec):
        self.spec = spec
        functools.update_wrapper(self, spec.impl)
        self._document(
            f"A node: inside a @chains.chain, ``{spec.name}(x)`` on a node's output adds it to the "
            "chain; anywhere else it is the plain function."
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graph = current_graph()
        if graph is not None and any(isinstance(a, Handle) for a in (*args, *kwargs.values())):
            if kwargs:
                raise ChainError("pass node inputs positionally", node=self.spec.name, where=call_site())
            return graph.add_node(self.spec, args)
        return self.spec.impl(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<chains {self.spec.shape.value} {self.spec.name}>"


class NodeClass(_Documented):
    """A decorated class node: call it with constructor arguments to get a template."""

    def __init__(self, spec: NodeSpec):
        self.spec = spec
        functools.update_wrapper(self, spec.impl, updated=())
        self._document(
            f"A class node: ``{spec.name}(...)`` with the options above loads nothing yet; "
            f"call the result on a chain's inputs, ``{spec.name}(...)(x)``. Its model loads "
            "once per replica when a runtime starts."
        )

    def __call__(self, *args: Any, **kwargs: Any) -> NodeTemplate:
        if any(isinstance(a, Handle) for a in (*args, *kwargs.values())):
            raise ChainError(
                f"{self.spec.name} is a class node: create it first, then call it on inputs, "
                f"e.g. {self.spec.name}()(x)",
                node=self.spec.name,
                where=call_site(),
            )
        return NodeTemplate(self.spec, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        spec = self.__dict__.get("spec")
        if spec is None:  # being unpickled (a script's node shipped by value to Ray): no spec yet
            raise AttributeError(name)
        return getattr(spec.impl, name)

    def __repr__(self) -> str:
        return f"<chains {self.spec.shape.value} class {self.spec.name}>"


class NodeTemplate:
    """A class node with its constructor arguments, not yet loaded.

    Calling the same template on several inputs in one chain makes several graph
    nodes that share one set of replicas (one model in memory).
    """

    def __init__(self, spec: NodeSpec, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.spec = spec
        self.args = args
        self.kwargs = kwargs

    def __call__(self, *inputs: Any) -> Handle:
        graph = current_graph()
        if graph is None:
            raise ChainError(
                f"{self.spec.name}(...) can only be applied to inputs inside a @chains.chain function",
                node=self.spec.name,
                where=call_site(),
            )
        return graph.add_node(self.spec, inputs, self.args, self.kwargs, template=self)

    def instantiate(self) -> Any:
        """Construct one replica (loads the model)."""
        return self.spec.impl(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"<chains node template {self.spec.name}>"


@overload
def node(fn: F) -> F: ...
@overload
def node(
    *,
    name: str | None = None,
    budget_ms: float | None = None,
    batch: Batch | None = None,
    concurrency: int | None = None,
    replicas: int = 1,
    device: Device = "cpu",
    retries: int = 0,
    timeout_ms: float | None = None,
    on_late: OnLate = "serve",
    router: RouterName | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    target_utilization: float = 0.7,
    placement: Placement | None = None,
    cpu: float | None = None,
    gpu: float | None = None,
    resources: dict[str, float] | None = None,
    max_restarts: int = -1,
) -> Callable[[F], F]: ...


def node(fn: Any = None, **options: Any) -> Any:
    """Declare a node: ``@chains.node`` or ``@chains.node(option=...)`` on a function or a
    class.

    The shape comes from the signature: a ``Stream[A]`` parameter makes a per-session
    stream node, ``batch=chains.Batch(...)`` a batched map (``list[A] -> list[B]``), an
    async generator a streaming map, anything else a map; several parameters make a
    fan-in. The options (``budget_ms``, ``batch``, ``concurrency``, ``replicas``,
    ``retries``, ``timeout_ms``, ``on_late``, routing, autoscaling and placement) are
    described in the README's "Node shapes". A node's results are checked against its
    return annotation (``chains.WrongResultType``)."""
    try:
        opts = Options(**options)
    except TypeError as e:
        raise ChainError(f"@chains.node: {e}", where=call_site()) from e

    def wrap(impl: Any) -> Any:
        where = call_site()
        spec = analyse(impl, opts, where)
        return NodeClass(spec) if spec.is_class else NodeDef(spec)

    return wrap(fn) if fn is not None else wrap


class Chain:
    """A compiled chain: a static DAG plus its budget."""

    def __init__(self, fn: Callable[..., Any], name: str, budget_ms: float | None):
        if budget_ms is not None and budget_ms <= 0:
            raise ChainError(f"chain {name}: budget_ms must be > 0, got {budget_ms}", where=call_site())
        self.fn = fn
        self.name = name
        self.budget_ms = budget_ms
        self.graph: Graph = build(fn, name, budget_ms)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<chains chain {self.name}: {len(self.graph.nodes)} nodes>"


def chain(fn: Any = None, *, name: str | None = None, budget_ms: float | None = None) -> Any:
    """Declare a chain: ``fn`` runs once on symbolic handles to build the DAG."""

    def wrap(f: Callable[..., Any]) -> Chain:
        return Chain(f, name or f.__name__, budget_ms)

    return wrap(fn) if fn is not None else wrap
