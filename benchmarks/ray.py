"""Ray backend: what a stage on a Ray actor costs per frame, how a batched stage scales
with replicas on the cluster, and how long a killed replica takes to serve again.

    python benchmarks/ray.py --json out/ray.json --plot out/ray.png

It starts its own 3-node cluster on this machine (``ray.cluster_utils.Cluster``, 1 CPU
each), so it needs ``chains[ray]`` and nothing else running.

1. ``hop_us``: p50 round trip of one item through a one-node chain (a long session, an
   item at a time): the node in process, behind our remote link (``chains serve``
   process), on a Ray actor behind our link (``--ray``), and the same node called per
   item as a plain Ray actor method and through a Ray Serve deployment handle.
2. ``replicas``: items/s through a batched stage (sleep-based cost: 50 ms per batch of
   up to 16, so the 2 cores are not the limit) with 1, 2 and 4 replicas (actors).
3. ``recovery_s``: from ``ray.kill(actor, no_restart=False)`` of one of 2 replicas to
   that replica serving again (Ray restarts the actor, the driver relinks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on the path and would shadow the ray package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CHAINS_TEST_RAY_BATCH_S", "0.05")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every node on 127.0.0.1

import ray  # noqa: E402

from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json  # noqa: E402
from runtime.engine import Runtime  # noqa: E402
from tests.ray_fixtures import batched_chain, hop_chain  # noqa: E402
from transport.remote import with_remotes  # noqa: E402
from transport.remote.ray import with_ray  # noqa: E402

FIXTURES = str(ROOT / "tests" / "ray_fixtures.py")


# --- 1. the cost of a hop ----------------------------------------------------------------------
async def session_hop(chain: Any, n: int) -> list[float]:
    """Round trips of ``n`` items, one at a time, through one long session."""
    lats = []
    async with Runtime(chain) as rt, rt.session() as sess:
        for i in range(n // 10):  # warm up
            await sess.send(i)
            await sess.receive()
        for i in range(n):
            t0 = time.perf_counter()
            await sess.send(i)
            await sess.receive()
            lats.append(time.perf_counter() - t0)
        sess.close_inputs()
    return lats


@ray.remote(num_cpus=0)
class PlainActor:
    """The same stage's work (it returns its item), called per item as a Ray actor method."""

    async def call(self, x: int) -> int:
        return x


async def ray_call_hop(n: int) -> list[float]:
    actor = PlainActor.options(resources={"node_b": 0.01}).remote()
    await actor.call.remote(0)
    lats = []
    for i in range(n // 10 + n):
        t0 = time.perf_counter()
        await actor.call.remote(i)
        if i >= n // 10:
            lats.append(time.perf_counter() - t0)
    ray.kill(actor)
    return lats


async def serve_hop(n: int) -> list[float]:
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {"node_b": 0.01}})
    class HopDeployment:
        async def __call__(self, x: int) -> int:
            return x

    serve.start(proxy_location="Disabled")
    handle = serve.run(HopDeployment.bind(), name="hop", route_prefix=None)
    lats = []
    try:
        for i in range(n // 10 + n):
            t0 = time.perf_counter()
            await handle.remote(i)
            if i >= n // 10:
                lats.append(time.perf_counter() - t0)
    finally:
        serve.shutdown()
    return lats


class NodeProcess:
    """``chains serve tests/ray_fixtures.py:hop_chain --only hop`` in a second process."""

    def __init__(self, chain: str, node: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chains", "serve", f"{FIXTURES}:{chain}", "--only", node, "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = line[line.index("ws://") :].split()[0]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def hop_costs(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    out["in_process"] = percentile(await session_hop(hop_chain, n), 0.5)
    node = NodeProcess("hop_chain", "hop")
    try:
        out["remote_link"] = percentile(await session_hop(with_remotes(hop_chain, {"hop": node.url}), n), 0.5)
    finally:
        node.close()
    out["ray_actor"] = percentile(await session_hop(_placed(hop_chain, "node_b"), n), 0.5)
    out["ray_call"] = percentile(await ray_call_hop(n), 0.5)
    out["serve_handle"] = percentile(await serve_hop(n), 0.5)
    return {k: v * 1e6 for k, v in out.items()}


def _variant(chain: Any, **options: Any) -> Any:
    """``chain`` on Ray with its node's options changed (the actors still load the file)."""
    g = chain.graph
    nodes = []
    for n in g.nodes:
        opts = msgspec.structs.replace(n.spec.options, **options)
        nodes.append(dataclasses.replace(n, spec=dataclasses.replace(n.spec, options=opts)))

    class Variant:
        original = chain
        name = chain.name
        budget_ms = chain.budget_ms
        graph = dataclasses.replace(g, nodes=nodes)

    return with_ray(Variant(), target=f"{FIXTURES}:{chain.name}")


def _placed(chain: Any, resource: str) -> Any:
    return _variant(chain, resources={resource: 0.01})


# --- 2. replicas -------------------------------------------------------------------------------------
async def throughput(replicas: int, seconds: float, sessions: int = 128) -> float:
    chain = _variant(batched_chain, replicas=replicas, resources={"worker": 0.01})
    done = 0
    async with Runtime(chain) as rt:
        stop = False

        async def client() -> None:
            nonlocal done
            async with rt.session() as sess:

                async def feed() -> None:
                    i = 0
                    while not stop:
                        await sess.send(i)
                        i += 1
                    sess.close_inputs()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(feed)
                    async for o in sess:
                        if o.name == "output":
                            done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(sessions):
                tg.start_soon(client)
            await anyio.sleep(1.0)  # warm up: batches fill, the cost model learns
            start_done, t0 = done, time.perf_counter()
            await anyio.sleep(seconds)
            rate = (done - start_done) / (time.perf_counter() - t0)
            stop = True
    return rate


# --- 3. recovery --------------------------------------------------------------------------------------
async def recovery() -> float:
    chain = _variant(batched_chain, replicas=2, resources={"worker": 0.01})
    async with Runtime(chain) as rt:
        rs = rt.stages[0].replicas
        victim = rs.ready[0]
        t0 = time.perf_counter()
        ray.kill(rs.provider.actors[victim.id], no_restart=False)
        while victim.state == "ready":  # the loss is seen when the link drops
            await asyncio.sleep(0.001)
        while victim.state != "ready":
            await asyncio.sleep(0.01)
        return time.perf_counter() - t0


def plot(res: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    hops = res["hop_us"]
    a.bar(list(hops), list(hops.values()), color=["#888", "#4a7", "#27c", "#c52", "#a5c"])
    a.set_ylabel("p50 round trip per item (µs)")
    a.set_title("one item through one node")
    a.tick_params(axis="x", rotation=20)
    reps = res["replicas"]
    b.plot([int(k) for k in reps], list(reps.values()), "o-")
    b.set_xlabel("replicas (Ray actors)")
    b.set_ylabel("items/s")
    b.set_title(f"batched stage (50 ms per batch); recovery {res['recovery_s']:.2f} s")
    save_figure(fig, path)


async def main_async(quick: bool) -> dict[str, Any]:
    n = 300 if quick else 2000
    seconds = 2.0 if quick else 5.0
    hop_us = await hop_costs(n)
    print("hop_us", {k: round(v) for k, v in hop_us.items()}, flush=True)
    reps = {str(k): await throughput(k, seconds) for k in (1, 2, 4)}
    print("replicas", {k: round(v) for k, v in reps.items()}, flush=True)
    rec = await recovery()
    print("recovery_s", round(rec, 3), flush=True)
    return {"hop_us": hop_us, "replicas": reps, "recovery_s": rec}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}})
    cluster.add_node(num_cpus=1, resources={"node_b": 1, "worker": 4})
    cluster.add_node(num_cpus=1, resources={"node_c": 1, "worker": 4})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="chains", log_to_driver=False)
    try:
        res = anyio.run(main_async, args.quick)
    finally:
        ray.shutdown()
        cluster.shutdown()
    write_json(args.json, res)
    if args.json is not None:
        meta = args.json.with_suffix(".meta.json")
        write_json(meta, {"machine": machine(), "quick": args.quick})
    if args.plot is not None:
        plot(res, args.plot)


if __name__ == "__main__":
    main()
