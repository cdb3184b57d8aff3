"""The planner: pure, never over capacity, pins, held and blocked kept, stable, exact knapsack."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.state import CachedCopy, Copy, Hold, NodeState, Pin
from scratch_stage.policy.plan_input import plan_input
from scratch_stage.policy.planner import (
    ACTIONS,
    Plan,
    PlanInput,
    PlanParams,
    View,
    choose,
    choose_dp,
    choose_exact,
    choose_greedy,
    choose_search,
    default_value,
    plan,
    plan_holds,
)

NOW = 1_000_000.0
MB = 1_000_000


def fp(size: int, version: int = 0) -> Fingerprint:
    return Fingerprint(size, version, 1)


def run(
    catalog: Mapping[str, Fingerprint], state: NodeState, heat: Mapping[str, float],
    demand: Mapping[str, float], capacity: int, *, blocked: Mapping[str, str] | None = None,
) -> Plan:  # fmt: skip
    """The plan the rebalance makes: its input built from STATE at NOW."""
    return plan(plan_input(state, catalog, NOW, blocked=blocked), heat, demand, capacity)


def cached(catalog: dict[str, Fingerprint], *names: str) -> dict[str, CachedCopy]:
    return {n: CachedCopy(catalog[n], NOW - 10) for n in names}


def test_hot_dataset_is_staged_and_cold_one_is_not() -> None:
    catalog = {"hot": fp(100 * MB), "cold": fp(100 * MB)}
    result = run(catalog, NodeState(), {"hot": 1 * MB}, {}, 150 * MB)
    assert result.stage == ("hot",)
    assert result.evict == ()
    assert result.decisions["hot"].action == "stage"
    assert result.decisions["cold"].action == "none"
    assert "not worth" in result.decisions["cold"].reason


def test_demand_alone_prefetches_a_dataset_without_heat() -> None:
    catalog = {"queued": fp(10 * MB)}
    result = run(catalog, NodeState(), {}, {"queued": 20.0 * MB}, 100 * MB)  # two passes
    assert result.stage == ("queued",)


def test_capacity_for_one_picks_the_hotter_and_evicts_the_other() -> None:
    catalog = {"a": fp(100 * MB), "b": fp(100 * MB)}
    state = NodeState(cached=cached(catalog, "a"))
    result = run(catalog, state, {"a": 0.0, "b": 1 * MB}, {}, 150 * MB)
    assert result.evict == ("a",)
    assert result.stage == ("b",)


def test_hysteresis_keeps_a_cached_copy_against_a_marginal_challenger() -> None:
    catalog = {"a": fp(100 * MB), "b": fp(100 * MB)}
    state = NodeState(cached=cached(catalog, "a"))
    # b reads slightly more than a, but not enough to pay for its copy.
    heat = {"a": 100_000.0, "b": 110_000.0}
    result = run(catalog, state, heat, {}, 150 * MB)
    assert result.empty


def test_pin_is_kept_even_without_value_and_reported_when_it_cannot_fit() -> None:
    catalog = {"p": fp(100 * MB), "big": fp(500 * MB), "hot": fp(100 * MB)}
    state = NodeState(
        cached=cached(catalog, "p"),
        pins={"p": Pin(NOW - 5), "big": Pin(NOW - 5)},
    )
    result = run(catalog, state, {"hot": 10 * MB}, {}, 150 * MB)
    assert "p" not in result.evict
    assert result.unfit_pins == ("big",)
    assert result.decisions["big"].reason == "pinned but does not fit"
    assert result.stage == ()  # hot does not fit next to the pin


def test_expired_pin_no_longer_protects() -> None:
    catalog = {"p": fp(100 * MB), "hot": fp(100 * MB)}
    pins = {"p": Pin(NOW - 100, NOW - 1)}
    state = NodeState(cached=cached(catalog, "p"), pins=pins)
    assert run(catalog, state, {"hot": 1 * MB}, {}, 150 * MB).evict == ("p",)
    pins["p"] = Pin(NOW - 100, NOW + 1)
    assert run(catalog, state, {"hot": 1 * MB}, {}, 150 * MB).evict == ()


def test_idle_cached_copy_stays_while_there_is_room() -> None:
    catalog = {"a": fp(100 * MB)}
    state = NodeState(cached=cached(catalog, "a"))
    assert run(catalog, state, {}, {}, 150 * MB).empty


def test_held_cached_copy_stays_and_removed_image_is_evicted_when_idle() -> None:
    catalog = {"a": fp(100 * MB)}
    gone = Fingerprint(50 * MB, 0, 9)
    state = NodeState(
        cached={"a": CachedCopy(catalog["a"], NOW), "gone": CachedCopy(gone, NOW)},
        jobs={"7": Hold(("a",), "alice", NOW)},
    )
    result = run(catalog, state, {}, {}, 10 * MB)
    assert "a" not in result.evict
    assert result.decisions["a"].reason == "held by a running job"
    assert result.evict == ("gone",)
    assert result.decisions["gone"].reason == "image removed from datadir"


def test_stale_copy_is_evicted_and_fresh_one_staged() -> None:
    catalog = {"a": fp(100 * MB, version=2)}
    state = NodeState(cached={"a": CachedCopy(fp(100 * MB, version=1), NOW)})
    result = run(catalog, state, {"a": 1 * MB}, {}, 150 * MB)
    assert result.evict == ("a",)
    assert result.stage == ("a",)


def test_copy_in_flight_counts_against_the_budget() -> None:
    catalog = {"a": fp(100 * MB), "b": fp(100 * MB)}
    state = NodeState(staging={"a": Copy(1, "1", catalog["a"], NOW)})
    result = run(catalog, state, {"b": 1 * MB}, {}, 150 * MB)
    assert result.stage == ()
    assert result.decisions["a"].reason == "copy in flight"


def test_blocked_dataset_is_neither_staged_nor_evicted_and_its_copy_counts() -> None:
    catalog = {"hot": fp(100 * MB), "warm": fp(100 * MB), "old": fp(50 * MB, version=2)}
    state = NodeState(cached={"old": CachedCopy(fp(50 * MB, version=1), NOW)})  # stale
    heat = {"hot": 10 * MB, "warm": 1 * MB}
    unblocked = run(catalog, state, heat, {}, 200 * MB)
    assert unblocked.evict == ("old",) and unblocked.stage == ("hot", "warm")
    why = {"hot": "copy failed twice: next try in 300s", "old": "eviction in progress"}
    result = run(catalog, state, heat, {}, 200 * MB, blocked=why)
    assert result.evict == ()
    assert result.stage == ("warm",)  # the stale copy's 50 MB still count: 150 MB free
    for name, text in why.items():
        assert result.decisions[name].action == "none"
        assert result.decisions[name].cause == result.decisions[name].reason == text
    assert result.used_after == 150 * MB


def test_held_or_in_flight_wins_over_blocked() -> None:
    catalog = {"a": fp(100 * MB), "b": fp(100 * MB)}
    state = NodeState(
        cached=cached(catalog, "a"),
        jobs={"7": Hold(("a",), "alice", NOW)},
        staging={"b": Copy(1, "1", catalog["b"], NOW)},
    )
    result = run(catalog, state, {}, {}, 300 * MB, blocked={"a": "x", "b": "y"})
    assert result.decisions["a"].action == result.decisions["b"].action == "keep"
    assert result.used_after == 200 * MB


def test_unfit_pins_are_found_by_what_happened_not_by_their_text() -> None:
    catalog = {"p": fp(100 * MB), "q": fp(100 * MB)}
    state = NodeState(pins={"p": Pin(NOW - 5), "q": Pin(NOW - 5)})
    result = run(catalog, state, {}, {}, 150 * MB, blocked={"q": "pinned but does not fit"})
    assert result.unfit_pins == ()  # q is blocked (whatever its reason says), p fits
    assert result.stage == ("p",)
    assert run(catalog, state, {}, {}, 150 * MB).unfit_pins == ("q",)


def test_cause_is_the_short_phrase_and_reason_adds_the_figures() -> None:
    catalog = {"hot": fp(100 * MB), "cold": fp(100 * MB)}
    result = run(catalog, NodeState(), {"hot": 1 * MB}, {}, 150 * MB)
    hot, cold = result.decisions["hot"], result.decisions["cold"]
    assert (hot.cause, cold.cause) == ("selected", "not worth a copy")
    assert hot.reason.startswith("selected: value +") and "heat 976.6 KiB/s" in hot.reason
    assert "demand 0 B" in hot.reason and "e+" not in hot.reason
    assert cold.reason.startswith("not worth a copy: value -")
    assert cold.value < 0 < hot.value


def test_plan_input_from_state_fresh_held_inflight_and_active_pins() -> None:
    catalog = {"a": fp(10 * MB), "b": fp(20 * MB, version=2), "c": fp(30 * MB), "d": fp(5)}
    state = NodeState(
        cached={"a": CachedCopy(catalog["a"], NOW), "b": CachedCopy(fp(20 * MB, 1), NOW),
                "gone": CachedCopy(fp(7 * MB), NOW)},
        jobs={"1": Hold(("a", "gone"), "u", NOW), "2": Hold(("a",), "v", NOW)},
        staging={"c": Copy(1, "1", catalog["c"], NOW)},
        pins={"a": Pin(NOW - 9), "c": Pin(NOW - 9, NOW + 1), "d": Pin(NOW - 9, NOW)},
    )  # fmt: skip
    got = plan_input(state, catalog, NOW, blocked={"b": "backoff"})
    assert got == PlanInput(
        sizes={"a": 10 * MB, "b": 20 * MB, "c": 30 * MB, "d": 5},
        cached={"a": 10 * MB, "b": 20 * MB, "gone": 7 * MB},
        fresh=frozenset({"a"}),  # b's image was replaced, gone's removed
        held=frozenset({"a", "gone"}),
        inflight={"c": 30 * MB},
        pins=frozenset({"a", "c"}),  # d's pin expired at NOW
        blocked={"b": "backoff"},
    )


def test_plan_input_refuses_a_fresh_copy_that_is_not_there() -> None:
    with pytest.raises(ValueError, match="fresh but not cached or not in the catalog: a"):
        PlanInput(sizes={"a": 1}, fresh=frozenset({"a"}))
    with pytest.raises(ValueError, match=": b"):
        PlanInput(sizes={"a": 1}, cached={"b": 1}, fresh=frozenset({"b"}))


def test_regression_tiny_items_never_overfill() -> None:
    # The prototype floored sizes to capacity/1000 units: items under one unit weighed 0
    # and all fitted, overfilling the cache. Sizes here are rounded up instead.
    capacity = 1000 * MB
    catalog = {f"t{i}": fp(900_000) for i in range(2000)}
    heat = dict.fromkeys(catalog, 1 * MB)
    result = run(catalog, NodeState(), heat, {}, capacity)
    assert sum(catalog[n].size for n in result.stage) <= capacity
    assert result.used_after <= capacity
    assert len(result.stage) == 1111  # every one that fits by true size


def test_regression_removing_a_dataset_does_not_shift_others_values() -> None:
    # The prototype kept parallel lists: deleting one entry shifted the values of others.
    catalog = {"a": fp(10 * MB), "b": fp(20 * MB), "c": fp(30 * MB)}
    heat = {"a": 1.0, "b": 2.0, "c": 3.0}
    full = run(catalog, NodeState(), heat, {}, 100 * MB)
    del catalog["b"]
    partial = run(catalog, NodeState(), heat, {}, 100 * MB)
    assert partial.decisions["a"].value == full.decisions["a"].value
    assert partial.decisions["c"].value == full.decisions["c"].value


def test_default_value_counts_the_copy_only_for_uncached() -> None:
    params = PlanParams(horizon=100.0, hysteresis=0.5)
    assert default_value(View("x", 1000, 10.0, 0.0, False), params) == 0.0
    assert default_value(View("x", 1000, 10.0, 0.0, True), params) == 1500.0
    assert default_value(View("x", 1000, 0.0, 2000.0, False), params) == 1000.0  # bytes


def test_exact_beats_greedy_where_density_misleads() -> None:
    # Greedy by density takes the small dense item and then nothing else fits.
    items = [View("small", 11, 0, 0, False), View("big1", 50, 0, 0, False),
             View("big2", 50, 0, 0, False)]  # fmt: skip
    values = {"small": 12.0, "big1": 50.0, "big2": 50.0}
    chosen, method = choose(items, values, 100, PlanParams())
    assert chosen == {"big1", "big2"}
    assert method == "exact"
    assert choose_greedy(items, values, 100) != chosen


TIE = """
from scratch_stage.policy.planner import PlanParams, View, choose
items = [View("a", 34, 0, 0, False), View("b", 33, 0, 0, False),
         View("c", 33, 0, 0, False), View("d", 100, 0, 0, False)]
values = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.6000000000000001}
chosen, method = choose(items, values, 100, PlanParams())
print(sorted(chosen), method)
"""


def test_same_choice_in_every_process_whatever_the_string_hashing() -> None:
    # {a, b, c} is worth 0.6 or 0.6000000000000001 depending on the order its values are
    # added in, which follows the set's order, which follows the per-process hash seed.
    seen = set()
    for seed in range(8):
        environ = {**os.environ, "PYTHONHASHSEED": str(seed)}
        done = subprocess.run([sys.executable, "-c", TIE], env=environ, capture_output=True,
                              text=True, check=True, timeout=60)  # fmt: skip
        seen.add(done.stdout)
    assert len(seen) == 1, seen


# --- properties --------------------------------------------------------------------

names = st.sampled_from([f"d{i}" for i in range(12)])
Situation = tuple[dict[str, Fingerprint], NodeState, dict[str, float], dict[str, float], int,
                  dict[str, str]]  # fmt: skip


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    catalog = {n: fp(draw(st.integers(1, 400)) * MB) for n in draw(st.sets(names, min_size=1))}
    capacity = draw(st.integers(0, 1500)) * MB
    in_cat = sorted(catalog)
    cached_names = draw(st.sets(st.sampled_from(in_cat)))
    state = NodeState(cached=cached(catalog, *cached_names))
    budget = capacity
    for n in sorted(cached_names):
        if draw(st.booleans()) and catalog[n].size <= budget:
            state.jobs[f"j{n}"] = Hold((n,), "u", NOW)
            budget -= catalog[n].size
    held = {n for h in state.jobs.values() for n in h.datasets}
    blocked = {}
    for n in sorted(draw(st.sets(st.sampled_from(in_cat)))):
        size = catalog[n].size if n in state.cached and n not in held else 0
        if size <= budget:  # like held copies, blocked copies stay: within capacity
            blocked[n] = f"backing off {n}"
            budget -= size
    for n in draw(st.sets(st.sampled_from(in_cat))):
        state.pins[n] = Pin(NOW - 1, draw(st.sampled_from([None, NOW - 1, NOW + 100])))
    heat = {n: draw(st.floats(0, 1e6)) for n in draw(st.sets(st.sampled_from(in_cat)))}
    demand = {n: draw(st.floats(0, 10)) for n in draw(st.sets(st.sampled_from(in_cat)))}
    return catalog, state, heat, demand, capacity, blocked


def apply(catalog: dict[str, Fingerprint], state: NodeState, result: object) -> NodeState:
    assert hasattr(result, "evict") and hasattr(result, "stage")
    after = NodeState(jobs=dict(state.jobs), pins=dict(state.pins), cached=dict(state.cached))
    for n in result.evict:
        del after.cached[n]
    for n in result.stage:
        after.cached[n] = CachedCopy(catalog[n], NOW)
    return after


@settings(max_examples=300, deadline=None)
@given(situations())
def test_property_never_over_capacity(s: Situation) -> None:
    catalog, state, heat, demand, capacity, blocked = s
    result = run(catalog, state, heat, demand, capacity, blocked=blocked)
    after = apply(catalog, state, result)
    assert after.reserved_bytes() <= capacity
    assert result.used_after <= capacity


@settings(max_examples=300, deadline=None)
@given(situations())
def test_property_pins_held_and_blocked_are_respected(s: Situation) -> None:
    catalog, state, heat, demand, capacity, blocked = s
    result = run(catalog, state, heat, demand, capacity, blocked=blocked)
    held = {n for h in state.jobs.values() for n in h.datasets}
    for n in result.evict:
        assert n not in held
        pin = state.pins.get(n)
        assert pin is None or not pin.active(NOW) or n in result.unfit_pins
    for n, why in blocked.items():  # left as they are; a held copy is kept as held
        d = result.decisions[n]
        assert n not in result.evict and n not in result.stage
        assert (d.action, d.cause) == (("keep", d.cause) if n in held else ("none", why))
    assert set(result.decisions) >= set(catalog)
    assert all(d.action in ACTIONS for d in result.decisions.values())


@settings(max_examples=300, deadline=None)
@given(situations())
def test_property_planning_again_proposes_nothing(s: Situation) -> None:
    catalog, state, heat, demand, capacity, blocked = s
    first = run(catalog, state, heat, demand, capacity, blocked=blocked)
    after = apply(catalog, state, first)
    second = run(catalog, after, heat, demand, capacity, blocked=blocked)
    assert second.empty, (first, second)


@settings(max_examples=300, deadline=None)
@given(situations())
def test_property_the_lazy_pass_equals_the_full_one(s: Situation) -> None:
    # The built-in value makes views only for datasets with heat, demand or a copy (the
    # rest are made when read); the same function under another name takes the full pass.
    catalog, state, heat, demand, capacity, blocked = s
    node = plan_input(state, catalog, NOW, blocked=blocked)
    lazy = plan(node, heat, demand, capacity)
    full = plan(node, heat, demand, capacity, value=lambda v, p: default_value(v, p))
    assert (lazy.evict, lazy.stage, lazy.unfit_pins, lazy.used_after, lazy.method) == (
        full.evict, full.stage, full.unfit_pins, full.used_after, full.method,
    )  # fmt: skip
    assert len(lazy.decisions) == len(full.decisions)
    assert dict(lazy.decisions) == dict(full.decisions)
    assert {n: d.reason for n, d in lazy.decisions.items()} == {
        n: d.reason for n, d in full.decisions.items()
    }
    with pytest.raises(KeyError):
        lazy.decisions["not in the catalog"]


@settings(max_examples=300, deadline=None)
@given(situations(), st.data())
def test_property_plan_holds_means_the_same_plan_within_the_bounds(
    s: Situation, data: st.DataObject
) -> None:
    catalog, state, heat, demand, capacity, blocked = s
    node = plan_input(state, catalog, NOW, blocked=blocked)
    sizes = {n: f.size for n, f in catalog.items()}
    bounds = {}
    for n in data.draw(st.sets(st.sampled_from(sorted(catalog)))):
        a = data.draw(st.floats(-2e9, 2e9))
        b = data.draw(st.floats(-2e9, 2e9))
        bounds[n] = (min(a, b), max(a, b))
    if not plan_holds(node, bounds, capacity):
        return
    plans = []
    for _ in range(3):
        values = {}
        for n, size in sizes.items():
            low, high = bounds.get(n, (-float(size), 0.0))
            values[n] = data.draw(st.sampled_from([low, high, (low + high) / 2]))
        result = plan(node, heat, demand, capacity, value=fixed_values(values))
        plans.append((result.evict, result.stage))
    assert plans[0] == plans[1] == plans[2]


def fixed_values(values: Mapping[str, float]) -> Callable[[View, PlanParams], float]:
    return lambda view, params: values[view.name]


def test_plan_holds_refuses_a_straddling_value_a_knapsack_and_a_possible_swap() -> None:
    node = PlanInput({"a": 100, "b": 100, "c": 100})
    assert plan_holds(node, {"a": (5.0, 9.0), "b": (-9.0, -1.0)}, 300)
    assert not plan_holds(node, {"a": (-1.0, 9.0)}, 300)  # a may or may not be worth it
    assert not plan_holds(node, {"a": (5.0, 9.0), "b": (1.0, 2.0)}, 150)  # knapsack
    assert not plan_holds(node, {"a": (5.0, 9.0), "b": (1.0, 6.0)}, 300)  # order may swap
    assert plan_holds(node, {"a": (5.0, 9.0), "b": (1.0, 4.0)}, 300)


def best_by_brute_force(sizes: list[int], values: list[float], budget: int) -> float:
    """The greatest total value of any subset within BUDGET, trying every subset."""
    best = 0.0
    for mask in itertools.product((0, 1), repeat=len(sizes)):
        if sum(s for s, m in zip(sizes, mask) if m) <= budget:
            best = max(best, sum(v for v, m in zip(values, mask) if m))
    return best


knapsacks = st.lists(st.tuples(st.integers(1, 1000), st.floats(0.01, 1e6)), min_size=1, max_size=10)


@settings(max_examples=300, deadline=None)
@given(knapsacks, st.integers(1, 2000))
def test_property_choose_exact_is_optimal_when_sizes_need_no_rounding(
    items: list[tuple[int, float]], budget: int
) -> None:
    # A budget of at most max_buckets bytes gives 1-byte buckets: the DP is exact.
    views = [View(f"i{k}", size, 0, 0, False) for k, (size, _) in enumerate(items)]
    values = {v.name: value for v, (_, value) in zip(views, items)}
    chosen = choose_exact(views, values, budget, PlanParams())
    assert sum(v.size for v in views if v.name in chosen) <= budget
    best = best_by_brute_force([s for s, _ in items], [v for _, v in items], budget)
    assert sum(values[n] for n in chosen) == pytest.approx(best, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(knapsacks, st.integers(1, 10**12), st.integers(1, 1000))
def test_property_the_search_is_optimal_on_true_sizes_and_at_least_the_dp(
    items: list[tuple[int, float]], budget: int, scale: int
) -> None:
    views = [View(f"i{k}", size * scale, 0, 0, False) for k, (size, _) in enumerate(items)]
    values = {v.name: value for v, (_, value) in zip(views, items)}
    order = sorted(views, key=lambda v: (-values[v.name] / v.size, v.name))
    found = choose_search(order, values, budget, 10**6)
    assert found is not None
    assert sum(v.size for v in views if v.name in found) <= budget
    total = sum(values[n] for n in found)
    best = best_by_brute_force([v.size for v in views], [v for _, v in items], budget)
    assert total == pytest.approx(best, rel=1e-9)
    dp = choose_dp(views, values, budget, PlanParams())
    assert total >= sum(values[n] for n in dp) * (1 - 1e-9)


def test_a_search_out_of_nodes_leaves_the_choice_to_the_dp() -> None:
    many = [View(f"m{k}", 1000 + k, 0, 0, False) for k in range(30)]
    gains = {v.name: float(v.size) for v in many}  # equal densities: no pruning
    assert choose_search(many, gains, 15_000, 100) is None
    assert sum(v.size for v in many if v.name in choose_exact(many, gains, 15_000,
               PlanParams(search_nodes=100))) <= 15_000  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(knapsacks, st.integers(1, 10_000), st.integers(1, 40), st.integers(1, 12))
def test_property_choose_exact_with_rounding_and_core_fits_and_is_maximal(
    items: list[tuple[int, float]], budget: int, buckets: int, core: int
) -> None:
    # Few buckets (sizes rounded up) and a small core: never over the budget, never
    # better than the optimum, at least the optimum of the rounded-up problem when the
    # DP sees every item, and nothing left out that would still fit.
    params = PlanParams(max_buckets=buckets, core_items=core)
    views = [View(f"i{k}", size, 0, 0, False) for k, (size, _) in enumerate(items)]
    values = {v.name: value for v, (_, value) in zip(views, items)}
    chosen = choose_exact(views, values, budget, params)
    used = sum(v.size for v in views if v.name in chosen)
    assert used <= budget
    assert all(v.size > budget - used for v in views if v.name not in chosen)
    total = sum(values[n] for n in chosen)
    sizes, gains = [s for s, _ in items], [v for _, v in items]
    assert total <= best_by_brute_force(sizes, gains, budget) * (1 + 1e-9)
    if len(items) <= core:
        unit = -(-budget // min(buckets, budget))  # the DP's bucket: ceil(budget / buckets)
        rounded = [-(-s // unit) for s in sizes]
        assert total >= best_by_brute_force(rounded, gains, budget // unit) * (1 - 1e-9)
