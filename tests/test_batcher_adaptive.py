"""The shed rule's optimism adapts to what happened: late items make it shed sooner,
a calm run lets it relax back to the cost model's noise margin, never beyond."""

from __future__ import annotations

import asyncio

from runtime.batcher import Batcher, BatchItem
from runtime.costmodel import CostModel


def _batcher(on_late: str = "shed") -> Batcher:
    cost = CostModel()
    for b, t in ((1, 0.021), (8, 0.037), (16, 0.051), (32, 0.085), (4, 0.027), (32, 0.083)):
        cost.observe(b, t)
    return Batcher(max_size=32, max_wait_s=0.05, on_late=on_late, cost=cost)


def test_late_batches_make_the_shed_rule_less_optimistic_down_to_a_bound() -> None:
    b = _batcher()
    noise = b.margin()
    for _ in range(50):
        b.served(32, 4)
    assert b.optimism == -noise


def test_a_calm_run_relaxes_the_rule_back_to_the_noise_margin_and_no_further() -> None:
    b = _batcher()
    for _ in range(50):
        b.served(32, 4)
    low = b.optimism
    for _ in range(2000):
        b.served(32, 0)
    assert low is not None and b.optimism is not None and b.optimism > low
    assert b.optimism == b.margin()


def test_serving_late_by_policy_leaves_the_rule_alone() -> None:
    b = _batcher(on_late="serve")
    b.served(32, 32)
    assert b.optimism is None


def test_an_idle_model_waits_for_company_only_when_told_and_only_within_the_deadline() -> None:
    loop = asyncio.new_event_loop()
    try:
        b = Batcher(max_size=8, max_wait_s=0.05, on_late="serve", idle_wait_s=0.02)
        plain = Batcher(max_size=8, max_wait_s=0.05, on_late="serve")
        for x in (b, plain):
            x._heap.append(BatchItem(100.0, 0, "a", loop.create_future(), 10.0, lambda: True))
        assert plain._should_wait(10.001) is None  # idle: dispatch at once
        wait = b._should_wait(10.001)
        assert wait is not None and abs(wait - 0.019) < 1e-9  # up to 20 ms after the oldest
        assert b._should_wait(10.03) is None
        b._heap[0].deadline = 10.01  # a tight deadline cuts the wait short
        short = b._should_wait(10.001)
        assert short is None or short <= 0.009
    finally:
        loop.close()
