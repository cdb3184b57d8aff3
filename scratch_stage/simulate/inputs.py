"""What each node sees of a trace: its jobs, and the queued demand Slurm would show it."""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scratch_stage.core.expected import UNPLACED_CAP
from scratch_stage.simulate.trace import MIN_READ_SECONDS, Job, Trace

# Demand weights as scratch_stage.slurm.demand.node_demand gives them (a test holds them equal).
SCHEDULED_HERE = 1.0
UNKNOWN_START_FACTOR = math.exp(-1.0)


@dataclass(frozen=True)
class SimConfig:
    """How the replay models the cluster (docs/simulate.md explains each knob)."""

    capacity: int
    interval: float = 60.0  # rebalance every this many simulated seconds
    period: float = 600.0  # heat window
    horizon: float = 3600.0  # demand discount scale, as the planner's horizon
    bandwidth: float = 1e9  # copy speed, bytes/s, one copy at a time per node
    backfill_window: float = 3600.0  # start estimates and placement known this far ahead
    estimate_noise: float = 0.0  # standard deviation (s) of the start estimate's error
    tolerance: float = 0.0  # skip a pass whose inputs moved less than this (relative)
    seed: int = 0
    read_rate: float = 1e9  # prior read rate of a job: expected reads <= time limit x this
    unplaced_cap: float = UNPLACED_CAP  # unplaced jobs of a dataset: at most this many jobs
    # An experiment (docs/benchmarks.md, "A fleet-wide read history"): a node's read
    # history is the whole fleet's (`FleetHistory`), not its own. The real node keeps its own.
    fleet_history: bool = False
    # Experiments (docs/benchmarks.md, "Which read estimate costs what"): the demand the
    # node computes (`ours`'s; aged-uses reads it too) told the truth about one input,
    # everything else unchanged. TRUE_QUEUED: each queued job's (placed or not) true bytes
    # in place of `expected_read`'s estimate; TRUE_RUNNING: each running job's true reads
    # after a copy would land in place of `running_read`'s (heat and a uniform end).
    true_queued: bool = False
    true_running: bool = False
    # TRUE_QUEUED split in two: only the jobs backfill has placed here, or only the jobs
    # not placed yet (true_queued is both).
    true_placed: bool = False
    true_unplaced: bool = False

    @property
    def true_placed_reads(self) -> bool:
        """Placed jobs count their true bytes (`true_queued` or `true_placed`)."""
        return self.true_queued or self.true_placed

    @property
    def true_unplaced_reads(self) -> bool:
        """Unplaced jobs count their true bytes (`true_queued` or `true_unplaced`)."""
        return self.true_queued or self.true_unplaced

    # An experiment (docs/benchmarks.md, "Which read estimate costs what"): a queued job
    # with a time limit is expected to read, of a dataset with history here, this node's
    # bytes per second of time limit of that dataset's finished jobs times its own limit.
    limit_history: bool = False
    # An experiment (docs/benchmarks.md, "Job arrays"): a job backfill has placed here that
    # is an element of a Slurm job array some of whose elements have finished is expected
    # to read their mean bytes per job of each dataset (capped as before), else the usual
    # estimate. "node": the elements that finished on this node; "fleet": on any node (by
    # now: `ArrayHistory`; a real fleet would have to share it). "oracle": every placed
    # element counts its true bytes, finished sibling or not (the most any estimate from
    # its array could tell here, where a sweep's elements read alike). "": off.
    array_history: str = ""

    def __post_init__(self) -> None:
        if self.array_history not in ARRAY_HISTORIES:
            raise ValueError(f"array_history {self.array_history!r}: one of {ARRAY_HISTORIES}")


ARRAY_HISTORIES = ("", "node", "fleet", "oracle")


@dataclass(frozen=True)
class NodeJob:
    """A job as one node runs it: what it reads there, at a steady rate."""

    id: str
    start: float
    end: float
    reads: tuple[tuple[str, int], ...]
    limit: float = math.inf  # the job's time limit (inf: none)
    submit: float | None = None  # when it was submitted (None: not known, taken as its start)
    array: str | None = None  # the job array it is an element of (its array job id)


@dataclass(frozen=True)
class Pending:
    """A job Slurm's backfill has placed on this node, between VISIBLE and START."""

    visible: float
    start: float
    estimate: float
    datasets: tuple[str, ...]
    limit: float = math.inf  # the job's time limit (inf: none)
    # the bytes the job will truly read from each of DATASETS (read only by the
    # `SimConfig.true_queued` experiment: a node does not know them)
    reads: tuple[float, ...] = ()
    array: str | None = None  # the job array it is an element of (its array job id)


@dataclass
class NodeWorkload:
    """One node's jobs (by start) and the pending jobs planned onto it (by visibility)."""

    name: str
    jobs: list[NodeJob] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)


# Per dataset: the summed weight of the queued jobs by their time limit (inf: none).
ByLimit = Mapping[float, float]


def _changes_of(snapshots: Sequence[Mapping[str, ByLimit]]) -> tuple[tuple[str, ...], ...]:
    """Per snapshot, the datasets whose entry is not the previous snapshot's object."""
    changes = []
    previous: Mapping[str, ByLimit] = {}
    for values in snapshots:
        changed = [name for name, entry in values.items() if previous.get(name) is not entry]
        changed.extend(name for name in previous if name not in values)
        changes.append(tuple(changed))
        previous = values
    return tuple(changes)


@dataclass(frozen=True)
class UnplacedDemand:
    """Queued jobs not yet placed, identical on every node, sampled at ticks: per dataset
    their weight by time limit (each node turns it into bytes with its own history)."""

    ticks: tuple[float, ...]
    values: tuple[Mapping[str, ByLimit], ...]
    # With `unplaced_demand(..., reads=True)`, per tick and dataset by time limit: the
    # weights times the bytes each job will truly read (scaled by the same cap); only the
    # blind queue oracle reads them (`QueueOracle`, blind).
    reads: tuple[Mapping[str, ByLimit], ...] = ()
    # Per tick, the datasets whose entry is not the object it was at the tick before
    # (`unplaced_demand` keeps an entry that did not change as the same object); at the
    # first tick, every dataset with one. `changes` for `values`, `read_changes` for `reads`.
    changes: tuple[tuple[str, ...], ...] = field(default=(), compare=False, repr=False)
    read_changes: tuple[tuple[str, ...], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "changes", _changes_of(self.values))
        object.__setattr__(self, "read_changes", _changes_of(self.reads))

    def at(self, now: float) -> Mapping[str, ByLimit]:
        i = bisect.bisect_right(self.ticks, now) - 1
        return self.values[i] if i >= 0 else {}

    def reads_at(self, now: float) -> Mapping[str, ByLimit]:
        """The true reads of the jobs not yet placed at NOW, weighted as `at` weighs them."""
        i = bisect.bisect_right(self.ticks, now) - 1
        if i >= 0 and not self.reads:
            raise ValueError("the unplaced demand was built without reads (reads=True)")
        return self.reads[i] if i >= 0 else {}

    def seen(self, start: float, end: float, reads: bool = False) -> list[Mapping[str, ByLimit]]:
        """Every value taken at some time in START..END (READS: of `reads`)."""
        first = bisect.bisect_right(self.ticks, start) - 1
        last = bisect.bisect_right(self.ticks, end) - 1
        source = self.values
        if reads:
            if self.ticks and not self.reads:
                raise ValueError("the unplaced demand was built without reads (reads=True)")
            source = self.reads
        seen = [source[k] for k in range(max(first, 0), last + 1)]
        if first < 0:
            seen.append({})  # before the first tick: no demand
        return seen

    def index(self, now: float) -> int:
        """The index of the value taken at NOW (-1: before the first tick, no demand)."""
        return bisect.bisect_right(self.ticks, now) - 1

    def next_change(self, now: float) -> float:
        i = bisect.bisect_right(self.ticks, now)
        return self.ticks[i] if i < len(self.ticks) else math.inf


@dataclass(frozen=True)
class FleetHistory:
    """What every node's finished jobs read, as a fleet publishing its nodes' counters
    would know it: per dataset, the end times of the node jobs that read it (sorted) and
    the running sum of their bytes. Facts of the trace, whatever policy serves the reads."""

    ends: Mapping[str, tuple[float, ...]]
    sums: Mapping[str, tuple[float, ...]]  # sums[name][k]: bytes of the first k jobs
    times: tuple[float, ...]  # every distinct end time, sorted

    @classmethod
    def of(cls, work: Iterable[NodeWorkload]) -> FleetHistory:
        reads: dict[str, list[tuple[float, int]]] = {}
        for node in work:
            for job in node.jobs:
                for name, size in job.reads:
                    reads.setdefault(name, []).append((job.end, size))
        ends, sums = {}, {}
        for name, items in reads.items():
            items.sort()
            ends[name] = tuple(end for end, _ in items)
            sums[name] = tuple(itertools.accumulate((float(b) for _, b in items), initial=0.0))
        times = tuple(sorted({end for e in ends.values() for end in e}))
        return cls(ends, sums, times)

    def per_job(self, name: str, now: float) -> float | None:
        """Bytes a node job that read NAME and ended at or before NOW read from it, on
        average over the fleet; None before the first."""
        ends = self.ends.get(name)
        if not ends:
            return None
        k = bisect.bisect_right(ends, now)
        return self.sums[name][k] / k if k else None


@dataclass(frozen=True)
class ArrayHistory:
    """What the finished elements of each job array read, on every node (the
    `array_history="fleet"` experiment): per array and dataset, the end times of its
    elements' node jobs that read it (sorted) and the running sum of their bytes."""

    ends: Mapping[tuple[str, str], tuple[float, ...]]
    sums: Mapping[tuple[str, str], tuple[float, ...]]  # sums[key][k]: bytes of the first k

    @classmethod
    def of(cls, work: Iterable[NodeWorkload]) -> ArrayHistory:
        reads: dict[tuple[str, str], list[tuple[float, int]]] = {}
        for node in work:
            for job in node.jobs:
                if job.array is not None:
                    for name, size in job.reads:
                        reads.setdefault((job.array, name), []).append((job.end, size))
        ends, sums = {}, {}
        for key, items in reads.items():
            items.sort()
            ends[key] = tuple(end for end, _ in items)
            sums[key] = tuple(itertools.accumulate((float(b) for _, b in items), initial=0.0))
        return cls(ends, sums)

    def per_job(self, array: str, name: str, now: float) -> float | None:
        """Bytes a node job of ARRAY ended at or before NOW read from NAME, on average over
        the fleet; None before the first."""
        ends = self.ends.get((array, name))
        if not ends:
            return None
        k = bisect.bisect_right(ends, now)
        return self.sums[(array, name)][k] / k if k else None

    def times(self, work: NodeWorkload) -> tuple[float, ...]:
        """The instants at which an estimate of WORK's node can change: the ends of the
        elements of the arrays with a job placed there, before the last such job starts
        (sorted)."""
        last: dict[str, float] = {}
        for p in work.pending:
            if p.array is not None:
                last[p.array] = max(last.get(p.array, -math.inf), p.start)
        return tuple(
            sorted({t for (a, _), e in self.ends.items() if a in last for t in e if t < last[a]})
        )


def replay_start(work: NodeWorkload, unplaced: UnplacedDemand) -> float:
    """The node's first event: its first job start, placement, or change of unplaced
    demand. No policy acts, so no copy starts, before it (the bound relies on this)."""
    first = work.jobs[0].start if work.jobs else math.inf
    placed = work.pending[0].visible if work.pending else math.inf
    return min(first, placed, unplaced.next_change(-math.inf))


def grid_ceil(t: float, interval: float) -> float:
    """The first rebalance tick at or after T."""
    return math.ceil(t / interval) * interval


def visible_from(job: Job | NodeJob, config: SimConfig) -> float:
    """When backfill first places JOB (its start is then within the window); a job whose
    submit time is not known, at its start."""
    submit = job.start if job.submit is None else job.submit
    return max(submit, job.start - config.backfill_window)


def split_by_node(trace: Trace, config: SimConfig) -> dict[str, NodeWorkload]:
    """Each node's workload; start estimates get seeded noise."""
    rng = random.Random(config.seed)
    nodes: dict[str, NodeWorkload] = {}
    for job in trace.jobs:
        end = max(job.end, job.start + MIN_READ_SECONDS)
        reads = tuple(sorted((n, b) for n, b in job.reads.items() if b > 0))
        visible = visible_from(job, config)
        noise = rng.gauss(0.0, config.estimate_noise) if config.estimate_noise else 0.0
        limit = math.inf if job.limit is None else job.limit
        for name in job.nodes:
            work = nodes.setdefault(name, NodeWorkload(name))
            work.jobs.append(NodeJob(job.id, job.start, end, reads, limit, job.submit, job.array))
            if visible < job.start and job.reads:
                datasets = tuple(sorted(job.reads))
                amounts = tuple(float(job.reads[n]) for n in datasets)
                estimate = job.start + noise
                work.pending.append(
                    Pending(visible, job.start, estimate, datasets, limit, amounts, job.array)
                )
    for work in nodes.values():
        work.jobs.sort(key=lambda j: (j.start, j.id))
        work.pending.sort(key=lambda p: p.visible)
    return nodes


def unplaced_demand(trace: Trace, config: SimConfig, *, reads: bool = False) -> UnplacedDemand:
    """Queued jobs not yet placed count min(1, nodes/N) x e^-1 on every node; per dataset
    at most `unplaced_cap` x e^-1 together. READS: also each job's weight times the bytes
    it will truly read, per dataset (`UnplacedDemand.reads`)."""
    total_nodes = max(1, len(trace.nodes))
    events: list[tuple[float, float, tuple[str, ...], float, Mapping[str, int]]] = []
    for job in trace.jobs:
        visible = visible_from(job, config)
        if job.submit < visible and job.reads:
            weight = min(1.0, len(job.nodes) / total_nodes) * UNKNOWN_START_FACTOR
            names = tuple(sorted(job.reads))
            limit = math.inf if job.limit is None else job.limit
            events.append((job.submit, weight, names, limit, job.reads))
            events.append((visible, -weight, names, limit, job.reads))
    events.sort(key=lambda e: e[0])
    ticks: list[float] = []
    values: list[dict[str, dict[float, float]]] = []
    current: dict[str, dict[float, float]] = {}
    true_reads: list[dict[str, dict[float, float]]] = []
    current_reads: dict[str, dict[float, float]] = {}
    # An entry not touched since the last tick is the last tick's object (equal anyway):
    # `UnplacedDemand.changes` then lists where the entries change.
    touched: set[str] = set()
    last: dict[str, dict[float, float]] = {}
    last_reads: dict[str, dict[float, float]] = {}
    for i, (t, weight, names, limit, job_reads) in enumerate(events):
        touched.update(names)
        for name in names:
            by_limit = current.setdefault(name, {})
            v = by_limit.get(limit, 0.0) + weight
            if reads:
                read = current_reads.setdefault(name, {})
                read[limit] = read.get(limit, 0.0) + weight * job_reads[name]
            if v > 1e-9:
                by_limit[limit] = v
            else:
                by_limit.pop(limit, None)
                if reads:
                    current_reads[name].pop(limit)
                if not by_limit:
                    del current[name]
                    if reads:
                        del current_reads[name]
        tick = grid_ceil(t, config.interval)
        if i + 1 < len(events) and grid_ceil(events[i + 1][0], config.interval) == tick:
            continue
        ticks.append(tick)
        cap = config.unplaced_cap
        last = {
            n: _capped(b, cap) if n in touched else last[n] for n, b in current.items()
        }  # fmt: skip
        values.append(last)
        if reads:
            last_reads = {
                n: _capped(b, cap, current[n]) if n in touched else last_reads[n]
                for n, b in current_reads.items()
            }
            true_reads.append(last_reads)
        touched.clear()
    return UnplacedDemand(tuple(ticks), tuple(values), tuple(true_reads))


def _capped(
    by_limit: Mapping[float, float], cap: float, weights: Mapping[float, float] | None = None
) -> dict[float, float]:
    """A dataset's unplaced weights, scaled down to sum to CAP x e^-1 if they sum to more
    (`demand.unplaced_scale`: at most CAP jobs sure to run here, at an unknown start);
    with WEIGHTS, BY_LIMIT (their true reads) scaled as those weights are."""
    total = sum((by_limit if weights is None else weights).values())
    limit = cap * UNKNOWN_START_FACTOR
    if total <= limit:
        return dict(by_limit)
    return {k: v * limit / total for k, v in by_limit.items()}
