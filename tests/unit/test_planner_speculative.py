"""The planner's speculative copies: free room used for queued demand, never taken from
a copy that has a value, a hold, a pin or a copy in flight (docs/planner.md)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.policy.planner import (
    SPECULATIVE,
    PlanInput,
    plan,
    plan_holds,
)

GB = 10**9


def test_free_room_stages_a_queued_dataset_not_worth_a_copy_yet() -> None:
    node = PlanInput({"q": 10 * GB, "far": 10 * GB, "part": 10 * GB})
    # q: one pass of an unplaced job (demand e^-1 x size: the copy does not pay now);
    # far: a job far away; part: a job reading half of it, whatever its start
    demand = {"q": 0.37 * 10 * GB, "far": 1e-6, "part": 0.5 * 10 * GB}
    prospect = {"q": 10 * GB, "far": 10 * GB, "part": 5 * GB}
    without = plan(node, {}, demand, 100 * GB)
    assert without.stage == ()
    result = plan(node, {}, demand, 100 * GB, prospect=prospect)
    assert result.stage == ("far", "q")  # equal prospect per byte: by name
    assert result.decisions["q"].cause == SPECULATIVE and result.decisions["q"].action == "stage"
    assert result.decisions["part"].action == "none"  # half a pass never pays for a copy
    assert "speculative: free room: value -" in result.decisions["q"].reason


def test_speculative_copies_go_after_the_selected_ones_and_only_into_what_they_leave() -> None:
    node = PlanInput({"hot": 60 * GB, "q": 30 * GB, "r": 50 * GB})
    heat = {"hot": 1 * GB}
    prospect = {"q": 30 * GB, "r": 100 * GB}
    result = plan(node, heat, {}, 100 * GB, prospect=prospect)
    # hot selected (60); r has the best prospect per byte but 50 does not fit the 40 left
    assert result.stage == ("hot", "q")
    assert result.decisions["r"].action == "none"
    assert result.used_after <= 100 * GB


def test_no_room_means_nothing_held_or_valued_is_evicted_for_a_speculative_copy() -> None:
    node = PlanInput(
        {"held": 40 * GB, "idle": 40 * GB, "q": 30 * GB},
        cached={"held": 40 * GB, "idle": 40 * GB},
        fresh=frozenset({"held", "idle"}),
        held=frozenset({"held"}),
    )
    result = plan(node, {}, {}, 90 * GB, prospect={"q": 1000 * GB})
    assert result.evict == () and result.stage == ()
    assert result.decisions["idle"].action == "keep"


st_names = st.sampled_from([f"d{i}" for i in range(8)])


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st_names, st.integers(1, 100), min_size=1),
    st.sets(st_names),
    st.sets(st_names),
    st.dictionaries(st_names, st.floats(0, 50)),
    st.dictionaries(st_names, st.floats(0, 300)),
    st.dictionaries(st_names, st.floats(0, 300)),
    st.integers(0, 400),
)
def test_property_a_speculative_copy_never_displaces_a_copy_with_value(
    sizes: dict[str, int], cached: set[str], held: set[str], heat: dict[str, float],
    demand: dict[str, float], extra: dict[str, float], capacity: int,
) -> None:  # fmt: skip
    cached &= set(sizes)
    held &= cached
    node = PlanInput(sizes, {n: sizes[n] for n in cached}, frozenset(cached), frozenset(held))
    demand = {n: v for n, v in demand.items() if n in sizes}
    prospect = {n: demand.get(n, 0.0) + extra.get(n, 0.0) for n in sizes}
    base = plan(node, heat, demand, capacity)
    spec = plan(node, heat, demand, capacity, prospect=prospect)
    # everything the plan without speculation keeps or stages, it still does, in order
    assert spec.evict == base.evict
    assert spec.stage[: len(base.stage)] == base.stage
    added = spec.stage[len(base.stage) :]
    for name in added:
        assert spec.decisions[name].cause == SPECULATIVE
        assert prospect[name] >= sizes[name] and name not in cached
        assert base.decisions[name].action == "none"  # not chosen on its value
    held_bytes = sum(sizes[n] for n in held)
    assert spec.used_after <= max(capacity, held_bytes)  # held copies may exceed it
    if spec.used_after > capacity:
        assert not added


def test_plan_holds_refuses_when_a_speculative_copy_could_be_staged() -> None:
    node = PlanInput({"a": 100, "q": 50})
    assert plan_holds(node, {"a": (5.0, 9.0)}, 200, {"q": 40.0})  # prospect short of size
    assert not plan_holds(node, {"a": (5.0, 9.0)}, 200, {"q": 60.0})  # fits the 100 left
    assert plan_holds(node, {"a": (5.0, 9.0)}, 140, {"q": 60.0})  # 40 left: does not fit


def test_many_idle_copies_are_kept_in_the_room_the_others_leave() -> None:
    """Ten idle copies (worth only the hysteresis bonus: one value per byte, a subset-sum
    for the knapsack) make room for a dataset worth more per byte, not for one worth less;
    the answer is the knapsack's optimum here (brute force over the 2^12 subsets)."""
    import itertools

    sizes = {f"idle{i}": (i + 1) * GB for i in range(10)} | {"new": 12 * GB, "meh": 5 * GB}
    idle = frozenset(n for n in sizes if n.startswith("idle"))
    node = PlanInput(sizes, {n: sizes[n] for n in idle}, idle)
    demand = {"new": 12 * GB * 1.6, "meh": 5 * GB * 1.05}  # 0.6 and 0.05 per byte
    result = plan(node, {}, demand, 55 * GB)
    kept = {n for n, d in result.decisions.items() if d.action in ("keep", "stage")}
    assert "new" in kept and "meh" not in kept
    assert result.used_after <= 55 * GB
    values = {n: result.decisions[n].value for n in sizes}
    best = max(
        sum(values[n] for n, m in zip(sizes, mask) if m)
        for mask in itertools.product((0, 1), repeat=len(sizes))
        if sum(sizes[n] for n, m in zip(sizes, mask) if m) <= 55 * GB
    )
    assert sum(values[n] for n in kept) >= best * (1 - 1e-9)


def test_a_copy_counts_the_heat_after_it_lands_discounted_from_now() -> None:
    """A 4 TB image read at 2 GB/s: at 1 GB/s its copy lands 4000 s from now, after the
    hour's horizon. Its heat counts from the landing, discounted as a job's start is,
    e^(-t / horizon): 2 GB/s x 3600 s x e^(-4000/3600) = 2.4 TB, less than its copy; a
    100 GB image read as hard is copied. Read at 4 GB/s (4.7 TB) the big one pays for its
    copy; counted only within the horizon from now, its heat was worth nothing."""
    from scratch_stage.policy.planner import PlanParams

    node = PlanInput({"huge": 4000 * GB, "small": 100 * GB})
    heat = {"huge": 2 * GB, "small": 2 * GB}
    params = PlanParams(copy_rate=GB)
    result = plan(node, heat, {}, 10_000 * GB, params=params)
    assert result.stage == ("small",)
    after = 3600 * math.exp(-4000 / 3600)
    assert result.decisions["huge"].value == pytest.approx(2 * GB * after - 4000 * GB)
    hotter = plan(node, {**heat, "huge": 4 * GB}, {}, 10_000 * GB, params=params)
    assert hotter.stage == ("small", "huge")
    assert hotter.decisions["huge"].value == pytest.approx(4 * GB * after - 4000 * GB)
    assert plan(node, heat, {}, 10_000 * GB).stage == ("small", "huge")  # instant copies
    cached = PlanInput(node.sizes, {"huge": 4000 * GB}, frozenset({"huge"}))
    assert plan(cached, heat, {}, 10_000 * GB, params=params).decisions["huge"].action == "keep"


def test_a_copy_never_displaces_a_cached_one_read_as_hard() -> None:
    """Fairness: both values weigh reads on one scale from now, so a copy's reads during
    its copy count nothing, and the cached copy it would displace keeps all of its own.
    A 4 TB image read at 3 GB/s does not displace a cached 4 TB copy read at 2 GB/s, nor
    even one read at 1 GB/s (3.6 TB + its hysteresis against 3 GB/s x 3600 s x
    e^(-4000/3600) - 4 TB = -0.44 TB); read at 8 GB/s (5.5 TB) it does."""
    from scratch_stage.policy.planner import PlanParams

    sizes = {"warm": 4000 * GB, "big": 4000 * GB}
    node = PlanInput(sizes, {"warm": 4000 * GB}, frozenset({"warm"}))
    params = PlanParams(copy_rate=GB)
    for warm in (2 * GB, 1 * GB):
        kept = plan(node, {"warm": warm, "big": 3 * GB}, {}, 4000 * GB, params=params)
        assert kept.empty and kept.decisions["warm"].action == "keep"
    swapped = plan(node, {"warm": 1 * GB, "big": 8 * GB}, {}, 4000 * GB, params=params)
    assert swapped.evict == ("warm",) and swapped.stage == ("big",)
