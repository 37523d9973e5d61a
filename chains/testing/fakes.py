"""Fake nodes with scripted timing, and the helpers to drive a runtime in a test.

Each fake builds a real ``@chains.node`` (``.node``, or ``.cls`` for a class node)
and records what the runtime made it do: the calls and the sessions they served,
the batches it saw, how many calls were in flight at once, which thread ran it, and
whether a streaming call was cancelled. Timing is scripted (``anyio.sleep`` of a few
ms, or a ``Gate`` the test opens), so a test asserts on what happened, never on how
long it took: such tests pass the same on a loaded CI machine.

Payloads are plain strings, usually ``"<session tag>/<item>"``, so a batched fake can
tell which sessions a batch mixed (``chains.context()`` names one session per call,
and a batch serves many).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio

import chains
from chains import Stream

# --- helpers ------------------------------------------------------------------------


def session_tag(item: str) -> str:
    """``"s3/7"`` -> ``"s3"``: the session tag a test put in a payload."""
    return item.split("/", 1)[0]


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``pred`` every ms: a hang guard for a test waiting on the runtime, not a
    speed assertion (the timeout only turns a deadlock into a readable failure)."""
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.001)


async def settle(iterations: int = 50) -> None:
    """Let every runnable task run for a while (a stalled pipeline stays stalled)."""
    for _ in range(iterations):
        await asyncio.sleep(0)
    await anyio.sleep(0.01)


async def steady(value: Callable[[], object], rounds: int = 200) -> object:
    """Let the pipeline run until ``value()`` stops changing over a ``settle()``; the
    value it settled at (a stalled pipeline settles; one that keeps going fails)."""
    last = value()
    for _ in range(rounds):
        await settle()
        now = value()
        if now == last:
            return now
        last = now
    raise AssertionError(f"still changing after {rounds} rounds: {last!r}")


async def drain(sess: Any, timeout: float = 10.0) -> list[Any]:
    """Every output of a session until it ends."""
    outs = []
    with anyio.fail_after(timeout):
        async for out in sess:
            outs.append(out)
    return outs


class InFlight:
    """Counts calls in flight and the most ever at once; thread-safe (sync nodes run
    in worker threads)."""

    def __init__(self) -> None:
        self.now = 0
        self.max = 0
        self._lock = threading.Lock()

    def __enter__(self) -> InFlight:
        with self._lock:
            self.now += 1
            self.max = max(self.max, self.now)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self.now -= 1


class Gate:
    """Holds calls until the test lets them through: a stalled consumer.

    ``allow(n)`` lets n more calls pass, ``open()`` lets every call pass."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._open = False
        self._credits = 0
        self.waiting = 0
        self.passed = 0

    def allow(self, n: int = 1) -> None:
        self._credits += n
        self._changed.set()

    def open(self) -> None:
        self._open = True
        self._changed.set()

    async def wait(self) -> None:
        self.waiting += 1
        try:
            while not self._open and self._credits == 0:
                self._changed.clear()
                await self._changed.wait()
            if not self._open:
                self._credits -= 1
        finally:
            self.waiting -= 1
        self.passed += 1


@dataclass
class Call:
    session: str | None  # chains.context().session_id (None where there is no context)
    value: Any
    thread: int


# --- maps ---------------------------------------------------------------------------


class MapFake:
    """A map node ``str -> str`` (``fn``, default: upper-case), async or sync.

    ``delay`` s per call (sleep), ``gate`` to hold calls, ``fail_on`` makes the
    call raise ``ValueError`` for the chosen item(s), ``none_on`` returns None."""

    def __init__(
        self,
        name: str = "mapper",
        *,
        sync: bool = False,
        delay: float = 0.0,
        gate: Gate | None = None,
        fail_on: Callable[[str], bool] | None = None,
        none_on: Callable[[str], bool] | None = None,
        fn: Callable[[str], str] = str.upper,
        **options: Any,
    ):
        self.calls: list[Call] = []
        self.flight = InFlight()
        rec = self

        def record(x: str) -> None:
            try:
                sid: str | None = chains.context().session_id
            except RuntimeError:
                sid = None
            rec.calls.append(Call(sid, x, threading.get_ident()))

        def result(x: str) -> Any:
            if fail_on is not None and fail_on(x):
                raise ValueError(f"cannot take {x!r}")
            if none_on is not None and none_on(x):
                return None
            return fn(x)

        if sync:
            assert gate is None, "a gate is an asyncio object: use delay for sync fakes"

            @chains.node(name=name, **options)
            def sync_map(x: str) -> str:  # may return None: filtered
                record(x)
                with rec.flight:
                    time.sleep(delay)
                    return result(x)

            self.node: Any = sync_map
        else:

            @chains.node(name=name, **options)
            async def async_map(x: str) -> str:  # may return None: filtered
                record(x)
                with rec.flight:
                    if gate is not None:
                        await gate.wait()
                    if delay:
                        await anyio.sleep(delay)
                    return result(x)

            self.node = async_map

    @property
    def values(self) -> list[Any]:
        return [c.value for c in self.calls]


class BatchFake:
    """A batched map whose batch of b items costs ``a + k*b`` seconds.

    It records every batch it saw (the payloads, whose tags name their sessions),
    and fails a whole batch when ``fail_on`` matches one of its items (as a model
    fed one bad input does)."""

    def __init__(
        self,
        name: str = "batched",
        *,
        a: float = 0.002,
        k: float = 0.0002,
        max_size: int = 8,
        max_wait_ms: float = 5.0,
        sync: bool = False,
        fail_on: Callable[[str], bool] | None = None,
        fn: Callable[[str], str] = str.upper,
        **options: Any,
    ):
        self.batches: list[list[str]] = []
        self.flight = InFlight()
        self.threads: set[int] = set()
        rec = self
        batch = chains.Batch(max_size=max_size, max_wait_ms=max_wait_ms)

        def start(xs: list[str]) -> None:
            rec.batches.append(list(xs))
            rec.threads.add(threading.get_ident())

        def results(xs: list[str]) -> list[str]:
            if fail_on is not None and any(fail_on(x) for x in xs):
                raise ValueError(f"batch of {len(xs)} holds a bad item")
            return [fn(x) for x in xs]

        if sync:

            @chains.node(name=name, batch=batch, **options)
            def sync_batched(xs: list[str]) -> list[str]:
                start(xs)
                with rec.flight:
                    time.sleep(a + k * len(xs))
                    return results(xs)

            self.node: Any = sync_batched
        else:

            @chains.node(name=name, batch=batch, **options)
            async def async_batched(xs: list[str]) -> list[str]:
                start(xs)
                with rec.flight:
                    await anyio.sleep(a + k * len(xs))
                    return results(xs)

            self.node = async_batched

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    def sessions_per_batch(self) -> list[int]:
        return [len({session_tag(x) for x in b}) for b in self.batches]


# --- streaming ----------------------------------------------------------------------


class StreamingFake:
    """An LLM-like streaming map: one prompt in, ``tokens`` tokens out,
    ``"<prompt>#<i>"``, each after ``delay`` s; a ``gate`` (if given) holds every
    token after the first. Records which calls started, completed, or were
    cancelled mid-stream (the runtime closed or cancelled the generator)."""

    def __init__(
        self,
        name: str = "llm",
        *,
        tokens: int = 4,
        delay: float = 0.001,
        gate: Gate | None = None,
        **options: Any,
    ):
        self.started: list[tuple[str, str]] = []
        self.completed: list[tuple[str, str]] = []
        self.cancelled: list[tuple[str, str]] = []
        self.emitted: list[str] = []
        rec = self

        @chains.node(name=name, **options)
        async def stream_tokens(prompt: str) -> AsyncIterator[str]:
            key = (chains.context().session_id, prompt)
            rec.started.append(key)
            done = False
            try:
                for i in range(tokens):
                    if i and gate is not None:
                        await gate.wait()
                    await anyio.sleep(delay)
                    tok = f"{prompt}#{i}"
                    rec.emitted.append(tok)
                    yield tok
                done = True
            finally:
                (rec.completed if done else rec.cancelled).append(key)

        self.node: Any = stream_tokens


class ProducerFake:
    """A stream node that turns each input item into ``per_item`` outputs
    ``"<item>.<j>"`` as fast as it is allowed to: ``offered`` counts outputs it
    tried to hand on, ``accepted`` those the runtime took (the yield returned)."""

    def __init__(self, name: str = "producer", *, per_item: int = 1, delay: float = 0.0):
        self.offered = 0
        self.accepted = 0
        self.closed = False
        rec = self

        @chains.node(name=name)
        async def produce(xs: Stream[str]) -> AsyncIterator[str]:
            try:
                async for x in xs:
                    for j in range(per_item):
                        if delay:
                            await anyio.sleep(delay)
                        rec.offered += 1
                        yield f"{x}.{j}"
                        rec.accepted += 1
            finally:
                rec.closed = True

        self.node: Any = produce


class InterrupterFake:
    """A VAD-like stream node: passes items through, and yields ``chains.Interrupt``
    in place of an item equal to ``trigger`` (the user barged in)."""

    def __init__(self, name: str = "vad", *, trigger: str = "barge"):
        self.seen: list[str] = []
        rec = self

        @chains.node(name=name)
        async def vad(xs: Stream[str]) -> AsyncIterator[str | chains.Interrupt]:
            async for x in xs:
                rec.seen.append(x)
                if x == trigger:
                    yield chains.Interrupt(reason=trigger)
                else:
                    yield x

        self.node: Any = vad


# --- class nodes --------------------------------------------------------------------


class ModelFake:
    """A class node (a "model"): ``__init__`` loads (records its thread), ``setup``
    and ``close`` record themselves; ``__call__`` (sync or async) tags the item with
    the replica that served it, ``"<item>@<replica>"``, and tracks, per replica,
    how many calls it ran at once. ``delay_of(item)`` scripts each call's time."""

    def __init__(
        self,
        name: str = "model",
        *,
        sync: bool = False,
        delay_of: Callable[[str], float] = lambda x: 0.0,
        async_setup: bool = True,
        **options: Any,
    ):
        self.events: list[tuple[str, int]] = []  # (what, replica number)
        self.init_threads: list[int] = []
        self.flight: dict[int, InFlight] = {}
        self.served: dict[int, int] = {}
        self.call_threads: set[int] = set()
        rec = self

        class Base:
            def __init__(self, scale: str = "") -> None:
                self.n = len(rec.init_threads)
                rec.init_threads.append(threading.get_ident())
                rec.events.append(("init", self.n))
                rec.flight[self.n] = InFlight()
                rec.served[self.n] = 0

            def close(self) -> None:
                rec.events.append(("close", self.n))

        if async_setup:

            class WithSetup(Base):
                async def setup(self) -> None:
                    await anyio.sleep(0)
                    rec.events.append(("setup", self.n))

        else:

            class WithSetup(Base):  # type: ignore[no-redef]
                def setup(self) -> None:
                    rec.events.append(("setup", self.n))

        if sync:

            class SyncModel(WithSetup):
                def __call__(self, x: str) -> str:
                    rec.call_threads.add(threading.get_ident())
                    with rec.flight[self.n]:
                        rec.served[self.n] += 1
                        time.sleep(delay_of(x))
                        return f"{x}@{self.n}"

            cls: Any = SyncModel
        else:

            class AsyncModel(WithSetup):
                async def __call__(self, x: str) -> str:
                    rec.call_threads.add(threading.get_ident())
                    with rec.flight[self.n]:
                        rec.served[self.n] += 1
                        await anyio.sleep(delay_of(x))
                        return f"{x}@{self.n}"

            cls = AsyncModel
        cls.__name__ = cls.__qualname__ = name
        self.cls: Any = chains.node(**options)(cls)

    def count(self, what: str) -> int:
        return sum(1 for e, _ in self.events if e == what)


__all__ = [
    "BatchFake",
    "Call",
    "Gate",
    "InFlight",
    "InterrupterFake",
    "MapFake",
    "ModelFake",
    "ProducerFake",
    "StreamingFake",
    "drain",
    "session_tag",
    "settle",
    "steady",
    "wait_until",
]
