"""Built-in fan-in nodes: ``merge`` (interleave streams) and ``zip`` (pair them)."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from typing import Any

import anyio

from chains.errors import ChainError
from chains.graph import Handle, call_site, current_graph
from chains.spec import NodeSpec, Options, Param, Shape


async def _merge(*streams: Any) -> AsyncIterator[Any]:
    send, recv = anyio.create_memory_object_stream[Any](0)

    async def pump(s: Any, tx: Any) -> None:
        async with tx:
            async for item in s:
                await tx.send(item)

    async with anyio.create_task_group() as tg, send:
        for s in streams:
            tg.start_soon(pump, s, send.clone())
        send.close()
        async with recv:
            async for item in recv:
                yield item


async def _zip(*streams: Any) -> AsyncIterator[tuple[Any, ...]]:
    iters = [aiter(s) for s in streams]
    while True:
        try:
            items = [await anext(it) for it in iters]
        except StopAsyncIteration:
            return
        yield tuple(items)


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
