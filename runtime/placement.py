"""Where each node's replicas run: a placement, not a rewritten graph.

A runtime serves a chain's real graph: every stage keeps its node's own spec (its
router, its autoscaling bounds, its budget, its ``route_tokens``). A ``Placement``
says, per node, which provider serves that node's replicas: this process (the
default, ``LocalProvider``), links to hosts at fixed URLs
(``transport.remote.stubs.remote_placement``) or Ray actors
(``transport.remote.ray.ray_placement``). Whatever the provider, the stage serves
an item the same way (runtime/stage.py), the replica set supervises and routes the
same way (runtime/replicas.py), and the autoscaler scales the same way.

``Placed`` pairs a chain with its placement, for the callers that hand a runtime
one object (``chains run --remote/--ray``, ``chains.running(chain, ray=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chains.errors import ChainError
from chains.graph import Graph, GraphNode
from chains.spec import NodeSpec
from runtime.batcher import Policy
from runtime.metrics import StageMetrics
from runtime.replicas import LocalProvider, Provider, ReplicaSet
from runtime.routing import router_for
from runtime.stage import Stage

ProviderFactory = Callable[[NodeSpec, Any], Provider]  # (the node's spec, its template)


class Placement:
    """Which provider serves each named node's replicas; the others run here."""

    def __init__(self, providers: Mapping[str, ProviderFactory] | None = None, where: str = "local"):
        self.providers: dict[str, ProviderFactory] = dict(providers or {})
        self.where = where

    def provider(self, n: GraphNode) -> Provider:
        make = self.providers.get(n.name)
        return make(n.spec, n.template) if make is not None else LocalProvider(n.spec, n.template)

    def merged(self, other: Placement) -> Placement:
        """This placement with ``other``'s nodes placed by ``other``."""
        where = other.where if self.where == "local" else f"{self.where}+{other.where}"
        return Placement({**self.providers, **other.providers}, where)

    def check(self, graph: Graph) -> None:
        names = [n.name for n in graph.nodes]
        for node in self.providers:
            if node not in names:
                raise ChainError(f"chain {graph.name!r} has no node {node!r}; it has: {', '.join(names)}")

    def __repr__(self) -> str:
        return f"<placement {self.where}: {', '.join(self.providers) or 'all local'}>"


class Placed:
    """A chain and where its nodes run; a runtime serves it as the chain itself (and
    ``chains.call(chain)`` inside that runtime is served by it)."""

    chain: Any
    placement: Placement

    def __init__(self, chain: Any, placement: Placement):
        if isinstance(chain, Placed):
            placement = chain.placement.merged(placement)
            chain = chain.chain
        placement.check(chain.graph)
        self.chain = chain
        self.placement = placement

    @property
    def name(self) -> str:
        return str(self.chain.name)

    @property
    def graph(self) -> Graph:
        graph: Graph = self.chain.graph
        return graph

    @property
    def budget_ms(self) -> float | None:
        return getattr(self.chain, "budget_ms", None)

    @property
    def fn(self) -> Any:
        return getattr(self.chain, "fn", None)

    def __repr__(self) -> str:
        return f"<chains chain {self.name} {self.placement!r}>"


def make_stages(
    chain_name: str,
    nodes: list[GraphNode],
    stage_metrics: Callable[[str], StageMetrics],
    batch_policy: Policy = "deadline",
    placement: Placement | None = None,
) -> tuple[list[Stage], list[ReplicaSet]]:
    """One stage per graph node; one replica set per distinct implementation, its
    replicas from the provider the placement names for it."""
    placement = placement or Placement()
    sets: dict[int, ReplicaSet] = {}
    stages = []
    for n in nodes:
        key = id(n.template) if n.template is not None else id(n.spec)
        rs = sets.get(key)
        if rs is None:
            provider = placement.provider(n)
            rs = sets[key] = ReplicaSet(n.spec, provider, count=provider.replicas, router=router_for(n.spec))
        stages.append(Stage(chain_name, n, rs, stage_metrics(n.name), batch_policy))
    return stages, list(sets.values())


__all__ = ["Placed", "Placement", "ProviderFactory", "make_stages"]
