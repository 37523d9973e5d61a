"""Leak gauges for the soak, read from inside the server process through /metrics.

The soak (benchmarks/soak.py) sees the server from outside: psutil gives its
threads, file descriptors, sockets and RSS, but not its asyncio tasks nor what its
nodes, routers, batchers and connections still hold. A chain file served for the
soak imports this module and calls ``register()``; from then on every /metrics
scrape also carries:

- ``chains_census_asyncio_tasks``: tasks alive on the server's event loop;
- ``chains_census_threads``: Python threads;
- ``chains_census_objects{type=...}``: live instances of every class defined in
  chains, runtime, transport, nodes or benchmarks (gc-tracked objects), so
  per-session state left in a node, router, batcher or connection shows as a count
  that does not return to its baseline;
- ``chains_census_series``: the metric series the registry exposes (a
  session-labelled series would make it grow with sessions).

Counting walks ``gc.get_objects()``: a few hundred ms at thousands of sessions,
which is why it lives here, registered only by the soak's chain files, and not in
runtime/metrics.py (scraped by production monitoring every few seconds).
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily

OWN_PACKAGES = ("chains", "runtime", "transport", "nodes", "benchmarks")
_loop: asyncio.AbstractEventLoop | None = None
_registered = False


def note_loop() -> None:
    """Remember the serving event loop (called from a node, on the loop), so that a
    scrape answered from a worker thread can still count the loop's tasks."""
    global _loop
    _loop = asyncio.get_running_loop()


def count_tasks() -> int:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = _loop
    if loop is None:
        return -1
    for _ in range(5):  # another thread may change the set while we count
        try:
            return len(asyncio.all_tasks(loop))
        except RuntimeError:
            continue
    return -1


def own_objects() -> Counter[str]:
    """Live gc-tracked instances of our own classes, by ``module.Class``, after a full
    collection: a session's objects that only wait for the cycle collector are
    garbage, not state left behind (they would be freed at the next gen-2 pass)."""
    gc.collect()
    counts: Counter[str] = Counter()
    for o in gc.get_objects():
        mod = getattr(type(o), "__module__", "")
        if isinstance(mod, str) and mod.partition(".")[0] in OWN_PACKAGES and not isinstance(o, type):
            counts[f"{mod}.{type(o).__qualname__}"] += 1
    return counts


class CensusCollector:
    """A prometheus_client collector: the census at each scrape."""

    def collect(self) -> Iterator[Any]:
        from runtime.metrics import REGISTRY

        tasks = GaugeMetricFamily("chains_census_asyncio_tasks", "Tasks on the serving loop")
        tasks.add_metric([], count_tasks())
        threads = GaugeMetricFamily("chains_census_threads", "Python threads")
        threads.add_metric([], threading.active_count())
        objects = GaugeMetricFamily(
            "chains_census_objects", "Live instances of chains' own classes", labels=["type"]
        )
        for name, n in sorted(own_objects().items()):
            objects.add_metric([name], n)
        series = GaugeMetricFamily("chains_census_series", "Metric series exposed (census excluded)")
        n = 0
        for collector in list(REGISTRY._collector_to_names):
            if isinstance(collector, CensusCollector):
                continue
            for fam in collector.collect():
                n += len(fam.samples)
        series.add_metric([], n)
        yield from (tasks, threads, objects, series)


def register() -> None:
    """Add the census to /metrics (once per process)."""
    global _registered
    if _registered:
        return
    from runtime.metrics import REGISTRY

    REGISTRY.register(CensusCollector())
    _registered = True


def parse(text: str) -> dict[str, Any]:
    """The census (and the chains' session gauges) out of a /metrics text."""
    out: dict[str, Any] = {"objects": {}}
    for line in text.splitlines():
        if not line.startswith("chains_"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        if name == "chains_census_asyncio_tasks":
            out["tasks"] = int(v)
        elif name == "chains_census_threads":
            out["threads"] = int(v)
        elif name == "chains_census_series":
            out["series"] = int(v)
        elif name.startswith("chains_census_objects{"):
            out["objects"][name.partition('type="')[2].rstrip('"}')] = int(v)
        elif name.startswith("chains_sessions_active{"):
            out["sessions_active"] = out.get("sessions_active", 0) + int(v)
    return out


__all__ = ["CensusCollector", "count_tasks", "note_loop", "own_objects", "parse", "register"]
