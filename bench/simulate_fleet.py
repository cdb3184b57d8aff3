"""Fleet staging benchmarks (docs/benchmarks.md, section "Fleet staging in the simulator").

    .venv/bin/python bench/simulate_fleet.py model     # one image onto 4, 8, 64, 512 nodes
    .venv/bin/python bench/simulate_fleet.py replay    # every node's copies, cluster-wide

`model`: the fluid model of simulate/fleet.py, the issue's case (150 GB at 10 GB/s shared,
2 GB/s per node) and the local cluster's case (PARAMETERS below), independent vs
cooperative in the same run, with their ratios. `replay`: the policy benchmark's zipf-0.9
workload (bench/simulate_policies.py), each policy's copies over all 16 nodes: how many a
cooperative fleet would read from shared storage, and how often the copies together want
more than 10 GB/s of it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scratch_stage.simulate.fleet import Fleet, format_fleets, outcomes
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.sharing import format_shared, shared_load
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes

SIZES = Path(__file__).resolve().parent.parent / "tests/data/dataset-sizes.csv"
GB, GIB = 10**9, 1024**3
ISSUE = {"size": 150 * GB, "shared_bandwidth": 10e9, "node_bandwidth": 2e9,
         "peer_bandwidth": 2e9}  # fmt: skip
# The local cluster of bench/coop_staging.py: a 1 GiB image; shared storage and links are
# one machine's page cache and loopback, assumed here at 1 GB/s shared and per node.
LOCAL = {"size": GIB, "shared_bandwidth": 1e9, "node_bandwidth": 1e9, "peer_bandwidth": 1e9}


def model() -> None:
    for title, params, counts in (("issue #13", ISSUE, (4, 8, 64, 512)),
                                  ("local cluster", LOCAL, (4, 8))):  # fmt: skip
        fleets = [Fleet(nodes=n, **params) for n in counts]  # type: ignore[arg-type]
        print(f"## {title}\n{format_fleets(fleets)}\n")
        for f in fleets:
            ind, _, coop = outcomes(f)
            alone = f.size / min(f.node_bandwidth, f.shared_bandwidth)
            print(f"{f.nodes:>4} nodes: cooperative / independent: shared bytes "
                  f"{coop.shared_bytes / ind.shared_bytes:.4f}, time "
                  f"{coop.seconds / ind.seconds:.4f}; cooperative time / one node alone "
                  f"{coop.seconds / alone:.3f}")  # fmt: skip
        print()


def replay() -> None:
    started = time.perf_counter()
    spec = WorkloadSpec(jobs=3000, nodes=16, datasets=100, max_duration=6 * 3600.0, seed=1,
                        zipf=0.9)  # fmt: skip
    trace = generate(spec, load_sizes(SIZES))
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.05))
    multi = sum(1 for j in trace.jobs if len(j.nodes) > 1)
    hours = (max(j.end for j in trace.jobs) - min(j.start for j in trace.jobs)) / 3600
    print(f"## zipf-0.9, {spec.jobs} jobs ({multi} on several nodes) over {hours:.0f} h, "
          f"16 nodes, cache 5 %")  # fmt: skip
    report = simulate(trace, config, ["ours", "lru", "future-bytes"], bound=False, workers=2)
    loads = {name: shared_load(r.spans, trace.datasets, config.bandwidth, 10e9)
             for name, r in report.results.items()}  # fmt: skip
    print(format_shared(loads, config.bandwidth, 10e9))
    print(f"(total {time.perf_counter() - started:.1f}s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("model", "replay"))
    args = parser.parse_args()
    model() if args.what == "model" else replay()


if __name__ == "__main__":
    main()
