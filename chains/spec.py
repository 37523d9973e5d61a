"""Node specifications: the options a user sets and the shape read off a signature.

``@chains.node`` turns a function or class into a ``NodeSpec``. The shape (map,
batched map, streaming map, stream node) comes from the signature, so the user
writes plain Python and the compiler knows how to run it:

- a ``Stream[A]`` parameter makes a per-session stream node;
- ``batch=`` makes a batched map (``list[A] -> list[B]``);
- an async generator (or ``-> AsyncIterator[B]``) makes a streaming map;
- anything else is a map. Several parameters make a fan-in.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import types
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import msgspec

from chains.errors import ChainError
from chains.messages import Control
from chains.streams import Stream


class Batch(msgspec.Struct, frozen=True):
    """Batching for a batched map: at most ``max_size`` items, waiting at most
    ``max_wait_ms`` for more to arrive.

    An idle model takes what is there at once (waiting would leave it idle), unless
    ``idle_wait_ms`` says items tend to come together (several callers ending their turn
    at the same moment): then it waits that long for company, never past what the
    earliest item's deadline allows."""

    max_size: int = 8
    max_wait_ms: float = 10.0
    idle_wait_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ChainError(f"Batch.max_size must be >= 1, got {self.max_size}")
        if self.max_wait_ms < 0:
            raise ChainError(f"Batch.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 0 <= self.idle_wait_ms <= self.max_wait_ms:
            raise ChainError(f"Batch.idle_wait_ms must be in [0, max_wait_ms], got {self.idle_wait_ms}")


OnLate = Literal["shed", "serve"]
Device = Literal["cpu", "cuda", "auto"]
RouterName = Literal["least_busy", "round_robin", "sticky", "prefix"]
Placement = Literal["local", "ray"]


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """Per-node options (the README's "Node shapes" describes each)."""

    name: str | None = None
    budget_ms: float | None = None
    batch: Batch | None = None
    concurrency: int | None = None  # None: 1 for sync code, 64 for async code
    replicas: int = 1
    device: Device = "cpu"
    retries: int = 0
    timeout_ms: float | None = None
    on_late: OnLate = "serve"
    # --- replicas: routing, scaling, placement, supervision (runtime/replicas.py) ---
    router: RouterName | None = None  # None: least busy; "prefix" for an LLM node with several replicas
    min_replicas: int | None = None  # autoscaling bounds: set either to let the stage scale
    max_replicas: int | None = None
    target_utilization: float = 0.7  # the autoscaler's aim for busy slots / all slots
    placement: Placement | None = None  # None: "ray" for shared stages when the runtime runs on Ray
    cpu: float | None = None  # a replica's CPU share on a cluster (Ray num_cpus)
    gpu: float | None = None  # a replica's GPU share on a cluster (Ray num_gpus)
    resources: dict[str, float] | None = None  # custom cluster resources per replica
    max_restarts: int = -1  # rebuilds of a lost replica (-1: unlimited)

    def validate(self, where: str, node: str | None = None) -> None:
        def bad(msg: str) -> ChainError:
            return ChainError(msg, where=where, node=node)

        if self.budget_ms is not None and self.budget_ms <= 0:
            raise bad(f"budget_ms must be > 0, got {self.budget_ms}")
        if self.concurrency is not None and self.concurrency < 1:
            raise bad(f"concurrency must be >= 1, got {self.concurrency}")
        if self.replicas < 1:
            raise bad(f"replicas must be >= 1, got {self.replicas}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise bad(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.retries < 0:
            raise bad(f"retries must be >= 0, got {self.retries}")
        if self.timeout_ms is not None and self.timeout_ms <= 0:
            raise bad(f"timeout_ms must be > 0, got {self.timeout_ms}")
        if self.on_late not in ("shed", "serve"):
            raise bad(f"on_late must be 'shed' or 'serve', got {self.on_late!r}")
        if self.batch is not None and not isinstance(self.batch, Batch):
            raise bad(f"batch must be chains.Batch(...), got {self.batch!r}")
        if self.router is not None and self.router not in ("least_busy", "round_robin", "sticky", "prefix"):
            raise bad(
                f"router must be 'least_busy', 'round_robin', 'sticky' or 'prefix', got {self.router!r}"
            )
        lo, hi = self.min_replicas, self.max_replicas
        if lo is not None and lo < 1:
            raise bad(f"min_replicas must be >= 1, got {lo}")
        if hi is not None and hi < max(1, lo or 1):
            raise bad(f"max_replicas must be >= min_replicas (and >= 1), got {hi}")
        if not 0 < self.target_utilization <= 1:
            raise bad(f"target_utilization must be in (0, 1], got {self.target_utilization}")
        if self.placement not in (None, "local", "ray"):
            raise bad(f"placement must be 'local' or 'ray', got {self.placement!r}")
        for field in ("cpu", "gpu"):
            v = getattr(self, field)
            if v is not None and v < 0:
                raise bad(f"{field} must be >= 0, got {v}")
        if self.gpu is not None and self.gpu > 1 and self.gpu != int(self.gpu):
            raise bad(f"gpu above 1 must be a whole number of GPUs, got {self.gpu}")
        for k, v in (self.resources or {}).items():
            if not isinstance(k, str) or v < 0:
                raise bad(f"resources must map names to amounts >= 0, got {k!r}: {v!r}")
        if self.max_restarts < -1:
            raise bad(f"max_restarts must be >= -1 (-1: unlimited), got {self.max_restarts}")

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None


class Shape(StrEnum):
    MAP = "map"
    BATCH = "batched map"
    STREAM_MAP = "streaming map"
    STREAM = "stream node"


@dataclass(frozen=True)
class Param:
    name: str
    stream: bool  # annotated Stream[T]: wants a stream
    type: Any  # the item type (Any when unannotated)


@dataclass(frozen=True)
class NodeSpec:
    """Everything the compiler and the runtime need to know about a node."""

    name: str
    impl: Any  # the function, or the class
    is_class: bool
    shape: Shape
    params: tuple[Param, ...]
    out_type: Any  # item type of the output; None for a sink
    is_async: bool  # the call is a coroutine / async generator
    options: Options
    where: str  # file:line of the definition

    @property
    def concurrency(self) -> int:
        """Calls in flight per replica. A batched map runs one batch at a time per replica
        (the batcher's cost model assumes batches run one after another); an async map
        64, a sync one 1 (a worker thread each), unless the node says otherwise."""
        if self.options.concurrency is not None:
            return self.options.concurrency
        if self.shape is Shape.BATCH:
            return 1
        return 64 if self.is_async else 1

    @property
    def qualname(self) -> str:
        return f"{self.impl.__module__}:{self.impl.__qualname__}"


def checkable(t: Any) -> bool:
    """Can a value be checked against ``t`` with isinstance? Not for ``Any`` (a class
    since Python 3.11, yet isinstance refuses it), ``object`` or generic aliases."""
    return isinstance(t, type) and t is not Any and t is not object and not isinstance(t, types.GenericAlias)


def describe_type(t: Any) -> str:
    if t is Any:
        return "Any"
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "")


def _is_stream(t: Any) -> bool:
    return typing.get_origin(t) is Stream or t is Stream


def _args(t: Any) -> tuple[Any, ...]:
    return typing.get_args(t) or (Any,)


def _unwrap_optional_any(t: Any) -> Any:
    return Any if t is inspect.Parameter.empty else t


_ITER_ORIGINS = (cabc.AsyncIterator, cabc.AsyncIterable, cabc.AsyncGenerator)


def strip_control(t: Any) -> Any:
    """The data part of a type: control events travel out of band."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(t) if not (isinstance(a, type) and issubclass(a, Control))]
        if not kept:
            return None
        if len(kept) == 1:
            return kept[0]
        return typing.Union[tuple(kept)]  # noqa: UP007
    if isinstance(t, type) and issubclass(t, Control):
        return None
    return t


def analyse(impl: Any, options: Options, where: str) -> NodeSpec:
    """Read a node's shape and types off its signature."""
    is_class = inspect.isclass(impl)
    fn = impl.__call__ if is_class else impl
    if is_class and "__call__" not in {k for c in impl.__mro__[:-1] for k in vars(c)}:
        raise ChainError(f"node class {impl.__qualname__} must define __call__", where=where)
    name = options.name or impl.__name__
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # unresolvable forward reference
        raise ChainError(f"cannot resolve the type hints of {name}: {e}", where=where) from e
    sig = inspect.signature(fn)
    params: list[Param] = []
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if is_class and i == 0:
            continue  # self
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ChainError(f"node {name}: *args/**kwargs parameters are not supported", where=where)
        if p.default is not p.empty:
            continue  # a parameter with a default is configuration, not an input
        t = hints.get(pname, Any)
        if _is_stream(t):
            params.append(Param(pname, True, _args(t)[0]))
        else:
            params.append(Param(pname, False, t))
    if not params:
        raise ChainError(f"node {name} takes no input parameter", where=where)

    ret = hints.get("return", Any)
    is_asyncgen = inspect.isasyncgenfunction(fn)
    is_coro = inspect.iscoroutinefunction(fn)
    ret_origin = typing.get_origin(ret)
    returns_iter = is_asyncgen or ret_origin in _ITER_ORIGINS
    any_stream = any(p.stream for p in params)

    if any_stream:
        shape = Shape.STREAM
        if not returns_iter:
            raise ChainError(
                f"stream node {name} must be an async generator (yield its outputs)", where=where
            )
        out = _args(ret)[0] if ret_origin in _ITER_ORIGINS else Any
    elif options.batch is not None:
        shape = Shape.BATCH
        if len(params) != 1:
            raise ChainError(
                f"batched node {name} must take exactly one list parameter, got {len(params)}",
                where=where,
            )
        if returns_iter:
            raise ChainError(f"batched node {name} must return a list, not stream", where=where)
        p = params[0]
        if p.type is not Any:
            if typing.get_origin(p.type) not in (list, cabc.Sequence):
                raise ChainError(
                    f"batched node {name}: parameter {p.name!r} must be annotated list[T], "
                    f"got {describe_type(p.type)}",
                    where=where,
                )
            params[0] = Param(p.name, False, _args(p.type)[0])
        if ret is not Any and typing.get_origin(ret) not in (list, cabc.Sequence):
            raise ChainError(
                f"batched node {name} must be annotated to return list[T], got {describe_type(ret)}",
                where=where,
            )
        out = _args(ret)[0] if ret is not Any else Any
    elif returns_iter:
        shape = Shape.STREAM_MAP
        out = _args(ret)[0] if ret_origin in _ITER_ORIGINS else Any
    else:
        shape = Shape.MAP
        out = None if ret is type(None) else _without_none(ret)  # a None result filters

    spec = NodeSpec(
        name=name,
        impl=impl,
        is_class=is_class,
        shape=shape,
        params=tuple(params),
        out_type=out,
        is_async=is_coro or is_asyncgen or (is_class and _has_async_call(impl)),
        options=options,
        where=where,
    )
    options.validate(where, name)
    if shape in (Shape.STREAM_MAP, Shape.STREAM) and (options.retries or options.timeout_ms is not None):
        raise ChainError(
            f"retries and timeout_ms apply to maps and batched maps; {shape.value} {name} "
            "streams its outputs (bound it with budget_ms and on_late instead)",
            where=where,
            node=name,
        )
    if shape is Shape.STREAM and not (is_asyncgen or inspect.isasyncgenfunction(fn)):
        raise ChainError(f"stream node {name} must be an `async def` generator", where=where)
    if shape is Shape.STREAM_MAP and not is_asyncgen:
        raise ChainError(f"streaming map {name} must be an `async def` generator", where=where)
    return spec


def _without_none(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(t) if a is not type(None)]
        return kept[0] if len(kept) == 1 else typing.Union[tuple(kept)]  # noqa: UP007
    return t


def _has_async_call(cls: type) -> bool:
    call = cls.__call__
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def compatible(out: Any, want: Any) -> bool:
    """Can an item of type ``out`` be given where ``want`` is declared?"""
    if out is Any or want is Any or want is object or out is None:
        return True
    want_members = _union_members(want)
    return all(any(_member_ok(o, w) for w in want_members) for o in _union_members(out))


def _union_members(t: Any) -> tuple[Any, ...]:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return typing.get_args(t)
    return (t,)


def _member_ok(o: Any, w: Any) -> bool:
    if o is Any or w is Any or w is object:
        return True
    o_origin = typing.get_origin(o) or o
    w_origin = typing.get_origin(w) or w
    if isinstance(o_origin, type) and isinstance(w_origin, type):
        try:
            return issubclass(o_origin, w_origin)
        except TypeError:
            return True
    return o == w
