"""``Stream[T]``: the annotation for a per-session stream of items.

A chain input or node parameter annotated ``Stream[T]`` receives every item of
the session, in order, as an async iterator. At run time the runtime passes an
object of a subclass; at definition time the annotation tells the compiler that
the parameter wants a stream rather than one value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Stream(AsyncIterator[T], Generic[T]):
    """An async iterator over one session's items of type ``T``."""

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:  # pragma: no cover - implemented by the runtime
        raise NotImplementedError
