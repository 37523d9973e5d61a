"""Calls per second against live concurrency: one call per request, as a web handler does.

C callers (1, 64, 512 live at once) each call a chain again and again. Measured in
one run, per C:

- ``call``: ``rt.call(x)`` on a one-node chain (an async map): the direct-call path;
- ``session``: one ``rt.session()`` per request on the same chain (send, receive,
  close), the path a chain with streams takes;
- ``batched``: ``rt.call(x)`` through a batched map (free compute: the cost is ours);
- ``floor``: the same callers awaiting the node function itself, no runtime.

It prints calls/s and the p50 latency of one call, and ours against the floor.

    python benchmarks/calls.py [--n 20000] [--json out/calls.json] [--plot out/calls.png]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chains
from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json

CONCURRENCY = (1, 64, 512)


@chains.node
async def passthru(x: int) -> int:
    return x


@chains.node(batch=chains.Batch(max_size=64, max_wait_ms=1.0))
async def batched(xs: list[int]) -> list[int]:
    return xs


@chains.chain
def one_map(x: int):
    return passthru(x)


@chains.chain
def one_batched(x: int):
    return batched(x)


async def drive(conc: int, n: int, one: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    """``n`` calls by ``conc`` concurrent callers: (calls/s, p50 latency in µs)."""
    lat: list[float] = []
    per = max(1, n // conc)

    async def caller(k: int) -> None:
        for i in range(per):
            t0 = time.perf_counter()
            await one(i)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(conc):
            tg.start_soon(caller, k)
    dt = time.perf_counter() - t0
    return len(lat) / dt, percentile(lat, 0.5) * 1e6


async def measure(n: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with chains.running(one_map) as rt_map, chains.running(one_batched) as rt_b:

        async def by_session(x: int) -> Any:
            async with rt_map.session() as s:
                await s.send(x)
                s.close_inputs()
                return (await s.receive()).value

        paths: dict[str, Callable[[int], Awaitable[Any]]] = {
            "floor": passthru,
            "call": rt_map.call,
            "session": by_session,
            "batched": rt_b.call,
        }
        for name, fn in paths.items():
            await drive(64, 2000, fn)  # warm up (and let the batcher learn its cost)
            out[name] = {}
            for conc in CONCURRENCY:
                rate, p50 = await drive(conc, n, fn)
                out[name][str(conc)] = {"calls_per_s": round(rate), "p50_us": round(p50, 1)}
                print(f"{name:8s} C={conc:4d}  {rate:10.0f} calls/s   p50 {p50:9.1f} µs")
    return out


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, per in results.items():
        xs = [int(c) for c in per]
        ax.plot(xs, [per[c]["calls_per_s"] for c in per], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("live callers (concurrent calls)")
    ax.set_ylabel("calls/s")
    ax.set_title("one call per request: calls/s against concurrency")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="calls per measurement")
    args = p.parse_args()
    n = 4000 if args.quick else args.n
    results = asyncio.run(measure(n))
    summary = {
        name: {
            c: round(results[name][c]["calls_per_s"] / results["floor"][c]["calls_per_s"], 4)
            for c in results[name]
        }
        for name in ("call", "session", "batched")
    }
    flat = min(results["call"][c]["calls_per_s"] for c in results["call"]) / max(
        results["call"][c]["calls_per_s"] for c in results["call"]
    )
    print(f"call path: min/max calls/s over concurrency {flat:.2f} (1.0 = flat)")
    write_json(
        args.json, {"machine": machine(), "n": n, "results": results, "vs_floor": summary, "flatness": flat}
    )
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
