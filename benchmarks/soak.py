"""Sessions at scale: voice-session density, a churn soak with leak gates, and faults
under load, against ``chains run CHAIN`` in its own process.

    flock /tmp/chains-heavy.lock python benchmarks/soak.py --json out/soak.json --plot out/soak.png
    python benchmarks/soak.py --quick --json /tmp/soak.json      # the gates in a minute (tests/test_soak.py)
    python benchmarks/soak.py --mode soak --faults               # churn with dropping and stalling callers
    python benchmarks/soak.py --chain demos/voice.py --mode density --levels 1,2,4   # the real chain

Callers (benchmarks/soakclient.py) stream question.wav at real-time pace over real
websockets and read the reply at real-time pace; the server's CPU, RSS, threads,
fds and sockets are read with psutil, its asyncio tasks and live objects through
/metrics (benchmarks/census.py, which the soak's chain files register).

- density: callers arrive (Poisson) until ``L`` are live, for each level L; after a
  window the level passes when TTFA p95 is within the budget and a probe caller's
  median TTFA is within 10% of its idle figure. Reported at the largest passing level:
  CPU ms per session-second and RSS KiB per session.
- soak: C live callers, each replaced as it ends, in ``--waves`` waves until N have
  completed; after each wave drains the gates read the server: tasks, fds, sockets
  back to the baseline (the end of the first wave: lazily built pools are not leaks),
  threads not above it, no class of chains' own objects more numerous, no more
  metric series, and RSS growth of each later wave < 5% of the first wave's.
  TTFA p50/p95/p99 per wave (10 waves: per 10% of the run). ``--faults``: every
  ``--fault-every``-th caller drops its socket or stalls its reading at the first reply
  audio; the others must lose nothing.

``--json`` writes exactly the issue's summary; ``--details`` everything; ``--plot``
the TTFA percentiles over the run, RSS over the run and the density curve.
Exit status 1 when a gate fails or a caller was lost.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/soak.py`: its folder would shadow modules
    _here = str(Path(__file__).resolve().parent)  # (benchmarks/http.py, transport.py: the stdlib's, ours)
    sys.path[:] = [str(Path(_here).parent)] + [p for p in sys.path if p not in ("", _here)]

import json
import math
import os
import resource
import subprocess
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import anyio

from benchmarks._common import machine, parser, percentile, write_json
from benchmarks.soakclient import RealtimeClient, Result, Script, Speech, call
from benchmarks.soakgates import gate_wave, rss_gate, rss_ratio
from benchmarks.soakload import Load
from benchmarks.soakserver import ServerProcess, Snapshot
from chains.audio import read_wav, resample_pcm
from chains.loop import loop_factory

ROOT = Path(__file__).resolve().parents[1]
QUESTION = ROOT / "demos" / "assets" / "question.wav"
FAKE = "benchmarks/soak_chains/fakevoice.py"


def _ttfas(turns: list[Any], missing: float = float("inf")) -> list[float]:
    return [t.ttfa_ms if t.ttfa_ms is not None else missing for t in turns]


def _pcts(vals: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 (None without a value: JSON has no NaN; inf is a turn never answered)."""
    out = {f"p{q}": percentile(vals, q / 100) if vals else None for q in (50, 95, 99)}
    return {k: round(v, 1) if v is not None and math.isfinite(v) else None for k, v in out.items()}


def _answered(turns: list[Any]) -> list[float]:
    return [t.ttfa_ms for t in turns if t.ttfa_ms is not None]


def cpu_flags() -> dict[str, str]:
    """lscpu's model name and flags: figures are only comparable on the same CPU."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return {}
    keep = ("Model name", "CPU(s)", "Flags")
    return {
        k.strip(): v.strip()
        for k, _, v in (ln.partition(":") for ln in out.splitlines())
        if k.strip() in keep
    }


async def _snap(srv: ServerProcess, inside: bool = True) -> Snapshot:
    return await anyio.to_thread.run_sync(srv.snapshot, inside)


def _breakdown(results: list[Result], t0: float, t1: float) -> dict[str, float]:
    """The server's per-turn latency breakdown (ms after the end of speech: end of turn,
    transcript, first token, first audio), p50 over the turns reported in [t0, t1]:
    the stage whose figure grows with load is what saturates first."""
    rows = [b for r in results for t, b in r.breakdowns if t0 <= t <= t1]
    keys = sorted({k for b in rows for k in b})
    return {k: round(percentile([b[k] for b in rows if k in b], 0.5), 1) for k in keys}


def _protocol(args: Any, srv: ServerProcess) -> dict[str, str]:
    """The callers' protocol, and the chain's name where the protocol names it."""
    if args.protocol == "realtime":
        return {"protocol": "realtime", "model": srv.chain_name()}
    return {"protocol": args.protocol}


# --- density ----------------------------------------------------------------------------
async def _probe(load: Load, turns: int) -> Result:
    """One caller beside the load (vLLM bench's probe): its TTFA against its idle one."""
    res = Result(started=time.monotonic())
    client = load.client()
    await call(client, load.speech, Script(**{**load.script.__dict__, "turns": turns}), None, res)
    return res


async def density(args: Any, speech: Speech, script: Script, env: dict[str, str]) -> dict[str, Any]:
    levels = [int(x) for x in args.levels.split(",")]
    budget = args.budget_ms
    rows: list[dict[str, Any]] = []
    with ServerProcess(args.chain, max_sessions=max(levels) * 2 + 16, env=env) as srv:
        load = Load(srv.url, speech, script, out_rate=args.out_rate, **_protocol(args, srv))
        if not args.quick:
            await _probe(load, 1)  # warm the server's paths once
        idle = await _probe(load, args.probe_turns)
        idle_ms = percentile(_ttfas(idle.turns), 0.5)
        idle_breakdown = _breakdown([idle], 0.0, time.monotonic())
        idle_snap = await _snap(srv, inside=False)
        print(
            f"density: idle probe TTFA {idle_ms:.0f} ms, RSS {idle_snap.rss_kib / 1024:.1f} MiB", flush=True
        )
        level = {"n": 0}
        stop = {"v": False}
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                load.hold,
                tg,
                lambda: level["n"],
                lambda: max(1.0, level["n"] / args.ramp_s),
                lambda: stop["v"],
            )
            for n in levels:
                level["n"] = n
                with anyio.move_on_after(args.ramp_s * 4 + 30):
                    while load.active < n:
                        await anyio.sleep(0.2)
                s0, t0, c0 = await _snap(srv, inside=False), time.monotonic(), time.process_time()
                seen: list[int] = []

                async def count_live(until: float, seen: list[int] = seen) -> None:
                    while time.monotonic() < until:
                        seen.append(load.active)
                        await anyio.sleep(0.5)

                tg.start_soon(count_live, t0 + args.window_s)
                probe = _ttfas((await _probe(load, args.probe_turns)).turns)
                await anyio.sleep(max(0.0, t0 + args.window_s - time.monotonic()))
                s1, t1, c1 = await _snap(srv, inside=False), time.monotonic(), time.process_time()
                turns = [
                    t
                    for r in load.results
                    for t in r.turns
                    if t0 <= t.speech_end <= t1 - budget / 1000 and t.speech_end
                ]
                vals = _ttfas(turns)
                live = round(sum(seen) / max(1, len(seen)))  # the mean over the window
                row = {
                    "level": n,
                    "live": live,
                    "turns": len(turns),
                    "ttfa_ms": _pcts(vals),
                    "probe_ms": round(percentile(probe, 0.5), 1),
                    "idle_probe_ms": round(idle_ms, 1),
                    "cpu_ms_per_session_s": round(
                        1000 * (s1.cpu_s - s0.cpu_s) / (max(1, live) * (t1 - t0)), 3
                    ),
                    "server_cores": round((s1.cpu_s - s0.cpu_s) / (t1 - t0), 3),
                    "caller_cores": round((c1 - c0) / (t1 - t0), 3),  # the load generator, same machine
                    "rss_kib_per_session": round((s1.rss_kib - idle_snap.rss_kib) / max(1, live), 1),
                    "rss_mib": round(s1.rss_kib / 1024, 1),
                    "breakdown_p50_ms": _breakdown(load.results, t0, t1),
                    "caller_send_lag_p99_ms": round(
                        1000 * percentile([r.send_lag_max for r in load.results[-max(1, live) :]], 0.99), 1
                    ),
                    "lost": sum(r.lost for r in load.results if r.ended),
                }
                row["pass"] = bool(
                    turns and percentile(vals, 0.95) <= budget and row["probe_ms"] <= 1.1 * idle_ms
                )
                rows.append(row)
                print(f"density: {json.dumps(row)}", flush=True)
                if not row["pass"] and not args.keep_going:
                    break
            stop["v"] = True
        passing = []  # the levels up to the first that failed
        for r in rows:
            if not r["pass"]:
                break
            passing.append(r)
        best = passing[-1] if passing else rows[0]
    return {
        "levels": rows,
        "frame_ms": args.frame_ms,
        "speedup": args.speedup,
        "idle_probe_ms": round(idle_ms, 1),
        "idle_breakdown_p50_ms": idle_breakdown,
        "summary": {
            # the live callers measured over the window (a level's mean falls ~1 % short of
            # its target while callers are replaced), not the level asked for
            "sessions": best["live"] if passing else 0,
            "ttfa_p95_ms": best["ttfa_ms"]["p95"],
            "cpu_ms_per_session_s": best["cpu_ms_per_session_s"],
            "rss_kib_per_session": best["rss_kib_per_session"],
        },
    }


# --- churn soak -------------------------------------------------------------------------
async def _kill_engine(srv: ServerProcess, after_s: float, kills: list[dict[str, Any]]) -> None:
    """The engine-death fault: SIGKILL every child process of the server (vLLM's engine
    core runs in one) ``after_s`` seconds in; the runtime must fail the items in flight
    as errors and rebuild the replica."""
    await anyio.sleep(after_s)
    victims = srv.children()
    for p in victims:
        p.kill()
    kills.append({"t": round(time.monotonic(), 2), "killed": [p.pid for p in victims]})
    print(f"soak: killed the engine processes {[p.pid for p in victims]}", flush=True)


async def churn(args: Any, speech: Speech, script: Script, env: dict[str, str]) -> dict[str, Any]:
    per_wave = max(1, args.sessions // args.waves)
    waves: list[dict[str, Any]] = []
    rss: list[tuple[float, float, int]] = []
    kills: list[dict[str, Any]] = []
    with ServerProcess(args.chain, max_sessions=args.concurrency * 2 + 16, env=env) as srv:
        load = Load(
            srv.url,
            speech,
            script,
            out_rate=args.out_rate,
            fault_every=args.fault_every if args.faults else 0,
            **_protocol(args, srv),
        )
        cold = await _snap(srv)
        t_start = time.monotonic()
        snaps = [cold]
        base: Snapshot | None = None
        async with anyio.create_task_group() as outer:

            async def sample() -> None:
                while True:
                    s = await _snap(srv, inside=False)
                    rss.append((round(s.t - t_start, 2), round(s.rss_kib / 1024, 2), load.active))
                    await anyio.sleep(args.sample_s)

            outer.start_soon(sample)
            if args.kill_engine_after is not None:
                outer.start_soon(_kill_engine, srv, args.kill_engine_after, kills)
            for w in range(args.waves):
                first = len(load.results)
                started = load.started

                def wave_started(started: int = started) -> bool:
                    return load.started - started >= per_wave

                async with anyio.create_task_group() as tg:
                    await load.hold(
                        tg,
                        lambda: args.concurrency,
                        lambda: args.concurrency / args.ramp_s,
                        wave_started,
                    )
                mine = load.results[first:]
                await anyio.sleep(args.settle_s)
                snap, report = await gate_wave(srv, base, cold, retry_s=args.settle_s * 4)
                snaps.append(snap)
                if base is None:
                    base = snap
                plain = [r for r in mine if r.fault is None]
                turns = [t for r in plain for t in r.turns]
                row = {
                    "wave": w + 1,
                    "sessions": len(mine),
                    "faulted": len(mine) - len(plain),
                    "lost": sum(r.lost for r in mine),
                    "errors": sum(t.outcome == "error" for r in plain for t in r.turns),
                    "ttfa_ms": _pcts(_answered(turns)),  # errors are counted, not timed
                    "error_codes": dict(Counter(t.error for t in turns if t.outcome == "error")),
                    "fault_outcomes": sorted({f"{r.fault}: {r.failure or 'done'}" for r in mine if r.fault}),
                    "caller_send_lag_max_ms": round(
                        1000 * max((r.send_lag_max for r in mine), default=0.0), 1
                    ),
                    "snapshot": snap.brief(),
                    **report,
                }
                waves.append(row)
                print(f"soak: {json.dumps({k: v for k, v in row.items() if k != 'snapshot'})}", flush=True)
            outer.cancel_scope.cancel()
    rss_kib = [s.rss_kib for s in snaps]
    ratio, rss_ok = rss_ratio(rss_kib), rss_gate(rss_kib)
    plain = [r for r in load.results if r.fault is None]
    last = snaps[-1]
    assert base is not None
    return {
        "waves": waves,
        "rss": rss,
        "engine_kills": kills,
        "cold": cold.brief(),
        "baseline": base.brief(),
        "rss_gate_passed": rss_ok,
        "gates_passed": all(w["gates_passed"] for w in waves) and rss_ok,
        "summary": {
            "sessions": sum(1 for r in load.results if r.ended),
            "ttfa_ms": _pcts(_answered([t for r in plain for t in r.turns])),
            "lost": sum(r.lost for r in load.results),
        },
        "leaks": {
            "tasks": last.tasks - base.tasks,
            "threads": last.threads - base.threads,
            "fds": last.fds - base.fds,
            "rss_growth_ratio": round(ratio, 4),
        },
    }


# --- the command ------------------------------------------------------------------------
def _args(argv: list[str] | None) -> Any:
    p = parser("Voice sessions at scale: density, churn soak with leak gates, faults under load")
    p.add_argument("--mode", choices=("all", "density", "soak"), default="all")
    p.add_argument("--chain", default=FAKE, help="the chain file `chains run` serves")
    p.add_argument("--speedup", type=float, default=10.0, help="FAKEVOICE_SPEEDUP for the fake chain")
    p.add_argument("--reply", choices=("long", "short"), default="long", help="the fake LLM's reply")
    p.add_argument("--budget-ms", type=float, default=4000.0)
    p.add_argument("--levels", default="100,200,300,400,500,600,800,1000")
    p.add_argument("--window-s", type=float, default=25.0)
    p.add_argument("--keep-going", action="store_true", help="density: measure every level")
    p.add_argument("--ramp-s", type=float, default=10.0)
    p.add_argument("--probe-turns", type=int, default=2)
    p.add_argument("--concurrency", "-C", type=int, default=50)
    p.add_argument("--sessions", "-N", type=int, default=2000)
    p.add_argument("--waves", type=int, default=10)
    p.add_argument("--turns", type=int, default=2, help="turns per caller (density)")
    p.add_argument("--soak-turns", type=int, default=1, help="turns per caller (soak: churn is the point)")
    p.add_argument("--soak-reply", choices=("long", "short"), default="short", help="the fake reply (soak)")
    p.add_argument("--frame-ms", type=int, default=20)
    p.add_argument(
        "--protocol",
        choices=("chains", "realtime"),
        default="chains",
        help="the callers' protocol: ours, or OpenAI Realtime (base64 PCM16 at 24 kHz in JSON events)",
    )
    p.add_argument("--out-rate", type=int, default=16000, help="reply audio rate the callers ask for")
    p.add_argument("--faults", action="store_true", help="some callers drop their socket or stall reading")
    p.add_argument("--fault-every", type=int, default=10)
    p.add_argument("--settle-s", type=float, default=2.0)
    p.add_argument("--sample-s", type=float, default=1.0)
    p.add_argument(
        "--kill-engine-after",
        type=float,
        metavar="S",
        help="soak: SIGKILL the server's model engine processes (vLLM's) S seconds in (the real chain)",
    )
    p.add_argument("--details", type=Path, help="write every figure (per level, per wave, RSS samples) here")
    a = p.parse_args(argv)
    if a.quick:
        a.levels, a.window_s, a.ramp_s, a.probe_turns = "3,6", 6.0, 2.0, 1
        a.concurrency, a.sessions, a.waves, a.turns, a.soak_turns = 6, 18, 3, 1, 1
        a.fault_every, a.faults, a.settle_s, a.reply = 5, True, 1.0, "short"
    return a


async def amain(a: Any) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per caller, here and in the server
    pcm, rate = read_wav(QUESTION)
    if a.protocol == "realtime":  # the protocol's one rate: the callers send 24 kHz
        pcm, rate = resample_pcm(pcm, rate, RealtimeClient.RATE), RealtimeClient.RATE
    speech = Speech.from_pcm(pcm, rate)
    script = Script(turns=a.turns, frame_ms=a.frame_ms, turn_timeout_s=max(15.0, 3 * a.budget_ms / 1000))
    env = {"FAKEVOICE_SPEEDUP": str(a.speedup), "FAKEVOICE_REPLY": a.reply}
    out: dict[str, Any] = {
        "machine": {**machine(), **cpu_flags()},
        "args": {k: str(v) for k, v in vars(a).items()},
    }
    if a.mode in ("all", "density"):
        out["density"] = await density(a, speech, script, env)
        write_json(a.details, out)  # now: a failure in the soak must not lose the density
    if a.mode in ("all", "soak"):
        soak_script = replace(script, turns=a.soak_turns)
        out["soak"] = await churn(a, speech, soak_script, {**env, "FAKEVOICE_REPLY": a.soak_reply})
    return out


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """Exactly the issue's JSON: density, soak, leaks."""
    res: dict[str, Any] = {}
    if "density" in out:
        res["density"] = out["density"]["summary"]
    if "soak" in out:
        res["soak"] = out["soak"]["summary"]
        res["leaks"] = out["soak"]["leaks"]
    return res


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    # the callers' process on the loop the server runs on (chains/loop.py, CHAINS_LOOP)
    out = anyio.run(amain, a, backend_options={"loop_factory": loop_factory()})
    write_json(a.json, summary(out))
    write_json(a.details, out)
    if a.plot is not None:
        from benchmarks.soakplot import plot

        plot(out, a.plot)
    ok = True
    if "soak" in out:
        ok = out["soak"]["gates_passed"] and out["soak"]["summary"]["lost"] == 0
        print(f"soak: gates {'passed' if out['soak']['gates_passed'] else 'FAILED'}, "
              f"lost {out['soak']['summary']['lost']}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
