"""The replicas a runtime gets for a remote node: stubs over links, and their provider.

``with_remotes(chain, {"node": url})`` returns a chain whose node is stubbed: its
graph node's template has ``provider(spec)``, so the runtime's replica set gets
its replicas from a ``RemoteProvider`` instead of loading the model here. Each
replica is a stub over one ``RemoteLink``; the runtime serves items on it like
on a local replica (``Stage.serve`` -> replica -> link -> host), so sessions see
the same outputs, errors, control events and interruptions as in-process:

- a map or batched map becomes one ``Call`` per item (batches are formed on the
  host, across every caller), a streaming map a ``Call`` whose outputs stream
  back; closing it (an interrupt cancels it) sends ``Cancel``;
- a stream node becomes an ``Open`` per session, its input items ``Feed`` frames.

A provider owns the links' tasks: its ``run`` holds a task group for the runtime's
lifetime (started in the runtime's own task group), and ``start`` runs each new
link in it. A replica
whose link drops is lost (``is_lost``); the replica set rebuilds it through
``start`` again, with backoff. ``transport.remote.ray`` subclasses the provider to
find its URLs on Ray actors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from chains.errors import ChainError, ReplicaLost
from chains.graph import Graph, GraphNode
from chains.spec import NodeSpec, Options, Shape
from transport.remote.caller import OUT_WINDOW, RemoteLink

STUB_CONCURRENCY = 4096  # a stub's own limit per replica: the link's credits are the real one


# --- the stubs the runtime calls ----------------------------------------------------------------
class Stub:
    """One replica of a remote node: the runtime calls it like the node itself."""

    def __init__(self, link: RemoteLink):
        self.link = link

    def alive(self) -> bool:
        return self.link.alive

    def on_session_closed(self, session_id: str) -> None:
        """The runtime's hook when a session closes: the host drops its state."""
        self.link.session_closed(session_id)


class MapStub(Stub):
    async def __call__(self, *args: Any) -> Any:
        return await self.link.call(args)


class StreamMapStub(Stub):
    def __call__(self, *args: Any) -> AsyncIterator[Any]:
        return self.link.call_stream(args)  # the runtime closes it (aclosing) on interrupt


class StreamStub(Stub):
    def __call__(self, *args: Any) -> AsyncIterator[Any]:
        return self.link.open_stream(args)


STUB_FOR = {
    Shape.MAP: MapStub,
    Shape.BATCH: MapStub,
    Shape.STREAM_MAP: StreamMapStub,
    Shape.STREAM: StreamStub,
}


# --- where the stubs come from ---------------------------------------------------------------------
class LinkProvider:
    """Replicas that are links to hosts; subclasses say which URL replica ``rid`` uses.

    The runtime runs ``run`` in its task group for its lifetime: the links' tasks are
    children of that, and end with the runtime."""

    session_closed_hook = True  # the runtime calls each replica's on_session_closed

    def __init__(self, spec: NodeSpec, out_window: int = OUT_WINDOW):
        self.spec = spec
        self.node = spec.name
        self.stub_cls = STUB_FOR[spec.shape]
        self.out_window = out_window
        self.links: set[RemoteLink] = set()
        self._tg: Any = None
        self._set: Any = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the links' tasks until cancelled (the runtime starts this in its task group
        before the first replica, and cancels it when it closes: every link ends)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self.links.clear()

    def watch(self, replicas: Any) -> None:
        """The replica set this provider serves: a link that drops reports its replica lost
        at once (not at its next call), so no new item is sent to it."""
        self._set = replicas

    def _link_lost(self, link: RemoteLink) -> None:
        rs = self._set
        if rs is None or link.dead is None:
            return
        for r in rs.replicas:
            if isinstance(r.instance, Stub) and r.instance.link is link:
                rs.lost(r, link.dead)

    async def url_for(self, rid: int) -> str:
        raise NotImplementedError

    async def start(self, rid: int) -> Stub:
        return await self.link(await self.url_for(rid), rid)

    async def link(self, url: str, rid: int) -> Stub:
        """A stub over a new link to ``url``, its tasks in this provider's task group."""
        if self._tg is None:
            raise RuntimeError(
                f"the provider of remote node {self.node!r} is not running: the runtime starts "
                "its run() in the runtime's task group before starting replicas"
            )
        link = RemoteLink(url, self.spec, self.node, self.out_window, on_lost=self._link_lost)
        await self._tg.start(link.run, name=f"remote-link:{self.node}:{rid}")
        self.links.add(link)
        return self.stub_cls(link)

    async def stop(self, instance: Stub) -> None:
        self.links.discard(instance.link)
        with anyio.CancelScope(shield=True):
            await instance.link.close()

    def is_lost(self, instance: Stub, exc: BaseException) -> bool:
        return isinstance(exc, ReplicaLost) or not instance.link.alive


class RemoteProvider(LinkProvider):
    """Replicas at fixed URLs (``chains serve --only NODE`` processes): replica ``rid``
    keeps the URL it was first given (round robin), so a rebuild relinks to it."""

    def __init__(self, spec: NodeSpec, urls: list[str], out_window: int = OUT_WINDOW):
        super().__init__(spec, out_window)
        self.urls = urls
        self._assigned: dict[int, str] = {}

    async def url_for(self, rid: int) -> str:
        url = self._assigned.get(rid)
        if url is None:
            url = self._assigned[rid] = self.urls[len(self._assigned) % len(self.urls)]
        return url


class StubTemplate:
    """The stubbed graph node's template: the runtime asks it for the replicas' provider."""

    def __init__(self, provider: LinkProvider):
        self._provider = provider

    def provider(self, spec: NodeSpec) -> LinkProvider:
        return self._provider


def stub_node(n: GraphNode, provider: LinkProvider, replicas: int) -> GraphNode:
    """``n`` with its replicas served by ``provider``: an async class node that the
    runtime serves like any other (a batched map becomes a map: batches form on the host)."""
    spec = n.spec
    opts = spec.options
    shape = Shape.MAP if spec.shape is Shape.BATCH else spec.shape
    stub_opts = Options(
        name=opts.name,
        budget_ms=opts.budget_ms,
        concurrency=STUB_CONCURRENCY,
        replicas=replicas,
        device="cpu",
        retries=opts.retries,
        timeout_ms=opts.timeout_ms,
        on_late=opts.on_late,
        router=opts.router,
        max_restarts=opts.max_restarts,
    )
    stub_spec = dataclasses.replace(
        spec, impl=STUB_FOR[spec.shape], is_class=True, shape=shape, is_async=True, options=stub_opts
    )
    return dataclasses.replace(n, spec=stub_spec, template=StubTemplate(provider))


class RemoteChain:
    """A chain with some nodes served elsewhere; a ``Runtime`` runs it like the original
    (and ``chains.call(original)`` inside that runtime is served by it)."""

    def __init__(self, chain: Any, graph: Graph, remotes: Mapping[str, Any], where: str = "remote"):
        self.original = getattr(chain, "original", chain)
        self.name = chain.name
        self.budget_ms = getattr(chain, "budget_ms", None)
        self.graph = graph
        self.remotes = dict(remotes)
        self.where = where

    def __repr__(self) -> str:
        return f"<chains chain {self.name} with {', '.join(self.remotes)} on {self.where}>"


def with_remotes(
    chain: Any, remotes: Mapping[str, str | list[str]], out_window: int = OUT_WINDOW
) -> RemoteChain:
    """``chain`` with each named node reached at its url(s) (``chains serve --only NODE``);
    several urls for one node make that many replicas."""
    graph: Graph = chain.graph
    names = [n.name for n in graph.nodes]
    for node in remotes:
        if node not in names:
            raise ChainError(
                f"--remote: chain {graph.name!r} has no node {node!r}; it has: {', '.join(names)}"
            )
    nodes = []
    for n in graph.nodes:
        given = remotes.get(n.name)
        if given is None:
            nodes.append(n)
            continue
        urls = [given] if isinstance(given, str) else list(given)
        for url in urls:
            if not url.startswith(("ws://", "wss://")):
                raise ChainError(f"--remote {n.name}={url}: the url must start with ws:// or wss://")
        nodes.append(stub_node(n, RemoteProvider(n.spec, urls, out_window), len(urls)))
    return RemoteChain(chain, dataclasses.replace(graph, nodes=nodes), remotes)


def links_of(rt: Any) -> dict[str, RemoteLink]:
    """The (first) remote link of each stubbed stage of a running runtime, by node name
    (tests and benchmarks read their stats)."""
    out = {}
    for st in rt.stages:
        for inst in st.replicas.instances:
            if isinstance(inst, Stub) and st.name not in out:
                out[st.name] = inst.link
    return out


__all__ = [
    "LinkProvider",
    "RemoteChain",
    "RemoteProvider",
    "Stub",
    "StubTemplate",
    "links_of",
    "stub_node",
    "with_remotes",
]
