"""Sweep of ours's knobs on the policy workloads (docs/benchmarks.md, "Knob sweep").

    .venv/bin/python bench/knob_sweep.py                 # one knob at a time, the rest default
    .venv/bin/python bench/knob_sweep.py --workers 2 --json

The workloads are those of bench/simulate_policies.py: `tables` (Zipf 0.6 at 10 % cache,
0.9 at 5 %, 1.2 at 2 %) and `hard` (drift, bursty sweeps, partial reads; Zipf 0.9) at
10 %. Each knob is varied alone around the defaults (`--interval` 60 s, `--horizon` 1 h,
`hysteresis` 0.1, the planner's `PlanParams`); every cell is ours's slow-storage bytes
on that workload divided by ours's with all defaults, in the same run (below 1: better
than the default). The default is where it should be if no other value of its row is
clearly below 1 on most workloads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from simulate_policies import BASE, HARD, SIZES, TABLES

from scratch_stage.policy import planner
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.policies import Ours
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Trace
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes

DEFAULTS = {"interval": 60.0, "horizon": 3600.0, "hysteresis": 0.1}
GRID = {
    "interval": (15.0, 30.0, 60.0, 120.0, 300.0),
    "horizon": (900.0, 1800.0, 3600.0, 7200.0, 14400.0),
    "hysteresis": (0.0, 0.05, 0.1, 0.2, 0.5),
}


def workloads() -> list[tuple[str, Trace, float]]:
    sizes = load_sizes(SIZES)
    out = []
    for title, zipf, share in TABLES:
        out.append((f"{title} {share:.0%}", generate(_spec(zipf=zipf), sizes), share))
    for title, knobs in HARD:
        out.append((f"{title} 10%", generate(_spec(zipf=0.9, **knobs), sizes), 0.10))
    return out


def _spec(**knobs: Any) -> WorkloadSpec:
    return WorkloadSpec(**{**BASE.__dict__, **knobs})


def slow_bytes(trace: Trace, share: float, knobs: dict[str, float], workers: int) -> float:
    config = SimConfig(
        capacity=int(trace.catalog_bytes() * share),
        interval=knobs["interval"], horizon=knobs["horizon"],
    )  # fmt: skip
    params = planner.PlanParams(horizon=knobs["horizon"], hysteresis=knobs["hysteresis"])
    report = simulate(trace, config, {"ours": lambda: Ours(params=params)}, bound=False,
                      workers=workers)  # fmt: skip
    result = report.results["ours"]
    print(f"  {knobs}: {result.slow_bytes / 1e12:.0f} TB, {result.seconds:.1f} s", file=sys.stderr,
          flush=True)  # fmt: skip
    return result.slow_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    loads = [os.getloadavg()[0]]
    cases = workloads()
    base = {name: slow_bytes(trace, share, DEFAULTS, args.workers) for name, trace, share in cases}
    results: dict[str, dict[float, dict[str, float]]] = {}
    for knob, values in GRID.items():
        results[knob] = {}
        for value in values:
            if value == DEFAULTS[knob]:
                results[knob][value] = {name: 1.0 for name in base}
                continue
            knobs = {**DEFAULTS, knob: value}
            results[knob][value] = {
                name: slow_bytes(trace, share, knobs, args.workers) / base[name]
                for name, trace, share in cases
            }
            loads.append(os.getloadavg()[0])
    took = time.perf_counter() - started
    if args.json:
        print(json.dumps({"default_slow_bytes": base, "ratios": results, "seconds": took}))
        return
    names = list(base)
    print(f"ours's slow bytes / with default knobs; {took:.0f} s, load average "
          f"{min(loads):.1f} to {max(loads):.1f}")  # fmt: skip
    print("| knob | value | " + " | ".join(names) + " | mean |")
    print("|---|---:|" + "---:|" * (len(names) + 1))
    for knob, rows in results.items():
        for value, cells in rows.items():
            mark = " (default)" if value == DEFAULTS[knob] else ""
            mean = sum(cells.values()) / len(cells)
            row = " | ".join(f"{cells[n]:.3f}" for n in names)
            print(f"| {knob} | {value:g}{mark} | {row} | {mean:.3f} |")
    print("default slow TB: " + ", ".join(f"{n} {b / 1e12:.0f}" for n, b in base.items()))


if __name__ == "__main__":
    main()
