"""The server under soak: ``chains run CHAIN_FILE`` in its own process, watched from
outside (psutil: CPU, RSS, threads, file descriptors, sockets) and from inside
(its /metrics, which carries benchmarks/census.py's gauges: asyncio tasks and live
objects of chains' own classes).

Why a separate process: the callers' own CPU must not count as the server's, and
the leak gates must read the process that serves, not the one that calls.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks import census

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Snapshot:
    """What the server process holds at one moment."""

    t: float
    rss_kib: float
    cpu_s: float  # the server and its child processes (vLLM's engine core runs in one)
    threads: int
    fds: int
    sockets: int
    tasks: int = -1
    series: int = -1
    sessions_active: int = -1
    objects: dict[str, int] | None = None
    children_rss_kib: float = 0.0

    def brief(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "objects"}


class ServerProcess:
    """``with ServerProcess(chain_file) as srv:`` -> ``srv.url``, ``srv.snapshot()``."""

    def __init__(
        self,
        chain_file: str,
        *,
        max_sessions: int = 4096,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 300.0,
    ):
        self.chain_file = chain_file
        self.max_sessions = max_sessions
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-server-{os.getpid()}.log"
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        cmd = [
            sys.executable, "-m", "chains", "run", self.chain_file, "--no-verify",
            "--port", str(self.port), "--max-sessions", str(self.max_sessions),
        ]  # fmt: skip
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(self.http + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"the server did not start within {self.start_timeout_s} s; see {self.log_path}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def chain_name(self) -> str:
        """The served chain's name (its Realtime ``model``), from ``/v1/models``."""
        with urllib.request.urlopen(self.http + "/v1/models", timeout=30) as r:
            return str(json.loads(r.read())["data"][0]["id"])

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.http + "/metrics", timeout=60) as r:
            return str(r.read().decode())

    def snapshot(self, inside: bool = True) -> Snapshot:
        """The process's figures now; ``inside`` adds the census from /metrics (slow
        at thousands of sessions: gate points only)."""
        ps = self.ps
        assert ps is not None
        kids_cpu = kids_rss = 0.0
        for kid in self.children():
            try:
                kt = kid.cpu_times()
                kids_cpu += kt.user + kt.system
                kids_rss += kid.memory_info().rss / 1024
            except psutil.Error:  # it ended meanwhile
                continue
        with ps.oneshot():
            ct = ps.cpu_times()
            snap = Snapshot(
                t=time.monotonic(),
                rss_kib=ps.memory_info().rss / 1024,
                cpu_s=ct.user + ct.system + kids_cpu,
                threads=ps.num_threads(),
                fds=ps.num_fds(),
                sockets=len(ps.net_connections(kind="inet")),
                children_rss_kib=kids_rss,
            )
        if inside:
            c = census.parse(self.metrics_text())
            snap.tasks = c.get("tasks", -1)
            snap.series = c.get("series", -1)
            snap.sessions_active = c.get("sessions_active", -1)
            snap.objects = c["objects"]
        return snap

    def children(self) -> list[psutil.Process]:
        assert self.ps is not None
        return list(self.ps.children(recursive=True))


def object_growth(base: dict[str, int] | None, now: dict[str, int] | None, slack: int = 0) -> dict[str, int]:
    """Classes with more live instances than at the baseline (beyond ``slack``)."""
    base, now = base or {}, now or {}
    return {k: n - base.get(k, 0) for k, n in sorted(now.items()) if n - base.get(k, 0) > slack}


__all__ = ["ServerProcess", "Snapshot", "free_port", "object_growth"]
