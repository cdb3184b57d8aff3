"""Job traces: what the simulator replays (format in docs/simulate.md).

JSON lines. The first line is a header naming the format and every dataset's size; each
following line is one job: id, submit, start and end times (seconds), the nodes it ran on,
and per dataset what EACH of its nodes read: `passes` over the image or `bytes`.

    {"format": "scratch-stage-trace", "version": 1, "datasets": {"imagenet": 150000000000}}
    {"id": "17", "submit": 0, "start": 60, "end": 3660, "nodes": ["n1"], "passes": {"imagenet": 2}}

An optional `limit` is the job's time limit in seconds (>= end - start; absent: none), an
optional `array` the Slurm array job id of the array the job is an element of (absent: none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from scratch_stage.core.errors import ScratchStageError

TRACE_FORMAT = "scratch-stage-trace"
TRACE_VERSION = 1
# A read shorter than this is stretched to it, so that every read has a finite rate.
MIN_READ_SECONDS = 1.0


class TraceError(ScratchStageError):
    """A trace file cannot be read: the message names the line."""


@dataclass(frozen=True)
class Job:
    """One job: on each of NODES it reads READS[name] bytes of each dataset, at a steady rate."""

    id: str
    submit: float
    start: float
    end: float
    nodes: tuple[str, ...]
    reads: Mapping[str, int]
    limit: float | None = None  # the time limit asked for (seconds); None: none given
    # the Slurm array job id (`%F` in squeue, SLURM_ARRAY_JOB_ID) of the array the job is
    # an element of; None: not an array element
    array: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "id": self.id, "submit": self.submit, "start": self.start, "end": self.end,
            "nodes": list(self.nodes), "bytes": dict(self.reads),
        }  # fmt: skip
        if self.limit is not None:
            data["limit"] = self.limit
        if self.array is not None:
            data["array"] = self.array
        return data


@dataclass(frozen=True)
class Trace:
    """Dataset sizes (bytes) and jobs sorted by start time."""

    datasets: Mapping[str, int]
    jobs: tuple[Job, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node any job ran on, sorted."""
        return tuple(sorted({n for job in self.jobs for n in job.nodes}))

    def catalog_bytes(self) -> int:
        return sum(self.datasets.values())


def parse_header(data: Any) -> dict[str, int]:
    """Dataset sizes from the header object; TraceError if it is not a version-1 header."""
    if not isinstance(data, dict) or data.get("format") != TRACE_FORMAT:
        raise TraceError(f"not a {TRACE_FORMAT} file (first line must be its header)")
    if data.get("version") != TRACE_VERSION:
        raise TraceError(f"trace version {data.get('version')!r} is not {TRACE_VERSION}")
    sizes = data.get("datasets")
    if not isinstance(sizes, dict) or not all(
        isinstance(n, str) and type(s) is int and s > 0 for n, s in sizes.items()
    ):
        raise TraceError("header 'datasets' must map names to positive integer sizes")
    return dict(sizes)


def parse_job(data: Any, sizes: Mapping[str, int]) -> Job:
    """One job record; ValueError (with the reason) if malformed."""
    if not isinstance(data, dict):
        raise ValueError("a job record must be a JSON object")
    submit, start, end = (float(data[k]) for k in ("submit", "start", "end"))
    if not all(math.isfinite(t) for t in (submit, start, end)):
        raise ValueError("times must be finite numbers")
    if not submit <= start <= end:
        raise ValueError("times must satisfy submit <= start <= end")
    nodes = data["nodes"]
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ValueError("'nodes' must be a non-empty list of node names")
    repeated = sorted({n for n in nodes if nodes.count(n) > 1})
    if repeated:
        raise ValueError(f"node {repeated[0]!r} is listed twice in 'nodes'")
    limit = data.get("limit")
    if limit is not None:
        limit = float(limit)
        if not 0 < limit < math.inf or limit < end - start:
            raise ValueError("'limit' must be a finite number of seconds >= end - start")
    array = data.get("array")
    if array is not None and (not isinstance(array, str) or not array.strip()):
        raise ValueError("'array' must be a non-empty string (the array job id)")
    reads = _reads(data, sizes)
    return Job(str(data["id"]), submit, start, end, tuple(nodes), reads, limit, array)


def _reads(data: Mapping[str, Any], sizes: Mapping[str, int]) -> dict[str, int]:
    reads: dict[str, int] = {}
    for key in ("passes", "bytes"):
        for name, amount in dict(data.get(key, {})).items():
            if name not in sizes:
                raise ValueError(f"dataset {name!r} is not in the header")
            if not 0 <= float(amount) < math.inf:
                raise ValueError(f"{key} for {name!r} must be a finite number >= 0")
            scale = sizes[name] if key == "passes" else 1
            reads[name] = reads.get(name, 0) + round(float(amount) * scale)
    return reads


class _SameIdCheck:
    """Refuses a job whose id is already running on one of its nodes (the replay keys
    a node's running jobs by id). Reads are stretched to MIN_READ_SECONDS as replayed."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[float, float, frozenset[str], int]]] = {}

    def check(self, job: Job, number: int) -> None:
        end = max(job.end, job.start + MIN_READ_SECONDS)
        nodes = frozenset(job.nodes)
        earlier = self.seen.setdefault(job.id, [])
        for start, stop, where, line in earlier:
            common = nodes & where
            if common and start < end and job.start < stop:
                raise ValueError(
                    f"job id {job.id!r} overlaps the job on line {line} on node "
                    f"{min(common)!r} (ids must be unique among jobs running on a node)"
                )
        earlier.append((job.start, end, nodes, number))


def parse_trace(lines: Iterable[str]) -> Trace:
    """The trace in LINES (blank lines and lines starting with # are skipped)."""
    sizes: dict[str, int] | None = None
    jobs: list[Job] = []
    same_id = _SameIdCheck()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
            if sizes is None:
                sizes = parse_header(data)
            else:
                job = parse_job(data, sizes)
                same_id.check(job, number)
                jobs.append(job)
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            raise TraceError(f"trace line {number}: {e}") from None
    if sizes is None:
        raise TraceError("empty trace: no header line")
    jobs.sort(key=lambda j: (j.start, j.end, j.id))
    return Trace(sizes, tuple(jobs))


def read_trace(path: Path) -> Trace:
    """The trace in the file at PATH; TraceError if unreadable or malformed."""
    try:
        with path.open(encoding="utf-8") as f:
            return parse_trace(f)
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e.strerror}") from None


def format_trace(trace: Trace) -> Iterator[str]:
    """The lines (without newlines) of TRACE's JSON lines form."""
    header = {"format": TRACE_FORMAT, "version": TRACE_VERSION, "datasets": dict(trace.datasets)}
    yield json.dumps(header, sort_keys=True)
    for job in trace.jobs:
        yield json.dumps(job.to_json(), sort_keys=True)


def write_trace(trace: Trace, out: TextIO) -> None:
    """Write TRACE to OUT as JSON lines."""
    for line in format_trace(trace):
        out.write(line + "\n")
