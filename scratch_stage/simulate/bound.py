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

copy_time_bound is tighter and the one reported: the same Lagrangian taken directly over
0/1 schedules in continuous time where a copy takes size/bandwidth, holds its room from
its start, and starts no earlier than the node's first event; it starts from the prices
above, so it is never below lower_bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
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
    times: tuple[float, ...] = ()  # interval k is [times[k], times[k+1]]

    @classmethod
    def of(
        cls, jobs: Sequence[NodeJob], sizes: Mapping[str, int], capacity: int,
        start: float | None = None, points: Iterable[float] = (),
    ) -> Relaxation:  # fmt: skip
        """START (if earlier than every job) opens a first interval without reads: the
        replay's first moment, from which copies can run (copy_time_bound). POINTS within
        the jobs' span split intervals further (`offline.plan`'s landing times)."""
        times = sorted({t for j in jobs for t in (j.start, j.end)})
        if start is not None and times and start < times[0]:
            times.insert(0, start)
        if times:
            times = sorted({*times, *(p for p in points if times[0] < p < times[-1])})
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
        return cls(sizes, capacity, max(0, len(times) - 1), flat, total, tuple(times))

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
    return _instant_copies(relax, iterations, tolerance)[0]


def _instant_copies(
    relax: Relaxation, iterations: int, tolerance: float
) -> tuple[Bound, list[float]]:
    """lower_bound, and the prices at which its best value was found."""
    n = relax.intervals
    if n == 0 or not relax.rho:
        return Bound(relax.read_bytes, relax.read_bytes, 0), [0.0] * n
    lam = [0.0] * n
    best_lam = lam
    best_lower, best_upper = -float("inf"), relax.read_bytes
    theta, stalled, used = 1.0, 0, 0
    while used < iterations:
        used += 1
        value, occupancy, ranges = _lagrangian(relax, lam)
        if value > best_lower:
            best_lower, best_lam, stalled = value, lam, 0
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
    return Bound(max(0.0, best_lower), best_upper, used), best_lam


def copy_time_bound(
    relax: Relaxation, bandwidth: float, *, iterations: int = 80, tolerance: float = 1e-3
) -> tuple[Bound, Bound]:
    """The bound with copy time (docs/simulate.md), and lower_bound's, in that order.

    A copy of d takes size/BANDWIDTH, holds its room from its start, and the first one
    starts no earlier than relax.times[0] (the replay's first moment). The Lagrangian
    relaxes only capacity, so for every price vector it is at most every schedule's
    cost; it starts from lower_bound's best prices, where it is at least lower_bound
    (each per-dataset minimum only gains terms), so the result is never below it.
    The upper field is the instant-copy relaxation's (an upper bound on *its* optimum,
    not on this one's).
    """
    instant, lam = _instant_copies(relax, iterations, tolerance)
    n = relax.intervals
    if n == 0 or not relax.rho:
        return instant, instant
    best_lower = instant.lower
    # Target level for Polyak's step (this relaxation's optimum is unknown): above the
    # best value by a margin that halves whenever the steps stop improving.
    margin = max(instant.upper - instant.lower, 0.05 * instant.lower, 1.0)
    stalled, used = 0, 0
    while used < iterations:
        used += 1
        value, occupancy = _delayed_lagrangian(relax, lam, bandwidth)
        if value > best_lower * (1 + 1e-6):
            best_lower, stalled = value, 0
        else:
            stalled += 1
            if stalled >= 8:
                margin, stalled = margin / 2, 0
        if margin <= tolerance * max(best_lower, 1.0):
            break
        grad = [o - relax.capacity for o in occupancy]
        norm = sum(g * g for g in grad)
        if norm == 0:
            break
        step = (best_lower + margin - value) / norm
        lam = [max(0.0, lv + step * g) for lv, g in zip(lam, grad)]
    lower = max(0.0, best_lower)
    return Bound(lower, instant.upper, used), instant


class _Prices:
    """Cumulative price Lambda(t) of one byte held from the first time to T (prices are
    per interval; spread evenly over it)."""

    def __init__(self, times: Sequence[float], lam: Sequence[float]) -> None:
        self.times = times
        self.lam = lam
        self.prefix = [0.0]
        for v in lam:
            self.prefix.append(self.prefix[-1] + v)

    def at(self, t: float) -> float:
        times = self.times
        if t <= times[0]:
            return 0.0
        if t >= times[-1]:
            return self.prefix[-1]
        k = bisect.bisect_right(times, t) - 1
        return self.prefix[k] + self.lam[k] * (t - times[k]) / (times[k + 1] - times[k])


def _delayed_dual(
    ks: Sequence[int], rhos: Sequence[float], times: Sequence[float], prices: _Prices,
    copy: float,
) -> tuple[float, list[tuple[float, int]]]:  # fmt: skip
    """Min per-byte Lagrangian cost of one dataset whose copy takes COPY seconds, and the
    chosen blocks (landing time, index of the time it is dropped at).

    A block landing at T and dropped at E costs 1 + r(T) - Lambda(T - COPY) + Lambda(E) -
    r(E) (r: the share of the image read so far); the first landing is at or after
    times[0] + COPY. The minimum lies where every T is a breakpoint of its term (the ends
    of a read interval, times[0] + COPY, or a time + COPY) and every E the end of a read
    interval, so a two-state scan over those points finds it.
    """
    earliest = times[0] + copy
    f0, f1 = 0.0, float("inf")
    links: list[tuple[float, int, int]] = []  # (landing, drop index, previous link or -1)
    chain0 = -1  # the last block of state 0's schedule, as an index into links
    open1 = (0.0, -1)  # state 1's landing and the chain before it
    read = 0.0  # r at the start of the current read interval
    for k, rho in zip(ks, rhos):
        lo, hi = times[k], times[k + 1]
        span = hi - lo
        if hi >= earliest:
            start = max(lo, earliest)
            points = [start, hi]
            first = bisect.bisect_right(times, start - copy)
            last = bisect.bisect_left(times, hi - copy)
            points.extend(times[i] + copy for i in range(first, last))
            best, where = float("inf"), start
            for p in points:
                cost = read + rho * (p - lo) / span - prices.at(p - copy)
                if cost < best:
                    best, where = cost, p
            if f0 + 1.0 + best < f1:
                f1, open1 = f0 + 1.0 + best, (where, chain0)
        read += rho
        close = f1 + prices.prefix[k + 1] - read
        if close < f0:
            links.append((open1[0], k + 1, open1[1]))
            f0, chain0 = close, len(links) - 1
    blocks: list[tuple[float, int]] = []
    while chain0 >= 0:
        landing, end, chain0 = links[chain0]
        blocks.append((landing, end))
    return f0, blocks


def _delayed_lagrangian(
    relax: Relaxation, lam: Sequence[float], bandwidth: float
) -> tuple[float, list[float]]:
    """L(lam) with copy time, and the minimiser's mean room held per interval."""
    times = relax.times
    prices = _Prices(times, lam)
    delta = [0.0] * (relax.intervals + 1)
    partial = [0.0] * relax.intervals
    value = relax.read_bytes - relax.capacity * prices.prefix[-1]
    for name, (ks, rhos) in relax.rho.items():
        size = relax.sizes[name]
        copy = size / bandwidth
        per_byte, blocks = _delayed_dual(ks, rhos, times, prices, copy)
        value += size * per_byte
        for landing, end in blocks:
            held = landing - copy  # the room is held from the copy's start
            j = min(bisect.bisect_right(times, held) - 1, relax.intervals - 1)
            share = (times[j + 1] - held) / (times[j + 1] - times[j])
            partial[j] += size * share
            delta[j + 1] += size
            delta[end] -= size
    occupancy, running = [], 0.0
    for d, extra in zip(delta, partial):
        running += d
        occupancy.append(running + extra)
    return value, occupancy


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
