"""The autoscaler's decisions, on a fake clock and fake metrics.

A small fluid world stands in for a stage under load: each tick, Poisson arrivals
join a queue, the ready replicas serve what their learned cost allows, and what
could not be served within the budget is shed. Replicas asked for load for a
scripted number of ticks. Tests assert on the decisions (how soon, how many, how
often), never on wall-clock time. One test runs ``Autoscaler.run`` against the real
``ReplicaSet`` with a provider whose start waits for the test to let it finish.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import anyio

import chains
from runtime.autoscale import Autoscaler, queued
from runtime.costmodel import CostModel
from runtime.metrics import StageMetrics
from runtime.replicas import Provider, ReplicaSet
from tests.fakes import wait_until

A, K, MAX_BATCH, BUDGET = 0.04, 0.01, 8, 0.5  # t(b) = a + k*b seconds, budget per item


def spec(**options: Any) -> Any:
    @chains.node(name="model", batch=chains.Batch(max_size=MAX_BATCH, max_wait_ms=10), **options)
    def model(xs: list[str]) -> list[str]:
        return xs

    return model.spec


class Inbox:
    """The stage's batcher, as far as the autoscaler looks: its size and length."""

    def __init__(self) -> None:
        self.max_size = MAX_BATCH
        self.n = 0

    def __len__(self) -> int:
        return self.n


class FakeStage:
    def __init__(self, node_spec: Any, learned: bool = True):
        self.name = "model"
        self.spec = node_spec
        self.metrics = StageMetrics("chain", "model")
        self.cost = CostModel()
        if learned:
            for b in (1, 4, 8, 2, 6):
                self.cost.observe(b, A + K * b)
        self.batcher = Inbox()
        self.budget_s = BUDGET


class SimReplicas:
    """The replica set's face to the autoscaler, with cold starts in ticks of fake time."""

    def __init__(self, node_spec: Any, count: int, cold_s: float):
        self.spec = node_spec
        self.name = node_spec.name
        self.target = count
        self.ready = count
        self.cold_s = cold_s
        self.loading: list[float] = []  # when each loading replica becomes ready
        self.now = 0.0
        self.cold_starts = 0

    def advance(self, now: float) -> None:
        self.now = now
        done = [t for t in self.loading if t <= now]
        self.loading = [t for t in self.loading if t > now]
        self.ready += len(done)

    def counts(self) -> dict[str, int]:
        return {"loading": len(self.loading), "ready": self.ready, "lost": 0, "draining": 0}

    def scale_to(self, n: int) -> None:
        n = max(1, n)
        self.target = n
        live = self.ready + len(self.loading)
        for _ in range(n - live):
            self.loading.append(self.now + self.cold_s)
            self.cold_starts += 1
        for _ in range(live - n):
            if self.loading:
                self.loading.pop()
            else:
                self.ready -= 1


CAPACITY = MAX_BATCH / (A + K * MAX_BATCH)  # items/s one replica serves at full batches


class World:
    """One stage under a load trace, ticking on a fake clock."""

    def __init__(self, count: int = 1, cold_s: float = 3.0, seed: int = 1, **options: Any):
        node_spec = spec(**options)
        self.stage = FakeStage(node_spec)
        self.rs = SimReplicas(node_spec, count, cold_s)
        self.scaler = Autoscaler(self.rs, [self.stage], tick_s=1.0, clock=lambda: self.now)  # type: ignore[arg-type]
        self.now = 0.0
        self.rng = random.Random(seed)
        self.queue = 0.0
        self.targets: list[int] = []
        self.scaler.decide(self.now)

    def tick(self, rate: float) -> None:
        self.now += 1.0
        self.rs.advance(self.now)
        m = self.stage.metrics
        arrivals = self._poisson(rate)
        self.queue += arrivals
        cap = self.rs.ready * CAPACITY
        served = min(self.queue, cap)
        self.queue -= served
        m.items += int(served)
        if served:
            m.queue_wait.observe(self.queue / cap if cap else BUDGET)
        # what the ready replicas cannot clear within the budget is shed
        shed = max(0.0, self.queue - cap * BUDGET)
        self.queue -= shed
        m.shed += int(shed)
        self.stage.batcher.n = int(self.queue)
        self.scaler.step(self.now)
        self.targets.append(self.rs.target)

    def _poisson(self, lam: float) -> int:
        # Knuth's method in chunks (lam up to a few hundred per tick)
        n = 0
        while lam > 0:
            part = min(lam, 30.0)
            lam -= part
            limit, p = math.exp(-part), 1.0
            while True:
                p *= self.rng.random()
                if p <= limit:
                    break
                n += 1
        return n


def need(rate: float, util: float = 0.7) -> int:
    return math.ceil(rate / (CAPACITY * util))


# --- scaling up --------------------------------------------------------------------------


def test_scales_up_within_a_few_ticks_of_a_step() -> None:
    w = World(count=1, cold_s=3.0, max_replicas=10)
    for _ in range(60):
        w.tick(20.0)
    assert w.rs.target == 1
    step_at = len(w.targets)
    for _ in range(30):
        w.tick(200.0)
    first_up = next(i for i, t in enumerate(w.targets) if t > 1)
    assert first_up - step_at <= 2, w.targets
    assert w.rs.target >= need(200.0)
    assert w.rs.target <= need(200.0) + 1
    # once the new replicas are ready, nothing is shed any more
    shed_before = w.stage.metrics.shed
    for _ in range(30):
        w.tick(200.0)
    assert w.stage.metrics.shed == shed_before


def test_no_second_scale_up_while_a_cold_start_runs() -> None:
    w = World(count=1, cold_s=20.0, max_replicas=10)
    for _ in range(10):
        w.tick(20.0)
    for _ in range(15):  # items miss all along: the replicas are still loading
        w.tick(120.0)
    assert w.rs.counts()["loading"] > 0
    ups = [d for d in w.scaler.log if d.replicas > 1]
    assert len(ups) == 1, w.scaler.log
    assert w.rs.cold_starts == ups[0].replicas - 1


def test_a_queue_that_cannot_drain_in_budget_scales_up_before_items_miss() -> None:
    w = World(count=1, cold_s=3.0, max_replicas=10)
    for _ in range(5):
        w.tick(20.0)
    m = w.stage.metrics
    # a burst fills the queue; nothing was shed or served late yet
    w.stage.batcher.n = int(CAPACITY * BUDGET)  # a full budget's worth of work for one replica
    w.now += 1.0
    w.scaler.step(w.now)
    assert m.shed == 0 and m.late == 0
    assert w.rs.target > 1
    assert "to drain" in w.scaler.log[-1].reason


def test_misses_alone_scale_up_before_the_cost_is_learned() -> None:
    w = World(count=1, cold_s=2.0, max_replicas=4)
    w.stage.cost = CostModel()  # nothing learned yet, no service times either
    for _ in range(10):
        w.tick(200.0)  # far beyond one replica: shed every tick
    assert w.rs.target > 1
    # one at a time, as the evidence comes (no cost learned: no size to jump to)
    assert w.scaler.log[0].replicas == 2
    assert all(b.replicas - a.replicas <= 1 for a, b in itertools.pairwise(w.scaler.log))


# --- scaling down ------------------------------------------------------------------------------


def test_scales_down_one_step_at_a_time_after_a_calm_window() -> None:
    w = World(count=1, cold_s=2.0, max_replicas=10)
    for _ in range(40):
        w.tick(200.0)
    peak = w.rs.target
    drop_at = w.now
    for _ in range(300):
        w.tick(20.0)
    last_up = max(d.t for d in w.scaler.log if d.t <= drop_at)
    downs = [d for d in w.scaler.log if d.t > drop_at]
    assert downs and w.rs.target == need(20.0)
    assert downs[0].t - last_up >= w.scaler.down_window
    prev = peak
    last_t = -math.inf
    for d in downs:
        assert d.replicas == prev - 1
        assert d.t - last_t >= w.scaler.down_delay_s
        prev, last_t = d.replicas, d.t


def test_a_noisy_load_does_not_flap() -> None:
    w = World(count=1, cold_s=3.0, seed=7, max_replicas=10)
    rng = random.Random(3)
    for _ in range(600):
        w.tick(90.0 * rng.uniform(0.6, 1.4))
    changes = [b - a for a, b in zip(w.targets, w.targets[1:], strict=False) if b != a]
    reversals = sum(1 for a, b in itertools.pairwise(changes) if (a > 0) != (b > 0))
    assert reversals <= 3, w.scaler.log
    assert len(changes) <= 6, w.scaler.log


# --- bounds ---------------------------------------------------------------------------------------


def test_never_past_max() -> None:
    w = World(count=1, cold_s=1.0, min_replicas=1, max_replicas=3)
    for _ in range(60):
        w.tick(1000.0)
    assert max(w.targets) == 3


def test_never_below_min() -> None:
    w = World(count=4, cold_s=1.0, min_replicas=2, max_replicas=6)
    for _ in range(400):
        w.tick(0.0)
    assert min(w.targets) == 2 and w.rs.target == 2


def test_bounds_default_to_declared_replicas() -> None:
    w = World(count=2, replicas=2, min_replicas=1)
    assert (w.scaler.min, w.scaler.max) == (1, 2)
    w2 = World(count=1, max_replicas=5)
    assert (w2.scaler.min, w2.scaler.max) == (1, 5)


def test_queued_reads_the_batcher_or_the_admission_queue() -> None:
    st = FakeStage(spec())
    st.batcher.n = 5
    assert queued(st) == 5  # type: ignore[arg-type]

    st2: Any = FakeStage(spec())
    st2.batcher = None
    st2.metrics.queued = 3  # items waiting for an admission slot (runtime/admission.py)
    assert queued(st2) == 3


# --- on the real replica set ---------------------------------------------------------------------


class GatedProvider(Provider):
    """Replicas start when the test opens the gate: a scripted cold start."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.starts = 0

    async def start(self, rid: int) -> Any:
        self.starts += 1
        if self.starts > 1:  # the first one is the initial replica
            await self.gate.wait()
        return object()

    async def stop(self, instance: Any) -> None:
        pass

    def is_lost(self, instance: Any, exc: BaseException) -> bool:
        return False


async def test_run_scales_the_real_replica_set_and_counts_the_cold_start() -> None:
    node_spec = spec(max_replicas=4)
    provider = GatedProvider()
    rs = ReplicaSet(node_spec, provider, count=1)
    await rs.start()
    stage = FakeStage(node_spec)
    fake_now = [0.0]
    scaler = Autoscaler(rs, [stage], tick_s=0.001, clock=lambda: fake_now[0])

    async def misses() -> None:  # items keep missing until the test stops it
        while True:
            fake_now[0] += 1.0
            stage.metrics.shed += 50
            stage.metrics.items += 50
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(rs.run)
        tg.start_soon(misses)
        tg.start_soon(scaler.run)
        await wait_until(lambda: rs.counts()["loading"] > 0, what="a replica loading")
        asked = rs.target
        for _ in range(50):  # misses go on while it loads: no further replicas are asked for
            await anyio.sleep(0.001)
        assert rs.target == asked
        assert rs.counts()["ready"] == 1
        provider.gate.set()
        await wait_until(lambda: rs.counts()["ready"] == asked, what="the new replicas ready")
        tg.cancel_scope.cancel()
    assert len(rs.cold_starts) == asked - 1
    assert scaler.log[0].reason == "start"
    await rs.close()
