"""The soak's gates (benchmarks/soak.py): the quick run end to end against a real
``chains run`` process, and the gates themselves on made-up readings, so that a gate
that could never fail would show here. No figure is asserted: only the gates' verdicts
and the JSON's shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

import chains
from benchmarks import census
from benchmarks.soakgates import check, rss_gate, rss_ratio
from benchmarks.soakserver import Snapshot
from runtime.metrics import prometheus_text

ROOT = Path(__file__).resolve().parents[1]


def _snap(**kw: object) -> Snapshot:
    base = {
        "t": 0.0, "rss_kib": 60_000.0, "cpu_s": 1.0, "threads": 3, "fds": 7, "sockets": 1,
        "tasks": 11, "series": 100, "sessions_active": 0, "objects": {"runtime.stage.Stage": 5},
    }  # fmt: skip
    return Snapshot(**{**base, **kw})  # type: ignore[arg-type]


def test_gates_pass_on_the_baseline_and_fail_on_each_kind_of_leftover() -> None:
    base = _snap()
    assert all(v[2] for v in check(_snap(), base).values())
    leftovers = {
        "tasks": _snap(tasks=12),
        "fds": _snap(fds=8),
        "sockets": _snap(sockets=2),
        "threads": _snap(threads=4),
        "series": _snap(series=101),
        "sessions_active": _snap(sessions_active=1),
        "objects_grown": _snap(objects={"runtime.stage.Stage": 5, "runtime.session.Session": 1}),
    }
    for gate, snap in leftovers.items():
        failed = [k for k, v in check(snap, base).items() if not v[2]]
        assert failed == [gate], (gate, failed)
    assert check(_snap(threads=2), base)["threads"][2]  # an idle pool may shrink


def test_rss_gate_holds_later_waves_to_five_percent_of_the_first() -> None:
    mib = 1024.0
    assert rss_gate([0, 40 * mib, 40.5 * mib, 41 * mib])  # 0.5 MiB a wave: under an arena
    assert rss_gate([0, 100 * mib, 104 * mib])  # 4% of the first wave's growth
    assert not rss_gate([0, 100 * mib, 106 * mib])  # 6%
    assert not rss_gate([0, 40 * mib, 42.5 * mib, 45 * mib, 47.5 * mib])  # 2.5 MiB every wave: a leak
    # one wave's allocator step that later waves give back is not a leak (seen in a run)
    steps = [0, 36.5 * mib, 38.7 * mib, 38.2 * mib, 37.9 * mib, 36.4 * mib]
    assert rss_gate(steps) and rss_ratio(steps) == 0.0
    assert abs(rss_ratio([0, 100 * mib, 103 * mib, 106 * mib]) - 0.03) < 1e-9


async def test_census_reads_back_through_metrics_text() -> None:
    @chains.node
    def double(x: int) -> int:
        return 2 * x

    @chains.chain
    def twice(x: int):  # type: ignore[no-untyped-def]
        return double(x)

    reg = CollectorRegistry()  # not the global one: other tests read /metrics without the census
    reg.register(census.CensusCollector())
    async with chains.Runtime(twice) as rt, rt.session() as sess:
        got = census.parse(generate_latest(reg).decode() + prometheus_text().decode())
        assert got["tasks"] > 0 and got["threads"] >= 1
        assert got["objects"].get("runtime.session.Session", 0) >= 1
        assert got["sessions_active"] >= 1
        assert got["series"] > 0
        sess.close_inputs()


def test_quick_soak_passes_its_gates_and_writes_the_summary(tmp_path: Path) -> None:
    out, details = tmp_path / "soak.json", tmp_path / "details.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/soak.py", "--quick", "--json", str(out), "--details", str(details)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert set(summary) == {"density", "soak", "leaks"}
    density_keys = {"sessions", "ttfa_p95_ms", "cpu_ms_per_session_s", "rss_kib_per_session"}
    assert set(summary["density"]) == density_keys
    assert set(summary["soak"]) == {"sessions", "ttfa_ms", "lost"}
    assert set(summary["soak"]["ttfa_ms"]) == {"p50", "p95", "p99"}
    assert set(summary["leaks"]) == {"tasks", "threads", "fds", "rss_growth_ratio"}
    assert summary["soak"]["lost"] == 0
    assert summary["leaks"]["tasks"] == 0 and summary["leaks"]["fds"] == 0
    assert summary["leaks"]["threads"] <= 0
    d = json.loads(details.read_text())
    waves = d["soak"]["waves"]
    assert all(w["gates_passed"] for w in waves), [w["gates_failed"] for w in waves]
    assert sum(w["faulted"] for w in waves) >= 2  # the quick run's callers played faults too
    assert summary["soak"]["sessions"] == sum(w["sessions"] for w in waves)


def test_a_soak_caller_speaks_openai_realtime_to_the_fake_voice_chain() -> None:
    """The soak's second protocol: a caller through ``/v1/realtime`` (base64 PCM16 at
    24 kHz, server VAD) gets its turn answered and ends cleanly by closing."""
    import anyio

    from benchmarks.soakclient import RealtimeClient, Script, Speech, call
    from chains.audio import read_wav, resample_pcm
    from chains.loader import load_chain
    from transport.server import serve

    chain = load_chain(str(ROOT / "benchmarks/soak_chains/fakevoice.py"))
    pcm, rate = read_wav(ROOT / "demos/assets/question.wav")
    speech = Speech.from_pcm(resample_pcm(pcm, rate, RealtimeClient.RATE), RealtimeClient.RATE)

    async def one() -> object:
        async with serve(chain, port=0) as srv:
            client = RealtimeClient(f"http://127.0.0.1:{srv.port}", chain.name)
            return await call(client, speech, Script(turns=1))

    res = anyio.run(one)
    assert res.done and res.failure is None, res  # type: ignore[attr-defined]
    turns = res.turns  # type: ignore[attr-defined]
    assert [t.outcome for t in turns] == ["answered"]
    assert all(t.audio_s > 0.5 for t in turns)
