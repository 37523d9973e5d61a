"""The soak's leak gates: what the server holds after a wave of sessions drained,
against the baseline.

The baseline is the server after its first wave (what it builds lazily on first use,
a stage's batcher task, a worker-thread pool, belongs to the server, not to a
session); the first wave's own figures are reported against the cold server so those
one-off costs are visible. A gate is exact where a session's leftovers would be
countable (tasks, fds, sockets, live sessions, instances of chains' own classes,
metric series) and one-sided for threads (an idle pool may shrink). Sockets close
asynchronously, so a wave's reading is retried for a few seconds before it fails.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from benchmarks.soakserver import ServerProcess, Snapshot, object_growth

RSS_FLOOR_KIB = 1024.0  # a first wave growing less than this is taken as this much (a ratio of noise)
RSS_NOISE_KIB = 1024.0  # one pymalloc arena (1 MiB on 64-bit CPython 3.10+): RSS moves by arenas


def check(snap: Snapshot, base: Snapshot) -> dict[str, Any]:
    """Each gate's verdict: {name: [value, baseline, passed]} plus grown classes."""
    g: dict[str, Any] = {
        "sessions_active": [snap.sessions_active, 0, snap.sessions_active == 0],
        "tasks": [snap.tasks, base.tasks, snap.tasks == base.tasks],
        "fds": [snap.fds, base.fds, snap.fds == base.fds],
        "sockets": [snap.sockets, base.sockets, snap.sockets == base.sockets],
        "threads": [snap.threads, base.threads, snap.threads <= base.threads],
        "series": [snap.series, base.series, snap.series == base.series],
    }
    grown = object_growth(base.objects, snap.objects)
    g["objects_grown"] = [grown, {}, not grown]
    return g


async def gate_wave(
    srv: ServerProcess, base: Snapshot | None, cold: Snapshot, retry_s: float = 8.0
) -> tuple[Snapshot, dict[str, Any]]:
    """Read the drained server and judge it; the first wave (``base`` None) is judged
    on live sessions only and reported against the cold server."""
    deadline = time.monotonic() + retry_s
    while True:
        snap = await anyio.to_thread.run_sync(srv.snapshot, True)
        gates = check(snap, base or cold)
        passed = bool(gates["sessions_active"][2]) if base is None else all(v[2] for v in gates.values())
        if passed or time.monotonic() > deadline:
            break
        await anyio.sleep(0.5)
    failed = [k for k, v in gates.items() if not v[2]]
    return snap, {
        "gates_passed": passed,
        "gates_failed": failed,
        "against": "cold server (first wave: reported, not gated)" if base is None else "first wave",
        "objects_grown": gates["objects_grown"][0],
    }


def wave_growth(rss_kib: list[float]) -> tuple[float, float]:
    """(the first wave's RSS growth, at least ``RSS_FLOOR_KIB``; the later waves' net
    growth per wave) from ``rss_kib`` = [cold, after wave 1, after wave 2, ...]. Net:
    from the end of wave 1 to the end of the last, over the waves between, so that a
    leak (which grows RSS every wave) shows and one wave's allocator step that the
    next gives back does not (seen: +2.2 MiB in one wave, the last wave below the
    first)."""
    first = max(rss_kib[1] - rss_kib[0], RSS_FLOOR_KIB)
    return first, (rss_kib[-1] - rss_kib[1]) / (len(rss_kib) - 2)


def rss_ratio(rss_kib: list[float]) -> float:
    """The later waves' net RSS growth per wave over the first wave's growth (0 with
    fewer than two waves, or when RSS went down)."""
    if len(rss_kib) < 3:
        return 0.0
    first, later = wave_growth(rss_kib)
    return max(0.0, later) / first


def rss_gate(rss_kib: list[float]) -> bool:
    """A later wave grows RSS, net, by less than 5% of the first wave's growth, or by
    less than one pymalloc arena (``RSS_NOISE_KIB``): a growth smaller than that is the
    allocator's granularity, not sessions (a quick run's waves of six sessions move
    RSS by a few hundred KiB either way)."""
    if len(rss_kib) < 3:
        return True
    first, later = wave_growth(rss_kib)
    return later < max(0.05 * first, RSS_NOISE_KIB)


__all__ = ["RSS_FLOOR_KIB", "RSS_NOISE_KIB", "check", "gate_wave", "rss_gate", "rss_ratio", "wave_growth"]
