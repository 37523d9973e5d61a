"""Bounded edges between a session's tasks, with a fast path that pays no
scheduling round-trip when an item is ready or there is room.

Edges are anyio memory object streams. Their ``send``/``receive`` checkpoint on
every item; ``send_nowait``/``receive_nowait`` do not, so the loops here try those
first and only await when the edge is empty or full. That keeps the per-hop cost
near the bare ``asyncio.Queue`` floor while backpressure still holds: a full edge
suspends its producer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from anyio import EndOfStream, WouldBlock
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

DEFAULT_CAPACITY = 64


def edge(
    capacity: int = DEFAULT_CAPACITY,
) -> tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]:
    return anyio.create_memory_object_stream[Any](capacity)


class Tagged:
    """A sender that labels items with an output name on a shared output edge."""

    __slots__ = ("_tx", "name")

    def __init__(self, tx: MemoryObjectSendStream[Any], name: str):
        self._tx = tx
        self.name = name

    def send_nowait(self, item: Any) -> None:
        self._tx.send_nowait((self.name, item))

    async def send(self, item: Any) -> None:
        await self._tx.send((self.name, item))

    def close(self) -> None:
        self._tx.close()


async def fan_out(senders: Sequence[Any], item: Any) -> None:
    """Deliver ``item`` to every consumer; wait on the slowest (backpressure)."""
    for tx in senders:
        try:
            tx.send_nowait(item)
        except WouldBlock:
            await tx.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # that consumer is gone (its session branch ended); the others go on


async def receive(rx: MemoryObjectReceiveStream[Any]) -> Any:
    """The next item, or raise EndOfStream; no round-trip when one is ready."""
    try:
        return rx.receive_nowait()
    except WouldBlock:
        return await rx.receive()


def close_all(senders: Sequence[Any]) -> None:
    for tx in senders:
        tx.close()


__all__ = ["DEFAULT_CAPACITY", "EndOfStream", "Tagged", "close_all", "edge", "fan_out", "receive"]
