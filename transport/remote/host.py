"""The hosting side of a remote stage: ``chains serve FILE --only NODE --port N``.

It runs one node's stage (its replicas, its batcher, its deadline-ordered
concurrency limit, its metrics: the same ``runtime.stage.Stage`` an in-process
runtime uses, serving each item through ``Stage.serve``) and serves it to every
process that links to it (``transport.remote.hostlink`` holds one caller's
state). Per-session node state (``chains.context().state``) lives here, keyed by
the caller's link and session id, and is dropped when the caller says the session
ended or the link closes. The same port answers ``GET /healthz`` and
``GET /metrics`` (the latter behind the token, when one is set).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from chains.errors import ChainError
from runtime.envelope import deadline_at
from runtime.logs import get_logger
from runtime.metrics import COLLECTOR, ChainMetrics, prometheus_text
from runtime.placement import make_stages
from transport.http import http_endpoints
from transport.remote.hostlink import HostLink
from transport.remote.wire import (
    PROTOCOL_VERSION,
    Codec,
    Hello,
    Refuse,
    Welcome,
    decode_frames,
    encode_frames,
    payload_types,
)


class NodeHost:
    """One node's stage, served to any number of links.

    Retries happen at the caller (where a retry can go to another replica), so the
    host's stage tries each item once; its timeout applies here, per attempt.
    ``replicas`` overrides the node's own count (a Ray actor hosts exactly one)."""

    def __init__(
        self,
        chain: Any,
        node_name: str,
        *,
        calls: int = 256,
        feed_window: int = 16,
        replicas: int | None = None,
    ):
        graph = chain.graph
        self.chain_name = graph.name
        gnode = graph.node(node_name)
        opts = msgspec.structs.replace(gnode.spec.options, retries=0)
        if replicas is not None:  # one Ray actor is one replica: no more, no autoscaling here
            opts = msgspec.structs.replace(opts, replicas=replicas, min_replicas=None, max_replicas=None)
        self.gnode = dataclasses.replace(gnode, spec=dataclasses.replace(gnode.spec, options=opts))
        self.spec = self.gnode.spec
        self.shape = self.spec.shape
        self.calls = calls
        self.feed_window = feed_window
        self.metrics = ChainMetrics(f"{graph.name}.{node_name}")
        stages, self._sets = make_stages(graph.name, [self.gnode], self.metrics.stage)
        self.stage = stages[0]
        self.codec = Codec(payload_types(self.spec), node_name)
        budget_ms = self.spec.options.budget_ms or getattr(chain, "budget_ms", None)
        self.budget_s = budget_ms / 1000.0 if budget_ms else None
        self.links: set[HostLink] = set()
        self.stats = {
            "calls": 0,
            "streams": 0,
            "cancelled": 0,
            "failed": 0,
            "inflight": 0,
            "max_inflight": 0,
            "max_feed_backlog": 0,
            "budgeted_calls": 0,  # calls that came with the item's remaining budget
        }
        self.log = get_logger(chain=graph.name, node=node_name, component="remote_host")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[NodeHost]:
        """Load the replicas; supervise them and run the batcher while the block runs."""
        async with contextlib.AsyncExitStack() as stack:
            for rs in self._sets:
                stack.push_async_callback(rs.close)
                await rs.start()
            COLLECTOR.register(self.metrics)
            stack.callback(COLLECTOR.unregister, self.metrics)
            async with anyio.create_task_group() as tg:
                for rs in self._sets:
                    tg.start_soon(rs.run, name=f"replicas:{rs.name}")
                if self.stage.batcher is not None:
                    tg.start_soon(self.stage.run_batcher, name=f"batcher:{self.stage.name}")
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()

    def deadline(self, budget_ms: float | None = None) -> float:
        """The caller's deadline for the item (its remaining budget, when sent), tightened
        by this node's own budget."""
        now = time.monotonic()
        caller = now + budget_ms / 1000.0 if budget_ms is not None else float("inf")
        return deadline_at(caller, 0.0, self.budget_s, now)

    async def handle(self, ws: ServerConnection) -> None:
        """One caller's link: handshake, then frames until it closes."""
        try:
            first = decode_frames(await ws.recv(decode=False))
        except Exception:
            return
        hello = first[0] if first else None
        if not isinstance(hello, Hello):
            return
        problem = self._check(hello)
        if problem is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_frames([Refuse(problem)]))
            return
        link = HostLink(self, ws, hello.out_window)
        self.links.add(link)
        try:
            await ws.send(
                encode_frames([Welcome(self.gnode.name, self.shape.value, self.calls, self.feed_window)])
            )
            await link.run()
        except ConnectionClosed:
            pass
        finally:
            self.links.discard(link)

    def _check(self, hello: Hello) -> str | None:
        if hello.version != PROTOCOL_VERSION:
            return f"link protocol version {hello.version} is not {PROTOCOL_VERSION}"
        if hello.node != self.gnode.name:
            return f"this process serves node {self.gnode.name!r}, not {hello.node!r}"
        if hello.impl != self.spec.qualname.split(":")[-1] or hello.shape != self.shape.value:
            return (
                f"node {hello.node!r} here is {self.spec.qualname.split(':')[-1]} ({self.shape.value}), "
                f"the caller expects {hello.impl} ({hello.shape}): are both running the same chain file?"
            )
        return None

    def health(self) -> dict[str, Any]:
        """``/healthz``: unhealthy while the stage fails repeatedly or no replica is ready."""
        m = self.stage.metrics
        rs = self.stage.replicas
        healthy = m.healthy and bool(rs.ready)
        return {
            "status": "ok" if healthy else "unhealthy",
            "node": self.gnode.name,
            "shape": self.shape.value,
            "replicas": rs.counts(),
            "links": len(self.links),
            "sessions": sum(len(link.sessions) for link in self.links),
            "stats": self.stats,
        }


@contextlib.asynccontextmanager
async def hosting(
    chain: Any,
    node_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    **options: Any,
) -> AsyncIterator[tuple[NodeHost, str]]:
    """Host ``node_name`` while the block runs; yields (the host, its ws:// url)."""
    if not any(n.name == node_name for n in chain.graph.nodes):
        names = ", ".join(n.name for n in chain.graph.nodes)
        raise ChainError(f"--only: chain {chain.graph.name!r} has no node {node_name!r}; it has: {names}")
    nh = NodeHost(chain, node_name, **options)
    async with nh.running():
        server = await ws_serve(
            nh.handle,
            host,
            port,
            compression=None,
            max_size=None,
            process_request=http_endpoints(prometheus_text, nh.health, token),
            ping_interval=20,
        )
        try:
            bound = server.sockets[0].getsockname()[1]
            yield nh, f"ws://{host}:{bound}/"
        finally:
            for link in list(nh.links):
                link.ws.transport.abort()
            server.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await server.wait_closed()


async def serve_node(
    chain: Any, node_name: str, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None
) -> None:
    """``chains serve FILE --only NODE --port N``: host one node until SIGTERM/SIGINT."""
    async with hosting(chain, node_name, host, port, token=token) as (nh, url):
        print(f"chains: serving node {node_name!r} of chain {nh.chain_name!r} on {url}", flush=True)
        sys.stdout.flush()
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                break


__all__ = ["NodeHost", "hosting", "serve_node"]
