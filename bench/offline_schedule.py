"""How far the bound with copy time is below the best schedule found (docs/simulate.md).

    .venv/bin/python bench/offline_schedule.py                    # the six at 10 % cache
    .venv/bin/python bench/offline_schedule.py --only zipf-0.6    # one of them

Replays `mip-schedule` (an offline schedule from a mixed-integer programme per node, needs
scipy), `future-bytes` and `ours` on the workloads of bench/simulate_policies.py at 10 %
cache (the issue's "<= 1.10x the bound" target), and prints each against the bound. The
optimum of every workload lies between the bound and the cheapest schedule replayed.
"""

from __future__ import annotations

import argparse
import time

from bench.simulate_policies import BASE, HARD, MANY, SIZES
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes

POLICIES = ("mip-schedule", "future-bytes", "ours")
WORKLOADS = {
    "zipf-0.6": {"zipf": 0.6},
    "80% sweeps, zipf-0.6": {"zipf": 0.6, "sweep_share": 0.8},
    **{name: {"zipf": 0.9, **knobs} for name, knobs in HARD},
    "many nodes": {"zipf": 0.9, **MANY},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--share", type=float, default=0.10, help="cache share of the catalog")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sizes = load_sizes(SIZES)
    print("| workload, cache | bound TB | mip-schedule | future-bytes | ours | best found / bound"
          " | ours / best found | seconds |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.only or WORKLOADS:
        started = time.perf_counter()
        trace = generate(WorkloadSpec(**{**BASE.__dict__, **WORKLOADS[name]}), sizes)
        config = SimConfig(capacity=int(trace.catalog_bytes() * args.share))
        report = simulate(trace, config, POLICIES, workers=args.workers)
        assert report.bound is not None
        bound = report.bound.lower
        slow = {p: report.results[p].slow_bytes for p in POLICIES}
        best = min(slow["mip-schedule"], slow["future-bytes"])
        cells = " | ".join(f"{slow[p] / 1e12:.0f} ({slow[p] / bound:.3f})" for p in POLICIES)
        print(f"| {name}, {args.share:.0%} | {bound / 1e12:.0f} | {cells} | {best / bound:.3f}"
              f" | {slow['ours'] / best:.3f} | {time.perf_counter() - started:.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
