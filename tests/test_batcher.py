"""The deadline-aware batcher's decisions, checked on its pure decision functions
(no wall clock), and the cost model it learns with."""

from __future__ import annotations

import asyncio
import random

import pytest

from runtime.batcher import Batcher, StaleItem
from runtime.costmodel import CostModel


def trained(a: float = 0.020, k: float = 0.002) -> CostModel:
    cm = CostModel()
    for b in (1, 4, 8, 16, 32, 2, 24):
        cm.observe(b, a + k * b)
    return cm


def make(policy: str = "deadline", max_size: int = 8, max_wait_s: float = 0.020, on_late: str = "shed",
         cost: CostModel | None = None, **kw) -> Batcher:
    return Batcher(max_size=max_size, max_wait_s=max_wait_s, on_late=on_late, policy=policy,
                   cost=cost or trained(), **kw)


def fill(
    b: Batcher, deadlines: list[float], rate: float = 1000.0, alive=lambda: True
) -> list[asyncio.Future]:
    futs = [b.submit(i, d, alive) for i, d in enumerate(deadlines)]
    b._gap_ewma = 1.0 / rate  # arrivals every 1 ms
    for it in b._heap:
        it.enqueued = 100.0  # a fixed clock: every item arrived at t=100 s
    return futs


def run(coro):
    return asyncio.run(coro)


def test_full_batch_dispatches_at_once():
    async def go():
        b = make(max_size=4)
        b.in_flight = 1
        fill(b, [1e9] * 4)
        assert b._should_wait(100.0) is None

    run(go())


def test_idle_stage_does_not_wait():
    async def go():
        b = make(max_size=32)
        b.in_flight = 0  # nothing running: waiting would leave the model idle
        fill(b, [1e9])
        assert b._should_wait(100.0) is None

    run(go())


def test_busy_stage_waits_for_the_window():
    async def go():
        b = make(max_size=32, max_wait_s=0.020)
        b.in_flight = 1
        fill(b, [1e9])
        wait = b._should_wait(100.005)
        assert wait == pytest.approx(0.015)

    run(go())


def test_earliest_deadline_forces_early_dispatch():
    async def go():
        cost = trained(a=0.010, k=0.001)
        b = make(max_size=32, max_wait_s=1.0, cost=cost)
        b.in_flight = 1
        fill(b, [100.050, 100.500])  # the earliest is due in 50 ms
        wait = b._should_wait(100.0)
        latest_start = 100.050 - cost.predict(3) - b.margin()
        assert wait == pytest.approx(latest_start - 100.0)
        assert wait < 0.050 < 1.0  # well before max_wait
        # once that moment has passed, it goes at once
        assert b._should_wait(latest_start + 1e-6) is None

    run(go())


def test_no_wait_when_no_arrival_is_expected_in_time():
    async def go():
        b = make(max_size=32, max_wait_s=0.020)
        b.in_flight = 1
        fill(b, [1e9], rate=10.0)  # one arrival per 100 ms: a 20 ms wait gathers nothing
        assert b._should_wait(100.0) is None

    run(go())


def test_fixed_window_waits_even_when_idle():
    async def go():
        b = make(policy="window", max_size=32, max_wait_s=0.020)
        b.in_flight = 0
        fill(b, [1e9])
        assert b._should_wait(100.0) == pytest.approx(0.020)
        assert b._should_wait(100.021) is None

    run(go())


def test_batches_are_taken_earliest_deadline_first():
    async def go():
        b = make(max_size=3, on_late="serve")
        deadlines = [5e9, 1e9, 3e9, 2e9, 4e9]
        fill(b, deadlines)
        batch = b._take(100.0)
        assert [it.deadline for it in batch] == [1e9, 2e9, 3e9]
        assert len(b) == 2

    run(go())


def test_hopeless_items_are_shed_and_the_batch_refilled():
    async def go():
        shed = []
        cost = trained(a=0.020, k=0.002)
        b = make(max_size=2, cost=cost, on_shed=lambda it, late: shed.append((it.payload, late)))
        futs = fill(b, [100.001, 100.002, 101.0, 102.0])  # the first two cannot finish in time
        batch = b._take(100.0)
        assert [it.payload for it in batch] == [2, 3]
        assert [p for p, _ in shed] == [0, 1]
        assert all(late > 0 for _, late in shed)
        assert not futs[2].done()

    run(go())


def test_under_overload_the_newest_of_the_items_that_must_go_now_are_served():
    """More items must go now than a batch holds (none could wait for the next batch):
    the newest are served, the oldest (the ones noise would make late) are shed next."""

    async def go():
        shed = []
        cost = trained(a=0.020, k=0.002)  # a batch of 4 takes 28 ms
        b = make(max_size=4, cost=cost, on_shed=lambda it, late: shed.append(it.payload))
        # Six items that fit this batch (due after ~100.028 s), none a batch later (~100.056 s).
        fill(b, [100.030, 100.035, 100.040, 100.045, 100.050, 100.052])
        batch = b._take(100.0)
        assert [it.payload for it in batch] == [2, 3, 4, 5]
        assert not shed and len(b) == 2
        assert b._take(100.028) == [] and shed == [0, 1]  # hopeless a batch later

        # Items that can wait for the next batch keep earliest-deadline-first order.
        fill(b, [100.030, 100.035, 100.040, 100.045, 101.0, 102.0])
        assert [it.deadline for it in b._take(100.0)] == [100.030, 100.035, 100.040, 100.045]

    run(go())


def test_serve_policy_keeps_late_items():
    async def go():
        b = make(max_size=4, on_late="serve")
        fill(b, [100.001, 101.0])
        assert [it.payload for it in b._take(100.0)] == [0, 1]

    run(go())


def test_interrupted_or_closed_items_are_pruned():
    async def go():
        stale = []
        b = make(on_stale=stale.append)
        alive = {"ok": True}
        futs = fill(b, [1e9, 1e9], alive=lambda: alive["ok"])
        alive["ok"] = False
        b._prune()
        assert len(b) == 0 and len(stale) == 2
        # failed as stale, not cancelled: a cancelled future would read as the
        # awaiting session's own cancellation
        assert all(isinstance(f.exception(), StaleItem) for f in futs)

    run(go())


def test_next_batch_returns_when_items_arrive():
    async def go():
        b = make(max_size=2)
        b.in_flight = 0
        task = asyncio.create_task(b.next_batch())
        await asyncio.sleep(0)
        assert not task.done()
        b.submit("x", 1e18, lambda: True)
        batch = await asyncio.wait_for(task, 5)
        assert [it.payload for it in batch] == ["x"]

    run(go())


def test_cost_model_converges_on_a_stage_of_known_cost():
    rng = random.Random(7)
    cm = CostModel(window=64)
    for _ in range(200):
        b = rng.randint(1, 32)
        cm.observe(b, 0.020 + 0.002 * b + rng.gauss(0, 0.0005))
    assert cm.predict(0) == pytest.approx(0.020, abs=0.001)
    assert cm.k == pytest.approx(0.002, abs=0.0002)
    assert cm.predict(32) == pytest.approx(0.084, rel=0.03)
    assert cm.resid < 0.001


def test_cost_model_safe_start_and_single_size():
    cm = CostModel(prior_s=0.05)
    assert cm.predict(8) == 0.05  # nothing seen: the prior
    cm.observe(4, 0.030)
    cm.observe(4, 0.034)
    assert cm.predict(4) == pytest.approx(0.032)  # one size seen: its mean, no slope
    assert cm.k == 0.0


def test_cost_model_follows_drift():
    cm = CostModel(window=16)
    for b in range(1, 17):
        cm.observe(b, 0.010 + 0.001 * b)
    for b in range(1, 17):
        cm.observe(b, 0.040 + 0.001 * b)  # the stage got slower
    assert cm.predict(0) == pytest.approx(0.040, abs=1e-6)


def test_items_known_while_queued_skip_the_batch_and_a_faulty_hook_batches_them():
    heard = {"a": "A"}

    def known(x: str) -> str | None:
        if x == "bad":
            raise RuntimeError("a faulty known_result")
        return heard.get(x)

    async def go():
        b = make(max_size=8, known=known)
        b.in_flight = 0
        futs = [b.submit(x, 1e18, lambda: True) for x in ("a", "b", "bad")]
        batch = await asyncio.wait_for(b.next_batch(), 5)
        assert [it.payload for it in batch] == ["b", "bad"]
        assert futs[0].result() == "A"

    run(go())


def test_a_batch_takes_one_priority_the_most_urgent_first():
    async def go():
        b = make(max_size=8)
        b.in_flight = 0
        for x, rank in (("interim1", 1), ("final1", 0), ("interim2", 1), ("final2", 0)):
            b.submit(x, 1e18, lambda: True, rank)
        first = await asyncio.wait_for(b.next_batch(), 5)
        second = await asyncio.wait_for(b.next_batch(), 5)
        assert [it.payload for it in first] == ["final1", "final2"]
        assert [it.payload for it in second] == ["interim1", "interim2"]

    run(go())
