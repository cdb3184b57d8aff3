"""An offline schedule for one node from a mixed-integer programme (docs/simulate.md,
"How far the bound is below the best schedule"): the `mip-schedule` policy replays it.

It knows the node's whole future, like `future-bytes`, and is neither optimal nor a bound:
its replayed cost is what one real schedule achieves, so the best schedule costs at most
that, and the bound with copy time at least; between the two lies the optimum.

The programme is on the bound's grid (interval k is [times[k], times[k+1]], every read at a
constant rate within it), split further where a copy can first land and land after a job
starts, and into parts of at most STEP. Per dataset that fits the cache and each interval
it is read in: x (0/1) it is mounted all through the interval, and u >= x - (the state
before) - (earlier landings) a copy landing at the interval's start; before a first read
or one after a gap, up to EARLY_OPTIONS earlier landings (0/1, at most EARLY before it).
Between two read intervals that are not adjacent, s (0/1) it stays cached through the gap.
It minimises the copies' bytes plus the reads not served, with, on a finer grid (every
time a copy would start):

- room: in every span, what is mounted, kept through a gap, or being copied fits;
- one copy at a time: in every span at most one copy runs;
- holds: a copy a job is reading is not dropped while the job runs;
- no copy lands before the node's first event plus its copy time (as in the bound).

Landings only at grid times make it a restriction: each of its schedules runs in the
replay, at about its cost.
scipy (HiGHS) solves it; scipy is optional (`pip install 'scratch-stage[offline]'`).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from scratch_stage.simulate.bound import Relaxation
from scratch_stage.simulate.inputs import NodeJob

NEEDS = "the mip-schedule policy needs scipy: pip install 'scratch-stage[offline]'"
# Per node: HiGHS stops at this relative gap (below it the schedules differ by a fraction
# of a per cent), or after this many seconds with the best schedule it has. On the
# nodes timed (two of the Zipf 0.6 workload) it reached the gap in 13 and 47 s.
GAP = 5e-3
TIME_LIMIT = 120.0
# Intervals longer than this are split (more landing times): an hour.
STEP = 3600.0
# A copy may land up to this long before a read that follows a gap (or the first), at
# this many times at most: 12 h, 8.
EARLY = 12 * 3600.0
EARLY_OPTIONS = 8
_SCALE = 1e12  # the objective in TB: HiGHS's tolerances are absolute


def available() -> bool:
    """True if scipy's MILP solver can be imported."""
    try:
        from scipy.optimize import milp  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Block:
    """Copy NAME from START (it lands START + size/bandwidth later); drop it at DROP."""

    name: str
    start: float
    drop: float


@dataclass
class _Model:
    """The programme being built: costs, which columns are 0/1, and sparse rows."""

    costs: list[float] = field(default_factory=list)
    binary: list[int] = field(default_factory=list)
    rows: list[dict[int, float]] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)

    def column(self, cost: float, binary: bool) -> int:
        self.costs.append(cost)
        if binary:
            self.binary.append(len(self.costs) - 1)
        return len(self.costs) - 1

    def row(self, terms: Mapping[int, float], low: float, high: float) -> None:
        self.rows.append(dict(terms))
        self.low.append(low)
        self.high.append(high)


@dataclass(frozen=True)
class _Read:
    """One read interval K of a dataset: its x column, the column that carries the state
    to the next read interval (x itself if adjacent, s across a gap, None: the last), and
    the columns of its earlier landings with their times (a first read or one after a
    gap: the copy may land before it, in the gap)."""

    k: int
    x: int
    link: int | None
    early: tuple[tuple[float, int], ...]


def _grid(jobs: Sequence[NodeJob], copies: Mapping[str, float], start: float) -> list[float]:
    """Times to split the bound's intervals at: where each image can first land, and
    land after each job reading it starts; intervals longer than STEP in equal parts."""
    points = [start + copies[n] for n in {n for j in jobs for n, _ in j.reads}]
    points += [j.start + copies[n] for j in jobs for n, _ in j.reads]
    events = sorted({start, *(t for j in jobs for t in (j.start, j.end))})
    for a, b in zip(events, events[1:]):
        parts = math.ceil((b - a) / STEP)
        points += [a + (b - a) * i / parts for i in range(1, parts)]
    return points


def _early(times: Sequence[float], kept: Sequence[int], i: int, first: float) -> list[float]:
    """Landing times before read interval kept[i] (a first read or one after a gap): grid
    times in the gap (or from FIRST, the first landing possible), at most EARLY before it,
    at most EARLY_OPTIONS of them spread over that span."""
    k = kept[i]
    low = max(first, times[k] - EARLY, times[kept[i - 1] + 1] if i else first)
    options = list(times[bisect.bisect_left(times, low) : k])
    if len(options) > EARLY_OPTIONS:
        spread = len(options) / EARLY_OPTIONS
        options = [options[int(j * spread)] for j in range(EARLY_OPTIONS)]
    return options


def plan(
    jobs: Sequence[NodeJob], sizes: Mapping[str, int], capacity: int, bandwidth: float,
    start: float, *, time_limit: float = TIME_LIMIT, gap: float = GAP,
) -> list[Block]:  # fmt: skip
    """The blocks of the programme's best schedule for one node's JOBS (by start); copies
    start no earlier than START (the node's first event)."""
    copies = {n: size / bandwidth for n, size in sizes.items()}
    relax = Relaxation.of(jobs, sizes, capacity, start, _grid(jobs, copies, start))
    times = relax.times
    reads: dict[str, list[tuple[int, float, list[float]]]] = {}  # (k, rho, earlier landings)
    for name, (ks, rhos) in relax.rho.items():
        first = times[0] + copies[name]
        kept = [(k, r) for k, r in zip(ks, rhos) if times[k] >= first]
        only = [k for k, _ in kept]
        reads[name] = [
            (k, r, _early(times, only, i, first) if not i or only[i - 1] < k - 1 else [])
            for i, (k, r) in enumerate(kept)
        ]
    # The room and the copy channel are checked on a finer grid: the times above and
    # every time a copy would start (each row a span in which the same copies run and the
    # same blocks hold room).
    starts = {t - copies[n] for n, rs in reads.items() for k, _, e in rs for t in (times[k], *e)}
    fine = sorted({*times, *starts})
    at = {t: i for i, t in enumerate(fine)}
    model = _Model()
    room: list[dict[int, float]] = [{} for _ in range(len(fine) - 1)]
    busy: list[dict[int, float]] = [{} for _ in range(len(fine) - 1)]

    def held(column: int, share: float, begin: float, end: float) -> None:
        for j in range(at[begin], at[end]):
            room[j][column] = share

    def copied(column: int, share: float, copy: float, landing: float, until: float) -> None:
        """COLUMN's copy (COPY seconds) lands at LANDING: the channel busy until then,
        its room held from its start to UNTIL."""
        held(column, share, landing - copy, until)
        for j in range(at[landing - copy], at[landing]):
            busy[j][column] = 1.0

    runs_on: dict[str, set[int]] = {}  # intervals k a job reading d runs on from into k + 1
    for job in jobs:
        a, b = bisect.bisect_left(times, job.start), bisect.bisect_left(times, job.end)
        for name, _ in job.reads:
            runs_on.setdefault(name, set()).update(range(a, b - 1))
    layout: dict[str, list[_Read]] = {}
    for name, rs in reads.items():
        size = sizes[name]
        share = size / capacity
        entries: list[_Read] = []
        before: dict[int, float] = {}  # the columns whose sum is the state before
        for i, (k, rho, landings) in enumerate(rs):
            x = model.column(-size * rho / _SCALE, True)
            held(x, share, times[k], times[k + 1])
            u = model.column(size / _SCALE, False)
            copied(u, share, copies[name], times[k], times[k])
            early = tuple((t, model.column(size / _SCALE, True)) for t in landings)
            for t, e in early:
                copied(e, share, copies[name], t, times[k])
                model.row({x: 1.0, e: -1.0}, 0.0, float("inf"))  # landed to be read
            if early:  # at most one way in: kept from before, or one landing
                model.row({**before, **{e: 1.0 for _, e in early}}, -float("inf"), 1.0)
            arrived = {**before, **{e: 1.0 for _, e in early}}
            model.row({u: 1.0, x: -1.0, **arrived}, 0.0, float("inf"))  # else a copy lands
            if entries and entries[-1].k == k - 1 and k - 1 in runs_on.get(name, ()):
                model.row({x: 1.0, entries[-1].x: -1.0}, 0.0, float("inf"))  # held on
            link: int | None = None
            if i + 1 < len(rs):
                following = rs[i + 1][0]
                if following == k + 1:
                    link = x
                else:
                    link = model.column(0.0, True)
                    model.row({x: 1.0, link: -1.0}, 0.0, float("inf"))
                    held(link, share, times[k + 1], times[following])
            entries.append(_Read(k, x, link, early))
            before = {link: 1.0} if link is not None else {}
        for here, after in zip(entries, entries[1:]):
            if after.k > here.k + 1 and here.link is not None:
                model.row({after.x: 1.0, here.link: -1.0}, 0.0, float("inf"))
        if entries:
            layout[name] = entries
    for terms in (*room, *busy):
        if terms:
            model.row(terms, -float("inf"), 1.0)
    if not model.costs:
        return []
    values = _solve(model, time_limit, gap)
    blocks = []
    for name, entries in layout.items():
        opened: float | None = None
        for read in entries:
            on = values[read.x] > 0.5
            if on and opened is None:
                landing = next((t for t, e in read.early if values[e] > 0.5), times[read.k])
                opened = landing - copies[name]
            if opened is not None and not (on and read.link is not None
                                           and values[read.link] > 0.5):  # fmt: skip
                blocks.append(Block(name, opened, times[read.k + 1]))
                opened = None
    return sorted(blocks, key=lambda b: (b.start, b.name))


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Whatever the process writes to file descriptor 1 meanwhile (C libraries included,
    their buffers flushed before it is restored) is discarded."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _solve(model: _Model, time_limit: float, gap: float) -> list[float]:
    """The column values of HiGHS's best solution (all 0, the empty schedule, if it found
    none: every cached interval is optional, so 0 is always a solution)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

    cells = [(r, c, v) for r, terms in enumerate(model.rows) for c, v in terms.items()]
    matrix = csr_matrix(
        ([v for _, _, v in cells], ([r for r, _, _ in cells], [c for _, c, _ in cells])),
        shape=(len(model.rows), len(model.costs)),
    )
    integrality = np.zeros(len(model.costs))
    integrality[model.binary] = 1
    with quiet_stdout():  # HiGHS prints debugging lines to C's stdout: not into --json
        result = milp(
            np.array(model.costs), integrality=integrality,
            constraints=LinearConstraint(matrix, model.low, model.high),
            bounds=Bounds(0.0, 1.0), options={"time_limit": time_limit, "mip_rel_gap": gap},
        )  # fmt: skip
    if result.x is None:
        return [0.0] * len(model.costs)
    return [float(v) for v in result.x]
