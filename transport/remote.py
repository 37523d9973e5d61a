"""Remote stages: a node of a chain served by another process.

    chains serve demos/voice.py --only VLLMChat --port 9001          # the node's process
    chains run demos/voice.py --remote VLLMChat=ws://gpu-box:9001    # the main process

On the main process ``with_remotes(chain, {"node": url})`` returns a chain whose
node is a stub: a one-replica class node whose ``setup()`` opens one websocket to
the node's process (``transport.remote_host``) and whose calls travel over it as
msgpack frames (``transport.link``), multiplexed across every session. The
runtime runs the stub like any node, so sessions see the same outputs, errors,
control events and interruptions as in-process:

- a map or batched map becomes one ``Call`` per item (batches are formed on the
  host, across every caller), a streaming map a ``Call`` whose outputs stream
  back; closing it (an interrupt cancels it) sends ``Cancel``;
- a stream node becomes an ``Open`` per session, its input items ``Feed`` frames.

Credits bound everything in flight (see ``transport.link``): when the host is
slow, the stub waits for a credit, the runtime's bounded edges fill, and the
producer slows down; no buffer grows on either side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from chains.errors import ChainError
from chains.graph import Graph
from chains.spec import Options, Shape
from transport.remote_host import hosting, serve_node
from transport.remote_link import OUT_WINDOW, RemoteLink

STUB_CONCURRENCY = 4096  # the stub's own limit: credits are the real one


# --- the stub node the runtime runs --------------------------------------------------------------
class _Stub:
    """One replica of a remote node: the link is opened in ``setup`` and closed in ``close``."""

    def __init__(self, link: RemoteLink):
        self.link = link

    async def setup(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        await self.link.stop()


class MapStub(_Stub):
    async def __call__(self, *args: Any) -> Any:
        return await self.link.call(args)


class StreamMapStub(_Stub):
    def __call__(self, *args: Any) -> AsyncIterator[Any]:
        return self.link.call_stream(args)  # the runtime closes it (aclosing) on interrupt


class StreamStub(_Stub):
    def __call__(self, *args: Any) -> AsyncIterator[Any]:
        return self.link.open_stream(args)


class _StubTemplate:
    """What the runtime's replica set instantiates for the stubbed node."""

    def __init__(self, cls: type[_Stub], link: RemoteLink):
        self.cls = cls
        self.link = link

    def instantiate(self) -> _Stub:
        return self.cls(self.link)


_STUB_FOR = {
    Shape.MAP: MapStub,
    Shape.BATCH: MapStub,
    Shape.STREAM_MAP: StreamMapStub,
    Shape.STREAM: StreamStub,
}


class RemoteChain:
    """A chain with some nodes served remotely; a ``Runtime`` runs it like the original."""

    def __init__(self, chain: Any, graph: Graph, remotes: dict[str, str]):
        self.original = chain
        self.name = chain.name
        self.budget_ms = getattr(chain, "budget_ms", None)
        self.graph = graph
        self.remotes = remotes

    def __repr__(self) -> str:
        return f"<chains chain {self.name} with remote {', '.join(self.remotes)}>"


def with_remotes(chain: Any, remotes: Mapping[str, str], out_window: int = OUT_WINDOW) -> RemoteChain:
    """``chain`` with each named node reached at its url (``chains serve --only NODE``)."""
    graph: Graph = chain.graph
    names = [n.name for n in graph.nodes]
    for node in remotes:
        if node not in names:
            raise ChainError(
                f"--remote: chain {graph.name!r} has no node {node!r}; it has: {', '.join(names)}"
            )
    nodes = []
    for n in graph.nodes:
        url = remotes.get(n.name)
        if url is None:
            nodes.append(n)
            continue
        if not url.startswith(("ws://", "wss://")):
            raise ChainError(f"--remote {n.name}={url}: the url must start with ws:// or wss://")
        spec = n.spec
        link = RemoteLink(url, spec, n.name, out_window)
        shape = Shape.MAP if spec.shape is Shape.BATCH else spec.shape
        opts = spec.options
        stub_opts = Options(
            name=opts.name,
            budget_ms=opts.budget_ms,
            concurrency=STUB_CONCURRENCY,
            device="cpu",
            on_late=opts.on_late,
        )
        stub_spec = dataclasses.replace(
            spec, impl=_STUB_FOR[spec.shape], is_class=True, shape=shape, is_async=True, options=stub_opts
        )
        nodes.append(
            dataclasses.replace(n, spec=stub_spec, template=_StubTemplate(_STUB_FOR[spec.shape], link))
        )
    stubbed = dataclasses.replace(graph, nodes=nodes)
    return RemoteChain(chain, stubbed, dict(remotes))


def links_of(rt: Any) -> dict[str, RemoteLink]:
    """The remote links of a running runtime, by node name (tests and benchmarks read stats)."""
    out = {}
    for st in rt.stages:
        for inst in st.replicas.instances:
            if isinstance(inst, _Stub):
                out[st.name] = inst.link
    return out


__all__ = ["RemoteChain", "RemoteLink", "hosting", "links_of", "serve_node", "with_remotes"]
