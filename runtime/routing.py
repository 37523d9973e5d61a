"""Replica routers: given one item and the replicas that can serve it, choose one.

A router is a policy, nothing more: the replica set (runtime/replicas.py) hands it
only ready replicas (never a loading, lost or draining one) and counts the load.
``LeastBusy`` is the default. Policies keep what they learn (a session's replica,
the prefixes sent where) and are told when a replica leaves the set (``forget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runtime.replicas import Replica


class Route:
    """What a router may look at for one item: its session and its arguments.

    ``tokens`` is filled lazily by a node that exposes ``route_tokens(*args)`` (an LLM's
    prompt token ids, for prefix-aware routing); other policies never pay for it."""

    __slots__ = ("_tokens", "_tokens_of", "args", "session")

    def __init__(self, session: str, args: tuple[Any, ...] = (), tokens_of: Any = None):
        self.session = session
        self.args = args
        self._tokens_of = tokens_of
        self._tokens: Sequence[int] | None = None

    @property
    def tokens(self) -> Sequence[int] | None:
        if self._tokens is None and self._tokens_of is not None:
            self._tokens = self._tokens_of(*self.args)
        return self._tokens


class Router(Protocol):
    def choose(self, replicas: Sequence[Replica], route: Route | None) -> Replica:
        """One of ``replicas`` (never empty, all ready) for the item ``route`` describes."""
        ...

    def forget(self, replica: Replica) -> None:
        """``replica`` left the set (stopped, lost, scaled in): drop what is known of it."""
        ...


class LeastBusy:
    """The replica with the fewest calls in flight (the first of equals)."""

    def choose(self, replicas: Sequence[Replica], route: Route | None) -> Replica:
        best = replicas[0]
        for r in replicas:
            if r.inflight < best.inflight:
                best = r
        return best

    def forget(self, replica: Replica) -> None:
        pass


def make_router(name: str | None) -> Router:
    """The router a node's ``router=`` option names (``None``: least busy)."""
    if name is None or name == "least_busy":
        return LeastBusy()
    raise ValueError(f"unknown router {name!r}")
