"""An offline lower bound on slow-storage bytes, per node (proof in docs/simulate.md).

The relaxation: copies are instantaneous and free in time, and a fraction x of a dataset
may be cached (a read is then served from the SSD in proportion x). Between consecutive
job starts/ends on a node ("intervals") every read runs at a constant rate, so some
optimal relaxed schedule keeps x constant on each interval; its cost is

    sum_d size_d * ( sum_k [x_dk - x_d,k-1]^+  +  sum_k rho_dk * (1 - x_dk) )

(copies, then slow reads; rho_dk = bytes of d read in interval k / size_d), subject to
sum_d size_d * x_dk <= C on every interval. Any schedule the simulator runs maps to one
that costs no more, so the relaxation's optimum LP* is a lower bound.

For every price vector lam >= 0 (bytes of capacity per interval), the Lagrangian
L(lam) = min_x [cost(x) + sum_k lam_k (occupancy_k(x) - C)] <= LP* (weak duality). It
splits by dataset; each part is a total-variation function whose minimum over [0,1]^K
is at a 0/1 point (it is a Lovász extension), found by a two-state dynamic programme
over the dataset's reads. Subgradient steps on lam tighten L; a repaired primal (scaled
down where over capacity) gives an upper bound on LP*, reported as the gap.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scratch_stage.simulate.inputs import NodeJob


@dataclass(frozen=True)
class Bound:
    """LOWER <= LP* <= UPPER for one node (or summed over nodes)."""

    lower: float
    upper: float
    iterations: int

    def __add__(self, other: Bound) -> Bound:
        return Bound(
            self.lower + other.lower, self.upper + other.upper,
            max(self.iterations, other.iterations),
        )  # fmt: skip


@dataclass(frozen=True)
class Relaxation:
    """One node's problem: interval lengths, and per dataset its rho by interval index."""

    sizes: Mapping[str, int]
    capacity: int
    intervals: int
    rho: Mapping[str, tuple[tuple[int, ...], tuple[float, ...]]]
    read_bytes: float

    @classmethod
    def of(cls, jobs: Sequence[NodeJob], sizes: Mapping[str, int], capacity: int) -> Relaxation:
        times = sorted({t for j in jobs for t in (j.start, j.end)})
        rho: dict[str, dict[int, float]] = {}
        total = 0.0
        for job in jobs:
            first = bisect.bisect_left(times, job.start)
            last = bisect.bisect_left(times, job.end)
            span = job.end - job.start
            for name, size in job.reads:
                total += size
                if sizes[name] > capacity:
                    continue  # never cached by any schedule: x = 0, read from slow storage
                per = rho.setdefault(name, {})
                scale = size / span / sizes[name]
                for k in range(first, last):  # interval k is [times[k], times[k+1]]
                    per[k] = per.get(k, 0.0) + scale * (times[k + 1] - times[k])
        flat = {n: (tuple(sorted(p)), tuple(p[k] for k in sorted(p))) for n, p in rho.items()}
        return cls(sizes, capacity, max(0, len(times) - 1), flat, total)

    def cost(self, x: Mapping[str, Sequence[float]]) -> float:
        """The relaxed cost of fractions X[d][k] (k over all intervals), capacity unchecked."""
        total = self.read_bytes
        for name, xs in x.items():
            size = self.sizes[name]
            ks, rhos = self.rho.get(name, ((), ()))
            prev = 0.0
            for value in xs:
                total += size * max(0.0, value - prev)
                prev = value
            total -= size * sum(r * xs[k] for k, r in zip(ks, rhos))
        return total


def _dataset_dual(
    ks: Sequence[int], rhos: Sequence[float], prefix: Sequence[float]
) -> tuple[float, list[tuple[int, int]]]:
    """Min per-byte Lagrangian cost of one dataset, and its cached interval ranges [a, b).

    States after each interval the dataset is read in: 0 (not cached) or 1 (cached).
    Between two such intervals a cached copy either stays (paying the prices of the
    gap) or is dropped right after the first (free) and perhaps copied again (1 a byte).
    """
    f0, f1 = 0.0, float("inf")
    drop_from_1: list[bool] = []  # state 0 at step i came from state 1 at i-1
    stayed: list[bool] = []  # state 1 at step i came through the gap from state 1
    for i, (k, r) in enumerate(zip(ks, rhos)):
        gap = prefix[k] - prefix[ks[i - 1] + 1] if i else 0.0
        drop_from_1.append(f1 < f0)
        g0 = min(f0, f1)
        stay = f1 + gap
        stayed.append(stay <= g0 + 1.0)
        f0, f1 = g0 + r, min(stay, g0 + 1.0) + (prefix[k + 1] - prefix[k])
    ranges: list[tuple[int, int]] = []
    cached, end = f1 < f0, -1
    for i in range(len(ks) - 1, -1, -1):
        if not cached:
            cached = drop_from_1[i]
            continue
        end = ks[i] + 1 if end < 0 else end
        if stayed[i] and i:
            continue  # the copy was already there in the previous read interval
        ranges.append((ks[i], end))
        cached, end = drop_from_1[i], -1
    return min(f0, f1), ranges


def lower_bound(relax: Relaxation, *, iterations: int = 80, tolerance: float = 1e-3) -> Bound:
    """Best Lagrangian bound found by Polyak subgradient steps, and the primal upper bound."""
    n = relax.intervals
    if n == 0 or not relax.rho:
        return Bound(relax.read_bytes, relax.read_bytes, 0)
    lam = [0.0] * n
    best_lower, best_upper = -float("inf"), relax.read_bytes
    theta, stalled, used = 1.0, 0, 0
    while used < iterations:
        used += 1
        value, occupancy, ranges = _lagrangian(relax, lam)
        if value > best_lower:
            best_lower, stalled = value, 0
        else:
            stalled += 1
            if stalled >= 8:  # Polyak's target is the primal bound: shrink when overshooting
                theta, stalled = theta / 2, 0
        best_upper = min(best_upper, _repaired_cost(relax, occupancy, ranges))
        if best_upper - best_lower <= tolerance * best_upper:
            break
        grad = [o - relax.capacity for o in occupancy]
        norm = sum(g * g for g in grad)
        if norm == 0:
            break
        step = theta * (best_upper - value) / norm
        lam = [max(0.0, lv + step * g) for lv, g in zip(lam, grad)]
    return Bound(max(0.0, best_lower), best_upper, used)


def _lagrangian(
    relax: Relaxation, lam: Sequence[float]
) -> tuple[float, list[float], dict[str, list[tuple[int, int]]]]:
    """L(lam), the minimiser's occupancy per interval, and each dataset's cached ranges."""
    prefix = [0.0]
    for v in lam:
        prefix.append(prefix[-1] + v)
    delta = [0.0] * (relax.intervals + 1)
    value = relax.read_bytes - relax.capacity * prefix[-1]
    all_ranges: dict[str, list[tuple[int, int]]] = {}
    for name, (ks, rhos) in relax.rho.items():
        size = relax.sizes[name]
        per_byte, ranges = _dataset_dual(ks, rhos, prefix)
        value += size * (per_byte - sum(rhos))
        for a, b in ranges:
            delta[a] += size
            delta[b] -= size
        all_ranges[name] = ranges
    occupancy, running = [], 0.0
    for d in delta[:-1]:
        running += d
        occupancy.append(running)
    return value, occupancy, all_ranges


def _repaired_cost(
    relax: Relaxation, occupancy: Sequence[float], ranges: Mapping[str, list[tuple[int, int]]]
) -> float:
    """Cost of the minimiser scaled down to capacity where it overflows (a feasible x)."""
    scale = [min(1.0, relax.capacity / o) if o > 0 else 1.0 for o in occupancy]
    rise = [0.0]  # prefix sums of the scale's upward steps
    for k in range(1, len(scale)):
        rise.append(rise[-1] + max(0.0, scale[k] - scale[k - 1]))
    total = relax.read_bytes
    for name, spans in ranges.items():
        size = relax.sizes[name]
        ks, rhos = relax.rho[name]
        for a, b in spans:
            total += size * (scale[a] + rise[b - 1] - rise[a])
            lo, hi = bisect.bisect_left(ks, a), bisect.bisect_left(ks, b)
            total -= size * sum(rhos[i] * scale[ks[i]] for i in range(lo, hi))
    return total
