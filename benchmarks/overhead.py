"""Per-hop overhead: chains vs the bare asyncio floors, in one run.

Pass-through chains of K = 1, 4, 8 map stages move N small items; the same shapes
are built from bare ``asyncio.Queue(maxsize=64)`` tasks and from bare anyio
memory object streams. For each: throughput (items/s), single-item latency
p50/p99 (one item in flight at a time), and the cost of one extra hop (the slope
of per-item time over K). Ours runs with everything on: envelopes, the epoch
check, the stage limiter and per-item metrics.

    python benchmarks/overhead.py [--n 20000] [--json out/overhead.json] [--plot out/overhead.png]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chains
from benchmarks._common import machine, parser, percentile, pyplot, save_figure, slope, write_json

KS = (1, 4, 8)


@chains.node
async def passthru(x: int) -> int:
    return x


def make_chain(k: int) -> chains.Chain:
    def body(xs: chains.Stream[int]):
        h = xs
        for _ in range(k):
            h = passthru(h)
        return h

    body.__name__ = f"pass{k}"
    return chains.chain(body)


# --- ours ------------------------------------------------------------------------------
async def ours_throughput(k: int, n: int) -> float:
    async with chains.Runtime(make_chain(k), register_metrics=False) as rt, rt.session() as s:

        async def feed() -> None:
            for i in range(n):
                await s.send(i)
            s.close_inputs()

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            got = 0
            async for _ in s:
                got += 1
        dt = time.perf_counter() - t0
        assert got == n, (got, n)
        return n / dt


async def ours_latency(k: int, m: int) -> list[float]:
    out = []
    async with chains.Runtime(make_chain(k), register_metrics=False) as rt, rt.session() as s:
        for i in range(m):
            t0 = time.perf_counter()
            await s.send(i)
            await s.receive()
            out.append(time.perf_counter() - t0)
        s.close_inputs()
    return out


# --- asyncio.Queue floor ---------------------------------------------------------------
async def _queue_pipeline(k: int) -> tuple[list[asyncio.Queue[Any]], list[asyncio.Task[None]]]:
    qs: list[asyncio.Queue[Any]] = [asyncio.Queue(maxsize=64) for _ in range(k + 1)]

    async def hop(qi: asyncio.Queue[Any], qo: asyncio.Queue[Any]) -> None:
        while True:
            x = await qi.get()
            await qo.put(x)

    tasks = [asyncio.create_task(hop(qs[i], qs[i + 1])) for i in range(k)]
    return qs, tasks


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def queue_throughput(k: int, n: int) -> float:
    qs, tasks = await _queue_pipeline(k)

    async def feed() -> None:
        for i in range(n):
            await qs[0].put(i)

    t0 = time.perf_counter()
    f = asyncio.create_task(feed())
    for _ in range(n):
        await qs[-1].get()
    dt = time.perf_counter() - t0
    await f
    await _stop(tasks)
    return n / dt


async def queue_latency(k: int, m: int) -> list[float]:
    qs, tasks = await _queue_pipeline(k)
    out = []
    for i in range(m):
        t0 = time.perf_counter()
        await qs[0].put(i)
        await qs[-1].get()
        out.append(time.perf_counter() - t0)
    await _stop(tasks)
    return out


# --- anyio memory stream floor ---------------------------------------------------------
async def anyio_run(k: int, n: int, latency: bool) -> Any:
    chans = [anyio.create_memory_object_stream[int](64) for _ in range(k + 1)]

    async def hop(rx: Any, tx: Any) -> None:
        async with tx:
            async for x in rx:
                await tx.send(x)

    async with anyio.create_task_group() as tg:
        for i in range(k):
            tg.start_soon(hop, chans[i][1], chans[i + 1][0])
        tx0, rx_last = chans[0][0], chans[-1][1]
        if latency:
            out = []
            for i in range(n):
                t0 = time.perf_counter()
                await tx0.send(i)
                await rx_last.receive()
                out.append(time.perf_counter() - t0)
            tx0.close()
            async for _ in rx_last:
                pass
            return out

        async def feed() -> None:
            async with tx0:
                for i in range(n):
                    await tx0.send(i)

        t0 = time.perf_counter()
        tg.start_soon(feed)
        got = 0
        async for _ in rx_last:
            got += 1
        return n / (time.perf_counter() - t0)


async def main_async(n: int, m: int, repeats: int) -> dict[str, Any]:
    impls = {
        "chains": (ours_throughput, ours_latency),
        "asyncio_queue": (queue_throughput, queue_latency),
        "anyio_stream": (lambda k, n: anyio_run(k, n, False), lambda k, m: anyio_run(k, m, True)),
    }
    results: dict[str, Any] = {}
    for name, (thr, lat) in impls.items():
        rows = []
        for k in KS:
            gc.collect()
            best = max([await thr(k, n) for _ in range(repeats)])
            lats = await lat(k, m)
            rows.append(
                {
                    "k": k,
                    "items_per_s": best,
                    "us_per_item": 1e6 / best,
                    "lat_p50_us": percentile(lats, 0.5) * 1e6,
                    "lat_p99_us": percentile(lats, 0.99) * 1e6,
                }
            )
        results[name] = {
            "rows": rows,
            "hop_us_throughput": slope([r["k"] for r in rows], [r["us_per_item"] for r in rows]),
            "hop_us_latency_p50": slope([r["k"] for r in rows], [r["lat_p50_us"] for r in rows]),
        }
    for floor in ("asyncio_queue", "anyio_stream"):
        f, o = results[floor], results["chains"]
        results[f"ratio_vs_{floor}"] = {
            "hop_throughput": o["hop_us_throughput"] / f["hop_us_throughput"],
            "hop_latency": o["hop_us_latency_p50"] / f["hop_us_latency_p50"],
        }
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("chains", "asyncio_queue", "anyio_stream"):
        rows = results[name]["rows"]
        ks = [r["k"] for r in rows]
        a1.plot(ks, [r["us_per_item"] for r in rows], marker="o", label=name)
        a2.plot(ks, [r["lat_p50_us"] for r in rows], marker="o", label=name)
    a1.set(xlabel="stages K", ylabel="µs per item (1/throughput)", title="Throughput cost")
    a2.set(xlabel="stages K", ylabel="single-item latency p50 (µs)", title="Latency")
    a1.legend()
    a2.legend()
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="items per throughput run")
    p.add_argument("--m", type=int, default=2000, help="items per latency run")
    args = p.parse_args()
    n = 20000 if args.quick else args.n
    repeats = 1 if args.quick else 3
    res = asyncio.run(main_async(n, args.m, repeats))
    print(f"{'impl':<15}{'K':>3}{'items/s':>12}{'µs/item':>9}{'lat p50 µs':>12}{'lat p99 µs':>12}")
    for name in ("chains", "asyncio_queue", "anyio_stream"):
        for r in res[name]["rows"]:
            print(
                f"{name:<15}{r['k']:>3}{r['items_per_s']:>12.0f}{r['us_per_item']:>9.2f}"
                f"{r['lat_p50_us']:>12.1f}{r['lat_p99_us']:>12.1f}"
            )
    print("\ncost of one extra hop (slope over K):")
    for name in ("chains", "asyncio_queue", "anyio_stream"):
        r = res[name]
        print(
            f"  {name:<15} throughput {r['hop_us_throughput']:6.2f} µs"
            f"   latency {r['hop_us_latency_p50']:6.2f} µs"
        )
    for floor in ("asyncio_queue", "anyio_stream"):
        r = res[f"ratio_vs_{floor}"]
        print(f"  ours/{floor:<14} throughput x{r['hop_throughput']:.2f}   latency x{r['hop_latency']:.2f}")
    write_json(args.json, {"benchmark": "overhead", "n": n, "m": args.m, "machine": machine(), **res})
    if args.plot:
        plot(res, args.plot)


if __name__ == "__main__":
    main()
