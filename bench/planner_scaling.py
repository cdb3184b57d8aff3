"""Planner and demand time for 100 / 1 000 / 10 000 datasets with 1 000 / 100 000 pending jobs.

    .venv/bin/python bench/planner_scaling.py [--json]

Each figure is the best of 3 runs (seconds of wall time in this process). The pending jobs
are first turned into demand by the live code path (`parse_squeue` on squeue-format text,
then `node_demand`), then `plan` (its input built by `plan_input`) runs on
10 000-node-cluster-like inputs: a third of the datasets cached, heat on a Zipf-like half,
a capacity of 5 % of the catalog.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any, Callable

from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.state import CachedCopy, NodeState
from scratch_stage.policy.plan_input import plan_input
from scratch_stage.policy.planner import plan
from scratch_stage.slurm.demand import Snapshot, node_demand, parse_squeue

NOW = 1_800_000_000.0
GB = 10**9


def best_of(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def squeue_text(jobs: int, datasets: int, rng: random.Random) -> str:
    lines = []
    for i in range(jobs):
        names = ",".join(f"ds{int(rng.paretovariate(1.0)) % datasets}" for _ in range(2))
        sched = "node0001" if rng.random() < 0.01 else "(null)"
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW + rng.uniform(0, 7200)))
        lines.append(f"{i}|batch|{1000 + i}|1|{start}|{sched}|2:00:00|datasets:{names}")
    return "\n".join(lines)


def run_case(datasets: int, jobs: int) -> dict[str, float]:
    rng = random.Random(datasets * 7 + jobs)
    catalog = {f"ds{i}": Fingerprint(rng.randint(1, 200) * GB, 0, i) for i in range(datasets)}
    total = sum(f.size for f in catalog.values())
    state = NodeState(cached={n: CachedCopy(catalog[n], NOW) for n in list(catalog)[::3]})
    heat = {n: rng.paretovariate(1.2) * 1e6 for n in list(catalog)[::2]}
    text = squeue_text(jobs, datasets, rng)
    partitions = {"batch": tuple(f"node{i:04d}" for i in range(1, 1001))}

    def demand() -> dict[str, float]:
        snap = Snapshot(tuple(parse_squeue(text)), partitions, NOW)
        sizes = {n: f.size for n, f in catalog.items()}
        return node_demand(snap, "node0001", now=NOW, horizon=3600, sizes=sizes)

    demand_s, demand_map = best_of(3, demand)
    plan_s, result = best_of(
        3, lambda: plan(plan_input(state, catalog, NOW), heat, demand_map, total // 20)
    )
    return {
        "datasets": datasets, "pending_jobs": jobs, "demand_s": demand_s, "plan_s": plan_s,
        "total_s": demand_s + plan_s, "staged": len(result.stage), "evicted": len(result.evict),
        "method": result.method,
    }  # fmt: skip


def main() -> None:
    rows = [run_case(d, j) for d in (100, 1_000, 10_000) for j in (1_000, 100_000)]
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'datasets':>9} {'jobs':>8} {'demand s':>9} {'plan s':>8} {'total s':>8}  method")
    for r in rows:
        print(
            f"{r['datasets']:>9} {r['pending_jobs']:>8} {r['demand_s']:>9.3f} "
            f"{r['plan_s']:>8.3f} {r['total_s']:>8.3f}  {r['method']} "
            f"(stage {r['staged']}, evict {r['evicted']})"
        )
    worst = rows[-1]["total_s"]
    print(f"10 000 datasets x 100 000 pending jobs: {worst:.2f} s (target < 1 s)")


if __name__ == "__main__":
    main()
