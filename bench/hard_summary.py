"""`ours` against LRU, scratch_manager and future-bytes on the `hard` workloads, one line
each (docs/benchmarks.md, "Demand in bytes"): slow bytes of `ours` and how many fewer
than each baseline, at a reduced size so that two checkouts can be compared in one session.

    .venv/bin/python bench/hard_summary.py [JOBS]          # default 1500 jobs, 16 nodes
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/hard_summary.py 1500
    .venv/bin/python bench/hard_summary.py 1500 --many --unplaced-cap inf --unplaced-cap 2

The workloads are those of `bench/simulate_policies.py hard` (Zipf 0.9; drift, bursty
sweeps, partial reads) with JOBS jobs; --many adds the many-node one (`generate --preset
many`: 64 nodes, half of the batches 2-32 nodes wide), --tables the developers' ones (those
of `simulate_policies.py tables sweeps`, each at its one cache size). --unplaced-cap
(repeatable) replays `ours` once per cap on the unplaced jobs of a dataset
(`SimConfig.unplaced_cap`; `inf`: no cap), the baselines once. No bound is computed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes

SIZES = Path(__file__).resolve().parent.parent / "tests/data/dataset-sizes.csv"
HARD = (
    ("drift", {"drift": 1.0}),
    ("bursty", {"sweep_share": 0.6, "burst": 3}),
    ("partial", {"partial_share": 0.5}),
)
# `generate --preset many` (spelled out: an older checkout on PYTHONPATH has no PRESETS)
MANY = {"nodes": 64, "wide_share": 0.5}
BASELINES = ("lru", "scratch_manager", "future-bytes")
SHARES = (0.05, 0.10, 0.20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="?", type=int, default=1500)
    parser.add_argument("--many", action="store_true", help="add the many-node workload")
    parser.add_argument("--tables", action="store_true", help="add the developers' workloads")
    parser.add_argument("--unplaced-cap", type=float, action="append", default=[])
    args = parser.parse_args()
    caps: list[float | None] = list(args.unplaced_cap) or [None]
    base = WorkloadSpec(jobs=args.jobs, nodes=16, datasets=100, max_duration=6 * 3600.0, seed=1)
    workloads = [(title, {"zipf": 0.9, **knobs}, SHARES) for title, knobs in HARD]
    if args.many:
        workloads.append(("many", {"zipf": 0.9, **MANY}, SHARES))
    if args.tables:
        workloads += [
            (f"s{sweeps:.0%} z{zipf}", {"zipf": zipf, "sweep_share": sweeps}, (share,))
            for sweeps in (0.3, 0.8)
            for zipf, share in ((0.6, 0.10), (0.9, 0.05), (1.2, 0.02))
        ]
    for title, knobs, shares in workloads:
        spec = WorkloadSpec(**{**base.__dict__, **knobs})
        trace = generate(spec, load_sizes(SIZES))
        for share in shares:
            capacity = int(trace.catalog_bytes() * share)
            report = simulate(trace, SimConfig(capacity=capacity), BASELINES, bound=False)
            slow = {p: report.results[p].slow_bytes for p in BASELINES}
            for cap in caps:
                started = time.perf_counter()
                config = SimConfig(capacity=capacity)
                if cap is not None:
                    config = SimConfig(capacity=capacity, unplaced_cap=cap)
                ours = simulate(trace, config, ("ours",), bound=False).results["ours"].slow_bytes
                label = "" if cap is None else f" cap {cap:g}"
                print(
                    f"{title:9s} {share:4.0%}{label} ours {ours / 1e12:8.1f} TB"
                    f" | fewer than lru {1 - ours / slow['lru']:+.1%}"
                    f" | than scratch_manager {1 - ours / slow['scratch_manager']:+.1%}"
                    f" | ours/future-bytes {ours / slow['future-bytes']:.3f}"
                    f" | {time.perf_counter() - started:.0f}s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
