"""The chain server: our websocket protocol, HTTP endpoints for every chain, the
OpenAI-compatible endpoints, ``/healthz``, ``/metrics`` and the browser page, on one
port.

Starlette routing (transport/app.py, where every route is listed) on uvicorn
(httptools for HTTP/1.1, its sans-I/O websocket protocol with our limits:
transport/wsocket.py). uvicorn runs inside the caller's event loop beside the
runtimes, so HTTP requests, websocket sessions and the batchers share one loop and
batch together. Limits (``Limits``) bound everything a client can make the server
hold: message and body size, live sessions and requests (with a short waiting room),
idle time, time to ``start``, and how long a client may stop reading.

    async with transport.server.serve(chain, port=0) as srv:   # srv.url, srv.http_url
        ...
    await transport.server.serve_forever(chain, host, port, token=..., max_sessions=...)
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from chains.errors import ChainError
from runtime.engine import Runtime
from runtime.logs import get_logger
from runtime.metrics import prometheus_text
from transport.admission import Slots
from transport.app import build_app
from transport.connection import Connection
from transport.httpapi.leaving import Departures
from transport.settings import ConnectionSettings, Limits
from transport.wsocket import protocol_class

WEB_ROOT = Path(__file__).resolve().parent / "web"  # shipped inside the package

ChainsArg = Any | Sequence[Any] | Mapping[str, Any]


def _named(chains_: ChainsArg) -> dict[str, Any]:
    if isinstance(chains_, Mapping):
        return dict(chains_)
    if isinstance(chains_, list | tuple):
        return {c.name: c for c in chains_}
    one: Any = chains_
    return {one.name: one}


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
        lim = self.limits
        self.sessions = Slots(lim.max_sessions, lim.session_wait_s, lim.retry_after_s)
        self.requests = Slots(lim.max_requests, lim.session_wait_s, lim.retry_after_s)
        self.departures = Departures()
        self.app = build_app(self, prometheus_text)
        self._uv: uvicorn.Server | None = None
        self._tg: Any = None

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
            sock = _bind(self.host, self.port, backlog=max(128, 2 * self.limits.max_sessions))
            config = self._config()
            config.load()
            self._uv = uvicorn.Server(config)
            self._uv.lifespan = config.lifespan_class(config)  # "off": a no-op (uvicorn's _serve sets it)
            await self._uv.startup(sockets=[sock])
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg = tg
            await tg.start(self.departures.run, name="departures")
            tg.start_soon(self._uv.main_loop, name="uvicorn")
            stack.push_async_callback(self._shutdown)
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        self._stack = stack
        self.port = sock.getsockname()[1]
        self.log.info("serving", url=self.url, chains=list(self.chains))
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._stack is not None
        return await self._stack.__aexit__(*exc)

    def _config(self) -> uvicorn.Config:
        lim = self.limits
        return uvicorn.Config(
            self.app,
            http="httptools",
            ws=protocol_class(lim),
            ws_max_size=2 * lim.max_message_bytes,  # past our own limit we still answer with an error
            ws_max_queue=lim.max_queue,
            ws_ping_interval=lim.ping_interval_s,
            ws_ping_timeout=lim.ping_timeout_s,
            ws_per_message_deflate=False,  # PCM does not deflate; compression would only cost CPU
            lifespan="off",  # the runtimes are ours, started before the socket opens
            log_config=None,
            access_log=False,
            timeout_keep_alive=int(max(1, lim.keepalive_s)),
            timeout_graceful_shutdown=int(lim.close_timeout_s + 1),
        )

    async def _shutdown(self) -> None:
        uv = self._uv
        assert uv is not None
        with anyio.CancelScope(shield=True):
            for conn in list(self.connections):
                if conn.stalled or conn._pending:
                    conn.ws.abort()  # its close frame could never be written
            uv.should_exit = True
            await uv.shutdown()
            for conn in list(self.connections):
                conn.ws.abort()
            self._tg.cancel_scope.cancel()  # the departures' ticker (uvicorn's loop has returned)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def runtime_for(self, name: str | None) -> Runtime | None:
        return self.settings.runtime_for(name)

    def health(self) -> dict[str, Any]:
        """``/healthz``: 200 while every stage is healthy, else 503 naming the stages."""
        stages = {
            f"{name}/{st.name}": st.metrics.healthy for name, rt in self.runtimes.items() for st in rt.stages
        }
        ok = all(stages.values())
        return {
            "status": "ok" if ok else "unhealthy",
            "chains": list(self.runtimes),
            "sessions": len(self.connections),
            "requests": self.requests.used,
            "unhealthy": [k for k, v in stages.items() if not v],
            "stats": dict(self.stats),
        }


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, bound here so that ``port=0`` is known at once (and a port
    in use is an ``OSError``, not uvicorn's exit). Its protocol is named (IPPROTO_TCP):
    asyncio sets TCP_NODELAY only on such sockets, and without it every keep-alive
    request waited 40 ms for a delayed ACK (Nagle)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
        print(
            f"chains: serving {names} on {srv.url}  (HTTP: {srv.http_url}v1/chains/CHAIN, "
            f"browser page: {srv.http_url})",
            flush=True,
        )
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                break


__all__ = ["WEB_ROOT", "ChainServer", "Limits", "serve", "serve_forever"]
