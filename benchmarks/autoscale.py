"""Budget-driven autoscaling against a fixed peak count and a Ray-Serve-like policy.

A fake batched class node whose batch of ``b`` items takes ``a + k*b`` seconds (a
sleep) and whose ``setup`` (the cold start) takes a few seconds, served by the real
runtime: a chain of that one node, one session per item (``rt.call``), items shed
past the node's budget. Two traces, each run once per policy, one run at a time:

- ``stepped``: a low rate, then 5x, then low again;
- ``bursty``: the low rate with seeded 5x bursts of a few seconds.

Policies:

- ``fixed_peak``: the replica count that serves the peak at the target utilisation,
  all the time;
- ``ray_like``: Ray Serve's rule (desired = ongoing requests / 2 per replica,
  averaged over a look-back window, applied after an upscale delay of 30 s and a
  downscale delay of 600 s), its times scaled by 1/20 to the trace, acting on the
  runtime's replica set;
- ``chains``: the node declares ``min_replicas``/``max_replicas``, so the runtime runs
  its ``Autoscaler`` (runtime/autoscale.py), whose 1 s tick, 30-tick window and 30 s
  delay are scaled by 1/4 to the trace.

Reported per run: items late or shed (fraction of all, and in steady state: away
from the first 10 s after a rate change), replica-seconds (loading, ready and
draining replicas all cost), and recovery: seconds from the step up (mean over
bursts for ``bursty``) until the last item that missed its budget.

``--sim`` runs the same policies on the real ``ReplicaSet`` and batcher with a
minimal dispatcher instead of the runtime (the three side by side; no sessions).

Run: ``flock /tmp/chains-heavy.lock python benchmarks/autoscale.py --json out/autoscale.json
--plot out/autoscale.png`` (about 4.5 minutes; ``--quick`` halves the traces).
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chains
from benchmarks._common import parser, pyplot, save_figure, write_json
from runtime.autoscale import Autoscaler
from runtime.batcher import Batcher, BatchItem, fail_future
from runtime.costmodel import CostModel
from runtime.metrics import StageMetrics
from runtime.replicas import ReplicaSet

A, K = 0.03, 0.008  # seconds per batch: a + k*b
MAX_BATCH = 8
BUDGET_S = 0.4
COLD_S = 3.0
LOW = 30.0  # items/s
PEAK = 5 * LOW
UTIL = 0.7
MAX_REPLICAS = 8
POLICIES = ("fixed_peak", "ray_like", "chains")
SAMPLE_S = 0.1


def fixed_peak_count() -> int:
    """Replicas for the peak at the target utilisation, full batches (what an operator
    provisioning for the peak would pick)."""
    per_replica = MAX_BATCH / (A + K * MAX_BATCH)
    return math.ceil(PEAK / (per_replica * UTIL))


class Shed(Exception):
    pass


class Provider:
    """Replicas that take ``cold_s`` to start (the initial ones too, before the trace)."""

    def __init__(self, cold_s: float):
        self.cold_s = cold_s

    async def start(self, rid: int) -> Any:
        await anyio.sleep(self.cold_s)
        return f"replica-{rid}"

    async def stop(self, instance: Any) -> None:
        pass

    def is_lost(self, instance: Any, exc: BaseException) -> bool:
        return False


@dataclass
class Run:
    policy: str
    trace: str
    t0: float = 0.0
    items: list[tuple[float, float | None]] = field(default_factory=list)  # (submit, latency or None=shed)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, ready, all)
    replica_seconds: float = 0.0
    decisions: list[Any] = field(default_factory=list)  # the autoscaler's log (chains)


class SimStage:
    """What the autoscaler reads of a stage, fed by a dispatcher over a real batcher."""

    def __init__(self, name: str, spec: Any):
        self.name = name
        self.spec = spec
        self.metrics = StageMetrics("bench", name)
        self.cost = CostModel()
        self.budget_s = BUDGET_S
        self.downstream_s = 0.0
        self.executing = 0  # items in batches now running
        self.batcher = Batcher(
            max_size=MAX_BATCH, max_wait_s=0.02, on_late="shed", cost=self.cost, on_shed=self._shed
        )

    def _shed(self, item: BatchItem, late_s: float) -> None:
        self.metrics.shed += 1
        fail_future(item.future, Shed())

    async def dispatch(self, rs: ReplicaSet) -> None:
        wake = asyncio.Event()
        rs.on_change.append(lambda _rs: wake.set())
        async with anyio.create_task_group() as tg:
            while True:
                while not any(r.inflight == 0 for r in rs.ready):
                    wake.clear()
                    await wake.wait()
                batch = await self.batcher.next_batch()
                self.metrics.queued = len(self.batcher)
                r = rs.acquire()  # the least busy: an idle one unless one was drained meanwhile
                self.batcher.in_flight += 1
                tg.start_soon(self._serve, rs, r, batch, wake)

    async def _serve(self, rs: ReplicaSet, r: Any, batch: list[BatchItem], wake: asyncio.Event) -> None:
        start = time.monotonic()
        self.executing += len(batch)
        try:
            for it in batch:
                self.metrics.queue_wait.observe(start - it.enqueued)
            await anyio.sleep(A + K * len(batch))
            end = time.monotonic()
            self.cost.observe(len(batch), end - start)
            self.metrics.service.observe(end - start)
            self.metrics.batch_size.observe(len(batch))
            self.metrics.items += len(batch)
            for it in batch:
                if end > it.deadline:
                    self.metrics.late += 1
                if not it.future.done():
                    it.future.set_result(end)
        finally:
            self.executing -= len(batch)
            rs.release(r)
            self.batcher.batch_done()
            self.metrics.queued = len(self.batcher)
            wake.set()


class RayLike:
    """Ray Serve's default autoscaling rule, its delays scaled to the trace."""

    def __init__(self, rs: ReplicaSet, stage: Any, scale: float, target_ongoing: float = 2.0):
        self.rs, self.stage = rs, stage
        self.target = target_ongoing
        self.look_back_s = 30.0 * scale
        self.up_delay_s = 30.0 * scale
        self.down_delay_s = 600.0 * scale
        self.tick_s = 0.1
        self.ongoing: Callable[[], int] = lambda: len(stage.batcher) + stage.executing

    async def run(self) -> None:
        window: deque[float] = deque(maxlen=max(1, round(self.look_back_s / self.tick_s)))
        up_since: float | None = None
        down_since: float | None = None
        while True:
            await anyio.sleep(self.tick_s)
            now = time.monotonic()
            window.append(self.ongoing())
            desired = min(MAX_REPLICAS, max(1, math.ceil(statistics.fmean(window) / self.target)))
            cur = self.rs.target
            if desired > cur:
                down_since = None
                up_since = up_since if up_since is not None else now
                if now - up_since >= self.up_delay_s:
                    self.rs.scale_to(desired)
                    up_since = None
            elif desired < cur:
                up_since = None
                down_since = down_since if down_since is not None else now
                if now - down_since >= self.down_delay_s:
                    self.rs.scale_to(desired)
                    down_since = None
            else:
                up_since = down_since = None


# --- traces ------------------------------------------------------------------------------------------


@dataclass
class Trace:
    name: str
    duration: float
    steps: list[float]  # when the rate goes up to the peak
    width: float  # how long it stays there

    def rate(self, t: float) -> float:
        return PEAK if any(s <= t < s + self.width for s in self.steps) else LOW


def stepped(scale: float) -> Trace:
    low1, high, low2 = 10.0 * scale, 15.0 * scale, 15.0 * scale
    return Trace("stepped", low1 + high + low2, [low1], high)


def bursty(scale: float, seed: int = 5) -> Trace:
    rng = random.Random(seed)
    duration = 40.0 * scale
    bursts, t = [], 6.0 * scale
    while t < duration - 8.0:
        bursts.append(t)
        t += rng.uniform(12.0, 20.0)
    return Trace("bursty", duration, bursts, 4.0)


def sample(run: Run, rs: ReplicaSet) -> None:
    """Record the replica count now; integrate replica-seconds over the real interval."""
    c = rs.counts()
    total = c["loading"] + c["ready"] + c["draining"]
    t = time.monotonic() - run.t0
    if run.samples:
        run.replica_seconds += run.samples[-1][2] * (t - run.samples[-1][0])
    run.samples.append((t, c["ready"], total))


# --- one run -----------------------------------------------------------------------------------------


async def run_one(policy: str, trace: Trace, seed: int) -> Run:
    spec = chains.node(
        name=f"{policy}-{trace.name}",
        batch=chains.Batch(max_size=MAX_BATCH, max_wait_ms=20),
        min_replicas=1,
        max_replicas=MAX_REPLICAS,
        target_utilization=UTIL,
        on_late="shed",
        budget_ms=BUDGET_S * 1000,
    )(_model).spec
    stage = SimStage(spec.name, spec)
    count = fixed_peak_count() if policy == "fixed_peak" else 1
    rs = ReplicaSet(spec, Provider(COLD_S), count=count)
    await rs.start()
    # the cost model starts with what a short warm-up would have taught it
    for b in (1, 2, 4, 8):
        stage.cost.observe(b, A + K * b)
    run = Run(policy, trace.name)
    rng = random.Random(seed)

    async def monitor() -> None:
        while True:
            sample(run, rs)
            await anyio.sleep(SAMPLE_S)

    async def load() -> None:
        t = 0.0
        pending = []
        while True:
            t += rng.expovariate(trace.rate(t))
            if t >= trace.duration:
                break
            delay = run.t0 + t - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            now = time.monotonic()
            fut = stage.batcher.submit(None, now + BUDGET_S, lambda: True)
            pending.append((now - run.t0, now, fut))
        for sub_rel, sub, fut in pending:
            try:
                end = await fut
                run.items.append((sub_rel, end - sub))
            except Shed:
                run.items.append((sub_rel, None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(rs.run)
        tg.start_soon(stage.dispatch, rs)
        run.t0 = time.monotonic()
        tg.start_soon(monitor)
        if policy == "chains":
            # the runtime's defaults (1 s ticks, 30-tick window) scaled by 1/4 to the trace
            scaler = Autoscaler(rs, [stage], tick_s=0.25, down_window=30, down_delay_s=7.5, up_confirm=8)
            tg.start_soon(scaler.run)
        elif policy == "ray_like":
            tg.start_soon(RayLike(rs, stage, scale=1 / 20).run)
        await load()
        tg.cancel_scope.cancel()
    await rs.close()
    return run


def _model(xs: list[int]) -> list[int]:
    return xs


def model_class(executing: list[int]) -> type:
    """A fresh class node body: ``setup`` is the cold start, a batch costs ``a + k*b``."""

    class Model:
        async def setup(self) -> None:
            await anyio.sleep(COLD_S)

        async def __call__(self, xs: list[int]) -> list[int]:
            executing[0] += len(xs)
            try:
                await anyio.sleep(A + K * len(xs))
            finally:
                executing[0] -= len(xs)
            return xs

    return Model


async def run_runtime(policy: str, trace: Trace, seed: int) -> Run:
    """One run through the real runtime: a chain of one batched class node, one session per
    item (``rt.call``), the runtime's own autoscaler for ``chains``."""
    name = f"{policy}-{trace.name}"
    if policy == "chains":
        opts: dict[str, Any] = {"min_replicas": 1, "max_replicas": MAX_REPLICAS, "target_utilization": UTIL}
    else:
        opts = {"replicas": fixed_peak_count() if policy == "fixed_peak" else 1}
    executing = [0]
    node = chains.node(
        name=name,
        batch=chains.Batch(max_size=MAX_BATCH, max_wait_ms=20),
        on_late="shed",
        budget_ms=BUDGET_S * 1000,
        **opts,
    )(model_class(executing))

    @chains.chain(name=f"bench-{name}")
    def chain(x: int):
        return node()(x)

    run = Run(policy, trace.name)
    rng = random.Random(seed)
    async with chains.running(chain) as rt:
        stage = rt.stages[0]
        rs = stage.replicas
        if policy == "chains":
            # the runtime's defaults (1 s ticks, 30-tick window, 30 s delay) scaled by 1/4 to the trace
            scaler = rt.autoscalers[name]
            scaler.tick_s, scaler.down_delay_s, scaler.up_confirm = 0.25, 7.5, 8
            scaler.grace_s = max(2 * scaler.tick_s, BUDGET_S)

        async def monitor() -> None:
            while True:
                sample(run, rs)
                await anyio.sleep(SAMPLE_S)

        async def item(sub_rel: float, sub: float) -> None:
            try:
                await rt.call(1)
                run.items.append((sub_rel, time.monotonic() - sub))
            except chains.NodeError:
                run.items.append((sub_rel, None))

        async with anyio.create_task_group() as tg:
            run.t0 = time.monotonic()
            tg.start_soon(monitor)
            if policy == "ray_like":
                ray = RayLike(rs, stage, scale=1 / 20)
                ray.ongoing = lambda: len(stage.batcher) + executing[0]
                tg.start_soon(ray.run)
            async with anyio.create_task_group() as items:
                t = 0.0
                while True:
                    t += rng.expovariate(trace.rate(t))
                    if t >= trace.duration:
                        break
                    delay = run.t0 + t - time.monotonic()
                    if delay > 0:
                        await anyio.sleep(delay)
                    now = time.monotonic()
                    items.start_soon(item, now - run.t0, now)
            tg.cancel_scope.cancel()
        if policy == "chains":
            run.decisions = [(round(d.t - run.t0, 2), d.replicas, d.reason) for d in scaler.log]
    return run


# --- figures -----------------------------------------------------------------------------------------


def missed(lat: float | None) -> bool:
    return lat is None or lat > BUDGET_S


def recovery(run: Run, trace: Trace) -> float:
    """Seconds from each step up until the last missed item submitted in the high phase or
    soon after (mean over the steps)."""
    out = []
    for s in trace.steps:
        late = [t for t, lat in run.items if s <= t < s + trace.width + 5.0 and missed(lat)]
        out.append(max(late) - s if late else 0.0)
    return statistics.fmean(out)


def steady_frac(run: Run, trace: Trace, settle: float = 10.0) -> float:
    """Late or shed among items submitted at least ``settle`` seconds after a rate change."""
    edges = [*trace.steps, *(s + trace.width for s in trace.steps)]
    keep = [lat for t, lat in run.items if all(not (e <= t < e + settle) for e in edges)]
    return sum(1 for lat in keep if missed(lat)) / max(1, len(keep))


def summarize(run: Run, trace: Trace) -> dict[str, Any]:
    return {
        "policy": run.policy,
        "trace": run.trace,
        "late_or_shed_frac": sum(1 for _, lat in run.items if missed(lat)) / max(1, len(run.items)),
        "replica_seconds": run.replica_seconds,
        "recovery_s": recovery(run, trace),
    }


def plot(path: Path, results: dict[str, tuple[list[Run], Trace]]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 6), sharex="col")
    for col, (name, (runs, trace)) in enumerate(results.items()):
        top, bottom = axes[0][col], axes[1][col]
        for run in runs:
            top.step([s[0] for s in run.samples], [s[2] for s in run.samples], where="post", label=run.policy)
            bins: dict[int, list[float]] = {}
            for t, lat in run.items:
                bins.setdefault(int(t), []).append(BUDGET_S * 2 if lat is None else lat)
            xs = sorted(bins)
            p95 = [sorted(bins[x])[int(0.95 * (len(bins[x]) - 1))] * 1000 for x in xs]
            bottom.plot(xs, p95, label=run.policy)
        for s in trace.steps:
            top.axvline(s, color="grey", lw=0.5, ls=":")
        bottom.axhline(BUDGET_S * 1000, color="red", lw=0.8, ls="--", label="budget")
        top.set_title(f"{name}: replicas (loading + ready + draining)")
        top.set_ylabel("replicas")
        top.legend()
        bottom.set_title(f"{name}: latency p95 per second (shed drawn at 2x budget)")
        bottom.set_ylabel("ms")
        bottom.set_xlabel("seconds")
        bottom.legend()
    save_figure(fig, path)


async def amain(args: Any) -> None:
    scale = 0.5 if args.quick else 1.0
    print(
        f"stage t(b) = {A * 1000:.0f} + {K * 1000:.0f} ms x b, batches up to {MAX_BATCH}, budget "
        f"{BUDGET_S * 1000:.0f} ms, cold start {COLD_S:.0f} s, {LOW:.0f} -> {PEAK:.0f} items/s, "
        f"fixed_peak = {fixed_peak_count()} replicas",
        flush=True,
    )
    out, results = [], {}
    for trace in (stepped(scale), bursty(scale)):
        runs: list[Run] = []

        async def one(policy: str, trace: Trace = trace, runs: list[Run] = runs) -> None:
            runs.append(await (run_one if args.sim else run_runtime)(policy, trace, seed=11))

        if args.sim:  # light: the three side by side
            async with anyio.create_task_group() as tg:
                for p in POLICIES:
                    tg.start_soon(one, p)
        else:  # a session per item: one runtime at a time, so none slows another's event loop
            for p in POLICIES:
                await one(p)
        runs.sort(key=lambda r: POLICIES.index(r.policy))
        results[trace.name] = (runs, trace)
        for run in runs:
            s = summarize(run, trace)
            out.append(s)
            print(
                f"{trace.name:8s} {run.policy:10s} late+shed {s['late_or_shed_frac'] * 100:5.2f}% "
                f"(steady {steady_frac(run, trace) * 100:5.2f}%)  replica-s {s['replica_seconds']:6.1f}  "
                f"recovery {s['recovery_s']:5.2f} s  peak replicas {max(x[2] for x in run.samples)}",
                flush=True,
            )
            for d in run.decisions:
                print(f"    autoscaler at {d[0]:6.2f} s -> {d[1]} replicas: {d[2]}", flush=True)
    write_json(args.json, {"runs": out})
    if args.plot:
        plot(args.plot, results)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--sim", action="store_true", help="a minimal dispatcher instead of the runtime")
    args = p.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
