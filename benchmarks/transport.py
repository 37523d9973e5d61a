"""Transport cost: a websocket hop per 20 ms audio frame vs an in-process hop, and how
many concurrent real-time voice sessions this machine serves within 50 ms.

1. Hop cost, in one run. One 20 ms PCM16 frame at a time goes through a one-node
   pass-through chain and back, (a) in-process (a session's send/receive), (b) over
   the client websocket to a server process and back, (c) in-process but with the
   node served by a `chains serve --only` process (the remote-stage link). The
   difference to (a) is what the websocket round trip adds (two hops). Also the
   pipelined cost: frames pushed as fast as they go, in µs per frame.
2. Capacity. N clients each stream 20 ms frames at real-time pace through a fake
   3-stage chain (per-session stream node -> batched stage shared by all sessions ->
   map), served by a separate server process; each output frame's added delay is
   the time from sending its input frame to receiving it back (the fake stages do no
   work: all of it is transport, scheduling and queueing). N steps up until some
   session's p99 added delay reaches 50 ms; the largest N where every session stays
   under is the figure. Load stays on 127.0.0.1, bounded in sessions and time.

    python benchmarks/transport.py [--quick] [--json out/transport.json] [--plot out/transport.png]
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import chains  # noqa: E402
from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json  # noqa: E402
from chains import AudioFrame, Stream  # noqa: E402

RATE = 16000
FRAME_BYTES = RATE // 50 * 2  # 20 ms of PCM16
BUDGET_MS = 50.0
THIS = Path(__file__).resolve()


# --- the chains (also loaded by the server and node processes) ------------------------------
@chains.node
async def relay(f: AudioFrame) -> AudioFrame:
    return f


@chains.chain
def hop(audio: Stream[AudioFrame]):
    return {"audio": relay(audio)}


@chains.node
async def vad_like(frames: Stream[AudioFrame]) -> AsyncIterator[AudioFrame]:
    async for f in frames:
        yield f


@chains.node(batch=chains.Batch(max_size=64, max_wait_ms=2))
async def stt_like(fs: list[AudioFrame]) -> list[AudioFrame]:
    return fs


@chains.node
async def tts_like(f: AudioFrame) -> AudioFrame:
    return f


@chains.chain(budget_ms=1000)
def realtime3(audio: Stream[AudioFrame]):
    return {"audio": tts_like(stt_like(vad_like(audio)))}


def frame(seq: int) -> bytes:
    return seq.to_bytes(4, "little") + bytes(FRAME_BYTES - 4)


# --- processes ----------------------------------------------------------------------------
class Proc:
    """A child process that prints a ws:// url when it is ready."""

    def __init__(self, args: list[str]):
        self.p = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.p.stdout is not None
        self.url = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            if "ws://" in line:
                self.url = line[line.index("ws://") :].split()[0]
                break
        if not self.url:
            self.close()
            raise RuntimeError(f"{args} did not start")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def server_process() -> Proc:
    return Proc([sys.executable, str(THIS), "--serve"])


def node_process() -> Proc:
    return Proc([sys.executable, "-m", "chains", "serve", f"{THIS}:hop", "--only", "relay", "--port", "0"])


# --- 1. hop cost ---------------------------------------------------------------------------
def _summary(lats: list[float]) -> dict[str, float]:
    return {
        "p50_us": percentile(lats, 0.5) * 1e6,
        "p99_us": percentile(lats, 0.99) * 1e6,
        "mean_us": sum(lats) / len(lats) * 1e6,
    }


async def inprocess_hop(chain: Any, m: int, n: int) -> dict[str, Any]:
    from runtime.engine import Runtime

    async with Runtime(chain, register_metrics=False) as rt, rt.session() as sess:
        lats = []
        for i in range(m):
            t0 = time.perf_counter()
            await sess.send(AudioFrame(pcm=frame(i), sample_rate=RATE))
            await sess.receive()
            lats.append(time.perf_counter() - t0)
        t0 = time.perf_counter()

        async def feed() -> None:
            for i in range(n):
                await sess.send(AudioFrame(pcm=frame(i), sample_rate=RATE))

        task = asyncio.create_task(feed())
        for _ in range(n):
            await sess.receive()
        await task
        pipelined = (time.perf_counter() - t0) / n
    return {**_summary(lats), "pipelined_us_per_frame": pipelined * 1e6}


async def inprocess_many(chain: Any, sessions: int, n: int) -> float:
    """µs per frame with ``sessions`` sessions pushing frames at once (amortised cost:
    a map runs one item at a time per session, so one session cannot overlap hops)."""
    from runtime.engine import Runtime

    async with Runtime(chain, register_metrics=False) as rt:

        async def one() -> None:
            async with rt.session() as sess:

                async def feed() -> None:
                    for i in range(n):
                        await sess.send(AudioFrame(pcm=frame(i), sample_rate=RATE))

                task = asyncio.create_task(feed())
                for _ in range(n):
                    await sess.receive()
                await task

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(sessions)))
        return (time.perf_counter() - t0) / (sessions * n) * 1e6


async def websocket_hop(url: str, m: int, n: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "chain": "hop"}))
        await ws.recv()
        lats = []
        for i in range(m):
            t0 = time.perf_counter()
            await ws.send(frame(i))
            while not isinstance(await ws.recv(), bytes):
                pass
            lats.append(time.perf_counter() - t0)

        async def feed() -> None:
            for i in range(n):
                await ws.send(frame(i))

        t0 = time.perf_counter()
        task = asyncio.create_task(feed())
        got = 0
        while got < n:
            if isinstance(await ws.recv(), bytes):
                got += 1
        await task
        pipelined = (time.perf_counter() - t0) / n
    return {**_summary(lats), "pipelined_us_per_frame": pipelined * 1e6}


async def hop_costs(m: int, n: int) -> dict[str, Any]:
    from transport.remote import with_remotes

    res: dict[str, Any] = {}
    gc.collect()
    res["in_process"] = await inprocess_hop(hop, m, n)
    res["in_process"]["us_per_frame_20_sessions"] = await inprocess_many(hop, 20, n // 20)
    srv = server_process()
    try:
        res["websocket"] = await websocket_hop(srv.url, m, n)
    finally:
        srv.close()
    node = node_process()
    try:
        remote = with_remotes(hop, {"relay": node.url})
        res["remote_stage"] = await inprocess_hop(remote, m, n)
        res["remote_stage"]["us_per_frame_20_sessions"] = await inprocess_many(remote, 20, n // 20)
    finally:
        node.close()
    base = res["in_process"]
    for k in ("websocket", "remote_stage"):
        r = res[k]
        r["added_p50_us"] = r["p50_us"] - base["p50_us"]
        r["added_pipelined_us_per_frame"] = r["pipelined_us_per_frame"] - base["pipelined_us_per_frame"]
    return res


# --- 2. capacity -----------------------------------------------------------------------------
class _Client:
    """One simulated real-time session: its socket, send times and measured delays."""

    __slots__ = ("lats", "sent", "ws")

    def __init__(self, ws: Any):
        self.ws = ws
        self.sent: dict[int, float] = {}
        self.lats: list[float] = []


async def _open(url: str, gate: asyncio.Semaphore) -> _Client:
    from websockets.asyncio.client import connect

    async with gate:  # connect in waves: a burst of SYNs is not what is measured here
        ws = await connect(url, compression=None, open_timeout=60)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "chain": "realtime3"}))
        await ws.recv()
    return _Client(ws)


async def _receive(c: _Client, warm: int) -> None:
    loop = asyncio.get_running_loop()
    async for msg in c.ws:
        if isinstance(msg, bytes):
            seq = int.from_bytes(msg[:4], "little")
            if seq >= warm:
                c.lats.append(loop.time() - c.sent[seq])
        elif '"done"' in msg:
            break


async def _ticker(group: list[_Client], t_start: float, frames_n: int, lag: list[float]) -> None:
    """Sends one frame per client every 20 ms (one timer for a group, not one per client)."""
    loop = asyncio.get_running_loop()
    for i in range(frames_n):
        due = t_start + i * 0.020
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.append(loop.time() - due)
        data = frame(i)
        for c in group:
            c.sent[i] = loop.time()
            await c.ws.send(data)
    for c in group:
        await c.ws.send(json.dumps({"type": "end"}))


async def capacity_step(url: str, n: int, seconds: float, srv: Proc) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    frames_n = int(seconds / 0.020)
    warm = 25  # the first half second: the server's batcher and caches settle
    gate = asyncio.Semaphore(32)
    clients = await asyncio.gather(*(_open(url, gate) for _ in range(n)))
    groups = [clients[k::20] for k in range(20)]  # 20 phases, 1 ms apart, as independent clients
    lag: list[float] = []
    t_start = loop.time() + 0.2
    cpu0, own0, w0 = srv.cpu_s(), time.process_time(), time.monotonic()
    receivers = [asyncio.create_task(_receive(c, warm)) for c in clients]
    await asyncio.gather(
        *(_ticker(g, t_start + k * 0.001, frames_n, lag) for k, g in enumerate(groups) if g)
    )
    await asyncio.gather(*receivers)
    wall = time.monotonic() - w0
    cpu, own = (srv.cpu_s() - cpu0) / wall, (time.process_time() - own0) / wall
    await asyncio.gather(*(c.ws.close() for c in clients))
    p99s = sorted(percentile(c.lats, 0.99) * 1000 for c in clients if c.lats)
    every = [x for c in clients for x in c.lats]
    return {
        "sessions": n,
        "served": len(p99s),
        "worst_session_p99_ms": p99s[-1] if p99s else float("nan"),
        "median_session_p99_ms": percentile(p99s, 0.5),
        "all_p50_ms": percentile(every, 0.5) * 1000,
        "all_p99_ms": percentile(every, 0.99) * 1000,
        "client_send_lag_p99_ms": percentile(lag, 0.99) * 1000,
        "server_cpu": cpu,  # cores the server process used
        "client_cpu": own,  # cores this load generator used
        "ok": len(p99s) == n and bool(p99s) and p99s[-1] < BUDGET_MS,
    }


async def capacity(steps: list[int], seconds: float, max_total_s: float) -> dict[str, Any]:
    srv = server_process()
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        best, worst_fail = 0, None
        for n in steps:
            row = await _step(srv, n, seconds)
            rows.append(row)
            if row["ok"]:
                best = n
            else:
                worst_fail = n
                break
            if time.monotonic() - t0 > max_total_s:
                break
        # one bisection step between the last pass and the first failure
        if worst_fail is not None and worst_fail - best > max(10, best // 8):
            mid = (best + worst_fail) // 2
            row = await _step(srv, mid, seconds)
            rows.append(row)
            if row["ok"]:
                best = mid
    finally:
        srv.close()
    return {"rows": rows, "sustained_sessions": best, "budget_p99_ms": BUDGET_MS, "step_seconds": seconds}


async def _step(srv: Proc, n: int, seconds: float) -> dict[str, Any]:
    """One load step; a failed one runs once more, so that a stall of this shared machine
    (another process taking the cores, visible as the load generator's own send lag)
    does not decide the figure alone. Both attempts are kept in the row."""
    row = await capacity_step(srv.url, n, seconds, srv)
    _print_row(row)
    if not row["ok"]:
        again = await capacity_step(srv.url, n, seconds, srv)
        _print_row(again)
        if again["ok"] or again["worst_session_p99_ms"] < row["worst_session_p99_ms"]:
            again["first_attempt"], row = row, again
        else:
            row["second_attempt"] = again
    return row


def _print_row(r: dict[str, Any]) -> None:
    print(
        f"  {r['sessions']:>5} sessions: worst p99 {r['worst_session_p99_ms']:7.1f} ms, "
        f"median p99 {r['median_session_p99_ms']:6.1f} ms, p50 {r['all_p50_ms']:5.1f} ms, "
        f"send lag p99 {r['client_send_lag_p99_ms']:5.1f} ms, cpu server {r['server_cpu']:.2f}"
        f" clients {r['client_cpu']:.2f}"
        f"  {'ok' if r['ok'] else 'OVER'}",
        flush=True,
    )


# --- output ---------------------------------------------------------------------------------
def plot(res: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["in_process", "websocket", "remote_stage"]
    labels = ["in-process", "client websocket", "remote stage"]
    xs = range(len(names))
    hop_res = res["hop"]
    a1.bar([x - 0.2 for x in xs], [hop_res[k]["p50_us"] for k in names], width=0.4, label="round trip p50")
    a1.bar(
        [x + 0.2 for x in xs],
        [hop_res[k]["pipelined_us_per_frame"] for k in names],
        width=0.4,
        label="pipelined, per frame",
    )
    a1.set_xticks(list(xs), labels)
    a1.set(ylabel="µs per 20 ms frame", title="One-node chain, per audio frame")
    a1.legend()
    rows = sorted(res["capacity"]["rows"], key=lambda r: r["sessions"])
    ns = [r["sessions"] for r in rows]
    a2.plot(ns, [r["worst_session_p99_ms"] for r in rows], marker="o", label="worst session p99")
    a2.plot(ns, [r["median_session_p99_ms"] for r in rows], marker="o", label="median session p99")
    a2.plot(ns, [r["all_p50_ms"] for r in rows], marker=".", label="p50 (all frames)")
    a2.axhline(BUDGET_MS, color="red", linestyle="--", label=f"{BUDGET_MS:.0f} ms")
    a2.set(
        xlabel="concurrent real-time sessions",
        ylabel="added delay (ms)",
        title=f"3-stage chain over websockets: {res['capacity']['sustained_sessions']} sessions sustained",
    )
    a2.set_yscale("log")
    a2.legend()
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", help=argparse_hidden())
    p.add_argument("--max-sessions", type=int, default=1000, help="upper bound on the capacity steps")
    args = p.parse_args()
    if args.serve:
        from transport.server import Limits, serve_forever

        # unpaced (lead_ms=inf): this measures the transport, not real-time reply pacing
        limits = Limits(max_sessions=2000, start_timeout_s=60.0, idle_timeout_s=60.0, lead_ms=float("inf"))
        asyncio.run(serve_forever({"hop": hop, "realtime3": realtime3}, "127.0.0.1", 0, limits=limits))
        return
    m, n = (300, 2000) if args.quick else (2000, 10000)
    steps = [10, 50, 100, 200, 300] if args.quick else [10, 25, 50, 100, 150, 200, 300, 400, 600, 800, 1000]
    steps = [s for s in steps if s <= args.max_sessions]
    seconds = 3.0 if args.quick else 8.0
    print(f"hop cost per 20 ms frame ({m} round trips, {n} pipelined frames)", flush=True)
    hop_res = asyncio.run(hop_costs(m, n))
    print(f"{'path':<14}{'p50 µs':>10}{'p99 µs':>10}{'pipelined µs/frame':>20}{'added p50 µs':>14}")
    for k in ("in_process", "websocket", "remote_stage"):
        r = hop_res[k]
        added = f"{r['added_p50_us']:>14.0f}" if "added_p50_us" in r else f"{'':>14}"
        print(f"{k:<14}{r['p50_us']:>10.0f}{r['p99_us']:>10.0f}{r['pipelined_us_per_frame']:>20.1f}{added}")
    for k in ("in_process", "remote_stage"):
        print(f"  {k}: {hop_res[k]['us_per_frame_20_sessions']:.1f} µs per frame with 20 sessions at once")
    print(f"\nconcurrent real-time sessions (20 ms frames, 3 stages, p99 < {BUDGET_MS:.0f} ms)", flush=True)
    cap = asyncio.run(capacity(steps, seconds, max_total_s=60 if args.quick else 240))
    print(f"sustained: {cap['sustained_sessions']} sessions, every session's p99 added delay < 50 ms")
    res = {"benchmark": "transport", "quick": args.quick, "machine": machine()}
    res.update(hop=hop_res, capacity=cap)
    write_json(args.json, res)
    if args.plot:
        plot(res, args.plot)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
