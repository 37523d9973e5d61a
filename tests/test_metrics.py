"""Histograms give sane percentiles with flat memory, and the Prometheus text
shows what a runtime did."""

from __future__ import annotations

import asyncio
import random

import pytest

import chains
from runtime.metrics import SIZE_BUCKETS, Histogram, prometheus_text


def test_histogram_quantiles_track_the_data():
    rng = random.Random(1)
    h = Histogram()
    values = [rng.uniform(0.010, 0.030) for _ in range(20000)]
    for v in values:
        h.observe(v)
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert h.quantile(q) == pytest.approx(exact, rel=0.12)  # within one ~21% bucket
    assert h.count == 20000
    assert len(h.counts) == len(h.bounds) + 1  # memory does not grow with samples


def test_histogram_empty_and_sizes():
    h = Histogram(SIZE_BUCKETS)
    assert h.quantile(0.5) is None  # nothing observed: null, not NaN
    for b in (1, 1, 2, 32):
        h.observe(b)
    assert h.summary()["mean"] == 9.0


@chains.node(batch=chains.Batch(max_size=4, max_wait_ms=1))
def double(xs: list[int]) -> list[int]:
    return [2 * x for x in xs]


@chains.chain(budget_ms=5000)
def doubler(xs: chains.Stream[int]):
    return double(xs)


def test_runtime_metrics_and_prometheus_text():
    async def go():
        async with chains.Runtime(doubler) as rt:
            out = await chains.call(doubler, list(range(10)))
            assert out == [2 * i for i in range(10)]
            st = rt.metrics.stages["double"]
            assert st.items == 10
            assert st.batch_size.count >= 3  # at most 4 per batch
            assert rt.metrics.sessions_total == 1
            assert rt.metrics.first_output.count == 1
            assert rt.metrics.end_to_end.count == 10
            text = prometheus_text().decode()
            assert 'chains_stage_items_total{chain="doubler",node="double"} 10.0' in text
            assert "chains_stage_batch_size_bucket" in text
        assert 'chain="doubler"' not in prometheus_text().decode()  # unregistered on exit

    asyncio.run(go())
