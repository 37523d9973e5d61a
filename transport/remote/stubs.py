"""The replicas a runtime gets for a node served elsewhere: stubs over links, and
the providers that make them.

``remote_placement(chain, {"node": url})`` places a node on hosts at fixed URLs
(``chains serve --only NODE``): the runtime keeps the node's real spec (router,
autoscaling, budget, ``route_tokens``) and its replica set gets its replicas from a
``RemoteProvider``. Each replica is a stub over one ``RemoteLink``; the stage serves
items on it like on a local replica (``Stage.serve`` -> replica -> link -> host),
so sessions see the same outputs, errors, control events and interruptions as
in-process:

- a map or batched map becomes one ``Call`` per item (batches are formed on the
  host, across every caller), a streaming map a ``Call`` whose outputs stream
  back; closing it (an interrupt cancels it) sends ``Cancel``;
- a stream node becomes an ``Open`` per session, its input items ``Feed`` frames.

A provider owns the links' tasks: its ``run`` holds a task group for the runtime's
lifetime (started in the runtime's own task group), and ``start`` runs each new
link in it. A replica whose link drops is lost (``is_lost``); the replica set
rebuilds it through ``start`` again, with backoff. ``transport.remote.ray``
subclasses the provider to find its URLs on Ray actors.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from chains.errors import ChainError, ReplicaLost
from chains.graph import Graph
from chains.spec import NodeSpec, Shape
from runtime.envelope import Reply, Request
from runtime.placement import Placed, Placement, ProviderFactory
from runtime.replicas import Provider, ReplicaSet
from runtime.routing import PrefixAware, router_for
from transport.remote.caller import OUT_WINDOW, RemoteLink

STUB_CONCURRENCY = 4096  # a stub's own limit per replica: the link's credits are the real one


# --- the stubs the runtime calls ----------------------------------------------------------------
class Stub:
    """One replica of a remote node: the runtime calls it like the node itself."""

    def __init__(self, link: RemoteLink):
        self.link = link

    def alive(self) -> bool:
        return self.link.alive


class MapStub(Stub):
    async def serve(self, req: Request) -> Reply:
        """The item's request (arguments, session, epoch, deadline) over the link; the
        reply carries the value and what serving it used (cached tokens)."""
        return await self.link.call(req)


class StreamMapStub(Stub):
    def serve_stream(self, req: Request, reply: Reply) -> AsyncIterator[Any]:
        """The outputs as they come; ``reply.usage`` is filled when the call ends."""
        return self.link.call_stream(req, reply)  # the runtime closes it (aclosing) on interrupt


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
class LinkProvider(Provider):
    """Replicas that are links to hosts; subclasses say which URL replica ``rid`` uses.

    The runtime runs ``run`` in its task group for its lifetime: the links' tasks are
    children of that, and end with the runtime."""

    local = False
    concurrency = STUB_CONCURRENCY  # per replica: the link's credits are the real limit
    replicas: int | None = None  # how many to start; None: the node's own count

    def __init__(self, spec: NodeSpec, template: Any = None, out_window: int = OUT_WINDOW):
        self.spec = spec
        self.template = template
        self.node = spec.name
        self.stub_cls = STUB_FOR[spec.shape]
        self.out_window = out_window
        self.links: set[RemoteLink] = set()
        self._tg: TaskGroup | None = None
        self._set: ReplicaSet | None = None
        self._router_instance: Any = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the links' tasks until cancelled (the runtime starts this in its task group
        before the first replica, and cancels it when it closes: every link ends). A node
        routed by prefix whose ``route_tokens`` needs an instance gets one here, in this
        process: constructed (an LLM's tokenizer), never set up (no engine)."""
        if self._needs_router_instance():
            assert self.template is not None
            self._router_instance = await anyio.to_thread.run_sync(self.template.instantiate)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self.links.clear()

    def _needs_router_instance(self) -> bool:
        spec = self.spec
        if (
            not spec.is_class
            or self.template is None
            or not callable(getattr(spec.impl, "route_tokens", None))
        ):
            return False
        raw = inspect.getattr_static(spec.impl, "route_tokens")
        return not isinstance(raw, staticmethod | classmethod) and isinstance(router_for(spec), PrefixAware)

    def tokens_of(self) -> Callable[..., Any] | None:
        """The driver-side instance's ``route_tokens`` (read per item: the instance is made
        when the provider runs)."""
        if not self._needs_router_instance():
            return None

        def tokens(*args: Any) -> Any:
            inst = self._router_instance
            return None if inst is None else inst.route_tokens(*args)

        return tokens

    def watch(self, replicas: ReplicaSet) -> None:
        """The replica set this provider serves: a link that drops reports its replica lost
        at once (not at its next call), so no new item is sent to it."""
        self._set = replicas

    def session_closed(self, instances: list[Any], session_id: str) -> None:
        """The runtime closed a session: each host drops its state for it."""
        for inst in instances:
            inst.link.session_closed(session_id)

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

    def __init__(
        self, spec: NodeSpec, template: Any = None, *, urls: list[str], out_window: int = OUT_WINDOW
    ):
        super().__init__(spec, template, out_window)
        self.urls = urls
        if not spec.options.autoscaled:
            self.replicas = len(urls)  # one replica per url
        self._assigned: dict[int, str] = {}

    async def url_for(self, rid: int) -> str:
        url = self._assigned.get(rid)
        if url is None:
            url = self._assigned[rid] = self.urls[len(self._assigned) % len(self.urls)]
        return url


def remote_placement(
    chain: Any, remotes: Mapping[str, str | list[str]], out_window: int = OUT_WINDOW
) -> Placement:
    """Each named node of ``chain`` served by the host(s) at its url(s); several urls for
    one node make that many replicas (unless the node's own options ask for more)."""
    graph: Graph = chain.graph
    names = [n.name for n in graph.nodes]
    providers: dict[str, ProviderFactory] = {}
    for node, given in remotes.items():
        if node not in names:
            raise ChainError(
                f"--remote: chain {graph.name!r} has no node {node!r}; it has: {', '.join(names)}"
            )
        urls = [given] if isinstance(given, str) else list(given)
        for url in urls:
            if not url.startswith(("ws://", "wss://")):
                raise ChainError(f"--remote {node}={url}: the url must start with ws:// or wss://")
        providers[node] = functools.partial(RemoteProvider, urls=urls, out_window=out_window)
    return Placement(providers, where="remote")


def with_remotes(chain: Any, remotes: Mapping[str, str | list[str]], out_window: int = OUT_WINDOW) -> Placed:
    """``chain`` with each named node reached at its url(s) (``chains serve --only NODE``),
    for ``Runtime(...)``: the graph is the chain's own, only where replicas run changes."""
    inner = chain.chain if isinstance(chain, Placed) else chain
    return Placed(chain, remote_placement(inner, remotes, out_window))


def links_of(rt: Any) -> dict[str, RemoteLink]:
    """The (first) remote link of each stubbed stage of a running runtime, by node name
    (tests and benchmarks read their stats)."""
    out = {}
    for st in rt.stages:
        for inst in st.replicas.instances:
            if isinstance(inst, Stub) and st.name not in out:
                out[st.name] = inst.link
    return out


__all__ = ["LinkProvider", "RemoteProvider", "Stub", "links_of", "remote_placement", "with_remotes"]
