"""The event-driven replay of one node under one policy (no sleeping, no clock)."""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Protocol

from scratch_stage.simulate.inputs import NodeJob, SimConfig, grid_ceil, replay_start
from scratch_stage.simulate.node import Action, Costs, SimNode

# Events at one instant, in this order: jobs end (releasing holds), copies finish (a job
# starting at that instant already reads the cache), jobs start, then the rebalance runs.
TRIGGERS = ("tick", "start", "end", "copy")


@dataclass(frozen=True)
class Inputs:
    """What a rebalance pass measures: heat (bytes/s) and demand (expected bytes queued jobs
    will read)."""

    heat: Mapping[str, float]
    demand: Mapping[str, float]
    prospect: Mapping[str, float] = field(default_factory=dict)  # demand undiscounted


class Policy(Protocol):
    """A caching policy for one node; `triggers` says when it is asked (see TRIGGERS).

    A policy planning at ticks may also have `repeats(node, heat, demand, prospect) ->
    bool`: True if its answer is the same at every tick whose heat and demand lie within
    the given (low, high) ranges per dataset and whose prospect stays at most the given
    highest, the node unchanged; the replay then skips those ticks. With `heat_only =
    True` it is given the heat ranges only (empty demand and prospect).

    A policy with `running_demand = True` gets in its demand what running jobs will read
    after a copy lands (`SimNode.running_demand`), as the rebalance computes it.

    A policy with `own_inputs = True` reads neither heat nor demand at ticks (it gets
    None; the queue oracle computes its own): it is asked at every tick, but for those
    its `next_pass(node, now, step) -> float` (the next tick to visit, if no job starts
    or ends and no copy lands before it) proves would repeat its answer.

    A policy may instead have `steady_until(node, now) -> float`: its answer at NOW is its
    answer at every time before the result if no job starts or ends and no copy lands (it
    does not read heat or demand); the replay then skips those ticks (with tolerance 0).
    """

    triggers: frozenset[str]

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None: ...


Ranges = Mapping[str, tuple[float, float]]
Highs = Mapping[str, float]
# How far ahead (in ticks) a pass's answer is tried to be proven to repeat: the shortest
# first (most failures are cheap), then the longest, then the middle.
PROOF_TICKS = (2, 240, 16)


def replay_node(node: SimNode, policy: Policy) -> Costs:
    """Replay NODE's jobs under POLICY; the rebalance runs at every tick where it could act."""
    return _Replay(node, policy).run()


class _Replay:
    def __init__(self, node: SimNode, policy: Policy) -> None:
        self.node = node
        self.policy = policy
        self.config: SimConfig = node.config
        self.ticks = "tick" in policy.triggers
        # A policy with its own loop (scratch_manager: 5 s) ticks at that step.
        self.step: float = getattr(policy, "interval", None) or node.config.interval
        self.memo: tuple[int, Inputs] | None = None
        self.repeats: Callable[[SimNode, Ranges, Ranges, Highs], bool] | None = getattr(
            policy, "repeats", None
        )
        self.steady: Callable[[SimNode, float], float] | None = (
            getattr(policy, "steady_until", None) if node.config.tolerance == 0.0 else None
        )
        # The first tick at which a steady policy's last answer may no longer hold, even
        # with heat and demand unchanged (its answer moves with time: belady, future-bytes).
        self.due = math.inf
        # The node's version when a steady policy's tick pass changed nothing: while it
        # stays, that answer holds until `due` whatever heat and demand do.
        self.calm = -1
        # The policy reads the running jobs' reads after a landing in the demand (`ours`,
        # as the rebalance does); the others do not, and are replayed as before.
        self.running: bool = getattr(policy, "running_demand", False)
        self.own: bool = getattr(policy, "own_inputs", False)
        # Its `repeats` reads the heat ranges only (scratch_manager): no demand measured.
        self.heat_only: bool = getattr(policy, "heat_only", False)

    def run(self) -> Costs:
        node, jobs = self.node, self.node.work.jobs
        ends: list[tuple[float, int]] = []
        next_start, next_tick = 0, math.inf
        if self.ticks and jobs:
            next_tick = grid_ceil(replay_start(node.work, node.unplaced), self.step)
        first_tick = next_tick
        # A fleet history changes when any node's job ends (the fleet's array history, when
        # an element of an array placed here does): an event here too, first at its
        # instant (the estimates of the passes at and after it count that job).
        history = node.history_times()
        h = 0
        while next_start < len(jobs) or ends:
            t_start = jobs[next_start].start if next_start < len(jobs) else math.inf
            t_end = ends[0][0] if ends else math.inf
            t_copy = node.inflight[2] if node.inflight else math.inf
            t_history = history[h] if h < len(history) else math.inf
            t = min(t_start, t_end, t_copy, next_tick, t_history)
            if t_history == t:
                h = bisect.bisect_right(history, t, h)
                node.see_history(t)
                if self.ticks:
                    next_tick = min(next_tick, max(grid_ceil(t, self.step), first_tick))
                continue
            if t_end == t:
                job = jobs[heapq.heappop(ends)[1]]
                node.end_job(job, t)
                self._ask(t, "end", job)
            elif t_copy == t:
                node.finish_copy(t)
                self._ask(t, "copy", None)
            elif t_start == t:
                job = jobs[next_start]
                heapq.heappush(ends, (job.end, next_start))
                next_start += 1
                node.start_job(job, t)
                self._ask(t, "start", job)
            else:
                next_tick = self._tick(t)
                continue
            if self.ticks:
                next_tick = min(next_tick, grid_ceil(t, self.step))
        return node.costs

    def _ask(self, now: float, trigger: str, job: NodeJob | None) -> None:
        if trigger in self.policy.triggers:
            self._act(self.policy.decide(self.node, now, trigger, job, None), now)

    def _act(self, action: Action | None, now: float) -> None:
        self.node.costs.decisions += 1
        if action is not None:
            self.node.apply(action, now)

    def _tick(self, now: float) -> float:
        """Run a pass at NOW unless its inputs equal the last pass's; the next useful tick."""
        node = self.node
        if self.steady is not None and self.calm == node.version and now < self.due:
            # Nothing happened since a pass that changed nothing, and its answer holds
            # until `due`: a pass at any tick before would give it again (with no effect).
            return self.due
        if self.own:
            version = node.version
            self._act(self.policy.decide(node, now, "tick", None, None), now)
            if node.version != version:
                return now + self.step
            return float(self.policy.next_pass(node, now, self.step))  # type: ignore[attr-defined]
        heat = node.heat(now)
        inputs = Inputs(heat, *node.demand_parts(now, heat if self.running else None))
        if (
            self.memo is None
            or not _same(self.memo, (node.version, inputs), self.config)
            or now >= self.due
        ):
            before_version = node.version
            self._act(self.policy.decide(node, now, "tick", None, inputs), now)
            self.memo = (node.version, inputs)
            if node.version != before_version:
                return now + self.step
            if self.steady is not None:
                self.due = self._due(now, self.steady(node, now))
                self.calm = node.version
                return self.due
        upcoming = min(node.unplaced.next_change(now), node.next_placement())
        if (
            now - node.last_boundary < self.config.period
            or not node.demand_settled(now)
            or (self.running and node.running_moves(now))
        ):
            return self._proven(now, node.next_placement())  # heat or demand still moving
        settled = grid_ceil(upcoming, self.step) if upcoming < math.inf else math.inf
        return min(settled, self.due)  # a steady policy's answer may change before then

    def _due(self, now: float, until: float) -> float:
        """The first tick not surely before UNTIL (when the answer given at NOW may stop
        holding), and after NOW."""
        if until == math.inf:
            return math.inf
        margin = 1e-9 * abs(until) + 1e-3  # float rounding in the policy's arithmetic
        return max(grid_ceil(until - margin, self.step), now + self.step)

    def _proven(self, now: float, placement: float) -> float:
        """The next tick whose pass could differ from this one's, if no job starts or ends
        and no copy lands before it (each of those is followed by a tick anyway); at most
        the tick of the next PLACEMENT here."""
        step = self.step
        if self.repeats is None:
            return now + step
        limit = grid_ceil(placement, step) if placement < math.inf else math.inf
        proven = now
        for ticks in PROOF_TICKS:
            last = min(now + ticks * step, limit - step)
            if last <= proven:
                continue
            node = self.node
            if self.heat_only:  # it reads neither demand nor prospect
                holds = self.repeats(node, node.heat_bounds(now, last), {}, {})
            else:
                holds = self.repeats(
                    node, *node.input_bounds(now, last), node.prospect_high(now, last)
                )
            if holds:
                proven = last
            elif proven == now:
                break  # not even the shortest
        return proven + step


def _same(old: tuple[int, Inputs], new: tuple[int, Inputs], config: SimConfig) -> bool:
    """Same state, and heat and demand equal within the configured relative tolerance."""
    if old[0] != new[0]:
        return False
    tol = config.tolerance
    if old[1].prospect != new[1].prospect:
        return False  # steps, not drifts: compared exactly
    for a, b in ((old[1].heat, new[1].heat), (old[1].demand, new[1].demand)):
        if tol == 0.0:
            if a != b:
                return False
        elif any(abs(a.get(k, 0.0) - b.get(k, 0.0)) > tol * abs(a.get(k, 0.0)) for k in {*a, *b}):
            return False
    return True
