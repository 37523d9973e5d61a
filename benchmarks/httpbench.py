"""benchmarks/http.py's body (the file of that name is a thin entry point: as a module
named ``http`` in this folder it would shadow the standard library's for every script
here). See http.py for what is measured."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import chains
from benchmarks._common import machine, parser, pyplot, save_figure, write_json
from chains import Text

SCRIPT = Path(__file__).with_name("http.py")

CONNECTIONS = 64
BODY = '{"text": "hello world"}'
PATHS = {"floor": "/floor", "chains": "/v1/chains/echo", "chains_batched": "/v1/chains/lengths"}


@chains.node
async def echo_text(t: Text) -> Text:
    return t


@chains.chain
def echo(t: Text):
    return echo_text(t)


@chains.node(batch=chains.Batch(max_size=64, max_wait_ms=1))
def text_length(ts: list[Text]) -> list[int]:
    return [len(t.text) for t in ts]


@chains.chain
def lengths(t: Text):
    return text_length(t)


def serve(port: int) -> None:
    """The server process: both chains and the floor route on one ChainServer."""
    import anyio
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from transport.httpapi.common import decode_json, json_response, read_body
    from transport.server import ChainServer, Limits

    async def main() -> None:
        srv = ChainServer({"echo": echo, "lengths": lengths}, port=port, limits=Limits(max_requests=1024))

        async def floor(request: Request) -> Response:
            body = decode_json(await read_body(request, srv.limits.max_body_bytes))
            return json_response(body)  # the same JSON the echo chain answers

        srv.app.router.routes.insert(0, Route("/floor", floor, methods=["POST"]))
        async with srv:
            print(f"ready {srv.port}", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    assert m is not None, value
    return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m[2]]


def wrk(url: str, duration: int, script: Path) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors[1]} failed responses:\n{out}")
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def main() -> None:
    p = parser("Requests per second over HTTP: a chain endpoint against the floor of the same stack.")
    p.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    p.add_argument("--serve", type=int, help=argparse_hidden())
    args = p.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install wrk (scripts/setup.sh installs it)")
    duration = 3 if args.quick else args.duration
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--serve", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready "):
            raise SystemExit(f"the server did not start: {line!r}")
        base = f"http://127.0.0.1:{int(line.split()[1])}"
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(f"wrk.method = 'POST'\nwrk.body = '{BODY}'\n")
            f.write("wrk.headers['Content-Type'] = 'application/json'\n")
            script = Path(f.name)
        results: dict[str, dict[str, float]] = {}
        for name, path in PATHS.items():
            wrk(base + path, 2, script)  # warm-up
            results[name] = wrk(base + path, duration, script)
            r = results[name]
            print(f"{name:15s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms")
            time.sleep(0.5)
        script.unlink()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    floor = results["floor"]
    for name in ("chains", "chains_batched"):
        r = results[name]
        print(
            f"{name}: {r['rps'] / floor['rps']:.0%} of the floor's req/s (target >= 70%), "
            f"p99 {r['p99_ms'] / floor['p99_ms']:.2f}x the floor's (target <= 2x)"
        )
    data: dict[str, Any] = {
        "rps": {k: v["rps"] for k, v in results.items()},
        "p50_ms": {k: v["p50_ms"] for k, v in results.items()},
        "p99_ms": {k: v["p99_ms"] for k, v in results.items()},
        "load_generator": f"wrk 4.1 -t1 -c{CONNECTIONS} -d{duration}s (POST {BODY})",
        "connections": CONNECTIONS,
        "machine": machine(),
    }
    write_json(args.json, data)
    if args.plot:
        plot(results, args.plot)


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(results)
    axes[0].bar(names, [results[n]["rps"] for n in names])
    axes[0].set_ylabel("requests/s")
    axes[1].bar(names, [results[n]["p99_ms"] for n in names], color="tab:orange")
    axes[1].set_ylabel("p99 latency (ms)")
    fig.suptitle(f"HTTP at {CONNECTIONS} connections (wrk)")
    save_figure(fig, path)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS
