"""The policies compared: ours (the production planner) and the baselines.

Every policy works through the same executor (SimNode.apply): held copies are never
evicted, copies run one at a time per node, capacity is checked when a copy reserves space.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Callable

from scratch_stage.policy import planner
from scratch_stage.simulate import offline
from scratch_stage.simulate.engine import TRIGGERS, Inputs, Policy
from scratch_stage.simulate.inputs import NodeJob, replay_start, visible_from
from scratch_stage.simulate.node import Action, SimNode

MIB = 1 << 20
TICK = frozenset({"tick"})
ON_START = frozenset({"start"})
# Demand and prospect, per dataset (bytes).
DemandParts = tuple[Mapping[str, float], Mapping[str, float]]


class Ours:
    """The production planner, called exactly as the rebalance calls it."""

    triggers = TICK
    running_demand = True  # its demand counts running jobs' reads, as the rebalance's does

    def __init__(
        self, params: planner.PlanParams | None = None,
        value: planner.ValueFunction | None = None,
    ) -> None:  # fmt: skip
        self.params = params
        self.value = value

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        assert inputs is not None
        params = self.params or self.default_params(node)
        value = self.value or planner.default_value
        # Looked up at call time on the module: the simulator runs the planner the
        # rebalance runs, whatever replaced it (tests check this with a spy).
        result = planner.plan(
            node.plan_input(), inputs.heat, inputs.demand, node.capacity,
            params=params, value=value, prospect=inputs.prospect,
        )  # fmt: skip
        return Action(result.evict, result.stage)

    @staticmethod
    def default_params(node: SimNode) -> planner.PlanParams:
        """The configuration's defaults, as the rebalance passes them: this horizon, and
        copies at the replay's bandwidth (a node's measured copy rate)."""
        return planner.PlanParams(horizon=node.config.horizon, copy_rate=node.config.bandwidth)

    def repeats(
        self, node: SimNode, heat: Mapping[str, tuple[float, float]],
        demand: Mapping[str, tuple[float, float]],
        prospect: Mapping[str, float] | None = None,
    ) -> bool:  # fmt: skip
        """The planner's answer repeats for all heat and demand within these ranges (and
        no speculative copy is possible with prospects up to PROSPECT).

        Only for the built-in value (it grows with heat and demand, so each dataset's value
        ranges between its value at the lows and at the highs), with any knobs (the proof
        only holds when no knapsack's answer could move, whatever its limits).
        """
        if self.value is not None:
            return False
        params = self.params or self.default_params(node)
        node_input = node.plan_input()
        fresh = node_input.fresh
        bounds = {}
        # Without heat or a fresh copy, the value is demand - size: <= 0 (absent from the
        # bounds) while demand stays <= size.
        sizes = node.sizes
        wanted = (
            n for n, (_, high) in demand.items() if n in sizes and high > sizes[n] * (1 - 1e-9)
        )
        for name in {*heat, *wanted, *node_input.cached, *node_input.inflight}:
            size = node.sizes.get(name)
            if size is None:
                continue
            h_low, h_high = heat.get(name, (0.0, 0.0))
            d_low, d_high = demand.get(name, (0.0, 0.0))
            cached = name in fresh
            low = planner.default_value(planner.View(name, size, h_low, d_low, cached), params)
            high = planner.default_value(planner.View(name, size, h_high, d_high, cached), params)
            slack = 1e-9 * (abs(low) + abs(high) + size) + 1e-6  # float rounding
            bounds[name] = (low - slack, high + slack)
        return planner.plan_holds(node_input, bounds, node.capacity, prospect)


class NoCache:
    """Everything is read from slow storage."""

    triggers: frozenset[str] = frozenset()

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        return None


class AdmitOnAccess:
    """Classic demand caching: a missed dataset is copied, lowest-priority copies make room."""

    triggers = ON_START

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        assert job is not None
        evict: list[str] = []
        stage: list[str] = []
        for name, _ in job.reads:
            if node.busy(name):
                self.hit(node, name)
                continue
            victims = self.make_room(node, name, evict)
            if victims is None:
                continue
            evict.extend(victims)
            stage.append(name)
            self.admit(node, name)
        return Action(tuple(evict), tuple(stage), replace=False) if evict or stage else None

    def make_room(self, node: SimNode, name: str, already: list[str]) -> list[str] | None:
        """Victims (lowest priority first) freeing room for NAME; None if it cannot fit."""
        size = node.sizes[name]
        if size > node.capacity:
            return None
        free = node.capacity - node.committed + sum(node.sizes[n] for n in already)
        candidates = sorted(
            (n for n in node.cached if node.evictable(n) and n not in already),
            key=lambda n: (self.priority(node, n), n),
        )
        victims: list[str] = []
        for victim in candidates:
            if free >= size:
                break
            victims.append(victim)
            free += node.sizes[victim]
        if free < size:
            return None
        for victim in victims:
            self.evicted(node, victim)
        return victims

    def priority(self, node: SimNode, name: str) -> float:
        return node.last_use.get(name, -math.inf)

    def hit(self, node: SimNode, name: str) -> None:
        """NAME was requested and is cached (or on its way)."""

    def admit(self, node: SimNode, name: str) -> None:
        """NAME was missed and will be copied."""

    def evicted(self, node: SimNode, name: str) -> None:
        """NAME leaves the cache."""


class LRU(AdmitOnAccess):
    """Least recently used (by job start) goes first."""


class LFUDA(AdmitOnAccess):
    """LFU with dynamic aging: priority = L + frequency; L rises to each victim's priority."""

    def __init__(self) -> None:
        self.aging = 0.0
        self.frequency: dict[str, int] = {}
        self.key: dict[str, float] = {}

    def weight(self, node: SimNode, name: str) -> float:
        return 1.0

    def _touch(self, node: SimNode, name: str) -> None:
        self.frequency[name] = self.frequency.get(name, 0) + 1
        self.key[name] = self.aging + self.frequency[name] * self.weight(node, name)

    hit = _touch
    admit = _touch

    def priority(self, node: SimNode, name: str) -> float:
        return self.key.get(name, self.aging)

    def evicted(self, node: SimNode, name: str) -> None:
        self.aging = max(self.aging, self.key.pop(name, self.aging))
        self.frequency.pop(name, None)


class GDSF(LFUDA):
    """GreedyDual-Size-Frequency (cost 1): priority = L + frequency / size."""

    def weight(self, node: SimNode, name: str) -> float:
        return 1.0 / max(node.sizes[name], 1)


def knapsack(items: Sequence[tuple[str, int, float]], capacity: int) -> set[str]:
    """Exact 0/1 knapsack over integer weights: ITEMS are (name, weight, value)."""
    if sum(weight for _, weight, value in items if value > 0) <= capacity:
        return {name for name, _, value in items if value > 0}  # everything fits: same answer
    # The planner's branch and bound, exact on these integer weights (the DP's optimum),
    # and far faster on a handful of items; the DP below if it runs out of nodes.
    views = [planner.View(name, weight, 0.0, 0.0, False) for name, weight, _ in items]
    values = {name: value for name, _, value in items}
    order = sorted(views, key=lambda v: (-values[v.name] / max(v.size, 1), v.name))
    # Its answer within 500 nodes is its answer within 20 000; if it needs more, an
    # optimum that is the only one is what any exact search returns (found by the
    # dynamic programmes); only ties go on to the search as before, so the answer never
    # changes. (500, not 2000 as before: the programmes became cheaper than the search.)
    found = planner.choose_search(order, values, capacity, 500)
    if found is not None:
        return found
    forward = _best_by_weight(items, capacity)
    optimum = _optimum(items, forward, capacity)
    if unique_optimum(items, optimum, capacity, forward):
        return optimum
    return search_then_dp(items, order, values, capacity)


def search_then_dp(
    items: Sequence[tuple[str, int, float]],
    order: list[planner.View],
    values: dict[str, float],
    capacity: int,
) -> set[str]:
    """The planner's branch and bound (20 000 nodes), then the exact DP if it gives up."""
    found = planner.choose_search(order, values, capacity, 20_000)
    if found is not None:
        return found
    best = [0.0] * (capacity + 1)
    taken: list[bytearray] = []
    for _, weight, value in items:
        if weight == 0:
            best = [b + value for b in best]
            taken.append(bytearray([1]) * (capacity + 1))
            continue
        shifted = [b + value for b in best[: capacity + 1 - weight]]
        tail = best[weight:]
        taken.append(bytearray([0]) * weight + bytearray(map(operator.gt, shifted, tail)))
        best = best[:weight] + list(map(max, tail, shifted))
    chosen: set[str] = set()
    c = capacity
    for (name, weight, _), row in zip(reversed(items), reversed(taken)):
        if row[c]:
            chosen.add(name)
            c -= weight
    return chosen


# The best values by weight of a list of items, as a step function of the weight: the
# weights at which it rises (ascending, from 0) and its value from each on. It holds the
# dense table's values exactly (the same float sums), in tens of points where the table
# has capacity + 1.
Frontier = tuple[list[int], list[float]]


def _best_by_weight(items: Sequence[tuple[str, int, float]], capacity: int) -> list[Frontier]:
    """best[j]: the most that ITEMS[:j] (name, weight, value) are worth within each weight
    up to CAPACITY (`_at(best[j], c)`), as the dynamic programme's row j would hold it:
    row j at c is row j-1 at c or row j-1 at c - w plus v, whichever is more. Only the
    weights at which a row rises are kept (merging the last row with itself shifted)."""
    weights, values = [0], [0.0]
    best = [(weights, values)]
    for _, w, v in items:
        if w > capacity:
            best.append((weights, values))
            continue
        k = bisect.bisect_right(weights, capacity - w)
        s_weights = [x + w for x in weights[:k]]
        s_values = list(map(v.__add__, values[:k]))
        new_w: list[int] = []
        new_v: list[float] = []
        i = j = 0
        n = len(weights)
        while i < n or j < k:
            if j >= k or (i < n and weights[i] < s_weights[j]):
                x, y = weights[i], values[i]
                i += 1
            elif i >= n or s_weights[j] < weights[i]:
                x, y = s_weights[j], s_values[j]
                j += 1
            else:  # the same weight: the row's rule, row j-1 if not less
                x, a, b = weights[i], values[i], s_values[j]
                i += 1
                j += 1
                y = a if a >= b else b
            if not new_v or y > new_v[-1]:  # a step up (the step function is nondecreasing)
                new_w.append(x)
                new_v.append(y)
        weights, values = new_w, new_v
        best.append((weights, values))
    return best


def _at(best: Frontier, weight: int) -> float:
    """The most its items are worth within WEIGHT (>= 0)."""
    weights, values = best
    return values[bisect.bisect_right(weights, weight) - 1]


def _combined(before: Frontier, after: Frontier, room: int) -> float:
    """The most a subset of BEFORE's items and one of AFTER's are worth within ROOM:
    max over c of before(c) + after(room - c), the same float as over every c (it is
    reached where BEFORE rises: between two of those before(c) stays and after(room - c)
    can only fall)."""
    b_weights, b_values = before
    a_weights, a_values = after
    best = -math.inf
    k = len(a_weights) - 1
    for x, y in zip(b_weights, b_values):
        if x > room:
            break
        while a_weights[k] > room - x:
            k -= 1
        total = y + a_values[k]
        if total > best:
            best = total
    return best


def _optimum(
    items: Sequence[tuple[str, int, float]], best: Sequence[Frontier], capacity: int
) -> set[str]:
    """An optimal subset, read back from _best_by_weight's rows."""
    chosen: set[str] = set()
    c = capacity
    for j in range(len(items), 0, -1):
        if _at(best[j], c) != _at(best[j - 1], c):
            name, w, _ = items[j - 1]
            chosen.add(name)
            c -= w
    return chosen


def unique_optimum(
    items: Sequence[tuple[str, int, float]], chosen: set[str], capacity: int,
    forward: Sequence[Frontier] | None = None,
) -> bool:  # fmt: skip
    """CHOSEN (names of ITEMS: name, integer weight, value) fits and is worth more, by
    more than rounding, than every other subset that fits.

    Every other subset differs from CHOSEN in some item, so it suffices that the best
    subset without each chosen item, and the best with each other item, are worth less.
    Those come from the best values by weight of the items before and after each one
    (two dynamic programmes over the weights, one forward, one backward).
    """
    if sum(w for n, w, _ in items if n in chosen) > capacity:
        return False
    if any(n not in chosen and v <= 0 for n, w, v in items):
        items = [(n, w, v) for n, w, v in items if n in chosen or v > 0]  # never taken
        forward = None
    if any(n in chosen and v <= 0 for n, _, v in items):
        return False
    worth = sum(v for n, _, v in items if n in chosen)
    margin = 1e-9 * abs(worth) + 1e-6
    if forward is None:
        forward = _best_by_weight(items, capacity)
    backward = _best_by_weight(items[::-1], capacity)
    count = len(items)
    for j, (name, w, v) in enumerate(items):
        before, after = forward[j], backward[count - 1 - j]
        if name in chosen:  # the best subset without it
            other = _combined(before, after, capacity)
        elif w > capacity:
            continue
        else:  # the best subset with it
            other = v + _combined(before, after, capacity - w)
        if other > worth - margin:
            return False
    return True


def reconcile(node: SimNode, chosen: Sequence[str]) -> Action:
    """Evict every unheld copy not in CHOSEN; copy CHOSEN's missing ones in that order."""
    wanted = set(chosen)
    evict = tuple(sorted(n for n in node.cached if n not in wanted and node.evictable(n)))
    stage = tuple(n for n in chosen if n not in node.cached)
    return Action(evict, stage)


class ScratchManager:
    """The seed prototype: heat (+1 MiB/s if cached) by size, knapsack over capacity/1000.

    It loops every 5 s (its own interval, whatever --interval says). Sizes are floored to
    units, so a dataset smaller than a unit weighs nothing: the prototype overfills. Its
    copy then fails for lack of room (the executor refuses the reservation) and, like the
    real daemon, it blacklists that dataset: never copied again on this node. It had no
    demand input.
    """

    triggers = TICK
    units = 1000
    interval = 5.0
    heat_only = True  # `repeats` reads the heat ranges only (it had no demand input)

    def __init__(self) -> None:
        self.blacklist: set[str] = set()
        self.chosen: set[str] | None = None  # the last pass's knapsack answer

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        assert inputs is not None
        self.blacklist.update(node.refused)
        unit = max(1, node.capacity // self.units)
        items = []
        for name in sorted({*(n for n, h in inputs.heat.items() if h > 0), *node.cached}):
            size = node.sizes[name]  # the rest are worth 0: never items
            if name in self.blacklist and name not in node.cached:
                continue
            value = inputs.heat.get(name, 0.0) + (MIB if name in node.cached else 0.0)
            if value > 0 and size // unit <= self.units:
                items.append((name, size // unit, value))
        chosen = knapsack(items, self.units)
        self.chosen = chosen
        order = sorted(chosen, key=lambda n: (-inputs.heat.get(n, 0.0), n))
        return reconcile(node, order)

    def repeats(
        self, node: SimNode, heat: Mapping[str, tuple[float, float]],
        demand: Mapping[str, tuple[float, float]], prospect: Mapping[str, float],
    ) -> bool:  # fmt: skip
        """Its answer repeats while every dataset that could be worth something surely
        is and all of them fit (the knapsack takes them all), and the heat ranges of
        those to copy are disjoint (their order cannot change).

        When they do not all fit: while the last pass's answer stays the knapsack's only
        optimum for every value in the ranges (unique_optimum), with its datasets to copy
        surely worth something and their heat ranges disjoint. Any exact knapsack then
        returns it, so skipping those passes changes nothing.
        """
        if any(n not in self.blacklist for n in node.refused):
            return False  # a refusal since the last pass: the blacklist grows
        unit = max(1, node.capacity // self.units)
        weight = 0
        to_copy = []
        unsure = False
        items: list[tuple[str, int, float, float]] = []  # name, units, lowest, highest value
        for name in {*(n for n, (_, high) in heat.items() if high > 0), *node.cached}:
            if name in self.blacklist and name not in node.cached:
                continue
            low, high = heat.get(name, (0.0, 0.0))
            extra = MIB if name in node.cached else 0.0
            units = node.sizes[name] // unit
            if name not in node.cached:
                if low <= 1e-9 * high:
                    unsure = True  # may be worth nothing at some tick
                to_copy.append((low, high, name))
            if units <= self.units:
                weight += units
                items.append((name, units, low + extra, high + extra))
        if weight <= self.units:
            if unsure:
                return False
            to_copy.sort()
            return all(a[1] < b[0] for a, b in zip(to_copy, to_copy[1:]))
        chosen = self.chosen
        if chosen is None:
            return False
        copying = sorted((low, high) for low, high, name in to_copy if name in chosen)
        if any(low <= 1e-9 * high for low, high in copying):
            return False  # a chosen copy may be worth nothing (not an item) at some tick
        if any(a[1] >= b[0] for a, b in zip(copying, copying[1:])):
            return False
        # Against the answer, the worst case: its items at their lowest, the rest at
        # their highest (an item that may vanish is then simply not taken).
        worst = [(n, w, low if n in chosen else high) for n, w, low, high in sorted(items)]
        return unique_optimum(worst, chosen, self.units)


class AgedUses:
    """Uses and queued jobs, decayed by age; the cache filled by score, not score per byte.

    score = (uses + stickiness x queued) / (1 + age / age_scale); smaller first on ties;
    anything without uses or queued jobs is not kept. (Formerly `htcache`; this score has
    no source in HTCondor, whose cache daemon is built on leases, requirement matching
    and BitTorrent replication, so it is named for what it is.)
    """

    triggers = TICK

    def __init__(self, stickiness: float = 1.0, age_scale: float = 3600.0) -> None:
        self.stickiness = stickiness
        self.age_scale = age_scale
        self._used: list[tuple[str, int, int, float]] = []  # name, size, uses, last use
        self._used_version = -1
        self._last: tuple[int, list[str]] = (-1, [])  # the node's version, the ranking

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        assert inputs is not None
        ranked = self.ranked(node, now, inputs.demand)
        if node.version == self._last[0] and ranked == self._last[1]:
            # Nothing happened here since the last pass, its answer changed nothing, and
            # the ranking is the same: so is the answer, and applying it changes nothing.
            return None
        self._last = (node.version, ranked)
        return reconcile(node, fill(node, ranked))

    def ranked(self, node: SimNode, now: float, demand: Mapping[str, float]) -> list[str]:
        """Every dataset with uses or queued jobs, by score (highest first), then size."""
        if self._used_version != node.version:  # uses and last uses change with the node
            self._used_version = node.version
            self._used = [
                (name, size, node.uses[name], node.last_use[name])
                for name, size in node.sizes.items() if node.uses.get(name, 0) > 0
            ]  # fmt: skip
        k, scale, get = self.stickiness, self.age_scale, demand.get
        # score = (uses + k x queued) / (1 + age / scale)
        keyed = [
            (-((count + k * get(name, 0.0)) / (1.0 + (now - last) / scale)), size, name)
            for name, size, count, last in self._used
        ]
        sizes, counts = node.sizes, node.uses
        for name, queued in demand.items():  # never used: age 0
            if counts.get(name, 0) == 0 and name in sizes and k * queued > 0:
                keyed.append((-(k * queued / 1.0), sizes[name], name))
        keyed.sort()
        return [name for _, _, name in keyed]


def fill(node: SimNode, ranked: Sequence[str]) -> list[str]:
    """Held copies and the copy in flight, then RANKED greedily while they fit."""
    forced = [n for n in node.cached if not node.evictable(n)]
    if node.inflight is not None:
        forced.append(node.inflight[0])
    sizes = node.sizes
    free = node.capacity - sum(sizes[n] for n in forced)
    chosen = list(forced)
    taken = set(forced)
    for name in ranked:
        size = sizes[name]
        if size <= free and name not in taken:
            chosen.append(name)
            taken.add(name)
            free -= size
    return chosen


class Belady:
    """Offline, size-blind reference with the node's whole future: keep the soonest-needed.

    At every tick and job start, end and copy completion it wants, by next use, every
    dataset whose remaining reads on this node pay for a copy (more bytes than its size;
    any at all if it is cached), while they fit; the rest is evicted, farthest next use
    first (Belady's rule). Belady's rule is optimal for equal-size pages and free
    fetches; with datasets of 0.1-38 TB and copies that cost their size it is neither
    optimal nor a bound ("better than Belady" says little).
    """

    triggers = frozenset(TRIGGERS)

    def __init__(self) -> None:
        self.future: dict[str, tuple[list[float], list[str], list[int]]] | None = None
        # Every job's start (those reading something, by start) and the datasets it reads.
        self.starts: list[float] = []
        self.read_by: list[tuple[str, ...]] = []

    @staticmethod
    def _index(jobs: Sequence[NodeJob]) -> dict[str, tuple[list[float], list[str], list[int]]]:
        """Per dataset: start times, job ids, and suffix sums of the bytes read."""
        reads: dict[str, list[tuple[float, str, int]]] = {}
        for job in jobs:
            for name, size in job.reads:
                reads.setdefault(name, []).append((job.start, job.id, size))
        index = {}
        for name, rows in reads.items():
            suffix = [0] * (len(rows) + 1)
            for i in range(len(rows) - 1, -1, -1):
                suffix[i] = suffix[i + 1] + rows[i][2]
            index[name] = ([r[0] for r in rows], [r[1] for r in rows], suffix)
        return index

    def _future(self, node: SimNode) -> dict[str, tuple[list[float], list[str], list[int]]]:
        """The node's jobs indexed (once): per dataset (`_index`), and every start."""
        if self.future is None:
            self.future = self._index(node.work.jobs)
            reading = sorted((j for j in node.work.jobs if j.reads), key=lambda j: j.start)
            self.starts = [j.start for j in reading]
            self.read_by = [tuple(n for n, _ in j.reads) for j in reading]
        return self.future

    def _upcoming(
        self, node: SimNode, now: float, names: Iterable[str] | None = None
    ) -> Iterator[tuple[str, list[float], int, list[int]]]:
        """Per dataset (of NAMES, by name; all if None): its jobs' start times, the index of
        the first not started yet (those started at this instant are in the running
        remainder) and the suffix sums of reads."""
        future = self._future(node)
        for name in future if names is None else sorted(n for n in names if n in future):
            times, ids, suffix = future[name]
            i = bisect.bisect_left(times, now)
            while i < len(times) and times[i] == now and ids[i] in node.running:
                i += 1
            yield name, times, i, suffix

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        remaining = _running_remainder(node, now)
        next_use: dict[str, float] = {}
        for name, times, i, suffix in self._upcoming(node, now):
            later = suffix[i] + remaining.get(name, 0.0)
            if later > (0 if name in node.cached else node.sizes[name]):
                soon = now if name in node.held or i == len(times) else times[i]
                next_use[name] = soon
        ranked = sorted(next_use, key=lambda n: (next_use[n], n))
        return reconcile(node, fill(node, ranked))

    def steady_until(self, node: SimNode, now: float) -> float:
        """Until the next job start or end or copy landing, only running jobs' remaining
        reads move (down, linearly; the order by next use cannot change: held datasets
        come first by name, the others by a start still ahead): the answer holds until a
        wanted dataset's remaining reads fall to its threshold."""
        slopes = _running_slopes(node)
        until = math.inf
        for name, _, i, suffix in self._upcoming(node, now, slopes):  # the others: b = 0
            a, b = slopes[name]
            threshold = 0 if name in node.cached else node.sizes[name]
            if b > 0 and suffix[i] + a - b * now > threshold:
                until = min(until, (suffix[i] + a - threshold) / b)
        return until


class FutureBytes(Belady):
    """Offline, size-aware heuristic (not optimal): the greedy on future bytes per byte.

    At every tick and job start, end and copy completion, each dataset's gain is the bytes
    this node's jobs will read from it within `lookahead` (the rest of the running ones,
    and those starting before now + lookahead) less a copy (its size, if not cached); the
    datasets with a positive gain are wanted by gain per byte of cache, while they fit.
    """

    lookahead = 12 * 3600.0

    def _gaining(self, node: SimNode, now: float) -> set[str]:
        """The datasets that can have a positive gain at NOW: read by a running job or by
        one starting within the lookahead. Any other's gain is 0 less a copy (at most 0)."""
        self._future(node)
        starts = self.starts
        first = bisect.bisect_left(starts, now)
        last = bisect.bisect_left(starts, now + self.lookahead, first)
        names = {n for reads in self.read_by[first:last] for n in reads}
        for job in node.running.values():
            names.update(n for n, _ in job.reads)
        return names

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        remaining = _running_remainder(node, now)
        density: dict[str, float] = {}
        for name, times, i, suffix in self._upcoming(node, now, self._gaining(node, now)):
            j = bisect.bisect_left(times, now + self.lookahead)
            size = node.sizes[name]
            gain = suffix[i] - suffix[max(i, j)] + remaining.get(name, 0.0)
            gain -= 0 if name in node.cached else size
            if gain > 0:
                density[name] = gain / max(size, 1)
        ranked = sorted(density, key=lambda n: (-density[n], n))
        return reconcile(node, fill(node, ranked))

    def steady_until(self, node: SimNode, now: float) -> float:
        """Until the next job start or end or copy landing, each gain is linear in time
        (running jobs' remaining reads fall) until the lookahead reaches another start:
        the answer holds until then, until a wanted gain reaches 0, and until two wanted
        datasets next to each other in the order swap (the first swap among lines is
        between neighbours)."""
        slopes = _running_slopes(node)
        gaining = self._gaining(node, now)
        # the lookahead reaches another start (of any dataset: the first after it)
        k = bisect.bisect_left(self.starts, now + self.lookahead)
        until = self.starts[k] - self.lookahead if k < len(self.starts) else math.inf
        lines = []  # (-density now, name, density at time 0, its fall per second)
        for name, times, i, suffix in self._upcoming(node, now, gaining):
            j = bisect.bisect_left(times, now + self.lookahead)
            size = node.sizes[name]
            a, b = slopes.get(name, (0.0, 0.0))
            base = suffix[i] - suffix[max(i, j)] - (0 if name in node.cached else size) + a
            if base - b * now > 0:
                if b > 0:
                    until = min(until, base / b)
                scale = max(size, 1)
                lines.append((-(base - b * now) / scale, name, base / scale, b / scale))
        lines.sort()
        for (_, _, c1, s1), (_, _, c2, s2) in zip(lines, lines[1:]):
            if s1 > s2:  # the first falls faster: they meet at c1 - s1 t = c2 - s2 t
                until = min(until, (c1 - c2) / (s1 - s2))
        return until


class MipSchedule:
    """Offline, size-aware, the node's whole future: follows the schedule a mixed-integer
    programme finds for the node (`simulate/offline.py`), computed at its first pass.

    At every tick and job start, end and copy completion it wants the datasets whose
    planned copy has started and not been dropped, in the order of their copies, while
    they fit (a held copy the plan drops is dropped once its jobs end). Neither optimal
    nor a bound: what one real schedule achieves (docs/simulate.md).
    """

    triggers = frozenset(TRIGGERS)

    def __init__(self) -> None:
        self.blocks: list[offline.Block] | None = None
        self.times: list[float] = []

    def _plan(self, node: SimNode) -> list[offline.Block]:
        if self.blocks is None:
            self.blocks = offline.plan(
                node.work.jobs, node.sizes, node.capacity, node.config.bandwidth,
                replay_start(node.work, node.unplaced),
            )  # fmt: skip
            self.times = sorted({t for b in self.blocks for t in (b.start, b.drop)})
        return self.blocks

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        wanted = [b.name for b in self._plan(node) if b.start <= now < b.drop]
        return reconcile(node, fill(node, wanted))

    def steady_until(self, node: SimNode, now: float) -> float:
        """Its answer changes only when a planned copy starts or a block ends (the replay
        asks it again at every job start and end and copy landing)."""
        self._plan(node)
        i = bisect.bisect_right(self.times, now)
        return self.times[i] if i < len(self.times) else math.inf


class QueueOracle:
    """Reference, simulator only: the production planner told the truth about the jobs
    already submitted, and nothing else. Not optimal, not a bound.

    At every pass it calls the planner `ours` calls, with `ours`'s knobs and the built-in
    value, but with no heat and, as demand, the true bytes this node's submitted jobs
    will read: running ones to their end and pending ones at their true start (those
    starting within `lookahead`), each dataset counted after a copy started now would land
    (the copy in flight: after it lands; a cached copy: from now). Its prospect (room for
    speculative copies) is the true bytes the submitted jobs not started yet will read,
    within the lookahead. A job it has not seen submitted does not exist for it. So it
    shows what better estimates alone could give `ours`: the planner's decisions are the
    same, only its inputs are true. It cannot be selected on a node (no `value_function`
    can name the simulator: `host.config`).
    """

    triggers = TICK
    own_inputs = True  # the replay asks it at every tick; `next_pass` says which to skip
    lookahead = 12 * 3600.0

    def __init__(
        self, params: planner.PlanParams | None = None, *, prove: bool = True,
        submitted_only: bool = True,
    ) -> None:  # fmt: skip
        self.params = params
        self.prove = prove  # skip the ticks proven to repeat the last plan (same replay)
        # False: every job is known from the start (the whole future within the
        # look-ahead, as future-bytes knows it: `bench/hard_summary.py --oracle` splits
        # the queue oracle's distance to future-bytes into the jobs it cannot know and
        # the rest)
        self.submitted_only = submitted_only
        self._by_submit: list[tuple[float, NodeJob]] | None = None
        self._next = 0  # the first job of _by_submit not seen yet
        self._seen: list[NodeJob] = []  # submitted, not ended (at the last call)

    def seen(self, node: SimNode, now: float) -> list[NodeJob]:
        """The jobs of this node submitted by NOW that have not ended."""
        if self._by_submit is None:
            self._by_submit = sorted(
                ((self._known(node, j), j) for j in node.work.jobs),
                key=lambda e: (e[0], e[1].start, e[1].id),
            )  # fmt: skip
        order, i = self._by_submit, self._next
        while i < len(order) and order[i][0] <= now:
            self._seen.append(order[i][1])
            i += 1
        self._next = i
        self._seen = [j for j in self._seen if j.end > now]
        return self._seen

    def _known(self, node: SimNode, job: NodeJob) -> float:
        """When JOB becomes known to it (here: when it is submitted)."""
        if not self.submitted_only:
            return -math.inf
        return job.start if job.submit is None else min(job.submit, job.start)

    def next_submit(self) -> float:
        """When the next job not seen yet is submitted (inf: none)."""
        order = self._by_submit or []
        return order[self._next][0] if self._next < len(order) else math.inf

    def landing(self, node: SimNode, name: str, now: float) -> float:
        """When a copy of NAME started NOW would be mounted (NOW if it is cached)."""
        if name in node.cached:
            return now
        if node.inflight is not None and node.inflight[0] == name:
            return node.inflight[2]
        return now + node.sizes[name] / node.config.bandwidth

    def inputs(self, node: SimNode, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """The true demand (bytes read after a landing) and prospect, at NOW."""
        seen = self.seen(node, now)
        return self._demand(node, now, now, seen), self._prospect(node, now, seen)

    def _prospect(self, node: SimNode, now: float, seen: list[NodeJob]) -> dict[str, float]:
        """The bytes the SEEN jobs not started by NOW will read, those within the lookahead
        (and the unknown jobs' share, `_unknown`)."""
        prospect = dict(self._unknown(node, now)[1])
        horizon = now + self.lookahead
        for job in seen:
            if now < job.start < horizon:
                for name, size in job.reads:
                    prospect[name] = prospect.get(name, 0.0) + size
        return prospect

    def _unknown(self, node: SimNode, now: float) -> DemandParts:
        """The demand and prospect it gives jobs it does not know of (here: none)."""
        return {}, {}

    def _changes(self, node: SimNode, now: float) -> float:
        """When the next job becomes known (or, the blind one, its unknown jobs change)."""
        return self.next_submit()

    def params_of(self, node: SimNode) -> planner.PlanParams:
        return self.params or Ours.default_params(node)

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        demand, prospect = self.inputs(node, now)
        result = planner.plan(
            node.plan_input(), {}, demand, node.capacity, params=self.params_of(node),
            value=planner.default_value, prospect=prospect,
        )  # fmt: skip
        return Action(result.evict, result.stage)

    def next_pass(self, node: SimNode, now: float, step: float) -> float:
        """The next tick whose plan could differ from the one just made at NOW, if no job
        starts or ends and no copy lands before it (each of those is followed by a tick).

        Until the next job is submitted here or a seen one's start enters the lookahead,
        each dataset's demand is a sum of terms piecewise linear in time (bending where a
        job's start or end meets a landing), its prospect constant: its value over a
        stretch lies between its values at the stretch's ends and those bends, and
        `planner.plan_holds` says whether the plan is the same for all of them.
        """
        if not self.prove:
            return now + step
        seen = self.seen(node, now)
        horizon = now + self.lookahead
        boundary = self._changes(node, now)
        for job in seen:
            if job.start >= horizon:
                boundary = min(boundary, job.start - self.lookahead)
        # the last tick before the boundary (a tick at the boundary plans again)
        limit = math.ceil(boundary / step) * step - step if boundary < math.inf else math.inf
        proven = now
        for ticks in (2, 240, 16):
            last = min(now + ticks * step, limit)
            if last <= proven:
                continue
            if self._holds(node, now, last, seen):
                proven = last
            elif proven == now:
                break
        return proven + step

    def _holds(self, node: SimNode, start: float, end: float, seen: list[NodeJob]) -> bool:
        """The plan made at START is made at every time in START..END (no event between)."""
        # the unknown jobs' demand is constant until `_changes` (and no copy lands)
        points = {name: {start, end} for name in self._unknown(node, start)[0]}
        prospect = self._prospect(node, start, seen)
        horizon = start + self.lookahead
        for job in seen:
            if job.start >= horizon:
                continue
            for name, _ in job.reads:
                land = self.landing(node, name, start) - start
                found = points.setdefault(name, {start, end})
                if name in node.cached or node.inflight is None or node.inflight[0] != name:
                    # bends: the landing passes the job's start, then its end
                    found.update(t for t in (job.start - land, job.end - land) if start < t < end)
        demand_at: dict[float, dict[str, float]] = {}
        bounds: dict[str, tuple[float, float]] = {}
        params = self.params_of(node)
        node_input = node.plan_input()
        fresh = node_input.fresh
        for name, times in points.items():
            levels = []
            for t in times:
                if t not in demand_at:
                    demand_at[t] = self._demand(node, start, t, seen)
                levels.append(demand_at[t].get(name, 0.0))
            bounds[name] = self._value_range(node, name, min(levels), max(levels), params, fresh)
        for name in {*node.cached, *(() if node.inflight is None else (node.inflight[0],))}:
            if name not in bounds:
                bounds[name] = self._value_range(node, name, 0.0, 0.0, params, fresh)
        return planner.plan_holds(node_input, bounds, node.capacity, prospect)

    def _demand(self, node: SimNode, now: float, t: float, seen: list[NodeJob]) -> dict[str, float]:
        """The demand at time T (each job's reads after a copy started at T would land, a
        copy in flight when it lands), with the node as at NOW."""
        demand = dict(self._unknown(node, now)[0])
        horizon = now + self.lookahead  # no start enters the lookahead before T
        for job in seen:
            if job.start >= horizon or job.end <= t:
                continue
            span = job.end - job.start
            for name, size in job.reads:
                landing = self.landing(node, name, now)
                if t != now:
                    landing = landing - now + t
                if node.inflight is not None and node.inflight[0] == name:
                    landing = node.inflight[2]
                after = job.end - max(job.start, landing)
                if after > 0:
                    demand[name] = demand.get(name, 0.0) + size * min(1.0, after / span)
        return demand

    @staticmethod
    def _value_range(
        node: SimNode, name: str, low: float, high: float, params: planner.PlanParams,
        fresh: frozenset[str],
    ) -> tuple[float, float]:  # fmt: skip
        size = node.sizes[name]
        cached = name in fresh
        v_low = planner.default_value(planner.View(name, size, 0.0, low, cached), params)
        v_high = planner.default_value(planner.View(name, size, 0.0, high, cached), params)
        slack = 1e-9 * (abs(v_low) + abs(v_high) + size) + 1e-6  # float rounding
        return v_low - slack, v_high + slack


class BlindQueueOracle(QueueOracle):
    """Reference, simulator only: the queue oracle blind to where a job will run until
    backfill places it. Not optimal, not a bound.

    It knows what `ours` is told and when (the jobs running here, and those the replay's
    backfill has placed here, `backfill_window` ahead), but counts their true bytes at
    their true starts as `QueueOracle` does. Every job submitted and not yet placed
    anywhere counts on every node as it does for `ours` (its share of the nodes, times
    e^-1 for its unknown start, the per-dataset cap, only the reads after a copy would
    land: `SimNode.unplaced_reads`), but with the bytes it will truly read in place of
    `ours`'s estimate. So `ours / blind` is what better read estimates alone could give,
    `blind / queue-oracle` what knowing where and when unplaced jobs will run could.
    The replay must be built with `unplaced_demand(..., reads=True)` (`run.simulate`
    does that, for a policy with `true_unplaced`).
    """

    true_unplaced = True

    def _known(self, node: SimNode, job: NodeJob) -> float:
        """When the replay's backfill places JOB here (its start, if it never does)."""
        return visible_from(job, node.config)

    def _unknown(self, node: SimNode, now: float) -> DemandParts:
        return node.unplaced_reads(now)

    def _changes(self, node: SimNode, now: float) -> float:
        return min(self.next_submit(), node.unplaced.next_change(now))


def _running_slopes(node: SimNode) -> Mapping[str, tuple[float, float]]:
    """Per dataset, (A, B) with running jobs' remaining reads at time t = A - B t."""
    slopes: dict[str, tuple[float, float]] = {}
    for job in node.running.values():
        span = job.end - job.start
        for name, size in job.reads:
            rate = size / span
            a, b = slopes.get(name, (0.0, 0.0))
            slopes[name] = (a + rate * job.end, b + rate)
    return slopes


def _running_remainder(node: SimNode, now: float) -> Mapping[str, float]:
    remaining: dict[str, float] = {}
    for job in node.running.values():
        share = (job.end - now) / (job.end - job.start)
        for name, size in job.reads:
            remaining[name] = remaining.get(name, 0.0) + size * share
    return remaining


POLICIES: dict[str, Callable[[], Policy]] = {
    "ours": Ours,
    "none": NoCache,
    "lru": LRU,
    "lfu-da": LFUDA,
    "gdsf": GDSF,
    "scratch_manager": ScratchManager,
    "aged-uses": AgedUses,
    "belady": Belady,
    "future-bytes": FutureBytes,
    "queue-oracle": QueueOracle,
    "queue-oracle-blind": BlindQueueOracle,
    "mip-schedule": MipSchedule,
}
# What a replay runs unless told otherwise: all but these, asked for by name: the blind
# queue oracle (it adds about 14 % to a replay of all the others: docs/benchmarks.md) and
# mip-schedule (tens of seconds per node; needs scipy).
ON_REQUEST = ("queue-oracle-blind", "mip-schedule")
DEFAULT_POLICIES = tuple(name for name in POLICIES if name not in ON_REQUEST)
