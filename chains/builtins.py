"""Built-in nodes: ``merge`` (interleave streams), ``zip`` (pair them) and ``collect``
(a streamed reply joined into one value per input)."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from typing import Any

import anyio

from chains.context import current_context
from chains.errors import ChainError
from chains.graph import Handle, call_site, current_graph
from chains.messages import Text, TextDelta
from chains.spec import NodeSpec, Options, Param, Shape


async def _merge(*streams: Any) -> AsyncIterator[Any]:
    send, recv = anyio.create_memory_object_stream[Any](0)

    async def pump(s: Any, tx: Any) -> None:
        async with tx:
            async for item in s:
                try:
                    await tx.send(item)
                except anyio.BrokenResourceError:  # the merge's reader left
                    return

    try:
        async with anyio.create_task_group() as tg, send:
            for s in streams:
                tg.start_soon(pump, s, send.clone())
            send.close()
            async with recv:
                async for item in recv:
                    yield item
    except BaseExceptionGroup as group:
        # The consumer left while this generator was suspended at ``yield`` (aclose()
        # throws GeneratorExit there); the task group wraps it with its pumps'
        # cancellations. Leaving is not an error: end as a closed generator must.
        rest = group.split(GeneratorExit)[1]
        if rest is not None:
            raise
        raise GeneratorExit from None


async def _zip(*streams: Any) -> AsyncIterator[tuple[Any, ...]]:
    iters = [aiter(s) for s in streams]
    while True:
        try:
            items = [await anext(it) for it in iters]
        except StopAsyncIteration:
            return
        yield tuple(items)


def _epoch() -> int:
    ctx = current_context()
    return ctx.epoch if ctx is not None else 0


async def _collect_text(items: Any) -> AsyncIterator[Text]:
    """Each reply's ``TextDelta``s joined into one ``Text`` (at its ``final`` delta, or at
    the end of the input); the part of a reply whose turn was interrupted is dropped."""
    parts: list[str] = []
    epoch = _epoch()
    async for d in items:
        if _epoch() != epoch:
            parts.clear()
            epoch = _epoch()
        parts.append(d.text)
        if d.final:
            yield Text(text="".join(parts))
            parts.clear()
    if parts:
        yield Text(text="".join(parts))


async def _collect_list(items: Any) -> AsyncIterator[list[Any]]:
    """Every item of the turn in one list, at the end of the input (an interrupt drops
    what the old turn had gathered)."""
    got: list[Any] = []
    epoch = _epoch()
    async for x in items:
        if _epoch() != epoch:
            got = []
            epoch = _epoch()
        got.append(x)
    yield got


async def _collect_any(items: Any) -> AsyncIterator[Any]:
    """``TextDelta``s joined into a ``Text`` per reply, anything else into a list."""
    parts: list[str] = []
    got: list[Any] = []
    epoch = _epoch()
    async for x in items:
        if _epoch() != epoch:
            parts.clear()
            got = []
            epoch = _epoch()
        if isinstance(x, TextDelta):
            parts.append(x.text)
            if x.final:
                yield Text(text="".join(parts))
                parts.clear()
        else:
            got.append(x)
    if parts:
        yield Text(text="".join(parts))
    if got:
        yield got


def collect(x: Any) -> Handle:
    """One value per input from a stream: ``chains.collect(reply)``.

    A stream of ``TextDelta`` (an LLM's streamed reply) becomes one ``Text`` per reply
    (the deltas joined, up to each ``final`` one); a stream of anything else becomes one
    ``list`` of its items per turn. Its output is a single value when the chain's inputs
    are single values, so a node after it gets one value and ``chains.call`` returns
    one value, not a list, whatever streamed upstream. On a chain with a stream input
    it stays a stream: one ``Text`` per reply (or one list) per session turn.
    """
    where = call_site()
    graph = current_graph()
    if graph is None:
        raise ChainError("chains.collect is only usable inside a @chains.chain function", where=where)
    if not isinstance(x, Handle):
        raise ChainError(
            f"chains.collect takes a node's output or a chain input, got {type(x).__name__}", where=where
        )
    if not x.stream:
        raise ChainError(
            f"chains.collect: {x.label} is already one value per input (collect joins a stream)",
            where=where,
        )
    t = x.type
    if isinstance(t, type) and issubclass(t, TextDelta):
        impl, out = _collect_text, Text
    elif t is Any or _has_delta(t):
        impl, out = _collect_any, Any
    else:
        impl, out = _collect_list, list[t]  # type: ignore[valid-type]
    spec = NodeSpec(
        name="collect",
        impl=impl,
        is_class=False,
        shape=Shape.STREAM,
        params=(Param("items", True, t),),
        out_type=out,
        is_async=True,
        options=Options(),
        where=where,
    )
    return graph.add_node(spec, (x,), collects=True)


def _has_delta(t: Any) -> bool:
    return any(isinstance(a, type) and issubclass(a, TextDelta) for a in typing.get_args(t))


def _fan_in(kind: str, impl: Any, handles: tuple[Any, ...], out_type: Any) -> Handle:
    where = call_site()
    graph = current_graph()
    if graph is None:
        raise ChainError(f"chains.{kind} is only usable inside a @chains.chain function", where=where)
    if len(handles) < 2:
        raise ChainError(f"chains.{kind} needs at least two inputs, got {len(handles)}", where=where)
    spec = NodeSpec(
        name=kind,
        impl=impl,
        is_class=False,
        shape=Shape.STREAM,
        params=tuple(Param(f"in{i}", True, Any) for i in range(len(handles))),
        out_type=out_type,
        is_async=True,
        options=Options(),
        where=where,
    )
    return graph.add_node(spec, handles)


def merge(*handles: Any) -> Handle:
    """Interleave several streams into one, each item as soon as it arrives."""
    types = [h.type for h in handles if isinstance(h, Handle)]
    out = typing.Union[tuple(types)] if types else Any  # noqa: UP007
    return _fan_in("merge", _merge, handles, out)


def zip(*handles: Any) -> Handle:
    """Pair the n-th items of several streams into tuples (ends with the shortest)."""
    return _fan_in("zip", _zip, handles, tuple)
