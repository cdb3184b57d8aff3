"""Policy simulation benchmarks (docs/benchmarks.md, section "Policy simulation").

    .venv/bin/python bench/simulate_policies.py tables      # three workloads, all policies
    .venv/bin/python bench/simulate_policies.py sweeps      # sweep-heavy workloads
    .venv/bin/python bench/simulate_policies.py hard        # drift, bursts, partial reads
    .venv/bin/python bench/simulate_policies.py scale --jobs 100000

Every trace is generated from a fixed seed; the catalog's sizes are drawn from
tests/data/dataset-sizes.csv (a real HPC cluster's catalog).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.metrics import format_table
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes

SIZES = Path(__file__).resolve().parent.parent / "tests/data/dataset-sizes.csv"
BASE = WorkloadSpec(jobs=3000, nodes=16, datasets=100, max_duration=6 * 3600.0, seed=1)
# (name, popularity exponent, cache share of the catalog)
TABLES = (("zipf-0.6", 0.6, 0.10), ("zipf-0.9", 0.9, 0.05), ("zipf-1.2", 1.2, 0.02))
# Harder workloads (Zipf 0.9): popularity drifting over the whole catalog, sweeps in bursts
# of three on different datasets, and half of the batches reading 5-20 % of one pass.
HARD = (
    ("drift", {"drift": 1.0}),
    ("bursty sweeps", {"sweep_share": 0.6, "burst": 3}),
    ("partial reads", {"partial_share": 0.5}),
)


def run(spec: WorkloadSpec, share: float, title: str, **knobs: float) -> None:
    started = time.perf_counter()
    trace = generate(spec, load_sizes(SIZES))
    capacity = int(trace.catalog_bytes() * share)
    report = simulate(trace, SimConfig(capacity=capacity, **knobs))  # type: ignore[arg-type]
    print(f"## {title}: zipf {spec.zipf}, {spec.jobs} jobs, sweeps {spec.sweep_share:.0%}")
    print(format_table(report))
    print(f"(total {time.perf_counter() - started:.1f}s)\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("tables", "sweeps", "hard", "scale"))
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args()
    if args.what == "tables":
        for title, zipf, share in TABLES:
            spec = WorkloadSpec(**{**BASE.__dict__, "zipf": zipf})
            run(spec, share, title, tolerance=args.tolerance)
    elif args.what == "sweeps":
        for title, zipf, share in TABLES:
            spec = WorkloadSpec(**{**BASE.__dict__, "zipf": zipf, "sweep_share": 0.8})
            run(spec, share, f"sweeps {title}", tolerance=args.tolerance)
    elif args.what == "hard":
        for title, knobs in HARD:
            spec = WorkloadSpec(**{**BASE.__dict__, "zipf": 0.9, **knobs})
            for share in (0.05, 0.10, 0.20):
                run(spec, share, f"{title}, cache {share:.0%}", tolerance=args.tolerance)
    else:
        spec = WorkloadSpec(**{**BASE.__dict__, "jobs": args.jobs, "nodes": 64})
        run(spec, 0.05, f"scale {args.jobs}", tolerance=args.tolerance)


if __name__ == "__main__":
    main()
