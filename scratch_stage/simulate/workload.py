"""Synthetic traces (seeded) and a converter from the Parallel Workloads Archive's SWF."""

from __future__ import annotations

import csv
import heapq
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from scratch_stage.simulate.trace import Job, Trace, TraceError

HOUR = 3600.0


@dataclass(frozen=True)
class WorkloadSpec:
    """A synthetic cluster workload (docs/simulate.md describes each knob)."""

    jobs: int = 2000
    nodes: int = 16
    slots: int = 4  # jobs running at once per node
    datasets: int = 0  # 0: the sizes file's catalog; more: sizes drawn from it
    zipf: float = 0.9  # dataset popularity exponent
    sweep_share: float = 0.3  # share of jobs submitted in hyper-parameter sweeps
    sweep_min: int = 8
    sweep_max: int = 32
    utilization: float = 0.9  # offered load against nodes x slots
    read_rate: float = 500e6  # median bytes/s one job reads (lognormal, sigma 0.5)
    max_passes: int = 5  # passes per job: uniform in 1..max_passes
    max_duration: float = 48 * HOUR  # longer jobs read a fraction of their dataset
    sched_delay: float = 120.0  # mean scheduler latency before a job may start (s)
    # Harder cases (all off by default, and then the traces are as before):
    drift: float = 0.0  # popularity ranks rotate by this share of the catalog over the trace
    burst: int = 1  # sweeps arrive this many at once, each on its own dataset
    partial_share: float = 0.0  # share of batches reading only part of one pass
    partial_min: float = 0.05  # ... that part, uniform between these shares of the image
    partial_max: float = 0.2
    wide_share: float = 0.0  # share of batches whose jobs each span several nodes ...
    wide_min: int = 2  # ... between these many nodes (each node reads the job's list)
    wide_max: int = 32
    seed: int = 0


# Named starting points for `generate --preset NAME` (then --set overrides): the harder
# workloads of docs/benchmarks.md.
PRESETS: dict[str, dict[str, float]] = {
    "drift": {"drift": 1.0},
    "bursty": {"sweep_share": 0.6, "burst": 3},
    "partial": {"partial_share": 0.5},
    "many": {"nodes": 64, "wide_share": 0.5},
}


def load_sizes(path: Path) -> dict[str, int]:
    """Dataset name -> size from a `name,size_bytes` CSV (lines starting with # skipped)."""
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except OSError as e:
        raise TraceError(f"cannot read dataset sizes {path}: {e.strerror}") from None
    if not rows or rows[0][:2] != ["name", "size_bytes"]:
        raise TraceError(f"{path}: expected a header 'name,size_bytes'")
    return {name: int(size) for name, size, *_ in rows[1:]}


def make_catalog(sizes: Mapping[str, int], count: int, rng: random.Random) -> dict[str, int]:
    """SIZES itself (count 0), or COUNT datasets whose sizes are drawn from it."""
    if count <= 0:
        return dict(sizes)
    names = sorted(sizes)
    catalog = {}
    for i in range(count):
        base = rng.choice(names)
        catalog[f"{base}.{i}"] = max(1, round(sizes[base] * rng.uniform(0.5, 1.5)))
    return catalog


def zipf_weights(count: int, exponent: float) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, count + 1)]


def generate(spec: WorkloadSpec, sizes: Mapping[str, int]) -> Trace:
    """A reproducible trace: Zipf popularity, sweeps, list-scheduled onto nodes x slots."""
    if spec.wide_share and not 1 <= spec.wide_min <= spec.wide_max:
        raise TraceError(f"wide_min {spec.wide_min} and wide_max {spec.wide_max}: "
                         "need 1 <= wide_min <= wide_max")  # fmt: skip
    rng = random.Random(spec.seed)
    catalog = make_catalog(sizes, spec.datasets, rng)
    order = sorted(catalog)
    rng.shuffle(order)  # popularity rank is independent of size
    weights = zipf_weights(len(order), spec.zipf)
    batches = list(_batches(spec, catalog, order, weights, rng))
    work = [d * w for batch in batches for _, d, _, w in batch]  # slot-seconds per job
    gap = sum(work) / max(1, len(work)) / (spec.nodes * spec.slots * spec.utilization)
    jobs: list[_Submitted] = []
    submit = 0.0
    held: list[list[_Batched]] = []  # sweeps waiting for their burst
    for batch in batches:
        group = [batch]
        if spec.burst > 1 and len(batch) > 1:
            held.append(batch)
            if len(held) < spec.burst:
                continue
            group, held = held, []
        for sweep in group:
            _submit(jobs, submit, sweep)
        submit += rng.expovariate(1.0 / (gap * sum(len(sweep) for sweep in group)))
    for sweep in held:
        _submit(jobs, submit, sweep)
    return Trace(catalog, tuple(_schedule(spec, jobs, rng)))


# A job as submitted: submit time, dataset, duration, bytes per node, nodes, array id.
_Submitted = tuple[float, str, float, int, int, Optional[str]]


def _submit(jobs: list[_Submitted], submit: float, batch: list[_Batched]) -> None:
    """Submit BATCH at SUBMIT: a sweep (more than one job) as a Slurm job array, whose
    array job id is its first element's job id (jobs are numbered in submission order)."""
    array = str(len(jobs) + 1) if len(batch) > 1 else None
    jobs.extend((submit, *job, array) for job in batch)


def _batch_size(spec: WorkloadSpec, rng: random.Random) -> int:
    """1 for a single job; a sweep's size with the probability that makes sweep_share."""
    mean_sweep = (spec.sweep_min + spec.sweep_max) / 2
    share = spec.sweep_share
    p_sweep = share / (share + (1 - share) * mean_sweep) if share < 1 else 1.0
    return rng.randint(spec.sweep_min, spec.sweep_max) if rng.random() < p_sweep else 1


# A job as the generator draws it: dataset, duration, bytes read per node, nodes.
_Batched = tuple[str, float, int, int]


def _batches(
    spec: WorkloadSpec, catalog: Mapping[str, int], order: list[str], weights: list[float],
    rng: random.Random,
) -> Iterable[list[_Batched]]:  # fmt: skip
    """Jobs submitted together as (dataset, duration, bytes read per node, nodes): one,
    or a sweep (its jobs alike)."""
    produced = 0
    while produced < spec.jobs:
        size = min(_batch_size(spec, rng), spec.jobs - produced)
        ranking = order
        if spec.drift:  # the popular datasets change as the trace goes on
            shift = int(spec.drift * len(order) * produced / spec.jobs) % len(order)
            ranking = order[shift:] + order[:shift]
        name = rng.choices(ranking, weights)[0]
        passes = rng.randint(1, spec.max_passes)
        rate = spec.read_rate * math.exp(rng.gauss(0.0, 0.5))
        amount = passes * catalog[name]
        if spec.partial_share and rng.random() < spec.partial_share:
            amount = round(catalog[name] * rng.uniform(spec.partial_min, spec.partial_max))
        duration = amount / rate
        if duration > spec.max_duration:
            duration, amount = spec.max_duration, round(spec.max_duration * rate)
        width = 1
        if spec.wide_share and rng.random() < spec.wide_share:
            width = min(spec.nodes, rng.randint(spec.wide_min, spec.wide_max))
        yield [(name, duration, amount, width)] * size
        produced += size


def _schedule(spec: WorkloadSpec, jobs: list[_Submitted], rng: random.Random) -> Iterable[Job]:
    """First come, first served onto the earliest free slot; a job of W nodes onto the
    earliest free slot of each of W distinct nodes, all starting when the last is free."""
    slots = [(0.0, n, s) for n in range(spec.nodes) for s in range(spec.slots)]
    heapq.heapify(slots)
    for i, (submit, name, duration, amount, width, array) in enumerate(jobs):
        chosen: dict[int, tuple[float, int, int]] = {}
        others = []  # further slots of nodes already chosen: back into the heap
        while len(chosen) < width:
            entry = heapq.heappop(slots)
            if entry[1] in chosen:
                others.append(entry)
            else:
                chosen[entry[1]] = entry
        for entry in others:
            heapq.heappush(slots, entry)
        free = max(entry[0] for entry in chosen.values())
        ready = submit + rng.expovariate(1.0 / spec.sched_delay) if spec.sched_delay else submit
        start = max(free, ready)
        end = start + duration
        for _, node, slot in chosen.values():
            heapq.heappush(slots, (end, node, slot))
        nodes = tuple(f"n{node:04d}" for node in sorted(chosen))
        yield Job(str(i + 1), round(submit, 3), round(start, 3), round(end, 3),
                  nodes, {name: amount}, time_limit(duration), array)  # fmt: skip


def time_limit(duration: float) -> float:
    """The time limit a user asks for a job of DURATION: half as much again, rounded up
    to the hour (deterministic: the traces' jobs do not change with it)."""
    return HOUR * max(1, math.ceil(round(duration * 1.5, 3) / HOUR))


# SWF fields (1-based): https://www.cs.huji.ac.il/labs/parallel/workload/swf.html
_SUBMIT, _WAIT, _RUN, _PROCS, _REQ_PROCS, _REQ_TIME, _USER, _EXECUTABLE = 1, 2, 3, 4, 7, 8, 11, 13


def convert_swf(
    lines: Iterable[str], sizes: Mapping[str, int], *, nodes: int, cores_per_node: int,
    passes: float = 1.0,
) -> Trace:  # fmt: skip
    """A trace from SWF: executable number (else user) -> dataset, procs -> nodes.

    SWF has no node list: jobs are placed on the least recently released nodes that are
    free at their start (the archive's schedule is kept; only placement is ours).
    """
    names = sorted(sizes)
    free_at = [(0.0, n) for n in range(nodes)]
    jobs: list[Job] = []
    for line in lines:
        fields = line.split()
        if not fields or line.lstrip().startswith(";") or len(fields) < 18:
            continue
        submit, wait, run = float(fields[_SUBMIT]), float(fields[_WAIT]), float(fields[_RUN])
        if run <= 0 or wait < 0:
            continue  # cancelled or failed before starting
        procs = int(fields[_PROCS]) if int(fields[_PROCS]) > 0 else int(fields[_REQ_PROCS])
        key = int(fields[_EXECUTABLE]) if int(fields[_EXECUTABLE]) >= 0 else int(fields[_USER])
        dataset = names[key % len(names)]
        count = min(nodes, max(1, math.ceil(max(procs, 1) / cores_per_node)))
        start = submit + wait
        free_at.sort()
        chosen, free_at = free_at[:count], free_at[count:]
        free_at.extend((start + run, n) for _, n in chosen)
        requested = float(fields[_REQ_TIME])
        limit = requested if requested >= run else None  # -1: not given
        jobs.append(Job(fields[0], submit, start, start + run,
                        tuple(f"n{n:04d}" for _, n in sorted(chosen, key=lambda c: c[1])),
                        {dataset: round(passes * sizes[dataset])}, limit))  # fmt: skip
    jobs.sort(key=lambda j: (j.start, j.end, j.id))
    return Trace(dict(sizes), tuple(jobs))
