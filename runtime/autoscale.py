"""Budget-driven autoscaling of one node's replicas.

Why not scale on ongoing requests like Ray Serve, or on concurrency like Knative:
we know more. Every item carries a deadline and every stage has learned its service
time ``t(b) = a + k*b`` (runtime/costmodel.py), so the replicas a load needs follow
from the arrival rate, and an item that misses (served late or shed) is direct
evidence that there are too few, not a proxy for it. The rule, once per tick:

- **demand**: per stage on this replica set, the arrival rate (items served, shed,
  failed or dropped since the last tick, plus the queue's growth) times the replica
  time one item takes at the batch size the stage's budget allows, ``t(b) / (b*c)``
  with ``c`` calls in flight per replica. ``need = ceil(demand / target_utilization)``.
- **up at once** when items start to miss (late or shed counts rise, the mean queue
  wait passes the stage's share of its budget, or the queue needs longer than that
  share to drain at the learned cost, so its last items are about to miss): to
  ``need``, and by one at least. A replica still loading is capacity in progress:
  while one loads, misses alone add no more (the cold start is already the answer);
  only a larger ``need`` does. Without misses, a ``need`` above the target for
  ``up_confirm`` ticks in a row scales up too.
- **down slowly**: one replica at a time, only when no miss and no cold start happened
  for ``down_window`` ticks, the largest ``need`` over that window is below the
  target, and ``down_delay_s`` passed since the last change.
- never below ``min_replicas`` nor above ``max_replicas``.

``decide(now)`` reads the observations and returns the count; ``step`` applies it;
``run`` does so every ``tick_s`` until its owner cancels it. The replica set does the
rest the same way for local replicas and Ray actors (``ReplicaSet.scale_to``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from chains.spec import NodeSpec
from runtime.batcher import Batcher
from runtime.costmodel import CostModel
from runtime.logs import get_logger
from runtime.metrics import StageMetrics

if TYPE_CHECKING:
    from runtime.replicas import ReplicaSet


@dataclass(frozen=True)
class Decision:
    """One change of the replica count, for logs and plots."""

    t: float
    replicas: int
    reason: str


class ScaledStage(Protocol):
    """What the autoscaler reads of a stage (runtime/stage.py)."""

    name: str
    spec: NodeSpec
    metrics: StageMetrics
    cost: CostModel
    budget_s: float | None

    @property
    def batcher(self) -> Batcher | None: ...


class _StageView:
    """The counters of one stage at the previous tick, to take differences."""

    __slots__ = ("done", "last_rate", "missed", "queued", "rate", "stage", "wait_count", "wait_sum")

    def __init__(self, stage: ScaledStage):
        self.stage = stage
        self.done = 0
        self.missed = 0
        self.queued = 0
        self.wait_sum = 0.0
        self.wait_count = 0
        self.rate = 0.0  # arrivals per second, smoothed
        self.last_rate = 0.0  # over the last tick alone
        self.done, self.missed, self.queued, self.wait_sum, self.wait_count = self.read()

    def read(self) -> tuple[int, int, int, float, int]:
        m = self.stage.metrics
        done = m.items + m.shed + m.errors + m.stale
        return done, m.late + m.shed, queued(self.stage), m.queue_wait.sum, m.queue_wait.count


def queued(stage: ScaledStage) -> int:
    """Items waiting at a stage now: its batcher's inbox, or its admission queue."""
    batcher = stage.batcher
    return len(batcher) if batcher is not None else stage.metrics.queued


class Autoscaler:
    """Decides and applies the replica count of one replica set, from its stages."""

    def __init__(
        self,
        replicas: ReplicaSet,
        stages: Sequence[ScaledStage],
        *,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        down_window: int = 30,
        down_delay_s: float | None = None,
        up_confirm: int = 2,
        rate_alpha: float = 0.5,
        wait_share: float = 0.5,
    ):
        self.replicas = replicas
        self.stages = list(stages)
        self.tick_s = tick_s
        self.clock = clock
        opts = replicas.spec.options
        self.min = opts.min_replicas or 1
        self.max = opts.max_replicas or max(self.min, opts.replicas)
        self.utilization = opts.target_utilization
        self.down_window = down_window
        self.down_delay_s = down_window * tick_s if down_delay_s is None else down_delay_s
        self.up_confirm = up_confirm
        self.rate_alpha = rate_alpha
        self.wait_share = wait_share  # a stage's queue may take this share of its budget
        self.views = [_StageView(s) for s in self.stages]
        self.log: list[Decision] = []
        self.need = 0  # the last tick's estimate, for plots and tests
        self.demand = 0.0
        self._needs: deque[int] = deque(maxlen=down_window)
        self._last: float | None = None
        self._last_change = -math.inf
        self._calm_since: float | None = None  # no miss, no cold start since then
        self._over = 0  # ticks in a row with need above the target
        self._was_loading = False
        self._grace_until = -math.inf  # misses until then are a scale-up's backlog, not news
        budgets = [b for s in self.stages if (b := s.budget_s)]
        self.grace_s = max([2 * tick_s, *budgets])
        self._logger = get_logger(node=replicas.name, component="autoscaler")

    # --- observing --------------------------------------------------------------------------
    def _per_item_s(self, stage: ScaledStage) -> float | None:
        """Replica-seconds one item costs at the batch size the stage's budget allows."""
        c = max(1, stage.spec.concurrency)
        cost = stage.cost
        batcher = stage.batcher
        if cost.n == 0:
            svc = stage.metrics.service
            mean = svc.mean
            return mean / c if mean is not None else None
        if batcher is None:
            return cost.predict(1) / c
        b, budget = 1, stage.budget_s
        # A batch waits for the one before it, then runs: both fit in the budget.
        limit = budget * (1.0 - self.wait_share) if budget else math.inf
        for size in range(batcher.max_size, 0, -1):
            if cost.predict(size) <= limit:
                b = size
                break
        return cost.predict(b) / (b * c)

    def observe(self, now: float) -> tuple[float, float, list[str]]:
        """Demand (replicas busy at 100%), smoothed and over the last tick alone, and the
        reasons to think items are missing or about to."""
        dt = now - self._last if self._last is not None else 0.0
        self._last = now
        ready = max(1, self.replicas.counts()["ready"])
        demand, recent, misses = 0.0, 0.0, []
        for v in self.views:
            done, missed, q, wsum, wcount = v.read()
            budget = v.stage.budget_s
            per_item = self._per_item_s(v.stage)
            if dt > 0:
                arrivals = max(0, (done - v.done) + (q - v.queued))
                rate = v.last_rate = arrivals / dt
                v.rate = rate if v.rate == 0.0 else self.rate_alpha * rate + (1 - self.rate_alpha) * v.rate
                if missed > v.missed:
                    misses.append(f"{v.stage.name}: {missed - v.missed} late or shed")
                if budget and wcount > v.wait_count:
                    wait = (wsum - v.wait_sum) / (wcount - v.wait_count)
                    if wait > budget * self.wait_share:
                        misses.append(f"{v.stage.name}: queue wait {wait * 1000:.0f} ms")
                # the queue now needs longer than its share of the budget to drain: its last
                # items will miss, so do not wait for them to
                if budget and per_item is not None and q * per_item / ready > budget * self.wait_share:
                    misses.append(
                        f"{v.stage.name}: {q} queued, {q * per_item / ready * 1000:.0f} ms to drain"
                    )
            v.done, v.missed, v.queued, v.wait_sum, v.wait_count = done, missed, q, wsum, wcount
            if per_item is not None:
                demand += v.rate * per_item
                recent += v.last_rate * per_item
        return demand, recent, misses

    # --- deciding ---------------------------------------------------------------------------
    def decide(self, now: float) -> int:
        """The replica count for now (the set's target when nothing should change)."""
        demand, recent, misses = self.observe(now)
        counts = self.replicas.counts()
        loading = counts["loading"] > 0
        if misses and not loading:  # a step in the load: size from the latest tick, not the past
            demand = max(demand, recent)
        target = self.replicas.target
        need = math.ceil(demand / self.utilization - 1e-9) if demand > 0 else self.min
        self.need, self.demand = need, demand
        self._needs.append(need)
        if self._was_loading and not loading:
            self._grace_until = now + self.grace_s  # the backlog of the cold start drains
        if misses or loading or self._was_loading:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        self._was_loading = loading
        self._over = self._over + 1 if need > target else 0

        n, reason = target, ""
        if misses:
            if need > target:
                n, reason = need, "missing: " + "; ".join(misses)
            elif not loading and now >= self._grace_until:
                n, reason = target + 1, "missing: " + "; ".join(misses)
        elif self._over >= self.up_confirm:
            n, reason = need, f"demand {demand:.2f} replicas at {self.utilization:.0%} needs {need}"
        elif (
            not loading
            and self._calm_since is not None
            and len(self._needs) == self.down_window
            and now - self._calm_since >= self.down_window * self.tick_s
            and now - self._last_change >= self.down_delay_s
            and max(self._needs) < target
        ):
            n, reason = target - 1, f"calm for {self.down_window} ticks, need {max(self._needs)}"
        n = min(self.max, max(self.min, n))
        if n != target:
            self._last_change = now
            self._over = 0
            if n > target:
                self._grace_until = now + self.grace_s
            self.log.append(Decision(now, n, reason))
            self._logger.info("scale", replicas=n, was=target, reason=reason)
        return n

    def step(self, now: float | None = None) -> int:
        """Decide and apply once."""
        n = self.decide(self.clock() if now is None else now)
        if n != self.replicas.target:
            self.replicas.scale_to(n)
        return n

    async def run(self) -> None:
        """Tick forever (the owner's task group cancels it)."""
        self.log.append(Decision(self.clock(), self.replicas.target, "start"))
        self.decide(self.clock())  # a baseline for the first differences
        while True:
            await anyio.sleep(self.tick_s)
            self.step()
