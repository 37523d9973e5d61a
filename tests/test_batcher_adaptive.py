"""The shed rule's optimism adapts to what happened: late items make it shed sooner,
a calm run lets it relax back to the cost model's noise margin, never beyond."""

from __future__ import annotations

from runtime.batcher import Batcher
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
