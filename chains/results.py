"""A node's results checked against its return annotation, always on.

Why here and not downstream: a node annotated ``-> Text`` that returns a ``str``
would otherwise be blamed on the next node (``'str' object has no attribute
'text'``), far from the mistake. The check is one ``isinstance`` per result, built
once per replica, and only for annotations ``isinstance`` can answer: classes
(``chains.Message`` types, builtins, user classes), unions of them, and the origin
of a generic (``list[int]`` checks ``list``). ``Any``, type variables, ``Literal``
and the like are not checked. ``None`` from a map or a batched map is its filter and
control events travel out of band: both always pass.
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Callable
from typing import Any

from chains.errors import WrongResultType
from chains.messages import Control
from chains.spec import NodeSpec, Shape, describe_type

# What Python's numeric tower lets stand for a declared number.
_WIDER = {float: (float, int), complex: (complex, float, int)}


def _classes(t: Any) -> tuple[type, ...] | None:
    """The classes ``isinstance`` checks ``t`` with, or None where it cannot."""
    if typing.get_origin(t) is typing.Annotated:
        return _classes(typing.get_args(t)[0])
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        out: list[type] = []
        for a in typing.get_args(t):
            c = _classes(a)
            if c is None:
                return None
            out.extend(c)
        return tuple(out)
    if t is None or t is type(None):
        return (type(None),)
    origin = typing.get_origin(t)
    if origin is not None:
        return (origin,) if isinstance(origin, type) else None
    if not isinstance(t, type) or t is Any or t is object:
        return None
    return _WIDER.get(t, (t,))


def result_check(spec: NodeSpec) -> Callable[[Any], Any] | None:
    """A function that returns a result unchanged or raises ``WrongResultType``; None
    when the node's annotation is not checkable (nothing to do, nothing to pay)."""
    if spec.out_type is None:
        return None
    classes = _classes(spec.out_type)
    if classes is None:
        return None
    allowed = (*classes, Control)
    if spec.shape in (Shape.MAP, Shape.BATCH):
        allowed = (*allowed, type(None))  # None filters the item out
    name, declared = spec.name, describe_type(spec.out_type)

    def check(value: Any) -> Any:
        if isinstance(value, allowed):
            return value
        raise WrongResultType(name, declared, f"{type(value).__name__} {value!r:.60}")

    return check


def checked(spec: NodeSpec, instance: Any) -> Any:
    """``instance`` (a function node, or a class node's replica) as the stage calls it,
    its results checked against its annotation; ``instance`` itself when there is
    nothing to check."""
    check = result_check(spec)
    if check is None:
        return instance
    call = _wrap(spec, instance, check)
    return _Checked(instance, call) if spec.is_class else call


def _wrap(spec: NodeSpec, fn: Any, check: Callable[[Any], Any]) -> Any:
    if spec.shape in (Shape.STREAM, Shape.STREAM_MAP):

        async def stream(*args: Any) -> Any:
            async with contextlib.aclosing(fn(*args)) as agen:
                async for item in agen:
                    yield check(item)

        return stream
    if spec.shape is Shape.BATCH:

        def each(results: Any) -> Any:
            if isinstance(results, list | tuple):
                for r in results:
                    check(r)
            return results

        if spec.is_async:

            async def batch(*args: Any) -> Any:
                return each(await fn(*args))

            return batch
        return lambda *args: each(fn(*args))
    if spec.is_async:

        async def one(*args: Any) -> Any:
            return check(await fn(*args))

        return one
    return lambda *args: check(fn(*args))


class _Checked:
    """A class node's replica whose calls are checked; every other attribute (``close``,
    ``alive``, ``route_tokens``, ...) is the replica's own."""

    __slots__ = ("__call__", "_instance")

    def __init__(self, instance: Any, call: Any):
        self._instance = instance
        self.__call__ = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._instance, name)


def unwrapped(replica: Any) -> Any:
    """The node's own object behind a replica (its instance, not the result check)."""
    return replica._instance if isinstance(replica, _Checked) else replica


__all__ = ["checked", "result_check", "unwrapped"]
