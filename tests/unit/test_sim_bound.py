"""The offline bound is a lower bound: brute force, an LP solve, and every policy's cost."""

from __future__ import annotations

import itertools

import pytest

from scratch_stage.simulate.bound import Relaxation, lower_bound
from scratch_stage.simulate.inputs import SimConfig, split_by_node
from scratch_stage.simulate.run import simulate
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
