"""The websocket server: one websocket is one session of a chain's runtime.

Built on ``websockets.asyncio.server.serve``. The same port answers plain HTTP
through ``process_request``: ``GET /`` the browser voice page (demos/web/),
``GET /metrics`` the Prometheus text of every live runtime, ``GET /healthz`` a
JSON health summary (503 when a stage is unhealthy). Limits (``Limits``) bound
everything a client can make the server hold: message size, live sessions, idle
time, time to ``start``, and how long a client may stop reading.

    async with transport.server.serve(chain, port=0) as srv:   # srv.url, srv.port
        ...
    await transport.server.serve_forever(chain, host, port, token=..., max_sessions=...)
"""

from __future__ import annotations

import contextlib
import mimetypes
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Response

from chains.errors import ChainError
from runtime.engine import Runtime
from runtime.logs import get_logger
from runtime.metrics import prometheus_text
from transport.connection import Connection
from transport.http import TEXT, http_endpoints, response
from transport.protocol import CLOSE_OVERLOADED, Error, encode
from transport.settings import ConnectionSettings, Limits

WEB_ROOT = Path(__file__).resolve().parents[1] / "demos" / "web"

ChainsArg = Any | Sequence[Any] | Mapping[str, Any]


def _named(chains_: ChainsArg) -> dict[str, Any]:
    if isinstance(chains_, Mapping):
        return dict(chains_)
    if isinstance(chains_, list | tuple):
        return {c.name: c for c in chains_}
    return {chains_.name: chains_}


class ChainServer:
    """Serves one or more chains; use as ``async with``. ``port=0`` picks a free port."""

    def __init__(
        self,
        chains: ChainsArg,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        token: str | None = None,
        limits: Limits | None = None,
        remotes: Mapping[str, str] | None = None,
        web_root: Path | None = WEB_ROOT,
        input_sample_rate: int | None = None,
        output_sample_rate: int | None = None,
        runtime_options: Mapping[str, Any] | None = None,
    ):
        self.chains = _named(chains)
        if not self.chains:
            raise ChainError("serve: no chain to serve")
        self.host = host
        self.port = port
        self.token = token or None
        self.limits = limits or Limits()
        self.remotes = dict(remotes or {})
        self.web_root = web_root
        self.input_sample_rate = input_sample_rate
        self.output_sample_rate = output_sample_rate
        self._rt_options = dict(runtime_options or {})
        self.runtimes: dict[str, Runtime] = {}
        self.connections: set[Connection] = set()
        self.stats: Counter[str] = Counter()
        self.log = get_logger(component="server")
        self._stack: contextlib.AsyncExitStack | None = None
        self._ws: Any = None
        # what each connection sees of this server (the live runtimes and stats)
        self.settings = ConnectionSettings(
            limits=self.limits,
            log=self.log,
            token=self.token,
            input_sample_rate=input_sample_rate,
            output_sample_rate=output_sample_rate,
            runtimes=self.runtimes,
            stats=self.stats,
        )
        self._process_request = http_endpoints(
            prometheus_text, self._health, self.token, fallback=self._static
        )

    # --- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> ChainServer:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            for name, chain in self.chains.items():
                served = chain
                mine = {n: u for n, u in self.remotes.items() if _has_node(chain, n)}
                if mine:
                    from transport.remote import with_remotes

                    served = with_remotes(chain, mine)
                self.runtimes[name] = await stack.enter_async_context(Runtime(served, **self._rt_options))
            unknown = [n for n in self.remotes if not any(_has_node(c, n) for c in self.chains.values())]
            if unknown:
                raise ChainError(f"--remote: no node {unknown[0]!r} in the served chain(s)")
            lim = self.limits
            self._ws = await ws_serve(
                self._handler,
                self.host,
                self.port,
                process_request=self._process_request,
                compression=None,  # PCM does not deflate; compression would only cost CPU
                max_size=2 * lim.max_message_bytes,  # past our own limit we still answer with an error
                max_queue=lim.max_queue,
                write_limit=lim.write_limit,
                ping_interval=lim.ping_interval_s,
                ping_timeout=lim.ping_timeout_s,
                close_timeout=lim.close_timeout_s,
                open_timeout=lim.start_timeout_s,
                backlog=max(128, 2 * lim.max_sessions),  # a burst of connects must not overflow it
            )
            stack.push_async_callback(self._close_ws)
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        self._stack = stack
        self.port = self._ws.sockets[0].getsockname()[1]
        self.log.info("serving", url=self.url, chains=list(self.chains))
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._stack is not None
        return await self._stack.__aexit__(*exc)

    async def _close_ws(self) -> None:
        with anyio.CancelScope(shield=True):
            for conn in list(self.connections):
                if conn.stalled or conn._pending:
                    conn.ws.transport.abort()  # its close frame could never be written
            self._ws.close()
            with anyio.move_on_after(self.limits.close_timeout_s + 1.0):
                await self._ws.wait_closed()
            for conn in list(self.connections):
                conn.ws.transport.abort()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def runtime_for(self, name: str | None) -> Runtime | None:
        return self.settings.runtime_for(name)

    # --- websocket ----------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        if len(self.connections) >= self.limits.max_sessions:
            self.stats["overloaded"] += 1
            msg = Error(
                code="overloaded",
                message=f"the server is at its limit of {self.limits.max_sessions} sessions",
            )
            with anyio.move_on_after(self.limits.close_timeout_s):
                await ws.send(encode(msg), text=True)
                await ws.close(CLOSE_OVERLOADED, "overloaded")
            return
        conn = Connection(self.settings, ws)
        self.connections.add(conn)
        self.stats["connections"] += 1
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    # --- plain HTTP on the same port (transport/http.py): /healthz, /metrics, the page --------
    def _health(self) -> dict[str, Any]:
        stages = {
            f"{name}/{st.name}": st.metrics.healthy for name, rt in self.runtimes.items() for st in rt.stages
        }
        ok = all(stages.values())
        return {
            "status": "ok" if ok else "unhealthy",
            "chains": list(self.runtimes),
            "sessions": len(self.connections),
            "unhealthy": [k for k, v in stages.items() if not v],
            "stats": dict(self.stats),
        }

    def _static(self, path: str) -> Response:
        root = self.web_root
        name = "index.html" if path in ("/", "") else path.lstrip("/")
        if root is None or not root.is_dir():
            return response(404, b"no browser page here\n", TEXT)
        files = {p.name: p for p in root.iterdir() if p.is_file()}  # flat: no path can escape the folder
        f = files.get(name)
        if f is None:
            return response(404, b"not found\n", TEXT)
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return response(200, f.read_bytes(), ctype)


def _has_node(chain: Any, name: str) -> bool:
    return any(n.name == name for n in chain.graph.nodes)


@contextlib.asynccontextmanager
async def serve(
    chain: ChainsArg,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    token: str | None = None,
    max_sessions: int | None = None,
    limits: Limits | None = None,
    remotes: Mapping[str, str] | None = None,
    **options: Any,
) -> AsyncIterator[ChainServer]:
    """Serve ``chain`` (or several) while the block runs; yields the ``ChainServer``."""
    lim = limits or Limits()
    if max_sessions is not None:
        lim = replace(lim, max_sessions=max_sessions)
    async with ChainServer(chain, host, port, token=token, limits=lim, remotes=remotes, **options) as srv:
        yield srv


async def serve_forever(
    chain: ChainsArg,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    max_sessions: int | None = None,
    remotes: Mapping[str, str] | None = None,
    **options: Any,
) -> None:
    """``chains run FILE``: serve until SIGINT/SIGTERM, printing where."""
    async with serve(
        chain, host, port, token=token, max_sessions=max_sessions, remotes=remotes, **options
    ) as srv:
        names = ", ".join(srv.runtimes)
        print(f"chains: serving {names} on {srv.url}  (browser page: {srv.http_url})", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                break


__all__ = ["WEB_ROOT", "ChainServer", "Limits", "serve", "serve_forever"]
