"""The Ray backend on a real 3-node Ray cluster on this machine (``ray.cluster_utils``).

One cluster for the module (3 nodes of 1 CPU, custom resources ``node_a``/``node_b``/
``node_c`` and ``worker`` on the two non-head nodes). The same chain file gives the same
outputs in process, with a remote stage and on the cluster; stages land where their
resources say; killing a replica's actor or removing a whole node loses nothing
silently and service comes back without restarting the driver.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

ray = pytest.importorskip("ray")

import chains  # noqa: E402
from chains import Text  # noqa: E402
from runtime.engine import Runtime  # noqa: E402
from tests.ray_fixtures import live, local_cluster, pipeline  # noqa: E402
from tests.transport_fixtures import node_server  # noqa: E402
from transport.remote import with_remotes  # noqa: E402

pytestmark = pytest.mark.ray
FIXTURES = "tests/ray_fixtures.py"
ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 90  # not a speed assertion: a failure to recover must fail, not hang


@pytest.fixture(scope="module")
def cluster() -> Any:
    with local_cluster() as c:
        yield c


async def outputs_by_name(chain: Any, *inputs: Any, **running: Any) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = defaultdict(list)
    async with chains.running(chain, **running):
        async for o in chains.stream(chain, *inputs):
            got[o.name].append(o.value)
    return dict(got)


def node_of_resource(name: str) -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(name))


async def test_the_same_chain_gives_the_same_outputs_everywhere(cluster: Any):
    doc = Text(text="hello big world skip boom end and more words to batch")
    local = await outputs_by_name(pipeline, doc)
    with node_server(f"{FIXTURES}:pipeline", "measure") as url:
        remote = await outputs_by_name(with_remotes(pipeline, {"measure": url}), doc)
    on_ray = await outputs_by_name(pipeline, doc, ray=cluster.address)
    assert local["error"][0].code == "node_error" and "boom" in local["error"][0].message
    assert Text(text="SKIP:4") not in local["output"]
    assert len(local["output"]) == 9  # 11 words, less the skipped and the failed one
    assert remote == local
    assert on_ray == local


async def test_stages_land_where_their_resources_say(cluster: Any):
    async with chains.running(pipeline, ray=cluster.address) as rt:
        assert await chains.call(pipeline, Text(text="a bb")) == [Text(text="A:1"), Text(text="BB:2")]
        placed = {}
        for st in rt.stages:
            (rid, actor), = st.replicas.provider.actors.items()
            assert [r.id for r in st.replicas.replicas] == [rid]
            placed[st.name] = (await actor.where.remote())["node_id"]
    assert placed == {
        "split_words": node_of_resource("node_a"),
        "measure": node_of_resource("node_b"),
        "label": node_of_resource("node_c"),
    }


def test_the_cli_runs_the_same_file_on_the_cluster(cluster: Any, tmp_path: Path):
    """``chains run FILE --ray ADDRESS --input doc.txt``: another driver process, same outputs."""
    doc = tmp_path / "doc.txt"
    doc.write_text("hello big world skip boom end\n")

    def run(*extra: str) -> tuple[int, list[str]]:
        cmd = ["chains", "run", f"{FIXTURES}:pipeline", "--input", str(doc), "--no-verify", *extra]
        p = subprocess.run(
            [sys.executable, "-m", *cmd], capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        lines = (p.stdout + p.stderr).splitlines()
        return p.returncode, [x for x in lines if x.startswith(("output:", "error in node"))]

    local = run()
    assert local[1][:2] == ["output: HELLO:5", "output: BIG:3"] and any("boom" in x for x in local[1])
    assert run("--ray", cluster.address) == local


async def _live_sessions(rt: Runtime, n_sessions: int, items: int, during: Any) -> list[dict[str, Any]]:
    """``n_sessions`` sessions each streaming ``items`` numbers (every 10 ms) and reading
    every output; ``during(rt, sessions)`` runs once all have started."""
    results: list[dict[str, Any]] = []
    started = anyio.Event()
    opened: list[Any] = []

    async def one(i: int) -> None:
        async with rt.session() as sess:
            res = {"id": sess.id, "sent": 0, "outputs": [], "errors": []}
            results.append(res)
            opened.append(sess)
            if len(opened) == n_sessions:
                started.set()

            async def feed() -> None:
                for x in range(items):
                    await sess.send(x)
                    res["sent"] += 1
                    await anyio.sleep(0.01)
                sess.close_inputs()

            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                async for o in sess:
                    (res["errors"] if o.name == "error" else res["outputs"]).append(o.value)

    async with anyio.create_task_group() as tg:
        for i in range(n_sessions):
            tg.start_soon(one, i)
        await started.wait()
        await during(rt, opened)
    return results


async def test_killing_a_replica_loses_nothing_silently(cluster: Any):
    rs_box: dict[str, Any] = {}

    async def kill_one(rt: Runtime, sessions: list[Any]) -> None:
        await anyio.sleep(0.15)
        rs = rt.stages[0].replicas
        victim = rs.ready[0]
        rs_box["pinned"] = {s.id: rs.router.pinned(s.id) for s in sessions}
        rs_box["victim"] = victim
        ray.kill(rs.provider.actors[victim.id], no_restart=False)

    with anyio.fail_after(HANG_GUARD_S):
        async with chains.running(live, ray=cluster.address) as rt:
            rs = rt.stages[0].replicas
            assert len(rs.ready) == 2
            results = await _live_sessions(rt, 50, 40, kill_one)
            # Service comes back: Ray restarts the actor, the set relinks it.
            while len(rs.ready) < 2:
                await anyio.sleep(0.05)
            after = await _live_sessions(rt, 10, 5, lambda rt, s: anyio.sleep(0))
    pinned, victim = rs_box["pinned"], rs_box["victim"]
    on_victim = {sid for sid, r in pinned.items() if r is victim}
    assert on_victim and len(on_victim) < len(results)
    lost = 0
    for res in results:
        # Every accepted input ends as an output or an explicit error.
        assert len(res["outputs"]) + len(res["errors"]) == res["sent"] == 40
        assert len(set(res["outputs"])) == len(res["outputs"])
        assert set(res["outputs"]) <= set(range(1, 41))
        if res["id"] not in on_victim:
            assert res["errors"] == [], res  # sessions on the other replica lose nothing
        for e in res["errors"]:
            assert e.code in ("replica_lost", "no_replica"), e
        lost += len(res["errors"])
    assert lost >= 1  # the killed replica had items in flight: they failed, no hang
    assert rs.rebuilds >= 1
    assert all(r["errors"] == [] and len(r["outputs"]) == 5 for r in after)


@pytest.mark.models
def test_the_enrich_demo_gives_the_same_outputs_everywhere(cluster: Any):
    """The real demo (spaCy NER and MiniLM embeddings, offline): in process, with the
    embedding stage in another process, and on the cluster. Entities match exactly; the
    embeddings to float rounding (another process may sum in another thread order)."""
    from chains.loader import load_chain

    enrich = load_chain("demos/enrich.py")
    doc = Text(text="Ada Lovelace met Charles Babbage in London in 1833.")

    async def one(chain: Any, **running: Any) -> Any:
        async with chains.running(chain, **running):
            return await chains.call(enrich, doc)

    # A plain sync test, like the other model tests: the models' loaders leave helper
    # threads (tqdm's monitor) that the async tests' leak check would report.
    local = anyio.run(one, enrich)
    with node_server("demos/enrich.py", "Embed") as url:
        remote = anyio.run(one, with_remotes(enrich, {"Embed": url}))
    on_ray = anyio.run(functools.partial(one, enrich, ray=cluster.address))
    assert {e.text for e in local.entities} >= {"Ada Lovelace", "Charles Babbage", "London"}
    for other in (remote, on_ray):
        assert other.text == local.text and other.entities == local.entities
        assert len(other.embedding) == len(local.embedding)
        assert max(abs(a - b) for a, b in zip(other.embedding, local.embedding, strict=True)) < 1e-4


async def test_removing_a_node_loses_nothing_silently(cluster: Any):
    """The two ``worker`` nodes each host one replica; the whole node of one goes away
    (its actor with it, so Ray restarts it on a node added in its place)."""
    with anyio.fail_after(HANG_GUARD_S):
        async with chains.running(live, ray=cluster.address) as rt:
            rs = rt.stages[0].replicas
            where = {r.id: (await rs.provider.actors[r.id].where.remote())["node_id"] for r in rs.ready}
            assert len(set(where.values())) == 2  # spread over both worker nodes
            gone = next(n for n in cluster.worker_nodes if n.node_id == next(iter(where.values())))
            box: dict[str, Any] = {}

            async def remove(rt: Runtime, sessions: list[Any]) -> None:
                await anyio.sleep(0.15)
                box["node"] = cluster.add_node(num_cpus=1, resources={"worker": 1})
                cluster.remove_node(gone)

            results = await _live_sessions(rt, 20, 40, remove)
            while len(rs.ready) < 2:
                await anyio.sleep(0.05)
            after = await _live_sessions(rt, 10, 5, lambda rt, s: anyio.sleep(0))
    for res in results:
        assert len(res["outputs"]) + len(res["errors"]) == res["sent"] == 40
        for e in res["errors"]:
            assert e.code in ("replica_lost", "no_replica"), e
    assert sum(len(r["errors"]) for r in results) >= 1
    assert all(r["errors"] == [] and len(r["outputs"]) == 5 for r in after)
