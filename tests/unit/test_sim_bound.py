"""The offline bound is a lower bound: brute force, an LP solve, and every policy's cost."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.simulate.bound import Relaxation, copy_time_bound, lower_bound
from scratch_stage.simulate.inputs import (
    NodeJob,
    NodeWorkload,
    SimConfig,
    replay_start,
    split_by_node,
    unplaced_demand,
)
from scratch_stage.simulate.policies import DEFAULT_POLICIES
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Job, Trace
from tests.unit.sim_helpers import GB, random_trace


def relaxation(seed: int, capacity: int, **kwargs: int) -> Relaxation:
    trace = random_trace(seed, **kwargs)
    work = split_by_node(trace, SimConfig(capacity=capacity))
    (node,) = work.values()
    return Relaxation.of(node.jobs, trace.datasets, capacity)


def brute_force(relax: Relaxation) -> float:
    """Cheapest 0/1 schedule with copies at interval boundaries (an achievable cost)."""
    names = sorted(relax.rho)
    k = relax.intervals
    best = float("inf")
    for bits in itertools.product((0, 1), repeat=len(names) * k):
        x = {n: [float(b) for b in bits[i * k : (i + 1) * k]] for i, n in enumerate(names)}
        if all(sum(relax.sizes[n] * x[n][j] for n in names) <= relax.capacity for j in range(k)):
            best = min(best, relax.cost(x))
    return best


def linear_programme(relax: Relaxation) -> float:
    """LP*: the relaxation solved exactly by HiGHS (x in [0,1], y >= increments)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    names, k = sorted(relax.rho), relax.intervals
    nvar = 2 * len(names) * k  # x then y per (dataset, interval)
    cost, rows, rhs = [0.0] * nvar, [], []

    def xi(i: int, j: int) -> int:
        return 2 * (i * k + j)

    constant = relax.read_bytes
    for i, n in enumerate(names):
        size = relax.sizes[n]
        for j, rho in zip(*relax.rho[n]):
            cost[xi(i, j)] -= size * rho
        for j in range(k):
            cost[xi(i, j) + 1] = size
            row = [0.0] * nvar  # x_j - x_{j-1} - y_j <= 0
            row[xi(i, j)], row[xi(i, j) + 1] = 1.0, -1.0
            if j:
                row[xi(i, j - 1)] = -1.0
            rows.append(row)
            rhs.append(0.0)
    for j in range(k):
        row = [0.0] * nvar
        for i, n in enumerate(names):
            row[xi(i, j)] = relax.sizes[n]
        rows.append(row)
        rhs.append(relax.capacity)
    bounds = [(0.0, 1.0), (0.0, None)] * (nvar // 2)
    result = scipy_optimize.linprog(cost, A_ub=rows, b_ub=rhs, bounds=bounds, method="highs")
    assert result.status == 0
    return float(result.fun) + constant


@pytest.mark.parametrize("seed", range(12))
def test_bound_is_below_brute_force(seed: int) -> None:
    relax = relaxation(seed, 40 * GB, datasets=2, jobs=3)
    if relax.intervals * len(relax.rho) > 14:
        pytest.skip("too many schedules to enumerate")
    bound = lower_bound(relax, iterations=200)
    assert bound.lower <= brute_force(relax) * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(15))
def test_bound_is_below_and_close_to_the_linear_programme(seed: int) -> None:
    relax = relaxation(seed, 50 * GB, datasets=4, jobs=7)
    optimum = linear_programme(relax)
    bound = lower_bound(relax, iterations=400, tolerance=1e-6)
    assert bound.lower <= optimum * (1 + 1e-9)
    assert bound.upper >= optimum * (1 - 1e-9)  # the repaired primal is feasible
    assert bound.lower >= optimum * 0.97  # and the subgradient gets close


@pytest.mark.parametrize("seed", range(8))
def test_every_policy_costs_at_least_the_bound(seed: int) -> None:
    trace = random_trace(seed, datasets=4, jobs=10, nodes=2)
    report = simulate(trace, SimConfig(capacity=50 * GB, interval=60.0, bandwidth=5e8))
    assert report.bound is not None
    for result in report.results.values():
        assert result.slow_bytes >= report.bound.lower * (1 - 1e-9), result.policy


def test_unconstrained_cache_gives_the_exact_bound() -> None:
    relax = relaxation(3, 10**15, datasets=3, jobs=5)
    bound = lower_bound(relax)
    assert bound.lower == pytest.approx(bound.upper)
    assert bound.lower == pytest.approx(linear_programme(relax), rel=1e-9)


# --- the bound with copy time ------------------------------------------------------------


def node_problem(trace: Trace, capacity: int) -> tuple[NodeWorkload, Relaxation]:
    config = SimConfig(capacity=capacity)
    (work,) = split_by_node(trace, config).values()
    start = replay_start(work, unplaced_demand(trace, config))
    return work, Relaxation.of(work.jobs, trace.datasets, capacity, start)


def pass_schedules_optimum(
    jobs: Sequence[NodeJob], sizes: Mapping[str, int], capacity: int, bandwidth: float,
    passes: Sequence[float],
) -> float:  # fmt: skip
    """Cheapest schedule whose decisions are taken at PASSES, over all of them: at each pass
    evict any unheld copies and start at most one copy (one at a time, its room held
    from its start, mounted size/bandwidth later), as the simulator's executor does.
    Exhaustive (a dynamic programme over the cache's states at each pass)."""
    names = sorted({n for j in jobs for n, _ in j.reads})
    end = max(j.end for j in jobs)

    def reads(name: str, a: float, b: float) -> float:
        """Bytes of NAME read in [a, b)."""
        total = 0.0
        for j in jobs:
            for n, amount in j.reads:
                if n == name:
                    overlap = min(b, j.end) - max(a, j.start)
                    total += amount * max(0.0, overlap) / (j.end - j.start)
        return total

    def advance(state: State, a: float, b: float) -> tuple[State, float]:
        """The state at B and the slow bytes read in [a, b)."""
        cached, flight = state
        slow = 0.0
        for name in names:
            if name in cached:
                continue
            mount = flight[1] if flight is not None and flight[0] == name else math.inf
            slow += reads(name, a, min(b, max(a, mount)))
        if flight is not None and flight[1] <= b:
            return (cached | {flight[0]}, None), slow
        return (cached, flight), slow

    def held(name: str, t: float) -> bool:
        return any(j.start <= t < j.end and name in dict(j.reads) for j in jobs)

    State = tuple[frozenset[str], Optional[tuple[str, float]]]
    first = min(passes[0], min(j.start for j in jobs))
    states: dict[State, float] = {}
    start_state: State = (frozenset(), None)
    state, slow = advance(start_state, first, passes[0])
    states[state] = slow
    bounds = [*passes[1:], end]
    for now, upto in zip(passes, bounds):
        after: dict[State, float] = {}
        for (cached, flight), cost in states.items():
            free_now = [n for n in cached if not held(n, now)]
            for k in range(len(free_now) + 1):
                for evicted in itertools.combinations(free_now, k):
                    kept = cached - set(evicted)
                    used = sum(sizes[n] for n in kept) + (sizes[flight[0]] if flight else 0)
                    options: list[tuple[tuple[str, float] | None, float]] = [(flight, 0.0)]
                    if flight is None:
                        options += [
                            ((n, now + sizes[n] / bandwidth), float(sizes[n]))
                            for n in names
                            if n not in kept and used + sizes[n] <= capacity
                        ]
                    for new_flight, copied in options:
                        nxt, slow = advance((kept, new_flight), now, max(now, upto))
                        total = cost + copied + slow
                        if total < after.get(nxt, math.inf):
                            after[nxt] = total
        states = after
    return min(states.values())


@pytest.mark.parametrize("seed", range(10))
def test_copy_time_bound_is_below_brute_force_over_pass_schedules(seed: int) -> None:
    trace = random_trace(seed, datasets=3, jobs=4)
    capacity, bandwidth = 50 * GB, 2e7  # copies of 500-2000 s, jobs of 600-9000 s
    work, relax = node_problem(trace, capacity)
    bound, instant = copy_time_bound(relax, bandwidth, iterations=200)
    start = relax.times[0]
    passes = [start + 500.0 * i for i in range(int((work.jobs[-1].end - start) // 500) + 1)]
    optimum = pass_schedules_optimum(work.jobs, trace.datasets, capacity, bandwidth, passes)
    assert instant.lower <= bound.lower * (1 + 1e-9)
    assert bound.lower <= optimum * (1 + 1e-9)


def test_copy_time_counts_when_jobs_start_at_once() -> None:
    """A 40 GB dataset at 10 MB/s takes 4000 s to copy; a job reading it 3 times from the
    first moment pays at least the reads during that copy, which instant copies ignore."""
    trace = Trace(
        {"a": 40 * GB},
        (Job("1", 0.0, 0.0, 8000.0, ("n1",), {"a": 120 * GB}),),
    )
    _, relax = node_problem(trace, 100 * GB)
    bound, instant = copy_time_bound(relax, 1e7)
    assert instant.lower == pytest.approx(40 * GB, rel=1e-6)  # copy once, read free
    # best: copy at once (40 GB) and read the first 4000 s slowly (60 GB)
    assert bound.lower == pytest.approx(100 * GB, rel=1e-3)
    assert bound.lower <= 100 * GB * (1 + 1e-9)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bandwidth=st.sampled_from([1e7, 5e7, 5e8]),
    capacity=st.sampled_from([20 * GB, 50 * GB, 90 * GB]),
)
def test_every_policy_costs_at_least_the_copy_time_bound(
    seed: int, bandwidth: float, capacity: int
) -> None:
    trace = random_trace(seed, datasets=4, jobs=8, nodes=2)
    config = SimConfig(capacity=capacity, interval=60.0, bandwidth=bandwidth)
    report = simulate(trace, config, [*DEFAULT_POLICIES, "mip-schedule"], bound_iterations=60)
    assert report.bound is not None and report.instant_bound is not None
    assert report.bound.lower >= report.instant_bound.lower * (1 - 1e-9)
    for result in report.results.values():
        assert result.slow_bytes >= report.bound.lower * (1 - 1e-9), result.policy


@pytest.mark.parametrize("seed", range(8))
def test_copy_time_bound_at_least_the_instant_one_and_its_lp(seed: int) -> None:
    """Never below the instant-copy bound, and so against the LP: the instant bound is
    within 3 % of LP* (above), and copy time only adds."""
    trace = random_trace(seed, datasets=4, jobs=7)
    _, relax = node_problem(trace, 50 * GB)
    optimum = linear_programme(relax)
    bound, instant = copy_time_bound(relax, 1e9, iterations=400, tolerance=1e-6)
    assert instant.lower <= optimum * (1 + 1e-9)
    assert bound.lower >= instant.lower * (1 - 1e-12)
    # with copies of 10-40 s against jobs of 600 s and more, little changes
    assert bound.lower <= optimum * 1.1
