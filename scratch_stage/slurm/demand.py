"""Demand: queued Slurm jobs that want a dataset and may start on this node (docs/design.md).

Sources: the Slurm CLI (squeue and sinfo), or a demand file published once per interval
for the whole cluster by `scratch-stage demand --publish PATH`. Parsers are pure.
"""

from __future__ import annotations

import functools
import json
import math
import re
import secrets
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scratch_stage.core.expected import (
    UNPLACED_CAP,
    after_landing,
    expected_read,
    running_read,
    wait_discount,
)
from scratch_stage.core.hostlist import expand_hostlist
from scratch_stage.core.requests import parse_request
from scratch_stage.host.catalog import Trust
from scratch_stage.host.logger import get_logger

log = get_logger(__name__)

DEMAND_VERSION = 1
# squeue's pending-job fields, comment last: a comment may contain the separator (and
# newlines: the live source puts a random record marker in front, see squeue_records).
SQUEUE_FORMAT = "%i|%P|%Q|%D|%S|%Y|%l|%k"
# The format before the time limit (%l) was read: recorded outputs of it stay parseable.
SQUEUE_FORMAT_NO_LIMIT = "%i|%P|%Q|%D|%S|%Y|%k"
SINFO_FORMAT = "%R|%N"
# Running jobs (`squeue -h -t R`): job id (%A: each array element its own) and time limit.
# Neither field is free text, so the records need no marker.
RUNNING_FORMAT = "%A|%l"
# The prior read rate of a job (bytes/s) when the configuration gives none: what caps a
# job's expected reads by its time limit (`read_rate`, docs/planner.md).
DEFAULT_READ_RATE = 1e9


@dataclass(frozen=True)
class PendingJob:
    """A pending job that asked for datasets."""

    job_id: str
    partitions: tuple[str, ...]
    priority: int
    nodes: int
    start: float | None
    sched_nodes: tuple[str, ...]
    datasets: tuple[str, ...]
    time_limit: float | None = None  # seconds; None: unlimited or unknown


@dataclass(frozen=True)
class Snapshot:
    """The cluster's pending jobs and partitions at TAKEN_AT, and the time limits of its
    running jobs (job id -> seconds, None: unlimited or unknown)."""

    jobs: tuple[PendingJob, ...]
    partitions: Mapping[str, tuple[str, ...]]
    taken_at: float
    running: Mapping[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": DEMAND_VERSION,
            "taken_at": self.taken_at,
            "partitions": {p: list(n) for p, n in self.partitions.items()},
            "jobs": [asdict(j) for j in self.jobs],
            "peers": {name: list(nodes) for name, nodes in self.peers().items()},
            "running": dict(self.running),
        }

    def peers(self) -> dict[str, tuple[str, ...]]:
        """Dataset -> the nodes backfill has planned a pending job reading it onto.

        Derived from the jobs' SchedNodes (published as `peers`, docs/design.md section 8):
        which nodes will want the same image soon. Each node once, in natural order
        (n2 before n10); a dataset no planned job reads is absent.
        """
        planned: dict[str, set[str]] = {}
        for job in self.jobs:
            if job.sched_nodes:
                for name in job.datasets:
                    planned.setdefault(name, set()).update(job.sched_nodes)
        return {name: tuple(sorted(planned[name], key=_natural)) for name in sorted(planned)}

    def peers_of(self, node: str, name: str) -> tuple[str, ...]:
        """The other nodes planned to read NAME soon ([] when NODE is not among them)."""
        planned = self.peers().get(name, ())
        return tuple(n for n in planned if n != node) if node in planned else ()

    @classmethod
    def from_json(cls, data: Any) -> Snapshot:
        if not isinstance(data, dict) or data.get("version") != DEMAND_VERSION:
            raise ValueError("not a scratch-stage demand file of version 1")
        jobs = tuple(
            PendingJob(
                str(j["job_id"]),
                tuple(j["partitions"]),
                int(j["priority"]),
                int(j["nodes"]),
                None if j["start"] is None else float(j["start"]),
                tuple(j["sched_nodes"]),
                tuple(j["datasets"]),
                None if j.get("time_limit") is None else float(j["time_limit"]),
            )
            for j in data["jobs"]
        )
        partitions = {str(p): tuple(map(str, n)) for p, n in data["partitions"].items()}
        running = {  # absent in files published before it was
            str(j): None if limit is None else float(limit)
            for j, limit in data.get("running", {}).items()
        }
        return cls(jobs, partitions, float(data["taken_at"]), running)


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a node name with its digit runs as numbers: n2 < n10."""
    parts = re.split(r"(\d+)", name)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts if p)


def parse_slurm_time(text: str) -> float | None:
    """Seconds since the epoch for squeue's '2026-11-21T10:00:00' (local time), else None."""
    text = text.strip()
    if len(text) != 19 or text[10] != "T" or not (text[14:16] + text[17:19]).isdigit():
        return None
    hour = _hour_start(text[:13])
    return None if hour is None else hour + int(text[14:16]) * 60 + int(text[17:19])


@functools.lru_cache(maxsize=4096)
def _hour_start(hour: str) -> float | None:
    # strptime and mktime cost ~30 us; 100 000 pending jobs share a few hundred hours.
    try:
        return time.mktime(time.strptime(hour, "%Y-%m-%dT%H"))
    except (ValueError, OverflowError):
        return None


def expand_hosts(expr: str) -> tuple[str, ...]:
    if expr in ("(null)", "", "N/A"):
        return ()
    try:
        return tuple(expand_hostlist(expr))
    except ValueError:
        return ()


def squeue_records(text: str, marker: str) -> list[str]:
    """The records of squeue output whose format starts with MARKER, markers removed.

    A job's comment is free text and may hold newlines: a line that does not start with
    MARKER continues the previous record (its comment), so a comment cannot forge a job.
    The live source passes a fresh random marker per call (`squeue_marker`); with "" every
    line is a record (recorded output of the bare SQUEUE_FORMAT).
    """
    records: list[str] = []
    for line in text.split("\n"):
        if line.startswith(marker):
            records.append(line[len(marker) :])
        elif records:
            records[-1] += "\n" + line
    return records


def squeue_marker() -> str:
    """A record marker no job's owner can guess: 16 random hex digits between '@'s."""
    return f"@{secrets.token_hex(8)}@"


def parse_squeue(text: str, marker: str = "", *, limit: bool = True) -> list[PendingJob]:
    """Pending jobs with datasets from `squeue -h -t PD -o MARKER+SQUEUE_FORMAT` (LIMIT
    false: SQUEUE_FORMAT_NO_LIMIT, without the time limit)."""
    jobs: list[PendingJob] = []
    count = 8 if limit else 7
    for record in squeue_records(text, marker):
        fields = record.split("|", count - 1)
        if len(fields) != count or not fields[0].strip():
            continue
        if not limit:
            fields.insert(6, "")
        job_id, partitions, priority, nodes, start, sched, time_limit, comment = fields
        datasets = comment_datasets(comment) if "datasets:" in comment else ()
        if not datasets:
            continue
        jobs.append(
            PendingJob(
                job_id.strip(),
                tuple(p for p in partitions.split(",") if p),
                int(priority) if priority.strip().isdigit() else 0,
                int(nodes) if nodes.strip().isdigit() else 1,
                parse_slurm_time(start),
                expand_hosts(sched),
                datasets,
                parse_time_limit(time_limit),
            )
        )
    return jobs


def parse_running(text: str) -> dict[str, float | None]:
    """Job id -> time limit (seconds, None: unlimited) of running jobs from
    `squeue -h -t R -o RUNNING_FORMAT`; lines that are not such a record are skipped."""
    running: dict[str, float | None] = {}
    for line in text.splitlines():
        job_id, sep, limit = line.partition("|")
        if sep and job_id.strip().isdigit() and "|" not in limit:
            running[job_id.strip()] = parse_time_limit(limit)
    return running


def parse_time_limit(text: str) -> float | None:
    """Seconds from squeue's %l ('1-02:03:04', '02:03:04', '03:04', '5'); None for
    'UNLIMITED', 'NOT_SET', 'INVALID' or anything else."""
    text = text.strip()
    days, sep, rest = text.partition("-")
    if not sep:
        days, rest = "0", text
    parts = rest.split(":")
    if not days.isdigit() or not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    if len(parts) == 1:  # minutes
        seconds = int(parts[0]) * 60
    elif len(parts) == 2:  # minutes:seconds
        seconds = int(parts[0]) * 60 + int(parts[1])
    else:
        seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2])
    total = int(days) * 86400 + seconds
    return float(total) if total > 0 else None


@functools.lru_cache(maxsize=65536)
def comment_datasets(comment: str) -> tuple[str, ...]:
    # A sweep submits thousands of jobs with one comment: parse it once.
    return parse_request(comment).names


def parse_sinfo(text: str) -> dict[str, tuple[str, ...]]:
    """Partition -> node names from `sinfo -h -o '%R|%N'` (a partition may span lines)."""
    partitions: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, nodes = line.partition("|")
        if sep and name.strip():
            partitions.setdefault(name.strip(), []).extend(expand_hosts(nodes))
    return {p: tuple(dict.fromkeys(n)) for p, n in partitions.items()}


def history_per_job(datasets: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Bytes read per job start of each dataset on this node, from the counters' rows
    (`Counters.datasets`: bytes read through both layers over jobs started); only
    datasets with at least one job start and one byte read."""
    from scratch_stage.host.counters import DATASET_FIELDS

    index = DATASET_FIELDS.index
    cached, slow = index("read_cached_bytes"), index("read_slow_bytes")
    j_cached, j_slow = index("jobs_cached"), index("jobs_slow")
    out: dict[str, float] = {}
    for name, row in datasets.items():
        jobs = row[j_cached] + row[j_slow]
        read = row[cached] + row[slow]
        if jobs >= 1 and read > 0:
            out[name] = read / jobs
    return out


def job_weight(
    job: PendingJob, node: str, eligible: _Eligibility, now: float, horizon: float,
    discount: bool = True, land: float = 0.0,
) -> float:  # fmt: skip
    """The chance-and-soonness weight of JOB on NODE: 1 if backfill planned it onto NODE
    (SchedNodes; a many-node job lists all the nodes it is planned on: 1 on each), 0 if
    onto other nodes, else the share of its partitions' nodes it takes; times
    exp(-wait / HORIZON) (unknown start: wait = HORIZON). For a job backfill planned
    (SchedNodes and a start), the wait is counted from when a copy taking LAND seconds
    must start (`wait_discount`): exp(-max(0, wait - LAND) / HORIZON). A job it has not
    placed keeps its plain discount: its start is no commitment, and its weight is capped
    (`unplaced_scale`)."""
    if job.sched_nodes:
        weight = 1.0 if node in job.sched_nodes else 0.0
    else:
        weight = min(1.0, job.nodes / eligible.size(job.partitions))
    if weight <= 0 or not discount:
        return weight
    if job.start is None:
        return weight * math.exp(-1.0)  # unknown start: one horizon away
    if not job.sched_nodes:
        land = 0.0
    return weight * wait_discount(max(0.0, job.start - now), land, horizon)


def node_demand(
    snapshot: Snapshot,
    node: str,
    *,
    now: float,
    horizon: float,
    sizes: Mapping[str, int] | None = None,
    history: Mapping[str, float] | None = None,
    read_rate: float = DEFAULT_READ_RATE,
    discount: bool = True,
    copy_seconds: Mapping[str, float] | None = None,
    unplaced_cap: float = UNPLACED_CAP,
) -> dict[str, float]:
    """Expected bytes queued jobs will read from each dataset on NODE (pure).

    Per job and dataset: `job_weight` (placed here 1, elsewhere 0, unplaced its share of
    the partitions' nodes; discounted by its wait on the scale of HORIZON) times
    `expected_read` (HISTORY's bytes per job on this node, else one pass of the dataset's
    size in SIZES, capped by the time limit at READ_RATE). A dataset missing from SIZES
    (not in this node's datadir) counts 0 bytes. Without SIZES (the `demand` command's
    summary) each job counts 1: the expected number of jobs. A held job (priority 0)
    counts nothing: it cannot start until it is released. DISCOUNT false leaves out
    the wait's discount: the prospect, what the queue will read here eventually (the
    planner's speculative copies into free room). COPY_SECONDS (per dataset: how long a
    copy would take to land, 0 or absent for a cached one) counts only the reads after
    the copy lands (`after_landing`; unknown start: one horizon away), and a placed job's
    wait from when that copy must start (`job_weight`).

    The jobs backfill has not placed (no SchedNodes) count together, per dataset, at most
    as UNPLACED_CAP jobs sure to run here: when their shares of the nodes sum to more,
    each is scaled down by the same factor (`unplaced_scale`).
    """
    demand: dict[str, float] = {}
    eligible = _Eligibility(snapshot.partitions, node)
    history = history or {}
    scale = unplaced_scale(
        snapshot, node, unplaced_cap, eligible, now=now, horizon=horizon, discount=discount
    )
    for job in snapshot.jobs:
        if job.priority == 0:
            continue  # held (`sbatch --hold`, `scontrol hold`): cannot start until released
        weight = job_weight(job, node, eligible, now, horizon, discount)
        if weight <= 0:
            continue
        start = now + horizon if job.start is None else max(now, job.start)
        for name in job.datasets:
            land = 0.0
            if sizes is None:
                amount = 1.0
            else:
                size = sizes.get(name)
                if size is None:
                    continue
                amount = expected_read(size, job.time_limit, history.get(name), read_rate)
                land = copy_seconds.get(name, 0.0) if copy_seconds else 0.0
                if land > 0:
                    amount *= after_landing(start, job.time_limit, now + land)
            if not job.sched_nodes and name in scale:
                amount *= scale[name]
            w = weight
            if land > 0 and discount and job.sched_nodes and job.start is not None:
                w = job_weight(job, node, eligible, now, horizon, discount, land)
            demand[name] = demand.get(name, 0.0) + w * amount
    return demand


def unplaced_scale(
    snapshot: Snapshot, node: str, cap: float = UNPLACED_CAP, eligible: _Eligibility | None = None,
    *, now: float = 0.0, horizon: float = 1.0, discount: bool = True,
) -> dict[str, float]:  # fmt: skip
    """Per dataset whose unplaced jobs weigh more on NODE, together, than CAP jobs sure to
    run here at an unknown start (`job_weight`, held jobs left out: their weights sum to
    more than CAP x e^-1; DISCOUNT false, their shares of the nodes to more than CAP): the
    factor (< 1) that brings the sum down to it. Each such job could run here, but the
    queue behind backfill's window cannot all start here within the horizon: when this
    node has room for them, backfill places them, and each then counts in full on its
    own nodes. A job with a start estimate far away weighs about 0 in the sum, as in the
    demand."""
    eligible = eligible or _Eligibility(snapshot.partitions, node)
    if discount:
        cap *= math.exp(-1.0)  # an unknown start is one horizon away
    shares: dict[str, float] = {}
    for job in snapshot.jobs:
        if job.priority == 0 or job.sched_nodes:
            continue
        share = job_weight(job, node, eligible, now, horizon, discount)
        if share > 0:
            for name in job.datasets:
                shares[name] = shares.get(name, 0.0) + share
    return {name: cap / total for name, total in shares.items() if total > cap}


def running_demand(
    holds: Mapping[str, tuple[Sequence[str], float]],
    limits: Mapping[str, float | None],
    heat: Mapping[str, float],
    copy_seconds: Mapping[str, float],
    now: float,
) -> dict[str, float]:
    """Expected bytes this node's running jobs will read from each dataset after its copy
    would land (pure; docs/planner.md, "Running jobs").

    HOLDS: job id -> (datasets, start) of the jobs running here; LIMITS: their time limits
    (a job absent or unlimited counts nothing); HEAT: bytes/s read per dataset, shared
    evenly by the jobs holding it; COPY_SECONDS: how long each dataset's copy would take
    (absent or 0: cached or in flight, nothing to count). Per job `running_read`.
    """
    holders: dict[str, int] = {}
    for datasets, _ in holds.values():
        for name in set(datasets):
            holders[name] = holders.get(name, 0) + 1
    out: dict[str, float] = {}
    for job_id, (datasets, start) in holds.items():
        limit = limits.get(job_id)
        if limit is None:
            continue
        for name in set(datasets):
            land = copy_seconds.get(name, 0.0)
            if land <= 0:
                continue
            rate = heat.get(name, 0.0) / holders[name]
            amount = running_read(rate, now, start, limit, land)
            if amount > 0:
                out[name] = out.get(name, 0.0) + amount
    return out


class _Eligibility:
    """How many nodes a job's partitions span; infinite when they do not include NODE."""

    def __init__(self, partitions: Mapping[str, Sequence[str]], node: str) -> None:
        self.partitions = partitions
        self.node = node
        self.cache: dict[tuple[str, ...], float] = {}

    def size(self, names: tuple[str, ...]) -> float:
        if names not in self.cache:
            nodes = {n for p in names for n in self.partitions.get(p, ())}
            self.cache[names] = len(nodes) if self.node in nodes else math.inf
        return self.cache[names]


def snapshot_from_cli(
    squeue_out: str, sinfo_out: str, now: float, marker: str = "", running_out: str = ""
) -> Snapshot:
    """A Snapshot from the commands' outputs (squeue's records of pending jobs start with
    MARKER; RUNNING_OUT: squeue's running jobs in RUNNING_FORMAT)."""
    return Snapshot(
        tuple(parse_squeue(squeue_out, marker)), parse_sinfo(sinfo_out), now,
        parse_running(running_out),
    )  # fmt: skip


def read_demand_file(
    path: Path, *, now: float, max_age: float, trust: Trust | None = None
) -> Snapshot | None:
    """The published snapshot at PATH, None (with a warning) if missing, bad, stale or not
    trusted (`load_demand_file`)."""
    try:
        return load_demand_file(path, now=now, max_age=max_age, trust=trust)
    except ValueError as e:
        log.warning("%s: no demand this pass", e)
        return None


def load_demand_file(
    path: Path, *, now: float, max_age: float, trust: Trust | None = None
) -> Snapshot:
    """The published snapshot at PATH; ValueError (one line why) if missing, bad, stale or
    not trusted.

    The file steers what every node copies, so it counts only when TRUST (default: root)
    would mount an image with its owner and mode: owned by a trusted owner, writable by
    no one else. Owner and mode are those of the descriptor the data is read from.
    """
    import os

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            problem = (trust or Trust()).file_problem(st, fd)
            if problem:
                raise ValueError(f"demand file {path} ignored: {problem}")
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        finally:
            os.close(fd)
        snapshot = Snapshot.from_json(json.loads(data))
    except OSError as e:
        raise ValueError(f"demand file {path} unusable ({e.strerror or e})") from None
    except ValueError as e:
        if str(e).startswith("demand file "):
            raise
        raise ValueError(f"demand file {path} unusable ({e})") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"demand file {path} unusable ({e})") from None
    age = now - snapshot.taken_at
    if age > max_age:
        raise ValueError(f"demand file {path} is {age:.0f}s old (max {max_age:g}s)")
    return snapshot


def summarize(snapshot: Snapshot) -> dict[str, int]:
    """Pending jobs per dataset, cluster-wide (for `scratch-stage demand`)."""
    counts: dict[str, int] = {}
    for job in snapshot.jobs:
        for name in job.datasets:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
