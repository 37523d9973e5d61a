"""The envelope around every item on an edge; users never see it.

It carries what the runtime needs to keep budgets and turns: the item's sequence
number in its session, when the input that caused it arrived (``origin``), its
deadline, and the turn epoch it belongs to. Immutable, so fan-out shares one.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Envelope(msgspec.Struct, frozen=True, gc=False):
    payload: Any
    seq: int
    origin: float  # time.monotonic() when the causing input arrived
    deadline: float  # time.monotonic() by which the chain's output is due (inf: none)
    epoch: int  # the session's turn epoch when the causing input arrived


class Usage(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """What serving one item used, as the replica that served it reports it (in this
    process, across a remote link, from a Ray actor): ``cached_tokens`` is how many
    prompt tokens an LLM engine served from its prefix cache (vLLM's
    ``num_cached_tokens``), which a prefix-aware router checks its prediction against."""

    cached_tokens: int | None = None


class Request:
    """One item going to a replica, the same in process, over a remote link and on Ray:
    its arguments, the session and turn epoch it belongs to, its deadline at this node
    (``time.monotonic()``; inf: none), computed once (``deadline_at``), and what the
    router sees of it (``route``, or None). A plain slotted object, not a Struct: a
    map's runner builds one per task and refills it per item (benchmarks/overhead.py)."""

    __slots__ = ("args", "deadline", "epoch", "grace_s", "route", "session")

    def __init__(
        self,
        args: tuple[Any, ...],
        session: str,
        epoch: int,
        deadline: float,
        route: Any = None,
        grace_s: float = 0.0,
    ):
        self.args = args
        self.session = session
        self.epoch = epoch
        self.deadline = deadline
        self.route = route
        # how much later than its deadline it may queue for a slot (``FOLLOWER_GRACE_S``)
        self.grace_s = grace_s


class Reply:
    """What a replica answers for one item: its value (for a streaming map, the outputs
    went by as they came and ``value`` is None) and what serving it used (``usage``,
    such as an LLM engine's cached prompt tokens), carried back across the wire."""

    __slots__ = ("usage", "value")

    def __init__(self, value: Any = None, usage: Usage | None = None):
        self.value = value
        self.usage = usage


# A turn's items after the first at a node queue for its slots as if due this much later
# than their deadline: the session already has this node's first output of the turn (a
# reply's first sentence playing, say), while another session's first item keeps its
# user waiting. Only the order of waiters changes (the deadline, lateness and shedding
# stay the item's own), and by a bounded amount, so a follower is never starved.
FOLLOWER_GRACE_S = 0.5


def deadline_at(chain_deadline: float, downstream_s: float, budget_s: float | None, now: float) -> float:
    """The one place an item's deadline at a node is computed: the chain's deadline less
    what the nodes after this one need, tightened by the node's own budget from ``now``.
    The runtime calls it once per item per node; a remote host gets the caller's result
    as the time left (``budget_ms``) and tightens it by its own budget the same way."""
    d = chain_deadline - downstream_s
    if budget_s is not None and now + budget_s < d:
        d = now + budget_s
    return d
