"""Replay speed of the policy simulator (docs/benchmarks.md, "Replay speed").

    .venv/bin/python bench/replay_speed.py                  # 100 000 jobs x 64 nodes
    .venv/bin/python bench/replay_speed.py --jobs 5000 --old --all

In one run, on one seeded trace (the `scale` workload of bench/simulate_policies.py,
cache 5 % of the catalog): `ours` as the simulator runs it (views only for datasets with
heat, demand or a copy; passes proven to repeat skipped; knapsack by branch and bound),
with --workers processes; `lru` (the cheapest baseline); with --old, `ours` on the old
path (the same built-in value under another name, so the planner builds every view and
the replay plans at every tick whose inputs moved) in one process, and a check that
both replays cost exactly the same; with --all, every policy with --workers processes.
Ratios are printed against `lru` and the old path.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import fields
from pathlib import Path

from scratch_stage.policy import planner
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.node import Costs
from scratch_stage.simulate.policies import POLICIES, Ours
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes

SIZES = Path(__file__).resolve().parent.parent / "tests/data/dataset-sizes.csv"


def cpu_seconds() -> float:
    """CPU time of this process and its finished workers (a loaded machine's wall clock
    says little; CPU time does)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def old_path() -> Ours:
    return Ours(value=lambda view, params: planner.default_value(view, params))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--old", action="store_true", help="also time the old path")
    parser.add_argument("--all", action="store_true", help="also time every policy")
    args = parser.parse_args()
    spec = WorkloadSpec(jobs=args.jobs, nodes=args.nodes, datasets=100,
                        max_duration=6 * 3600.0, seed=1)  # fmt: skip
    started = time.perf_counter()
    trace = generate(spec, load_sizes(SIZES))
    days = max(j.end for j in trace.jobs) / 86400
    took = time.perf_counter() - started
    print(f"{args.jobs} jobs on {args.nodes} nodes over {days:.1f} days (generated in "
          f"{took:.1f} s); load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.05))
    cpu = cpu_seconds()
    ours = simulate(trace, config, ["ours"], bound=False, workers=args.workers).results["ours"]
    ours_cpu, cpu = cpu_seconds() - cpu, cpu_seconds()
    lru = simulate(trace, config, ["lru"], bound=False, workers=args.workers).results["lru"]
    lru_cpu = cpu_seconds() - cpu
    print(f"ours, {args.workers} worker(s): {ours.seconds:.1f} s wall, {ours_cpu:.1f} s CPU, "
          f"{ours.decisions} plans")  # fmt: skip
    print(f"lru: {lru.seconds:.2f} s wall, {lru_cpu:.2f} s CPU; ours / lru (CPU) = "
          f"{ours_cpu / max(lru_cpu, 1e-9):.0f}x")  # fmt: skip
    if args.old:
        cpu = cpu_seconds()
        old = simulate(trace, config, {"old": old_path}, bound=False).results["old"]
        old_cpu = cpu_seconds() - cpu
        print(f"ours on the old path, 1 worker: {old.seconds:.1f} s wall, {old_cpu:.1f} s CPU, "
              f"{old.decisions} plans; old / new (CPU) = {old_cpu / ours_cpu:.1f}x")  # fmt: skip
        same = all(getattr(old, f.name) == getattr(ours, f.name)
                   for f in fields(Costs) if f.name != "decisions")  # fmt: skip
        print(f"same costs on both paths: {same}")
    if args.all:
        started, cpu = time.perf_counter(), cpu_seconds()
        for name in POLICIES:  # one at a time: each one's workers are reaped, CPU counted
            before = cpu_seconds()
            result = simulate(trace, config, [name], bound=False, workers=args.workers)
            print(f"  {name}: {result.results[name].seconds:.1f} s wall, "
                  f"{cpu_seconds() - before:.1f} s CPU, load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        print(f"every policy: {time.perf_counter() - started:.1f} s wall, "
              f"{cpu_seconds() - cpu:.1f} s CPU")  # fmt: skip


if __name__ == "__main__":
    main()
