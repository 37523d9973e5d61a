"""Replica routers: each policy's choices, on real ``Replica`` objects and a real
``ReplicaSet`` whose provider is a fake (no models, no wall-clock assertions)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import chains
from runtime.replicas import Provider, Replica, ReplicaSet
from runtime.routing import (
    LeastBusy,
    PrefixAware,
    PrefixStats,
    RoundRobin,
    Route,
    Sticky,
    block_hashes,
    make_router,
)
from tests.fakes import wait_until


def replicas(n: int, start: int = 1) -> list[Replica]:
    out = []
    for i in range(n):
        r = Replica(start + i)
        r.state = "ready"
        out.append(r)
    return out


def route(session: str = "s", tokens: list[int] | None = None) -> Route:
    return Route(session, (tokens,), tokens_of=(lambda t: t) if tokens is not None else None)


# --- simple policies ------------------------------------------------------------------


def test_make_router_names_every_policy() -> None:
    assert isinstance(make_router(None), LeastBusy)
    assert isinstance(make_router("least_busy"), LeastBusy)
    assert isinstance(make_router("round_robin"), RoundRobin)
    assert isinstance(make_router("sticky"), Sticky)
    assert isinstance(make_router("prefix"), PrefixAware)
    with pytest.raises(ValueError, match="round_robin"):
        make_router("random")


def test_least_busy_takes_fewest_inflight() -> None:
    rs = replicas(3)
    rs[0].inflight, rs[1].inflight, rs[2].inflight = 2, 0, 1
    assert LeastBusy().choose(rs, None) is rs[1]


def test_round_robin_cycles_and_survives_membership_changes() -> None:
    rr = RoundRobin()
    rs = replicas(3)
    assert [rr.choose(rs, None).id for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    # replica 2 leaves: the turn goes on to 3, then wraps, no repeats
    assert [rr.choose([rs[0], rs[2]], None).id for _ in range(3)] == [3, 1, 3]
    # a new replica 4 joins: it gets its turn in order
    rs4 = [*rs, *replicas(1, start=4)]
    assert [rr.choose(rs4, None).id for _ in range(4)] == [4, 1, 2, 3]


def test_sticky_sessions_stick_and_repin_when_their_replica_goes() -> None:
    st = Sticky()
    rs = replicas(3)
    a = st.choose(rs, route("a"))
    a.inflight += 5  # heavy load does not move a pinned session
    for _ in range(5):
        assert st.choose(rs, route("a")) is a
    b = st.choose(rs, route("b"))
    assert b is not a
    # a's replica is no longer in the ready list: re-pinned elsewhere, then sticks there
    rest = [r for r in rs if r is not a]
    a2 = st.choose(rest, route("a"))
    assert a2 in rest
    assert st.choose(rs, route("a")) is a2
    # forget drops the pins to a replica
    st.forget(a2)
    assert st.pinned("a") is None


def test_sticky_pin_table_is_bounded() -> None:
    st = Sticky(max_sessions=3)
    rs = replicas(2)
    for i in range(10):
        st.choose(rs, route(f"s{i}"))
    assert len(st._pins) == 3
    assert st.pinned("s9") is not None and st.pinned("s0") is None


# --- prefix-aware -------------------------------------------------------------------------


def test_block_hashes_chain_covers_the_prefix() -> None:
    a = list(range(40))
    b = [*list(range(16)), 999, *list(range(17, 40))]
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert len(ha) == 2  # the partial third block is left out
    assert ha[0] == hb[0]
    assert ha[1] != hb[1]
    # the same block content after a different first block hashes differently
    c = [7] * 16 + list(range(16, 32))
    assert block_hashes(c, 16)[1] != ha[1]


def test_prefix_match_wins_over_load() -> None:
    pa = PrefixAware(block_size=4, abs_threshold=4)
    rs = replicas(2)
    system = list(range(100, 140))  # 10 blocks
    first = pa.choose(rs, route("x", [*system, 1, 2, 3, 4]))
    first.inflight = 2  # busier, but within the guard's tolerance
    r = route("y", [*system, 5, 6, 7, 8, 9])
    assert pa.choose(rs, r) is first
    assert r.predicted_cached == 40  # the 10 shared blocks
    # an unrelated prompt goes to the other (less busy, fewer cached blocks) replica
    other = pa.choose(rs, route("z", list(range(500, 540))))
    assert other is not first


def test_prefix_scores_by_leading_blocks() -> None:
    pa = PrefixAware(block_size=4)
    rs = replicas(2)
    pa.remember(rs[0], list(range(8)))  # 2 blocks
    pa.remember(rs[1], list(range(16)))  # 4 blocks
    r = route("s", list(range(20)))
    assert pa.choose(rs, r) is rs[1]
    assert r.predicted_cached == 16
    # a prompt sharing only the second block with rs[0] matches nothing there
    tail_only = [50, 51, 52, 53, 4, 5, 6, 7]
    assert pa.matched(rs[0], block_hashes(tail_only, 4)) == 0


def test_imbalance_guard_overrides_prefix() -> None:
    pa = PrefixAware(block_size=4, abs_threshold=3, rel_threshold=1.5)
    rs = replicas(2)
    prompt = list(range(32))
    home = pa.choose(rs, route("a", prompt))
    away = next(r for r in rs if r is not home)
    home.inflight, away.inflight = 10, 1  # diff 9 > 3 and 10 > 1.5 * 1: imbalanced
    r = route("b", prompt)
    assert pa.choose(rs, r) is away
    assert pa.stats.guard_overrides == 1
    assert r.predicted_cached == 0
    # balanced again (difference within abs_threshold): by prefix, and since the override
    # cached the prompt on `away` too, the tie goes to the less busy of the two
    home.inflight, away.inflight = 8, 10
    assert pa.choose(rs, route("c", prompt)) is home
    # large absolute difference but within the relative bound: still by prefix
    pa2 = PrefixAware(block_size=4, abs_threshold=1, rel_threshold=1.5)
    h2 = pa2.choose(rs, route("a", prompt))
    o2 = next(r for r in rs if r is not h2)
    h2.inflight, o2.inflight = 14, 10  # diff 4 > 1 but 14 <= 1.5 * 10
    assert pa2.choose(rs, route("b", prompt)) is h2


def test_prefix_lru_is_capped_and_forgets_gone_replicas() -> None:
    pa = PrefixAware(block_size=4, capacity_blocks=5)
    rs = replicas(1)
    pa.remember(rs[0], list(range(40)))  # 10 blocks: 5 stay, the leading ones (as in the engine)
    assert len(pa._lru[rs[0].id]) == 5
    assert pa.matched(rs[0], block_hashes(list(range(40)), 4)) == 5
    pa.remember(rs[0], list(range(100, 112)))  # 3 newer blocks push out the old prompt's tail
    assert pa.matched(rs[0], block_hashes(list(range(40)), 4)) == 2
    assert pa.matched(rs[0], block_hashes(list(range(100, 112)), 4)) == 3
    pa.forget(rs[0])
    assert rs[0].id not in pa._lru


def test_prefix_reads_block_size_and_capacity_from_the_engine() -> None:
    class Engine:
        kv_block_size = 8
        kv_cache_blocks = 3

    pa = PrefixAware(block_size=4, capacity_blocks=100)
    rs = replicas(2)
    for r in rs:
        r.instance = Engine()
    r = route("s", list(range(64)))
    pick = pa.choose(rs, r)
    assert pa.block_size == 8
    assert len(pa._lru[pick.id]) == 3


def test_prefix_prediction_leaves_the_last_token_to_compute() -> None:
    pa = PrefixAware(block_size=4)
    rs = replicas(1) + replicas(1, start=2)
    prompt = list(range(16))
    pa.choose(rs, route("a", prompt))
    r = route("b", prompt)
    pa.choose(rs, r)
    assert r.predicted_cached == 12  # a fully cached 16-token prompt recomputes its last block


def test_prefix_without_tokens_is_least_busy() -> None:
    pa = PrefixAware()
    rs = replicas(2)
    rs[0].inflight = 3
    assert pa.choose(rs, route("s")) is rs[1]
    assert pa.choose(rs, None) is rs[1]
    assert pa.stats.requests == 0


def test_prefix_stats_compare_predicted_and_actual() -> None:
    st = PrefixStats()
    st.record(prompt=100, predicted=64)
    st.record(prompt=100, predicted=0)
    st.observe_actual(48, predicted=64, prompt=100)
    st.observe_actual(16, predicted=0, prompt=100)
    assert st.predicted_hit_rate == pytest.approx(0.32)
    assert st.actual_hit_rate == pytest.approx(0.32)
    assert st.abs_error_tokens == 32
    snap = st.snapshot()
    assert snap["actual_cached_tokens"] == 64 and snap["predicted_tokens"] == 64


# --- dead replicas are never chosen, through the real ReplicaSet ------------------------------


@chains.node(replicas=3)
def echo(x: str) -> str:
    return x


class FakeProvider(Provider):
    """Starts replicas instantly (or after a scripted sleep); stop is a no-op."""

    def __init__(self, start_s: float = 0.0):
        self.start_s = start_s
        self.started: list[int] = []

    async def start(self, rid: int) -> Any:
        if self.start_s:
            await anyio.sleep(self.start_s)
        self.started.append(rid)
        return f"inst-{rid}"

    async def stop(self, instance: Any) -> None:
        pass

    def is_lost(self, instance: Any, exc: BaseException) -> bool:
        return True


@pytest.mark.parametrize("policy", ["least_busy", "round_robin", "sticky", "prefix"])
async def test_lost_replica_is_never_acquired(policy: str) -> None:
    provider = FakeProvider()
    rs = ReplicaSet(echo.spec, provider, count=3, router=make_router(policy))
    await rs.start()
    # session "s" (and its prompt) is pinned / cached on the replica that then dies
    for _ in range(2):
        rs.release(rs.acquire(route("x", list(range(100, 164)))))  # another replica is warm too
    dead = rs.acquire(route("s", list(range(64))))
    rs.release(dead)
    rs.lost(dead, RuntimeError("engine died"))
    provider.start_s = 3600.0  # the rebuild never finishes during the test
    async with anyio.create_task_group() as tg:
        tg.start_soon(rs.run)
        await wait_until(lambda: dead.state == "loading", what="rebuild started")
        for i in range(30):
            r = rs.acquire(route("s" if i % 2 else f"t{i}", list(range(64))))
            assert r is not dead and r.state == "ready"
            if i % 3:
                rs.release(r)
        tg.cancel_scope.cancel()
    await rs.close()
