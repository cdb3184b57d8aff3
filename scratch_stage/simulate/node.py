"""One simulated node: its cache, copies, running jobs, and what it has cost so far."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from scratch_stage.core.expected import after_landing, expected_read, running_read, wait_discount
from scratch_stage.policy.planner import PlanInput
from scratch_stage.simulate.inputs import (
    SCHEDULED_HERE,
    UNKNOWN_START_FACTOR,
    ArrayHistory,
    ByLimit,
    FleetHistory,
    NodeJob,
    NodeWorkload,
    Pending,
    SimConfig,
    UnplacedDemand,
)


class PolicyError(AssertionError):
    """A policy asked for something the real executor would refuse (a bug in the policy)."""


@dataclass(frozen=True)
class Action:
    """Evict these now; then copy those, replacing (or extending) the copy queue."""

    evict: tuple[str, ...] = ()
    stage: tuple[str, ...] = ()
    replace: bool = True


@dataclass
class CopySpan:
    """One copy on one node: started, landed (mounted), and left the cache (evicted; inf
    if still cached when the replay ends). `sharing.shared_load` reads them across nodes."""

    node: str
    name: str
    start: float
    landed: float
    left: float = math.inf


@dataclass
class Costs:
    """What a node's replay cost, in bytes and seconds (metrics.PolicyResult sums them)."""

    read_bytes: int = 0
    slow_read_bytes: float = 0.0
    copied_bytes: int = 0
    copies: int = 0
    evictions: int = 0
    refused_copies: int = 0
    slow_read_seconds: float = 0.0
    waited_seconds: float = 0.0
    peak_used: int = 0
    decisions: int = 0
    series: list[tuple[float, float]] = field(default_factory=list, repr=False)
    spans: list[CopySpan] = field(default_factory=list, repr=False)

    @property
    def slow_bytes(self) -> float:
        """Bytes read from slow storage: job reads that missed the SSD, plus copies."""
        return self.slow_read_bytes + self.copied_bytes


@dataclass
class SlowRead:
    """A job reading a dataset that is not (yet) cached here."""

    since: float
    rate: float


class SimNode:
    """The cache of one node as the executor would keep it (capacity and holds enforced)."""

    def __init__(
        self, work: NodeWorkload, sizes: Mapping[str, int], config: SimConfig,
        unplaced: UnplacedDemand, fleet: FleetHistory | None = None,
        arrays: ArrayHistory | None = None,
    ) -> None:  # fmt: skip
        self.work = work
        self.sizes = sizes
        self.config = config
        self.capacity = config.capacity
        self.unplaced = unplaced
        self.cached: dict[str, float] = {}
        self.inflight: tuple[str, float, float] | None = None  # name, started, done
        self.queue: list[str] = []
        self.refused: list[str] = []  # copies refused for lack of room, in order
        self.used = 0
        self.held: dict[str, int] = {}
        self.running: dict[str, NodeJob] = {}
        self.slow: dict[str, dict[str, SlowRead]] = {}
        self.streams: list[tuple[str, float, float, float]] = []  # name, start, end, rate
        self.uses: dict[str, int] = {}
        self.last_use: dict[str, float] = {}
        self.last_boundary = -math.inf
        self.version = 0
        self.costs = Costs()
        self._pending_next = 0
        self._pending_active: list[int] = []
        self._span: dict[str, CopySpan] = {}  # the current copy of each name here
        # History of finished jobs here, as a node's counters keep it: bytes read and jobs
        # per dataset; their ratio is the expected reads of a job (docs/simulate.md).
        self.read_done: dict[str, float] = {}
        self.jobs_done: dict[str, int] = {}
        # With `SimConfig.limit_history`: bytes read and time limits (s) of the finished
        # jobs with a time limit, per dataset.
        self.read_limited: dict[str, float] = {}
        self.limit_done: dict[str, float] = {}
        self.history_version = 0
        # With a fleet history (`SimConfig.fleet_history`), the estimates use it as it
        # stood at `history_now`, which the replay advances at each fleet job's end.
        self.fleet = fleet
        self.history_now = -math.inf
        # With `SimConfig.array_history`: bytes read and jobs per (array, dataset) of the
        # array elements finished here ("node"), or every node's (`arrays`, "fleet", as it
        # stood at `history_now`).
        self.array_read: dict[tuple[str, str], float] = {}
        self.array_jobs: dict[tuple[str, str], int] = {}
        self.arrays = arrays if config.array_history == "fleet" else None
        if config.array_history == "fleet" and arrays is None:
            raise ValueError("array_history 'fleet' needs the trace's ArrayHistory")
        self._unplaced_memo: dict[
            tuple[int, bool], tuple[Mapping[str, ByLimit], dict[str, float]]
        ] = {}
        self._unplaced_version = (0, 0)
        # Each entry of the unplaced demand in bytes (`_entry_bytes`), with the stamp of
        # its dataset's history and cache state it was computed at (`_stamps`, `_epoch`).
        self._entries: dict[tuple[int, bool, bool], tuple[ByLimit, tuple[int, int], float]] = {}
        self._stamps: dict[str, int] = {}  # per dataset: bumped when its history or copy changes
        self._epoch = 0  # bumped when every dataset's history changes (a fleet history)
        self.cache_version = 0  # changes when the set of cached or in-flight copies does

    # --- what policies see -------------------------------------------------------------

    @property
    def committed(self) -> int:
        """Bytes cached, in flight, and queued for copying."""
        return self.used + sum(self.sizes[n] for n in self.queue)

    def busy(self, name: str) -> bool:
        """NAME is cached, being copied, or queued."""
        return (
            name in self.cached
            or name in self.queue
            or (self.inflight is not None and self.inflight[0] == name)
        )

    def evictable(self, name: str) -> bool:
        return name in self.cached and not self.held.get(name)

    def heat(self, now: float) -> dict[str, float]:
        """Bytes/s read per dataset over the window ending at NOW (slow and cached alike)."""
        period = self.config.period
        left = now - period
        self.streams = [s for s in self.streams if s[2] > left]
        heat: dict[str, float] = {}
        for name, start, end, rate in self.streams:
            overlap = min(end, now) - max(start, left)
            if overlap > 0:
                heat[name] = heat.get(name, 0.0) + rate * overlap / period
        return heat

    def per_job(self, name: str) -> float | None:
        """Bytes a finished job read from NAME here (with a fleet history: on any node, by
        `history_now`), on average; None without history."""
        if self.fleet is not None:
            return self.fleet.per_job(name, self.history_now)
        jobs = self.jobs_done.get(name)
        return self.read_done[name] / jobs if jobs else None

    def expected(self, name: str, limit: float) -> float:
        """Bytes a queued job with time limit LIMIT is expected to read from NAME here."""
        per_job = self.per_job(name)
        if self.config.limit_history and limit != math.inf and self.limit_done.get(name):
            per_job = self.read_limited[name] / self.limit_done[name] * limit
        return expected_read(self.sizes[name], limit, per_job, self.config.read_rate)

    def history_times(self) -> tuple[float, ...]:
        """The instants (sorted) at which another node's job ending changes this node's
        estimates: with a fleet history, any job's end; with the fleet's array history,
        the ends of the elements of the arrays with a job placed here."""
        times: set[float] = set()
        if self.fleet is not None:
            times.update(self.fleet.times)
        if self.arrays is not None:
            times.update(self.arrays.times(self.work))
        return tuple(sorted(times))

    def array_per_job(self, array: str, name: str) -> float | None:
        """Bytes a finished element of ARRAY read from NAME (here, or with the fleet's array
        history on any node by `history_now`), on average; None if none has finished."""
        if self.arrays is not None:
            return self.arrays.per_job(array, name, self.history_now)
        jobs = self.array_jobs.get((array, name))
        return self.array_read[(array, name)] / jobs if jobs else None

    def queued(self, name: str, p: Pending, k: int) -> float:
        """Bytes placed job P is taken to read from NAME (its K-th dataset): the estimate
        (`expected`; with `SimConfig.array_history` its array's finished elements' mean if
        there is one), or with `SimConfig.true_queued` (or an array element's with
        `array_history="oracle"`) what it will truly read."""
        if self.config.true_placed_reads:
            return p.reads[k]
        if p.array is not None and self.config.array_history == "oracle":
            return p.reads[k]
        if p.array is not None and self.config.array_history:
            per_job = self.array_per_job(p.array, name)
            if per_job is not None:
                return expected_read(self.sizes[name], p.limit, per_job, self.config.read_rate)
        return self.expected(name, p.limit)

    def _unplaced_values(self, now: float) -> tuple[Mapping[str, ByLimit], bool]:
        """The unplaced jobs' weights at NOW, or with `SimConfig.true_queued` their weighted
        true reads (then already bytes: the second item)."""
        if self.config.true_unplaced_reads:
            return self.unplaced.reads_at(now), True
        return self.unplaced.at(now), False

    def true_running(self, job: NodeJob, size: float, now: float, land: float) -> float:
        """Of SIZE bytes JOB reads at a steady rate over its run, those after a copy
        started at NOW would land LAND seconds later (`SimConfig.true_running`)."""
        after = job.end - max(job.start, now + land)
        return size * min(1.0, after / (job.end - job.start)) if after > 0 else 0.0

    def see_history(self, now: float) -> None:
        """Fleet jobs ended at NOW: the estimates from now on count them (a change of state,
        as a job ending here is). The array history changes placed jobs' estimates only,
        which are computed at each pass: the unplaced entries stay."""
        self.history_now = now
        if self.fleet is not None:
            self.history_version += 1
            self._epoch += 1
        self.version += 1

    def land(self, name: str) -> float:
        """Seconds until a copy of NAME would land if started now (0: cached or in flight)."""
        if name in self.cached or (self.inflight is not None and self.inflight[0] == name):
            return 0.0
        return self.sizes[name] / self.config.bandwidth

    def _touch(self, name: str) -> None:
        """NAME's history or copy changed: its entries' bytes are computed again."""
        self._stamps[name] = self._stamps.get(name, 0) + 1

    def _entry_bytes(self, name: str, by_limit: ByLimit, landing: bool, true_reads: bool) -> float:
        """One entry of the unplaced demand (NAME's weights by time limit) in bytes (see
        `_unplaced_bytes`); remembered until NAME's history or copy changes."""
        key = (id(by_limit), landing, true_reads)
        stamp = (self._epoch, self._stamps.get(name, 0))
        found = self._entries.get(key)
        if found is not None and found[0] is by_limit and found[1] == stamp:
            return found[2]
        horizon = self.config.horizon
        land = self.land(name) if landing else 0.0
        total = 0.0
        for limit, w in by_limit.items():
            amount = w if true_reads else w * self.expected(name, limit)
            if land > 0:  # unknown start: one horizon away
                amount *= after_landing(horizon, None if limit == math.inf else limit, land)
            total += amount
        if len(self._entries) >= 100_000:
            self._entries.clear()  # entries of ticks long past: time only moves on
        self._entries[key] = (by_limit, stamp, total)
        return total

    def _bytes(
        self, values: Mapping[str, ByLimit], landing: bool, true_reads: bool
    ) -> dict[str, float]:
        entry = self._entry_bytes
        return {name: entry(name, b, landing, true_reads) for name, b in values.items()}

    def _unplaced_bytes(
        self, values: Mapping[str, ByLimit], landing: bool = False, true_reads: bool = False
    ) -> dict[str, float]:
        """VALUES (one of the unplaced demand's, kept for the whole replay) in bytes, with
        the current history (LANDING: only the reads after a copy would land); remembered
        until the history or the cache changes. TRUE_READS: VALUES are already bytes (the
        weighted true reads, `UnplacedDemand.reads`), not weights of jobs."""
        version = (self.history_version, self.cache_version)
        if self._unplaced_version != version:
            self._unplaced_memo.clear()
            self._unplaced_version = version
        key = (id(values), landing)
        found = self._unplaced_memo.get(key)
        if found is None or found[0] is not values:
            found = self._unplaced_memo[key] = (values, self._bytes(values, landing, true_reads))
        return found[1]

    def unplaced_reads(self, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """What `demand_parts` counts for the jobs not yet placed, the demand and the
        prospect, with each job's true reads in place of its expected reads (the blind
        queue oracle's view; the replay must be built with `unplaced_demand(reads=True)`)."""
        values = self.unplaced.reads_at(now)
        demand = self._unplaced_bytes(values, landing=True, true_reads=True)
        prospect = self._unplaced_bytes(values, true_reads=True)
        return demand, {n: v / UNKNOWN_START_FACTOR for n, v in prospect.items()}

    def demand(self, now: float) -> dict[str, float]:
        """Expected bytes queued jobs will read here, weighted as node_demand weighs them."""
        return self.demand_parts(now)[0]

    def running_demand(self, now: float, heat: Mapping[str, float]) -> dict[str, float]:
        """Bytes the running jobs are expected to read from each dataset neither cached nor
        in flight after its copy would land (`running_read`, as `slurm.demand.running_demand`
        computes it: each job reads the dataset's HEAT over its running jobs)."""
        out: dict[str, float] = {}
        cached, held = self.cached, self.held
        inflight = self.inflight[0] if self.inflight is not None else None
        if self.config.true_running:  # each job's true reads after the landing
            for job in self.running.values():
                for name, size in job.reads:
                    if name in cached or name == inflight:
                        continue
                    land = self.sizes[name] / self.config.bandwidth
                    amount = self.true_running(job, size, now, land)
                    if amount > 0:
                        out[name] = out.get(name, 0.0) + amount
            return out
        for job in self.running.values():
            limit = job.limit
            if limit == math.inf:
                continue
            for name, _ in job.reads:
                rate = heat.get(name)
                if not rate or name in cached or name == inflight:
                    continue
                land = self.sizes[name] / self.config.bandwidth
                amount = running_read(rate / held[name], now, job.start, limit, land)
                if amount > 0:
                    out[name] = out.get(name, 0.0) + amount
        return out

    def running_moves(self, now: float) -> bool:
        """Some running job's expected reads after a copy would land still change with time."""
        true_running = self.config.true_running
        for job in self.running.values():
            if true_running:  # its true reads after a landing fall until that passes its end
                if any(job.end > now + self.land(name) > now for name, _ in job.reads):
                    return True
                continue
            if job.limit == math.inf:
                continue
            for name, _ in job.reads:
                land = self.land(name)
                if land > 0 and job.start + job.limit > now + land:
                    return True
        return False

    def demand_parts(
        self, now: float, heat: Mapping[str, float] | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """The demand, and the prospect (the same without the wait's discount); with HEAT,
        the demand includes the running jobs' reads after a copy lands (`running_demand`)."""
        values, true_reads = self._unplaced_values(now)
        demand = dict(self._unplaced_bytes(values, landing=True, true_reads=true_reads))
        if heat is not None:
            for name, amount in self.running_demand(now, heat).items():
                demand[name] = demand.get(name, 0.0) + amount
        # every unplaced job weighs its share x e^-1 (unknown start): undiscounted, x e
        unplaced = self._unplaced_bytes(values, true_reads=true_reads)
        prospect = {n: v / UNKNOWN_START_FACTOR for n, v in unplaced.items()}
        pending = self.work.pending
        while self._pending_next < len(pending) and pending[self._pending_next].visible <= now:
            self._pending_active.append(self._pending_next)
            self._pending_next += 1
        self._pending_active = [i for i in self._pending_active if pending[i].start > now]
        horizon = self.config.horizon
        for i in self._pending_active:
            p = pending[i]
            wait = max(0.0, p.estimate - now)
            for k, name in enumerate(p.datasets):
                # the wait counts from when a copy must start to land in time
                weight = SCHEDULED_HERE * wait_discount(wait, self.land(name), horizon)
                amount = self.queued(name, p, k)
                prospect[name] = prospect.get(name, 0.0) + SCHEDULED_HERE * amount
                amount *= self._after(p, name, now)
                demand[name] = demand.get(name, 0.0) + weight * amount
        return demand, prospect

    def _after(self, p: Pending, name: str, now: float) -> float:
        """The share of placed job P's reads of NAME after a copy started NOW lands."""
        land = self.land(name)
        if land <= 0:
            return 1.0
        limit = None if p.limit == math.inf else p.limit
        return after_landing(max(now, p.estimate), limit, now + land)

    def _unplaced_levels(
        self, start: float, end: float, landing: bool
    ) -> tuple[dict[str, list[float]], set[str]]:
        """The unplaced demand's values taken at some time in START..END in bytes (as
        `_unplaced_bytes` gives them; with `SimConfig.true_queued` the true reads): per
        dataset with some, its levels, and the datasets without one at some time. From the
        value at START and the entries that change after it (`UnplacedDemand.changes`)."""
        unplaced, true_reads = self.unplaced, self.config.true_unplaced_reads
        first, last = unplaced.index(start), unplaced.index(end)
        if last < 0:
            return {}, set()
        if true_reads and not unplaced.reads:
            raise ValueError("the unplaced demand was built without reads (reads=True)")
        values = unplaced.reads if true_reads else unplaced.values
        changes = unplaced.read_changes if true_reads else unplaced.changes
        levels: dict[str, list[float]] = {}
        absent: set[str] = set()
        if first >= 0:
            base = self._unplaced_bytes(values[first], landing, true_reads)
            levels = {name: [v] for name, v in base.items()}
        entry = self._entry_bytes
        for k in range(first + 1, last + 1):
            at_k = values[k]
            for name in changes[k]:
                found = at_k.get(name)
                if found is None:
                    absent.add(name)
                    continue
                level = entry(name, found, landing, true_reads)
                if name in levels:
                    levels[name].append(level)
                else:
                    levels[name] = [level]
                    absent.add(name)  # none before
        return levels, absent

    def unplaced_bounds(
        self, start: float, end: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Each dataset's lowest and highest unplaced demand (after a copy would land) at
        any time in START..END, of those with some above 0 (`input_bounds`)."""
        levels, absent = self._unplaced_levels(start, end, landing=True)
        high = {name: max(v) for name, v in levels.items() if max(v) > 0.0}
        low = {name: min(levels[name]) for name in high}
        for name in absent.intersection(high):
            low[name] = min(low[name], 0.0)  # none at some time
        return low, high

    def unplaced_prospect(self, start: float, end: float) -> dict[str, float]:
        """Each dataset's highest unplaced prospect at any time in START..END, of those
        with some unplaced demand then (`prospect_high`)."""
        levels, _ = self._unplaced_levels(start, end, landing=False)
        return {name: max(0.0, max(v) / UNKNOWN_START_FACTOR) for name, v in levels.items()}

    def prospect_high(self, start: float, end: float) -> dict[str, float]:
        """Each dataset's highest prospect at any time in START..END (no job starting or
        ending, no placement in between)."""
        high = self.unplaced_prospect(start, end)
        placed: dict[str, float] = {}
        pending = self.work.pending
        for i in self._pending_active:
            p = pending[i]
            for k, name in enumerate(p.datasets):
                placed[name] = placed.get(name, 0.0) + SCHEDULED_HERE * self.queued(name, p, k)
        for name, v in placed.items():
            high[name] = high.get(name, 0.0) + v
        return high

    def heat_bounds(self, start: float, end: float) -> dict[str, tuple[float, float]]:
        """Lowest and highest heat of each dataset at any time in START..END, if no job
        starts or ends in between (`input_bounds`)."""
        period = self.config.period
        by_name: dict[str, list[tuple[float, float, float]]] = {}
        for name, s, e, rate in self.streams:
            if e > start - period:
                by_name.setdefault(name, []).append((s, e, rate))
        heat: dict[str, tuple[float, float]] = {}
        for name, reads in by_name.items():
            points = {start, end}
            for s, e, _ in reads:
                points.update(x for x in (s, e, s + period, e + period) if start < x < end)
            levels = [
                sum(rate * max(0.0, min(e, x) - max(s, x - period)) for s, e, rate in reads)
                / period
                for x in points
            ]
            heat[name] = (min(levels), max(levels))
        return heat

    def input_bounds(
        self, start: float, end: float
    ) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
        """Lowest and highest heat, and demand, of each dataset at any time in START..END,
        assuming no job starts or ends and no placement in between (the replay evaluates
        a tick after each of those anyway); unplaced demand is taken at its extremes.

        Heat is piecewise linear in time (each read's overlap with the window changes
        slope only at its start, its end, and those plus `period`): its extremes are at
        the ends or at such a point. A placed job's demand weight only grows until its
        estimated start, so demand is lowest at START and highest at END (the history,
        hence each job's expected bytes, changes only when a job ends).
        """
        heat = self.heat_bounds(start, end)
        low, high = self.unplaced_bounds(start, end)
        pending, horizon = self.work.pending, self.config.horizon
        for i in self._pending_active:
            p = pending[i]
            for k, name in enumerate(p.datasets):
                land = self.land(name)  # constant until the next event (a copy landing)
                w_low = SCHEDULED_HERE * wait_discount(max(0.0, p.estimate - start), land, horizon)
                w_high = SCHEDULED_HERE * wait_discount(max(0.0, p.estimate - end), land, horizon)
                amount = self.queued(name, p, k)
                # the share after a copy lands only shrinks as time goes on
                a_low, a_high = self._after(p, name, end), self._after(p, name, start)
                low[name] = low.get(name, 0.0) + w_low * amount * a_low
                high[name] = high.get(name, 0.0) + w_high * amount * a_high
        # Running jobs' reads after a landing (`running_demand`): growing with heat, never
        # growing with time, so lowest at the lowest heat at END, highest at the highest
        # heat at START.
        cached, held, bandwidth = self.cached, self.held, self.config.bandwidth
        inflight = self.inflight[0] if self.inflight is not None else None
        true_running = self.config.true_running
        for job in self.running.values():
            if true_running:  # exact, falling with time: highest at START, lowest at END
                for name, size in job.reads:
                    if name in cached or name == inflight:
                        continue
                    land = self.sizes[name] / bandwidth
                    amount = self.true_running(job, size, start, land)
                    if amount > 0:
                        high[name] = high.get(name, 0.0) + amount
                        amount = self.true_running(job, size, end, land)
                        low[name] = low.get(name, 0.0) + amount
                continue
            if job.limit == math.inf:
                continue
            for name, _ in job.reads:
                h_low, h_high = heat.get(name, (0.0, 0.0))
                if not h_high or name in cached or name == inflight:
                    continue
                land, count = self.sizes[name] / bandwidth, held[name]
                amount = running_read(h_high / count, start, job.start, job.limit, land)
                if amount > 0:
                    high[name] = high.get(name, 0.0) + amount
                    amount = running_read(h_low / count, end, job.start, job.limit, land)
                    low[name] = low.get(name, 0.0) + amount
        return heat, {n: (low.get(n, 0.0), high[n]) for n in high}

    def demand_settled(self, now: float) -> bool:
        """No placed job's discount changes after NOW until the next placement or start."""
        pending = self.work.pending
        return all(pending[i].estimate <= now for i in self._pending_active)

    def next_placement(self) -> float:
        pending = self.work.pending
        return (
            pending[self._pending_next].visible if self._pending_next < len(pending) else math.inf
        )

    def plan_input(self) -> PlanInput:
        """The planner's input, as the live rebalance builds it from state.json.

        Every copy is fresh (trace images never change); held are the datasets read by
        running jobs; nothing is pinned or blocked.
        """
        inflight = {}
        if self.inflight is not None:
            name = self.inflight[0]
            inflight[name] = self.sizes[name]
        cached = {n: self.sizes[n] for n in self.cached}
        return PlanInput(self.sizes, cached, frozenset(cached), frozenset(self.held), inflight)

    # --- the executor ------------------------------------------------------------------

    def apply(self, action: Action, now: float) -> None:
        """Evict first (never a held copy), then queue the copies; start one if idle."""
        for name in action.evict:
            if not self.evictable(name):
                raise PolicyError(f"{self.work.name}: cannot evict {name} (held or not cached)")
            del self.cached[name]
            self._touch(name)
            self.used -= self.sizes[name]
            self._span.pop(name).left = now
            self.costs.evictions += 1
            self.version += 1
            self.cache_version += 1
        if action.replace:
            self.queue = list(action.stage)
        else:
            self.queue.extend(action.stage)
        self.start_copy(now)

    def start_copy(self, now: float) -> None:
        """Start the next queued copy that still fits (capacity checked at reservation)."""
        while self.inflight is None and self.queue:
            name = self.queue.pop(0)
            if self.busy(name):
                continue
            size = self.sizes[name]
            if self.used + size > self.capacity:
                self.costs.refused_copies += 1
                self.refused.append(name)
                continue
            self.used += size
            self.costs.peak_used = max(self.costs.peak_used, self.used)
            self.inflight = (name, now, now + size / self.config.bandwidth)
            self._touch(name)
            self._span[name] = CopySpan(self.work.name, name, now, self.inflight[2])
            self.costs.spans.append(self._span[name])
            self.costs.copies += 1
            self.costs.copied_bytes += size
            self.costs.series.append((now, float(size)))
            self.version += 1
            self.cache_version += 1

    def finish_copy(self, now: float) -> None:
        """The copy in flight is verified and mounted over: its slow readers switch now."""
        assert self.inflight is not None
        name = self.inflight[0]
        self.inflight = None
        self.cached[name] = now
        self._touch(name)
        self.version += 1
        self.cache_version += 1
        for read in self.slow.pop(name, {}).values():
            self._settle(read, now, waited=True)
        self.start_copy(now)

    def start_job(self, job: NodeJob, now: float) -> None:
        self.running[job.id] = job
        span = job.end - job.start
        for name, size in job.reads:
            self.held[name] = self.held.get(name, 0) + 1
            self.uses[name] = self.uses.get(name, 0) + 1
            self.last_use[name] = now
            self.costs.read_bytes += size
            rate = size / span
            self.streams.append((name, job.start, job.end, rate))
            if name not in self.cached:
                self.slow.setdefault(name, {})[job.id] = SlowRead(now, rate)
        self.last_boundary = now
        self.version += 1

    def end_job(self, job: NodeJob, now: float) -> None:
        del self.running[job.id]
        for name, size in job.reads:
            self.read_done[name] = self.read_done.get(name, 0.0) + size
            self.jobs_done[name] = self.jobs_done.get(name, 0) + 1
            if job.limit != math.inf:
                self.read_limited[name] = self.read_limited.get(name, 0.0) + size
                self.limit_done[name] = self.limit_done.get(name, 0.0) + job.limit
            if job.array is not None:
                key = (job.array, name)
                self.array_read[key] = self.array_read.get(key, 0.0) + size
                self.array_jobs[key] = self.array_jobs.get(key, 0) + 1
            self.history_version += 1
            self._touch(name)
            self.held[name] -= 1
            if not self.held[name]:
                del self.held[name]
            read = self.slow.get(name, {}).pop(job.id, None)
            if read is not None:
                self._settle(read, now, waited=False)
        self.last_boundary = now
        self.version += 1

    def _settle(self, read: SlowRead, now: float, *, waited: bool) -> None:
        seconds = now - read.since
        amount = read.rate * seconds
        self.costs.slow_read_bytes += amount
        self.costs.slow_read_seconds += seconds
        if waited:
            self.costs.waited_seconds += seconds
        if amount:
            self.costs.series.append((now, amount))
