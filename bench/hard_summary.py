"""`ours` against LRU, scratch_manager and future-bytes on the `hard` workloads, one line
each (docs/benchmarks.md, "Demand in bytes"): slow bytes of `ours` and how many fewer
than each baseline, at a reduced size so that two checkouts can be compared in one session.

    .venv/bin/python bench/hard_summary.py [JOBS]          # default 1500 jobs, 16 nodes
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/hard_summary.py 1500

The workloads are those of `bench/simulate_policies.py hard` (Zipf 0.9; drift, bursty
sweeps, partial reads) with JOBS jobs; no bound is computed.
"""

from __future__ import annotations

import sys
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
POLICIES = ("ours", "lru", "scratch_manager", "future-bytes")


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    base = WorkloadSpec(jobs=jobs, nodes=16, datasets=100, max_duration=6 * 3600.0, seed=1)
    for title, knobs in HARD:
        spec = WorkloadSpec(**{**base.__dict__, "zipf": 0.9, **knobs})
        trace = generate(spec, load_sizes(SIZES))
        for share in (0.05, 0.10, 0.20):
            started = time.perf_counter()
            config = SimConfig(capacity=int(trace.catalog_bytes() * share))
            report = simulate(trace, config, POLICIES, bound=False)
            slow = {p: report.results[p].slow_bytes for p in POLICIES}
            ours = slow["ours"]
            print(
                f"{title:8s} {share:4.0%} ours {ours / 1e12:8.1f} TB"
                f" | fewer than lru {1 - ours / slow['lru']:+.1%}"
                f" | than scratch_manager {1 - ours / slow['scratch_manager']:+.1%}"
                f" | ours/future-bytes {ours / slow['future-bytes']:.3f}"
                f" | {time.perf_counter() - started:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
