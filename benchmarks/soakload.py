"""The soak's load: callers arriving as a Poisson process, held at a target count
(each one that ends is replaced by the next arrival), every session's result kept.

``hold`` is the one loop both soak modes use: density raises the target step by
step, the churn soak keeps it at C until a wave's sessions have all started.
Arrivals are exponential inter-arrival times at ``rate`` per second, admitted only
while fewer than the target are live, so the count ramps like callers do, not in
one burst (a burst of opening handshakes measures the accept queue, not sessions).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from benchmarks.soakclient import ChainsClient, RealtimeClient, Result, Script, Speech, VoiceClient, call


@dataclass
class Load:
    url: str
    speech: Speech
    script: Script
    out_rate: int | None = None
    seed: int = 1
    results: list[Result] = field(default_factory=list)  # every session, live ones too
    active: int = 0
    started: int = 0
    fault_every: int = 0  # every n-th caller plays a fault (0: none)
    faults: tuple[str, ...] = ("drop", "stall")
    protocol: str = "chains"  # or "realtime" (OpenAI Realtime; ``model`` names the chain)
    model: str = ""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._ended = anyio.Event()

    def _fault(self) -> str | None:
        if self.fault_every and self.started % self.fault_every == self.fault_every - 1:
            return self.faults[(self.started // self.fault_every) % len(self.faults)]
        return None

    def client(self) -> VoiceClient:
        """A new caller's connection, in the load's protocol."""
        if self.protocol == "realtime":
            return RealtimeClient(self.url, self.model)
        return ChainsClient(self.url, self.speech.rate, self.out_rate)

    async def one(self, script: Script | None = None, fault: str | None = None) -> Result:
        client = self.client()
        res = Result(started=time.monotonic())
        self.results.append(res)
        self.active += 1
        try:
            return await call(client, self.speech, script or self.script, fault, res)
        finally:
            self.active -= 1
            self._ended.set()

    async def _run(self, fault: str | None) -> None:
        await self.one(fault=fault)

    async def hold(
        self, tg: TaskGroup, target: Callable[[], int], rate: Callable[[], float], stop: Callable[[], bool]
    ) -> None:
        """Start callers (Poisson arrivals at ``rate``/s) while fewer than ``target()``
        are live, until ``stop()``; the callers run in ``tg`` and outlive this call."""
        while not stop():
            await anyio.sleep(self.rng.expovariate(rate()))
            while self.active >= target() and not stop():
                self._ended = anyio.Event()
                with anyio.move_on_after(0.5):
                    await self._ended.wait()
            if stop():
                return
            fault = self._fault()
            self.started += 1
            tg.start_soon(self._run, fault)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no caller is live; False if some still are after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        return self.active == 0


__all__ = ["Load"]
