"""The explicit replica call (runtime/envelope.py): one Request in (arguments, session,
epoch, deadline computed once, route), one Reply out (value, usage). A provider whose
replicas are elsewhere (``local = False``) is handed the whole request, and what it
answers about usage reaches the stage's router without any node context."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import chains
from chains.context import current_context
from runtime.engine import Runtime
from runtime.envelope import Reply, Request, Usage, deadline_at
from runtime.placement import Placed, Placement
from runtime.replicas import Provider

pytestmark = pytest.mark.anyio


def test_the_deadline_is_the_chains_less_downstream_tightened_by_the_nodes_budget() -> None:
    assert deadline_at(10.0, 2.0, None, 0.0) == 8.0
    assert deadline_at(10.0, 2.0, 3.0, 1.0) == 4.0  # the node's own budget is tighter
    assert deadline_at(10.0, 2.0, 30.0, 1.0) == 8.0
    assert deadline_at(float("inf"), 0.0, None, 5.0) == float("inf")


class Elsewhere:
    """A replica in another place: it sees only the request, never a node context."""

    def __init__(self, seen: list[tuple[Request, Any]]):
        self.seen = seen

    async def serve(self, req: Request) -> Reply:
        self.seen.append((req, current_context()))
        (prompt,) = req.args
        return Reply(prompt.upper(), Usage(cached_tokens=16))


class ElsewhereProvider(Provider):
    local = False

    def __init__(self, seen: list[tuple[Request, Any]]):
        self.seen = seen

    async def start(self, rid: int) -> Elsewhere:
        return Elsewhere(self.seen)

    async def stop(self, instance: Any) -> None:
        return None

    def is_lost(self, instance: Any, exc: BaseException) -> bool:
        return False

    def tokens_of(self) -> Any:
        return lambda prompt: [ord(c) for c in prompt]


@chains.node(name="upper", replicas=2, router="prefix", budget_ms=5000)
async def upper(prompt: str) -> str:
    raise AssertionError("served elsewhere, never here")


@chains.chain(budget_ms=60000)
def shouting(prompt: str):
    return upper(prompt)


async def test_a_replica_elsewhere_gets_the_request_and_its_reply_carries_usage() -> None:
    seen: list[tuple[Request, Any]] = []
    placed = Placed(shouting, Placement({"upper": lambda spec, template: ElsewhereProvider(seen)}, "test"))
    async with Runtime(placed) as rt:
        t0 = anyio.current_time()
        for i in range(3):
            assert await rt.call(f"You are terse. {i}") == f"YOU ARE TERSE. {i}"
        stats = rt.stages[0].metrics.prefix
        assert stats is not None and (stats.observed, stats.actual_cached_tokens) == (3, 48)
    assert [req.args for req, _ in seen] == [(f"You are terse. {i}",) for i in range(3)]
    for req, ctx in seen:
        assert ctx is None or not hasattr(ctx, "deadline")
        assert req.session and req.route is not None
        # The node's 5 s budget is tighter than the chain's 60 s: the request says so.
        assert t0 < req.deadline <= anyio.current_time() + 5.0
