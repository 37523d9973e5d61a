"""Stage and session metrics, cheap enough for the per-item hot path.

Recording is a few integer and list operations (no locks, no label lookups), so
it stays on in benchmarks. Percentiles are exact for the first few hundred
observations (kept as they are) and come from fixed log-spaced histograms beyond,
clamped to the observed range, so memory is flat however long a server runs. Exposition goes
through ``prometheus_client``: a custom collector turns these objects into metric
families at scrape time, and tests and benchmarks read the same objects directly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest


def _log_buckets(lo: float, hi: float, per_decade: int) -> list[float]:
    n = math.ceil(math.log10(hi / lo) * per_decade)
    return [lo * 10 ** (i / per_decade) for i in range(n + 1)]


TIME_BUCKETS = _log_buckets(1e-5, 120.0, 12)  # 10 µs .. 2 min, ~21% apart
SIZE_BUCKETS = [float(b) for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)]


class Histogram:
    """Counts per fixed bucket, plus the first ``EXACT`` observations kept as they are.

    Percentiles are honest: up to ``EXACT`` observations they are exact (the nearest-
    rank value, always one that was observed: one sample's p50 is that sample), beyond
    that they interpolate inside a bucket and are clamped to the smallest and largest
    value observed (so fifty batches of one never report a p50 of 0.5). An ``integer``
    histogram (batch sizes) reports its percentiles as integers. An empty histogram
    reports ``None`` (JSON ``null``), never NaN, so a snapshot is valid JSON.
    """

    __slots__ = ("bounds", "count", "counts", "integer", "max", "min", "samples", "sum")

    EXACT = 256  # observations kept as they are: exact percentiles up to this many

    def __init__(self, bounds: list[float] = TIME_BUCKETS, *, integer: bool = False):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.samples: list[float] = []
        self.integer = integer

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.count += 1
        self.sum += v
        if v < self.min:
            self.min = v
        if v > self.max:
            self.max = v
        if self.count <= self.EXACT:
            self.samples.append(v)
        elif self.samples:
            self.samples = []  # past EXACT: the buckets alone (memory stays flat)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1), or None when nothing was observed."""
        if self.count == 0:
            return None
        if self.samples:
            ordered = sorted(self.samples)
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
        rank = q * self.count
        seen = 0
        v = self.max
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo = self.bounds[i - 1] if i > 0 else self.min
                hi = self.bounds[i] if i < len(self.bounds) else self.max
                v = lo + (hi - lo) * ((rank - seen) / c)
                break
            seen += c
        v = min(max(v, self.min), self.max)
        return float(math.ceil(v)) if self.integer else v

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def summary(self, scale: float = 1.0) -> dict[str, Any]:
        """count, mean, min, p50, p95, p99, max; values ``None`` when empty, the
        percentiles, min and max as ints for an integer histogram."""

        def f(x: float | None) -> Any:
            if x is None:
                return None
            return int(x) if self.integer else x * scale

        mean = self.mean
        return {
            "count": self.count,
            "mean": None if mean is None else mean * scale,
            "min": f(self.min if self.count else None),
            "p50": f(self.quantile(0.5)),
            "p95": f(self.quantile(0.95)),
            "p99": f(self.quantile(0.99)),
            "max": f(self.max if self.count else None),
        }

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(b), acc))
        out.append(("+Inf", self.count))
        return out


class StageMetrics:
    """What one stage did, across every session."""

    def __init__(self, chain: str, node: str):
        self.chain = chain
        self.node = node
        self.items = 0  # items served (each item of a batch counts)
        self.errors = 0
        self.shed = 0  # dropped because they could no longer make their deadline
        self.late = 0  # served after their deadline (on_late="serve")
        self.stale = 0  # dropped because their turn was interrupted
        self.queue_wait = Histogram()
        self.service = Histogram()  # per call (per batch for batched stages)
        self.batch_size = Histogram(SIZE_BUCKETS, integer=True)
        self.first_output = Histogram()  # streaming calls: call start -> first output (LLM TTFT)
        self.queued = 0  # gauge: items waiting now
        self.consecutive_errors = 0  # reset by every success
        self.replicas_ready = 0  # gauges kept by the replica set
        self.replicas_loading = 0
        self.replicas_lost = 0
        self.replica_rebuilds = 0  # counter: lost replicas started again
        self.prefix: Any = None  # a prefix-aware router's PrefixStats (predicted vs actual cache hits)

    UNHEALTHY_AFTER = 10

    @property
    def healthy(self) -> bool:
        """False once the node has failed this many items in a row (a broken model), or
        while no replica is ready (all lost, or loading again)."""
        if not self.replicas_ready and (self.replicas_lost or self.replicas_loading):
            return False
        return self.consecutive_errors < self.UNHEALTHY_AFTER

    def snapshot(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "errors": self.errors,
            "shed": self.shed,
            "late": self.late,
            "stale": self.stale,
            "queued": self.queued,
            "healthy": self.healthy,
            "replicas": {
                "ready": self.replicas_ready,
                "loading": self.replicas_loading,
                "lost": self.replicas_lost,
                "rebuilds": self.replica_rebuilds,
            },
            "queue_wait_ms": self.queue_wait.summary(1000.0),
            "service_ms": self.service.summary(1000.0),
            "batch_size": self.batch_size.summary(),
            "first_output_ms": self.first_output.summary(1000.0),
            **({"prefix_routing": self.prefix.snapshot()} if self.prefix is not None else {}),
        }


class ChainMetrics:
    """Per-chain session figures: admissions and per-turn latencies."""

    def __init__(self, chain: str):
        self.chain = chain
        self.sessions_active = 0
        self.sessions_total = 0
        self.sessions_refused = 0
        self.first_output = Histogram()  # input origin -> first output of the turn
        self.end_to_end = Histogram()  # input origin -> each output
        self.stages: dict[str, StageMetrics] = {}

    def stage(self, node: str) -> StageMetrics:
        m = self.stages.get(node)
        if m is None:
            m = self.stages[node] = StageMetrics(self.chain, node)
        return m

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.stages.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "sessions_active": self.sessions_active,
            "sessions_total": self.sessions_total,
            "sessions_refused": self.sessions_refused,
            "first_output_ms": self.first_output.summary(1000.0),
            "end_to_end_ms": self.end_to_end.summary(1000.0),
            "stages": {k: v.snapshot() for k, v in self.stages.items()},
        }


class MetricsCollector:
    """A prometheus_client collector over every registered chain's metrics."""

    def __init__(self) -> None:
        self.chains: dict[str, ChainMetrics] = {}

    def register(self, m: ChainMetrics) -> None:
        self.chains[m.chain] = m

    def unregister(self, m: ChainMetrics) -> None:
        if self.chains.get(m.chain) is m:
            del self.chains[m.chain]

    def collect(self) -> Iterator[Any]:
        sessions = GaugeMetricFamily("chains_sessions_active", "Live sessions", labels=["chain"])
        total = CounterMetricFamily("chains_sessions", "Sessions admitted", labels=["chain"])
        refused = CounterMetricFamily(
            "chains_sessions_refused", "Sessions refused (overloaded)", labels=["chain"]
        )
        ttfo = HistogramMetricFamily(
            "chains_first_output_seconds", "Input to first output of a turn", labels=["chain"]
        )
        e2e = HistogramMetricFamily("chains_end_to_end_seconds", "Input to output", labels=["chain"])
        items = CounterMetricFamily("chains_stage_items", "Items served", labels=["chain", "node"])
        errors = CounterMetricFamily("chains_stage_errors", "Items failed", labels=["chain", "node"])
        shed = CounterMetricFamily(
            "chains_stage_shed", "Items shed past their deadline", labels=["chain", "node"]
        )
        late = CounterMetricFamily("chains_stage_late", "Items served late", labels=["chain", "node"])
        stale = CounterMetricFamily(
            "chains_stage_stale", "Items dropped by an interrupt", labels=["chain", "node"]
        )
        queued = GaugeMetricFamily("chains_stage_queued", "Items waiting", labels=["chain", "node"])
        healthy = GaugeMetricFamily(
            "chains_stage_healthy", "0 after repeated consecutive failures", labels=["chain", "node"]
        )
        wait = HistogramMetricFamily(
            "chains_stage_queue_wait_seconds", "Queue wait", labels=["chain", "node"]
        )
        svc = HistogramMetricFamily(
            "chains_stage_service_seconds", "Service time per call", labels=["chain", "node"]
        )
        bsz = HistogramMetricFamily("chains_stage_batch_size", "Batch size", labels=["chain", "node"])
        replicas = GaugeMetricFamily(
            "chains_stage_replicas", "Replicas by state", labels=["chain", "node", "state"]
        )
        rebuilds = CounterMetricFamily(
            "chains_stage_replica_rebuilds", "Lost replicas started again", labels=["chain", "node"]
        )
        prefix = CounterMetricFamily(
            "chains_stage_prefix_tokens",
            "Prefix-aware routing: prompt tokens routed, predicted cached, reported cached by the engine",
            labels=["chain", "node", "kind"],
        )
        for c in list(self.chains.values()):
            sessions.add_metric([c.chain], c.sessions_active)
            total.add_metric([c.chain], c.sessions_total)
            refused.add_metric([c.chain], c.sessions_refused)
            ttfo.add_metric([c.chain], c.first_output.cumulative(), c.first_output.sum)
            e2e.add_metric([c.chain], c.end_to_end.cumulative(), c.end_to_end.sum)
            for s in list(c.stages.values()):
                lab = [c.chain, s.node]
                items.add_metric(lab, s.items)
                errors.add_metric(lab, s.errors)
                shed.add_metric(lab, s.shed)
                late.add_metric(lab, s.late)
                stale.add_metric(lab, s.stale)
                queued.add_metric(lab, s.queued)
                healthy.add_metric(lab, 1.0 if s.healthy else 0.0)
                wait.add_metric(lab, s.queue_wait.cumulative(), s.queue_wait.sum)
                svc.add_metric(lab, s.service.cumulative(), s.service.sum)
                bsz.add_metric(lab, s.batch_size.cumulative(), s.batch_size.sum)
                replicas.add_metric([*lab, "ready"], s.replicas_ready)
                replicas.add_metric([*lab, "loading"], s.replicas_loading)
                replicas.add_metric([*lab, "lost"], s.replicas_lost)
                rebuilds.add_metric(lab, s.replica_rebuilds)
                if s.prefix is not None:
                    prefix.add_metric([*lab, "prompt"], s.prefix.prompt_tokens)
                    prefix.add_metric([*lab, "predicted_cached"], s.prefix.predicted_tokens)
                    prefix.add_metric([*lab, "engine_cached"], s.prefix.actual_cached_tokens)
        yield from (
            sessions,
            total,
            refused,
            ttfo,
            e2e,
            items,
            errors,
            shed,
            late,
            stale,
            queued,
            healthy,
            wait,
            svc,
            bsz,
            replicas,
            rebuilds,
            prefix,
        )


COLLECTOR = MetricsCollector()
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(COLLECTOR)


def prometheus_text() -> bytes:
    """The Prometheus exposition of every live chain (what /metrics serves)."""
    return generate_latest(REGISTRY)
