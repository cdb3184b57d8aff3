"""The planner: a pure function from what a node knows to what it should cache.

No I/O, no clock, no subprocess: the rebalance and the simulator call the same `plan` on a
`PlanInput` (the rebalance builds it from the node state with `plan_input.plan_input`, the
simulator from its own model of the node). The contract is in docs/planner.md.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple, get_args

# What a plan does with one dataset: keep its cached copy (or the copy in flight), stage
# a new copy, evict the cached copy, or nothing (not cached, not staged this pass).
Action = Literal["keep", "stage", "evict", "none"]
ACTIONS: tuple[Action, ...] = get_args(Action)


@dataclass(frozen=True)
class PlanInput:
    """The node's cache as the planner sees it (sizes in bytes, names of datasets).

    `sizes` is the catalog (image size per dataset in datadir); `cached` the bytes each
    cached copy occupies (a copy of a removed image is there, absent from `sizes`);
    `fresh` the cached copies whose image is unchanged; `held` the datasets running jobs
    hold; `inflight` the bytes reserved by copies in flight; `pins` the active pins;
    `blocked` the datasets not to stage or evict this pass, with the reason (a copy
    backing off after a failure, an operation in progress).
    """

    sizes: Mapping[str, int]
    cached: Mapping[str, int] = field(default_factory=dict)
    fresh: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    inflight: Mapping[str, int] = field(default_factory=dict)
    pins: frozenset[str] = frozenset()
    blocked: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stray = sorted(n for n in self.fresh if n not in self.cached or n not in self.sizes)
        if stray:
            raise ValueError(f"fresh but not cached or not in the catalog: {', '.join(stray)}")


@dataclass(frozen=True)
class PlanParams:
    """Knobs of the built-in policy (documented in docs/planner.md)."""

    # Heat is extrapolated over this many seconds: the time a copy has to pay for itself.
    horizon: float = 3600.0
    # A cached copy is worth this share of its size more than an uncached one, so a
    # marginal challenger never evicts it (no copy-evict-copy oscillation).
    hysteresis: float = 0.1
    # Bytes/s a copy runs at: the heat of an uncached dataset counts only for the part of
    # the horizon after its copy would land (0: copies land at once).
    copy_rate: float = 0.0
    # The exact knapsack rounds sizes UP to buckets (never overfilling) and uses at most
    # this many cells (items x buckets); beyond that the bucket grows.
    max_cells: int = 400_000
    max_buckets: int = 2_000
    # Beyond this many candidates the DP runs on a core of this many items around the
    # greedy break (by value per byte); those before it are taken, those after left.
    core_items: int = 200
    # Up to this many candidates, branch and bound on true sizes first (exact, usually
    # far faster than the DP); it gives up after this many nodes and the DP decides.
    search_items: int = 40
    search_nodes: int = 20_000
    # With at least this many idle copies (worth only the hysteresis bonus: all of one
    # value per byte, a subset-sum the knapsack explores in every order) they are kept
    # in the room the others leave instead of entering the knapsack (docs/planner.md).
    idle_group: int = 8


class View(NamedTuple):
    """One dataset as the value function sees it (a tuple: the simulator makes millions).

    `heat` in bytes/s; `demand` in expected bytes queued jobs will read (docs/planner.md).
    """

    name: str
    size: int
    heat: float
    demand: float
    cached: bool


ValueFunction = Callable[[View, PlanParams], float]


def default_value(view: View, params: PlanParams) -> float:
    """Slow-storage bytes saved by caching VIEW, minus the copy if needed.

    Reads are weighed as the demand weighs a job's start, discounted by e^(-t / horizon)
    t seconds from now: heat (bytes/s) going on is worth heat x horizon, and demand is
    the bytes queued jobs are expected to read (already weighted by their chance and
    soonness, and counted after the copy would land). A copy costs its size in slow
    reads, and serves only the reads after it lands, size / copy_rate seconds from now:
    its heat is worth heat x horizon x e^(-copy time / horizon) (docs/planner.md).
    """
    if view.cached:
        return view.heat * params.horizon + view.demand + params.hysteresis * view.size
    horizon = params.horizon
    if params.copy_rate > 0 and horizon > 0:
        horizon *= math.exp(-view.size / params.copy_rate / horizon)
    return view.heat * horizon + view.demand - view.size


class Decision(NamedTuple):
    """What the plan does with one dataset, and why.

    `cause` is the short cause, a fixed phrase ("selected", "pinned", "copy in flight",
    or a blocked dataset's reason as given); `reason` is the text for people: the cause,
    then the value and the figures it came from when the value was computed from a view.
    The text is formatted only when read (the simulator makes millions of decisions).
    """

    action: Action
    value: float
    cause: str
    view: View | None = None

    @property
    def reason(self) -> str:
        if self.view is None:
            return self.cause
        from scratch_stage.core.units import format_rate, format_signed_size, format_size

        v = self.view
        return (
            f"{self.cause}: value {format_signed_size(self.value)} "
            f"(heat {format_rate(v.heat)}, demand {format_size(max(v.demand, 0.0))})"
        )


@dataclass(frozen=True)
class Plan:
    """Evict these first, then stage those in order; a decision for every dataset."""

    evict: tuple[str, ...]
    stage: tuple[str, ...]
    decisions: Mapping[str, Decision]
    unfit_pins: tuple[str, ...] = ()
    used_after: int = 0
    method: str = "exact"

    @property
    def empty(self) -> bool:
        return not self.evict and not self.stage


def plan(
    node: PlanInput,
    heat: Mapping[str, float],
    demand: Mapping[str, float],
    capacity: int,
    *,
    params: PlanParams = PlanParams(),
    value: ValueFunction = default_value,
    prospect: Mapping[str, float] | None = None,
) -> Plan:
    """The best set of cached datasets under CAPACITY, and how to get there from NODE.

    PROSPECT (bytes queued jobs will read here eventually: demand without the wait's
    discount) adds speculative copies into the room the chosen set leaves free: a
    dataset not worth a copy now whose prospect pays for its copy (>= its size), best
    prospect per byte first. They never displace anything: only room nothing was chosen
    for is used, and they are staged last.
    """
    sizes, fresh, cached = node.sizes, node.fresh, node.cached
    # The built-in value of a dataset without heat, demand or a fresh copy is -size: not
    # worth a copy whatever else happens. Only the others get a view (the simulator plans
    # a million times over a catalog where a pass sees a few); theirs are made on demand.
    lazy = value is default_value
    names = _active(node, heat, demand) if lazy else sizes
    views = {
        name: View(name, sizes[name], heat.get(name, 0.0), demand.get(name, 0.0), name in fresh)
        for name in names
    }
    values = {name: value(v, params) for name, v in views.items()}
    decisions: dict[str, Decision] = {}
    forced, budget, unfit = _forced(node, capacity, values, decisions)
    candidates = [
        views[n] for n in sorted(views)
        if n not in decisions and values[n] > 0 and views[n].size <= budget
    ]  # fmt: skip
    chosen, method = choose(candidates, values, budget, params)
    _explain_rest(views, values, chosen, budget, decisions)
    speculative: list[str] = []
    if prospect:
        speculative = _speculate(node, prospect, chosen, budget, decisions, values)
        chosen = chosen | set(speculative)
    keep = forced | chosen
    # A stale copy is evicted even when its dataset is chosen: the fresh copy replaces it.
    evict = tuple(
        sorted(
            n for n in cached
            if (n not in keep or n not in fresh) and n not in node.held and n not in node.blocked
        )
    )  # fmt: skip
    for n in evict:
        if n not in decisions or decisions[n].action != "evict":
            decisions[n] = Decision("evict", values.get(n, 0.0), _evict_cause(n, sizes, fresh))
    pinned = [n for n in forced if decisions[n].action == "stage"]
    spec = set(speculative)
    by_value = sorted(
        (n for n in chosen if n not in fresh and n not in spec), key=lambda n: (-values[n], n)
    )
    stage = tuple(sorted(pinned, key=lambda n: (-values[n], n)) + by_value + speculative)
    used = (
        sum(sizes[n] for n in keep if n in sizes)
        + sum(cached[n] for n in keep if n not in sizes and n in cached)
        + sum(cached[n] for n in node.blocked if n in cached and n not in keep)
    )
    if lazy:
        return Plan(evict, stage, _Decisions(decisions, sizes, params), unfit, used, method)
    return Plan(evict, stage, decisions, unfit, used, method)


def plan_holds(
    node: PlanInput, bounds: Mapping[str, tuple[float, float]], capacity: int,
    prospect: Mapping[str, float] | None = None,
) -> bool:  # fmt: skip
    """True if `plan` evicts and stages the same, in the same order, for every value of
    each dataset within BOUNDS[name] = (low, high), the others' values staying <= 0.

    A sufficient condition, for callers that can bound values over a stretch of time (the
    simulator skips the passes it proves would repeat the last one): no dataset that could
    be selected has a value range straddling 0, everything surely selected fits (no
    knapsack whose answer could move), and the ranges of the datasets to stage are
    disjoint (their order by value cannot change). False when in doubt. With PROSPECT
    (each dataset's highest prospect over the stretch), also False when a speculative copy
    could be staged (one whose prospect pays for it fits the room left).
    """
    sizes = node.sizes
    decisions: dict[str, Decision] = {}
    _, budget, _ = _forced(node, capacity, {}, decisions)
    pinned = [n for n, d in decisions.items() if d.action == "stage"]
    if len(pinned) > 1:
        return False  # staged in value order: would need their ranges too
    if budget <= 0:
        return True  # nothing is chosen beyond the forced ones, whatever the values
    selected: list[str] = []
    for name, (low, high) in bounds.items():
        if name in decisions or name not in sizes or sizes[name] > budget:
            continue
        if low > 0:
            selected.append(name)
        elif high > 0:
            return False
    left = budget - sum(sizes[n] for n in selected)
    if left < 0:
        return False
    if prospect:
        chosen = set(selected)
        for name, high in prospect.items():
            size = sizes.get(name)
            if (
                size is not None and 0 < size <= left and high >= size
                and name not in chosen and name not in node.fresh and name not in decisions
            ):  # fmt: skip
                return False
    ranges = sorted(bounds[n] for n in selected if n not in node.fresh)
    return all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


SPECULATIVE = "speculative: free room"


def _speculate(
    node: PlanInput, prospect: Mapping[str, float], chosen: set[str], budget: int,
    decisions: dict[str, Decision], values: Mapping[str, float],
) -> list[str]:  # fmt: skip
    """Datasets to copy into the room CHOSEN leaves in BUDGET, in order: not chosen, not
    cached fresh, not decided otherwise (forced, blocked), their PROSPECT >= their size;
    best prospect per byte first, while they fit."""
    sizes = node.sizes
    free = budget - sum(sizes[n] for n in chosen)
    wanted = sorted(
        (
            n for n, p in prospect.items()
            if n in sizes and p >= sizes[n] > 0 and n not in chosen and n not in node.fresh
            and (n not in decisions or (decisions[n].cause != "selected"
                 and decisions[n].action == "none" and n not in node.blocked
                 and n not in node.pins and n not in node.inflight))
        ),
        key=lambda n: (-prospect[n] / sizes[n], n),
    )  # fmt: skip
    staged: list[str] = []
    for name in wanted:
        if sizes[name] <= free:
            free -= sizes[name]
            staged.append(name)
            made = decisions.get(name)
            decisions[name] = Decision(
                "stage", values.get(name, -sizes[name]), SPECULATIVE,
                made.view if made is not None else None,
            )  # fmt: skip
    return staged


def _active(node: PlanInput, heat: Mapping[str, float], demand: Mapping[str, float]) -> list[str]:
    """Catalog names with heat, demand, a copy (cached or in flight), a pin, a hold or a block."""
    active = {n for n, h in heat.items() if h} | {n for n, d in demand.items() if d}
    active.update(node.cached, node.inflight, node.pins, node.held, node.blocked)
    sizes = node.sizes
    return sorted(n for n in active if n in sizes)


class _Decisions(Mapping[str, Decision]):
    """The decisions made, and "not worth a copy" for every other catalog dataset (made
    when read: the same record the full pass makes for a dataset without heat or demand)."""

    def __init__(
        self, made: dict[str, Decision], sizes: Mapping[str, int], params: PlanParams
    ) -> None:
        self._made = made
        self._sizes = sizes
        self._params = params

    def __getitem__(self, name: str) -> Decision:
        made = self._made.get(name)
        if made is not None:
            return made
        view = View(name, self._sizes[name], 0.0, 0.0, False)  # KeyError if not in the catalog
        return Decision("none", default_value(view, self._params), "not worth a copy", view)

    def __iter__(self) -> Iterator[str]:
        yield from self._made
        yield from (n for n in self._sizes if n not in self._made)

    def __len__(self) -> int:
        return len(self._made) + sum(1 for n in self._sizes if n not in self._made)

    def __repr__(self) -> str:
        return repr(dict(self))


def _forced(
    node: PlanInput, capacity: int, values: Mapping[str, float], decisions: dict[str, Decision]
) -> tuple[set[str], int, tuple[str, ...]]:
    """Datasets that stay whatever their value (copies in flight, held copies, pins).

    Blocked datasets are decided here too (left as they are, their copy's bytes counted);
    returns the forced names, the budget left, and the pins that do not fit.
    """
    forced: set[str] = set()
    budget = capacity
    for name in sorted(node.inflight):
        forced.add(name)
        budget -= node.inflight[name]
        decisions[name] = Decision("keep", values.get(name, 0.0), "copy in flight")
    for name in sorted(node.cached):
        if name in node.held and name not in forced:
            forced.add(name)
            budget -= node.cached[name]
            why = "held by a running job"
            if name not in node.fresh:
                why += " (stale: evict when idle)"
            decisions[name] = Decision("keep", values.get(name, 0.0), why)
    for name in sorted(node.blocked):
        if name not in decisions:
            budget -= node.cached.get(name, 0)
            decisions[name] = Decision("none", values.get(name, 0.0), node.blocked[name])
    pins = sorted(
        (n for n in node.pins if n in node.sizes and n not in decisions),
        key=lambda n: (node.sizes[n], n),
    )
    unfit: list[str] = []
    for name in pins:
        size = node.sizes[name]
        if size > budget:
            unfit.append(name)
            decisions[name] = Decision("none", values.get(name, 0.0), "pinned but does not fit")
            continue
        forced.add(name)
        budget -= size
        action: Action = "keep" if name in node.fresh else "stage"
        decisions[name] = Decision(action, values.get(name, 0.0), "pinned")
    return forced, budget, tuple(sorted(unfit))


def _explain_rest(
    views: Mapping[str, View], values: Mapping[str, float], chosen: set[str], budget: int,
    decisions: dict[str, Decision],
) -> None:  # fmt: skip
    for name, view in views.items():
        if name in decisions:
            continue
        v = values[name]
        if name in chosen:
            decisions[name] = Decision("keep" if view.cached else "stage", v, "selected", view)
        elif v <= 0:
            decisions[name] = Decision("none", v, "not worth a copy", view)
        elif view.size > budget:
            decisions[name] = Decision("none", v, "larger than the free budget", view)
        else:
            decisions[name] = Decision("none", v, "outvalued by the selected set", view)


def _evict_cause(name: str, sizes: Mapping[str, int], fresh: frozenset[str]) -> str:
    if name not in sizes:
        return "image removed from datadir"
    if name not in fresh:
        return "stale copy: image replaced in datadir"
    return "not selected"


def choose(
    items: list[View], values: Mapping[str, float], budget: int, params: PlanParams
) -> tuple[set[str], str]:
    """The subset of ITEMS of greatest total value within BUDGET bytes; and the method."""
    if not items or budget <= 0:
        return set(), "exact"
    if sum(v.size for v in items) <= budget:
        return {v.name for v in items}, "exact"  # everything worth caching fits
    greedy = choose_greedy(items, values, budget)
    bonus = params.hysteresis
    idle = [v for v in items if v.cached and values[v.name] == bonus * v.size]
    if len(idle) >= params.idle_group:
        # The others worth more per byte than an idle copy are chosen first; idle copies
        # and anything worth less per byte fill what they leave, best per byte first.
        first = [v for v in items if values[v.name] > bonus * v.size and v not in idle]
        exact, method = choose(first, values, budget, params)
        free = budget - sum(v.size for v in first if v.name in exact)
        rest = sorted(
            (v for v in items if v.name not in exact),
            key=lambda v: (-values[v.name] / max(v.size, 1), -v.size, v.name),
        )
        for view in rest:
            if view.size <= free:
                exact.add(view.name)
                free -= view.size
    else:
        exact, method = choose_exact(items, values, budget, params), "exact"

    def total(names: set[str]) -> float:
        # Exactly rounded, so the same whatever the set's order (string hashing varies
        # between processes): equal totals must not pick a different side in each one.
        return math.fsum(values[n] for n in names)

    # Rounding sizes up may lose a little; the greedy answer on true sizes bounds it.
    return (exact, method) if total(exact) >= total(greedy) else (greedy, "greedy")


def choose_greedy(items: list[View], values: Mapping[str, float], budget: int) -> set[str]:
    """By value per byte, then the single most valuable item if that is better."""
    chosen: set[str] = set()
    free = budget
    for view in sorted(items, key=lambda v: (-values[v.name] / max(v.size, 1), v.name)):
        if view.size <= free:
            chosen.add(view.name)
            free -= view.size
    fitting = [v for v in items if v.size <= budget]
    best = max(fitting, key=lambda v: values[v.name], default=None)
    if best is not None and values[best.name] > math.fsum(values[n] for n in chosen):
        return {best.name}
    return chosen


def choose_exact(
    items: list[View], values: Mapping[str, float], budget: int, params: PlanParams
) -> set[str]:
    """0/1 knapsack: DP over all items, or over the core around the greedy break."""
    order = sorted(items, key=lambda v: (-values[v.name] / max(v.size, 1), v.name))
    if len(items) <= params.search_items:
        found = choose_search(order, values, budget, params.search_nodes)
        if found is not None:
            return found
    if len(items) <= params.core_items:
        return _fill(order, choose_dp(items, values, budget, params), budget)
    free, brk = budget, 0
    while brk < len(order) and order[brk].size <= free:
        free -= order[brk].size
        brk += 1
    low = max(0, brk - params.core_items // 2)
    core = order[low : low + params.core_items]
    fixed = order[:low]
    rest = budget - sum(v.size for v in fixed)
    return _fill(order, {v.name for v in fixed} | choose_dp(core, values, rest, params), budget)


def choose_search(
    order: list[View], values: Mapping[str, float], budget: int, max_nodes: int
) -> set[str] | None:
    """0/1 knapsack on true sizes by depth-first branch and bound (ORDER: best value per
    byte first; bound: the fractional relaxation). None after MAX_NODES nodes."""
    sizes = [v.size for v in order]
    gains = [values[v.name] for v in order]
    count = len(order)
    best_total = -1.0
    best: list[int] = []
    taken: list[int] = []
    nodes = 0

    def bound(i: int, free: int, total: float) -> float:
        for j in range(i, count):
            if sizes[j] <= free:
                free -= sizes[j]
                total += gains[j]
            else:
                return total + gains[j] * free / sizes[j]
        return total

    def visit(i: int, free: int, total: float) -> bool:
        nonlocal best_total, best, nodes
        nodes += 1
        if nodes > max_nodes:
            return False
        if total > best_total:
            best_total, best = total, list(taken)
        if i == count:
            return True
        # Explore only if the relaxation could beat the best (ties explored: rounding).
        if bound(i, free, total) < best_total - 1e-12 * abs(best_total):
            return True
        if sizes[i] <= free:
            taken.append(i)
            done = visit(i + 1, free - sizes[i], total + gains[i])
            taken.pop()
            if not done:
                return False
        return visit(i + 1, free, total)

    if not visit(0, budget, 0.0):
        return None
    return {order[i].name for i in best}


def _fill(order: list[View], chosen: set[str], budget: int) -> set[str]:
    """CHOSEN plus whatever else still fits by true size, best value per byte first.

    The DP rounds sizes up, so it may leave room that true sizes would use.
    """
    free = budget - sum(v.size for v in order if v.name in chosen)
    for view in order:
        if view.name not in chosen and view.size <= free:
            chosen.add(view.name)
            free -= view.size
    return chosen


def choose_dp(
    items: list[View], values: Mapping[str, float], budget: int, params: PlanParams
) -> set[str]:
    """0/1 knapsack by dynamic programming over capacity buckets (sizes rounded up)."""
    if not items or budget <= 0:
        return set()
    buckets = max(1, min(params.max_buckets, params.max_cells // len(items), budget))
    unit = math.ceil(budget / buckets)
    cells = budget // unit
    best = [0.0] * (cells + 1)
    taken: list[bytearray] = []
    weights = [max(1, math.ceil(v.size / unit)) for v in items]
    for view, w in zip(items, weights):
        if w > cells:
            taken.append(bytearray())
            continue
        gain = values[view.name]
        shifted = [x + gain for x in best[: cells + 1 - w]]
        tail = best[w:]
        taken.append(bytearray(map(operator.gt, shifted, tail)))
        best = best[:w] + list(map(max, tail, shifted))
    chosen: set[str] = set()
    cell = cells
    for view, w, mask in zip(reversed(items), reversed(weights), reversed(taken)):
        if mask and cell >= w and mask[cell - w]:
            chosen.add(view.name)
            cell -= w
    return chosen
