"""The test kit's fakes (``chains.testing``), re-exported for this suite's tests, and
the first, simpler fakes that tests/test_runtime_shapes.py and test_runtime_flow.py use.

The fakes users get live in ``chains.testing.fakes``; see its docstring.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import chains
from chains import Stream
from chains.testing.fakes import (
    BatchFake,
    Call,
    Gate,
    InFlight,
    InterrupterFake,
    MapFake,
    ModelFake,
    ProducerFake,
    StreamingFake,
    drain,
    session_tag,
    settle,
    steady,
    wait_until,
)

# --- the first fakes (used by tests/test_runtime_shapes.py) -------------------------


@dataclass
class Recorder:
    """What fakes saw: batches with the sessions in them, calls, cancellations."""

    batches: list[list[tuple[str, object]]] = field(default_factory=list)
    calls: list[object] = field(default_factory=list)
    cancelled: list[object] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0


def batched_fake(rec: Recorder, a: float = 0.002, k: float = 0.0005, max_size: int = 16, wait_ms: float = 5):
    """A batched stage whose batch of b items costs a + k*b seconds; records each batch.

    Items are (session_id, value) pairs so the batches show which sessions they mix."""

    @chains.node(batch=chains.Batch(max_size=max_size, max_wait_ms=wait_ms))
    async def batched(xs: list[tuple]) -> list[tuple]:
        rec.batches.append(list(xs))
        await asyncio.sleep(a + k * len(xs))
        return xs

    return batched


@chains.node
async def tag_session(x: int) -> tuple:
    return (chains.context().session_id, x)


def slow_llm(rec: Recorder, tokens: int = 5, delay: float = 0.01):
    """A streaming map that yields `tokens` tokens, `delay` apart, and records cancellation."""

    @chains.node
    async def llm(prompt: str) -> AsyncIterator[str]:
        rec.calls.append(prompt)
        try:
            for i in range(tokens):
                await asyncio.sleep(delay)
                yield f"{prompt}:{i}"
        except asyncio.CancelledError:
            rec.cancelled.append(prompt)
            raise

    return llm


@chains.node
async def collect(xs: Stream[object]) -> AsyncIterator[list]:
    acc = []
    async for x in xs:
        acc.append(x)
    yield acc


def counting_map(rec: Recorder, delay: float = 0.0, concurrency: int | None = None):
    @chains.node(concurrency=concurrency)
    async def counted(x: int) -> int:
        rec.in_flight += 1
        rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
        try:
            await asyncio.sleep(delay)
            return x
        finally:
            rec.in_flight -= 1

    return counted


def thread_map(rec: Recorder):
    @chains.node
    def in_thread(x: int) -> int:
        rec.threads.add(threading.get_ident())
        return x * 10

    return in_thread


async def staggered_callers(rt: chains.Runtime, callers: list[tuple[float, str, list]]) -> dict[str, list]:
    """Sessions on ``rt``, each ``(start, name, items)``: started ``start`` seconds from
    now, it sends ``items`` and ends. Each caller's outputs by name, in the order the
    callers finished (so a test can tell who was answered first)."""
    got: dict[str, list] = {}

    async def one(start: float, name: str, items: list) -> None:
        await asyncio.sleep(start)
        async with rt.session() as s:
            for x in items:
                await s.send(x)
            s.close_inputs()
            got[name] = [o.value async for o in s if o.name != "events"]

    async with asyncio.TaskGroup() as tg:
        for start, name, items in callers:
            tg.create_task(one(start, name, items))
    return got


__all__ = [
    "BatchFake",
    "Call",
    "Gate",
    "InFlight",
    "InterrupterFake",
    "MapFake",
    "ModelFake",
    "ProducerFake",
    "Recorder",
    "StreamingFake",
    "batched_fake",
    "collect",
    "counting_map",
    "drain",
    "session_tag",
    "settle",
    "slow_llm",
    "staggered_callers",
    "steady",
    "tag_session",
    "thread_map",
    "wait_until",
]
