"""Deadline-aware batching vs fixed windows, on a stage of known cost.

A synthetic batched stage whose batch of b items costs ``a + k*b`` (defaults
a = 20 ms, k = 2 ms, at most 32 items: GPU-kernel-like; the time is spent in a
worker thread like a real model call) is fed by S sessions with Poisson arrivals,
swept over offered load from 10% to 120% of its maximum throughput
(``32 / (a + 32k)`` items/s), with a budget of 150 ms per item. Policies, in the
same run:

- ``none``: no batching (batches of one);
- ``ray_default``: Ray Serve's ``@serve.batch`` defaults (10 items / 10 ms);
- ``window_32_20``: a fixed window tuned to 32 items / 20 ms;
- ``chains``: ours — deadline-aware, learned cost model, sheds what cannot make it.

Per policy and load: goodput (items finished within budget per second), p50/p99
latency of served items, shed and late counts, beside the physical limit.

    python benchmarks/batching.py [--quick] [--json out/batching.json] [--plot out/batching.png]
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chains
from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json
from runtime.engine import Runtime

POLICIES = {
    # name: (max_size, max_wait_ms, runtime policy, on_late)
    "none": (1, 0.0, "window", "serve"),
    "ray_default": (10, 10.0, "window", "serve"),
    "window_32_20": (32, 20.0, "window", "serve"),
    "chains": (32, 50.0, "deadline", "shed"),
}


def make_chain(a_s: float, k_s: float, max_size: int, max_wait_ms: float, on_late: str, budget_ms: float):
    @chains.node(batch=chains.Batch(max_size=max_size, max_wait_ms=max_wait_ms), on_late=on_late)
    def kernel(xs: list[float]) -> list[float]:
        time.sleep(a_s + k_s * len(xs))
        return xs

    def body(xs: chains.Stream[float]):
        return kernel(xs)

    body.__name__ = "synthetic"
    return chains.chain(body, budget_ms=budget_ms)


async def run_point(policy: str, load: float, args: Any) -> dict[str, Any]:
    max_size, wait_ms, rt_policy, on_late = POLICIES[policy]
    a, k = args.a / 1000, args.k / 1000
    limit = args.max_batch / (a + args.max_batch * k)
    rate = load * limit
    chain = make_chain(a, k, max_size, wait_ms, on_late, args.budget)
    budget = args.budget / 1000
    rng = random.Random(int(load * 1000))  # the same arrivals for every policy at a load
    lat: list[float] = []
    counts = {"shed": 0, "errors": 0, "late": 0, "sent": 0}
    t_start = time.monotonic()
    t_measure = t_start + args.warmup
    t_end = t_measure + args.duration

    async def session(rt: Runtime) -> None:
        async with rt.session() as s:

            async def feed() -> None:
                per = rate / args.sessions
                nxt = time.monotonic() + rng.expovariate(per)
                while nxt < t_end:
                    await anyio.sleep(max(0.0, nxt - time.monotonic()))
                    await s.send(0.0)
                    if nxt >= t_measure:
                        counts["sent"] += 1
                    nxt += rng.expovariate(per)
                s.close_inputs()

            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                async for out in s:
                    now = time.monotonic()
                    if out.origin < t_measure:
                        continue
                    if out.name == "error":
                        counts["shed" if out.value.code == "shed" else "errors"] += 1
                        continue
                    dt = now - out.origin
                    lat.append(dt)
                    if dt > budget:
                        counts["late"] += 1

    async with Runtime(chain, batch_policy=rt_policy, register_metrics=False) as rt:
        # Work still queued a few budgets after the last arrival has missed its budget
        # anyway: stop there instead of draining an unbounded backlog.
        with anyio.move_on_after(args.warmup + args.duration + 3 * budget):
            async with anyio.create_task_group() as tg:
                for _ in range(args.sessions):
                    tg.start_soon(session, rt)
        sizes = rt.metrics.stages["kernel"].batch_size.summary()
    unserved = counts["sent"] - len(lat) - counts["shed"] - counts["errors"]
    ontime = sum(1 for x in lat if x <= budget)
    return {
        "policy": policy,
        "load": load,
        "offered": rate,
        "goodput": ontime / args.duration,
        "p50_ms": percentile(lat, 0.5) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "shed": counts["shed"],
        "late": counts["late"],
        "errors": counts["errors"],
        "sent": counts["sent"],
        "unserved": max(0, unserved),
        "mean_batch": sizes["mean"],
    }


def plot(data: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pol in POLICIES:
        rows = [r for r in data["runs"] if r["policy"] == pol]
        loads = [r["load"] * 100 for r in rows]
        a1.plot(loads, [r["goodput"] for r in rows], marker="o", label=pol)
        a2.plot(loads, [r["p99_ms"] for r in rows], marker="o", label=pol)
    a1.axhline(data["limit"], color="grey", ls="--", label="physical limit")
    a1.set(xlabel="offered load (% of max throughput)", ylabel="goodput (items/s within budget)")
    a2.axhline(data["budget_ms"], color="grey", ls="--", label="budget")
    a2.set(xlabel="offered load (%)", ylabel="p99 latency (ms)", yscale="log")
    a1.legend()
    a2.legend()
    fig.suptitle(
        f"batched stage t(b) = {data['a_ms']:g} + {data['k_ms']:g}·b ms, budget {data['budget_ms']:g} ms"
    )
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--a", type=float, default=20.0, help="fixed cost per batch, ms")
    p.add_argument("--k", type=float, default=2.0, help="cost per item, ms")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--budget", type=float, default=150.0, help="budget per item, ms")
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--loads", type=str, default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2")
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.loads = 2.5, 0.5, "0.1,0.5,0.9,1.2"
    loads = [float(x) for x in args.loads.split(",")]
    limit = args.max_batch / (args.a / 1000 + args.max_batch * args.k / 1000)
    runs = []
    print(f"physical limit {limit:.0f} items/s; budget {args.budget:g} ms")
    print(
        f"{'policy':<14}{'load':>6}{'goodput':>9}{'p50 ms':>8}{'p99 ms':>9}{'shed':>6}{'late':>6}{'batch':>7}"
    )
    for load in loads:
        for pol in POLICIES:
            r = asyncio.run(run_point(pol, load, args))
            runs.append(r)
            print(
                f"{pol:<14}{load:>6.0%}{r['goodput']:>9.1f}{r['p50_ms']:>8.1f}{r['p99_ms']:>9.1f}"
                f"{r['shed']:>6}{r['late']:>6}{r['mean_batch']:>7.1f}",
                flush=True,
            )
    data = {
        "benchmark": "batching",
        "limit": limit,
        "a_ms": args.a,
        "k_ms": args.k,
        "budget_ms": args.budget,
        "sessions": args.sessions,
        "duration_s": args.duration,
        "machine": machine(),
        "runs": runs,
    }
    write_json(args.json, data)
    if args.plot:
        plot(data, args.plot)


if __name__ == "__main__":
    main()
