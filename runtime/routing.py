"""Replica routers: given one item and the replicas that can serve it, choose one.

A router is a policy, nothing more: the replica set (runtime/replicas.py) hands it
only ready replicas (never a loading, lost or draining one) and counts the load.
``LeastBusy`` is the default. Policies keep what they learn (a session's replica,
the prefixes sent where) and are told when a replica leaves the set (``forget``).

- ``LeastBusy``: fewest calls in flight; the right default for stateless models.
- ``RoundRobin``: each replica in turn; spreads work evenly when calls cost the same.
- ``Sticky``: a session stays on one replica (its per-replica state, a warm cache),
  re-pinned to the least busy one when its replica leaves.
- ``PrefixAware``: an LLM's prompt goes to the replica that most likely holds its
  leading KV blocks in its prefix cache, unless that would unbalance the load.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import xxhash

from chains.spec import NodeSpec


class Replica(Protocol):
    """What a router sees of a replica (runtime/replicas.py has the real one)."""

    @property
    def id(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    @property
    def instance(self) -> Any: ...


class Route:
    """What a router may look at for one item: its session and its arguments.

    ``tokens`` is filled lazily by a node that exposes ``route_tokens(*args)`` (an LLM's
    prompt token ids, for prefix-aware routing); other policies never pay for it.
    ``predicted_cached`` is set by a prefix-aware router: the prompt tokens it expects
    the chosen replica to find in its cache (the node compares it with what the engine
    reports, see ``PrefixStats.observe_actual``)."""

    __slots__ = ("_tokens", "_tokens_of", "args", "predicted_cached", "session")

    def __init__(self, session: str, args: tuple[Any, ...] = (), tokens_of: Any = None):
        self.session = session
        self.args = args
        self._tokens_of = tokens_of
        self._tokens: Sequence[int] | None = None
        self.predicted_cached: int | None = None

    @property
    def tokens(self) -> Sequence[int] | None:
        if self._tokens is None and self._tokens_of is not None:
            self._tokens = self._tokens_of(*self.args)
        return self._tokens


class Router(Protocol):
    """A routing policy. ``learns``: it keeps what it saw (sessions, prefixes), so it must
    be asked even when only one replica is ready, or it starts cold when a second comes."""

    learns: bool

    @property
    def stats(self) -> PrefixStats | None:
        """A prefix-aware router's predicted vs engine-cached tokens; None for the others."""
        ...

    def choose(self, replicas: Sequence[Replica], route: Route | None) -> Replica:
        """One of ``replicas`` (never empty, all ready) for the item ``route`` describes."""
        ...

    def forget(self, replica: Replica) -> None:
        """``replica`` left the set (stopped, lost, scaled in): drop what is known of it."""
        ...


def _least_busy(replicas: Sequence[Replica]) -> Replica:
    best = replicas[0]
    for r in replicas:
        if r.inflight < best.inflight:
            best = r
    return best


class LeastBusy:
    """The replica with the fewest calls in flight (the first of equals)."""

    learns = False
    stats = None

    def choose(self, replicas: Sequence[Replica], route: Route | None) -> Replica:
        return _least_busy(replicas)

    def forget(self, replica: Replica) -> None:
        pass


class RoundRobin:
    """Each ready replica in turn. The turn follows replica ids, not list positions, so a
    replica joining or leaving does not make the others skip or repeat a turn."""

    learns = False
    stats = None

    def __init__(self) -> None:
        self._last = -1  # id of the replica served last

    def choose(self, replicas: Sequence[Replica], route: Route | None) -> Replica:
        after = [r for r in replicas if r.id > self._last]
        pick = min(after or replicas, key=lambda r: r.id)
        self._last = pick.id
        return pick

    def forget(self, replica: Replica) -> None:
        pass


class Sticky:
    """A session's items all go to one replica (the least busy when it first came).

    Why: a replica may hold per-session state worth reusing (an LLM's KV cache of
    the conversation so far). A session whose replica is gone or not ready is
    pinned afresh. The pin table is an LRU capped at ``max_sessions``, since the
    router is not told when a session ends."""

    learns = True
    stats = None

    def __init__(self, max_sessions: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self._pins: OrderedDict[str, Replica] = OrderedDict()

    def choose(self, replicas: Sequence[Replica], route: Route | None) -> Replica:
        if route is None:
            return _least_busy(replicas)
        pinned = self._pins.get(route.session)
        if pinned is not None and any(r is pinned for r in replicas):
            self._pins.move_to_end(route.session)
            return pinned
        pick = _least_busy(replicas)
        self._pins[route.session] = pick
        self._pins.move_to_end(route.session)
        while len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)
        return pick

    def forget(self, replica: Replica) -> None:
        for s in [s for s, r in self._pins.items() if r is replica]:
            del self._pins[s]

    def pinned(self, session: str) -> Replica | None:
        return self._pins.get(session)


def block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """One hash per full block of ``tokens``, chained: block i's hash covers blocks 0..i
    (xxh3-64 of the block's token ids, seeded with the previous block's hash), so equal
    hashes mean equal prefixes, as in the engine's own prefix cache. A partial last block
    is left out: engines cache only full blocks."""
    out: list[int] = []
    h = 0
    buf = array("q", tokens).tobytes()
    step = block_size * 8
    for i in range(len(tokens) // block_size):
        h = xxhash.xxh3_64_intdigest(buf[i * step : (i + 1) * step], seed=h)
        out.append(h)
    return out


class PrefixStats:
    """Prefix-routing figures, as counters a stage can export.

    ``predicted_tokens``: prompt tokens the router expected to be cached where it sent them;
    ``prompt_tokens``: all prompt tokens it routed; ``actual_cached_tokens``: what the engines
    reported (``observe_actual``, e.g. from vLLM's ``RequestOutput.num_cached_tokens``);
    ``abs_error_tokens``: the sum of |predicted - actual| over requests observed with their
    prediction; ``guard_overrides``: choices where the load guard overrode a prefix match."""

    __slots__ = (
        "abs_error_tokens",
        "actual_cached_tokens",
        "guard_overrides",
        "observed",
        "observed_prompt_tokens",
        "predicted_tokens",
        "prompt_tokens",
        "requests",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.predicted_tokens = 0
        self.observed = 0
        self.observed_prompt_tokens = 0
        self.actual_cached_tokens = 0
        self.abs_error_tokens = 0
        self.guard_overrides = 0

    def record(self, prompt: int, predicted: int) -> None:
        self.requests += 1
        self.prompt_tokens += prompt
        self.predicted_tokens += predicted

    def observe_actual(self, n: int, predicted: int | None = None, prompt: int | None = None) -> None:
        """The engine served a request with ``n`` prompt tokens from its cache. Pass the
        route's ``predicted_cached`` (and prompt length) to track the prediction error."""
        self.observed += 1
        self.actual_cached_tokens += n
        if prompt is not None:
            self.observed_prompt_tokens += prompt
        if predicted is not None:
            self.abs_error_tokens += abs(predicted - n)

    @property
    def predicted_hit_rate(self) -> float:
        return self.predicted_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def actual_hit_rate(self) -> float:
        den = self.observed_prompt_tokens or self.prompt_tokens
        return self.actual_cached_tokens / den if den else 0.0

    def snapshot(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "predicted_tokens": self.predicted_tokens,
            "actual_cached_tokens": self.actual_cached_tokens,
            "abs_error_tokens": self.abs_error_tokens,
            "guard_overrides": self.guard_overrides,
            "predicted_hit_rate": self.predicted_hit_rate,
            "actual_hit_rate": self.actual_hit_rate,
        }


class PrefixAware:
    """Send a prompt where its leading KV blocks most likely are already cached.

    Per replica, an LRU of the block hashes routed there (capped at ``capacity_blocks``,
    near the replica's KV cache size in blocks: beyond that the engine has evicted them
    too). A replica's score is its number of leading blocks matched; the best score wins,
    the least busy breaking ties. Two fallbacks to least busy (ties to the replica with
    the fewest cached blocks, which spreads new prefixes): nothing matches, or the load
    is imbalanced. The guard, like SGLang's, routes by prefix only while
    ``max_load - min_load <= abs_threshold`` or ``max_load <= rel_threshold * min_load``.

    Block size and capacity are read from a replica's instance when it exposes
    ``kv_block_size`` / ``kv_cache_blocks`` (ints), else the constructor's values hold.
    Items without tokens (no ``route_tokens`` on the node) go to the least busy replica.
    """

    learns = True

    def __init__(
        self,
        block_size: int = 16,
        capacity_blocks: int = 4096,
        abs_threshold: int = 4,
        rel_threshold: float = 1.5,
    ) -> None:
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        self.abs_threshold = abs_threshold
        self.rel_threshold = rel_threshold
        self.stats = PrefixStats()
        self._lru: dict[int, OrderedDict[int, None]] = {}  # replica id -> block hashes
        self._cap: dict[int, int] = {}
        self._block_size_read = False

    # --- learning about replicas ----------------------------------------------------------
    def _engine_facts(self, r: Replica) -> None:
        inst = r.instance
        if not self._block_size_read:
            bs = getattr(inst, "kv_block_size", None)
            if isinstance(bs, int) and bs > 0:
                self.block_size = bs
                self._block_size_read = True
        cap = getattr(inst, "kv_cache_blocks", None)
        self._cap[r.id] = cap if isinstance(cap, int) and cap > 0 else self.capacity_blocks

    def _blocks(self, r: Replica) -> OrderedDict[int, None]:
        lru = self._lru.get(r.id)
        if lru is None:
            self._engine_facts(r)
            lru = self._lru[r.id] = OrderedDict()
        return lru

    def remember(self, replica: Replica, tokens: Sequence[int]) -> None:
        """Record that ``replica`` now caches ``tokens``' full blocks. ``choose`` does it for
        the prompt; a node may call it again with prompt + generated ids after a request,
        since the engine caches those blocks too (the next turn's prompt starts with them
        when its history is kept as token ids, not re-rendered from text)."""
        self._remember(replica, block_hashes(tokens, self.block_size))

    def _remember(self, replica: Replica, hashes: list[int]) -> None:
        lru = self._blocks(replica)
        # Tail first, so a prompt's leading blocks are the most recent: under pressure the
        # engine, too, evicts a finished request's last blocks before its shared prefix.
        for h in reversed(hashes):
            lru[h] = None
            lru.move_to_end(h)
        cap = self._cap.get(replica.id, self.capacity_blocks)
        while len(lru) > cap:
            lru.popitem(last=False)

    def forget(self, replica: Replica) -> None:
        self._lru.pop(replica.id, None)
        self._cap.pop(replica.id, None)

    # --- choosing ---------------------------------------------------------------------------
    def matched(self, replica: Replica, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` the router believes ``replica`` holds."""
        lru = self._blocks(replica)
        n = 0
        for h in hashes:
            if h not in lru:
                break
            n += 1
        return n

    def balanced(self, replicas: Sequence[Replica]) -> bool:
        loads = [r.inflight for r in replicas]
        hi, lo = max(loads), min(loads)
        return hi - lo <= self.abs_threshold or hi <= self.rel_threshold * lo

    def _spread(self, replicas: Sequence[Replica]) -> Replica:
        return min(replicas, key=lambda r: (r.inflight, len(self._blocks(r))))

    def choose(self, replicas: Sequence[Replica], route: Route | None) -> Replica:
        tokens = route.tokens if route is not None else None
        if not tokens:
            return _least_busy(replicas)
        for r in replicas:
            self._blocks(r)  # reads the block size from the first engine that tells it
        hashes = block_hashes(tokens, self.block_size)
        scores = [self.matched(r, hashes) for r in replicas]
        best = max(scores)
        if best == 0:
            pick, got = self._spread(replicas), 0
        elif not self.balanced(replicas):
            pick = _least_busy(replicas)
            got = scores[replicas.index(pick)]
            if got < best:
                self.stats.guard_overrides += 1
        else:
            tied = [r for r, s in zip(replicas, scores, strict=True) if s == best]
            pick = _least_busy(tied)
            got = best
        # An engine recomputes at least the prompt's last token: a fully cached prompt
        # whose length is a multiple of the block size yields one block fewer.
        predicted = min(got * self.block_size, ((len(tokens) - 1) // self.block_size) * self.block_size)
        self._remember(pick, hashes)
        self.stats.record(len(tokens), predicted)
        assert route is not None
        route.predicted_cached = predicted
        return pick


ROUTERS = ("least_busy", "round_robin", "sticky", "prefix")


def router_for(spec: NodeSpec) -> Router:
    """The router of a node: its ``router=``; unset, prefix-aware for a node that exposes
    its prompt's tokens (an LLM) and may have several replicas, least busy otherwise."""
    opts = spec.options
    name = opts.router
    if name is None:
        many = opts.replicas > 1 or (opts.max_replicas or 1) > 1
        if many and spec.is_class and callable(getattr(spec.impl, "route_tokens", None)):
            name = "prefix"
    return make_router(name)


def make_router(name: str | None) -> Router:
    """The router a node's ``router=`` option names (``None``: least busy)."""
    if name is None or name == "least_busy":
        return LeastBusy()
    if name == "round_robin":
        return RoundRobin()
    if name == "sticky":
        return Sticky()
    if name == "prefix":
        return PrefixAware()
    raise ValueError(f"unknown router {name!r}: choose one of {', '.join(ROUTERS)}")
