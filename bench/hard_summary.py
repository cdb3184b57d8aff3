"""`ours` against LRU, scratch_manager and future-bytes on the `hard` workloads, one line
each (docs/benchmarks.md, "Demand in bytes"): slow bytes of `ours` and how many fewer
than each baseline, at a reduced size so that two checkouts can be compared in one session.

    .venv/bin/python bench/hard_summary.py [JOBS]          # default 1500 jobs, 16 nodes
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/hard_summary.py 1500
    .venv/bin/python bench/hard_summary.py 1500 --many --unplaced-cap inf --unplaced-cap 2
    .venv/bin/python bench/hard_summary.py 1500 --many --tables --oracle --bound
    .venv/bin/python bench/hard_summary.py 1500 --many --tables --backfill-window 86400 \
        --estimate-noise 1800

The workloads are those of `bench/simulate_policies.py hard` (Zipf 0.9; drift, bursty
sweeps, partial reads) with JOBS jobs; --many adds the many-node one (`generate --preset
many`: 64 nodes, half of the batches 2-32 nodes wide), --tables the developers' ones (those
of `simulate_policies.py tables sweeps`, each at its one cache size). --unplaced-cap
(repeatable) replays `ours` once per cap on the unplaced jobs of a dataset
(`SimConfig.unplaced_cap`; `inf`: no cap), the baselines once. --oracle adds the queue
oracle (`queue-oracle`: the planner told the truth about submitted jobs) as a baseline:
its slow bytes against future-bytes and `ours`'s against it, and the same planner told
the whole future (jobs not yet submitted too) against future-bytes; and the blind queue
oracle (`queue-oracle-blind`: true reads, but where and when a job runs only when `ours`
learns it): `ours / blind` is what read estimates cost, `blind / oracle` what not
knowing where unplaced jobs will run costs. --bound computes the lower
bound with copy time and prints the best any policy could do against LRU and
scratch_manager, "out of reach" where the bound proves the issue's target is
(`scratch_stage/simulate/targets.py`); without it no bound is computed.
--backfill-window and --estimate-noise replay every policy with backfill's placements
known that far ahead (default 1 h; Slurm's own default `bf_window` is one day) and their
start estimates off by that much (`SimConfig`, `docs/simulate.md`).
--fleet-history replays `ours` a second time with every node estimating a job's reads
from the whole fleet's finished jobs (`SimConfig.fleet_history`, an experiment) and
prints the change in slow bytes. --true-queued and --true-running (experiments,
docs/benchmarks.md "Which read estimate costs what") each replay `ours` again told the
truth about one input, everything else unchanged: each queued job's true bytes in place
of its estimate (`SimConfig.true_queued`), each running job's true reads after a copy
would land in place of the heat-based estimate (`SimConfig.true_running`); with both,
also a replay told both. --true-placed and --true-unplaced split --true-queued into the
jobs placed here and those not placed yet; --limit-history replays `ours` estimating a
queued job's reads from this node's bytes per second of time limit
(`SimConfig.limit_history`). --array-history replays `ours` twice more, a job placed
here estimated from the finished elements of its job array (`SimConfig.array_history`):
those that finished on this node ("array-node"), or on any node ("array-fleet").
--array-oracle replays `ours` with every placed array element counting its true bytes
(`array_history="oracle"`: the most its array could tell). --array-stats replays
nothing: per workload, how many of the jobs placed on a node (node jobs: a job on 4
nodes counts 4 times) are array elements, and how many have a sibling that ended before
they start, on their node or on any (their share of the placed jobs' bytes in
brackets): the most the array history can ever change.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from scratch_stage.simulate.inputs import SimConfig, split_by_node
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Trace
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
BLIND = "queue-oracle-blind"
# The simulator's experiments (`SimConfig` switches, off by default; docs/benchmarks.md):
# flag -> (its help, the variants of ours it replays again: title, SimConfig fields).
EXPERIMENTS: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    "fleet-history": (
        "replay ours again with the fleet's read history (SimConfig.fleet_history)",
        [("fleet-history", {"fleet_history": True})],
    ),
    "true-queued": (
        "replay ours again with queued jobs' true bytes (SimConfig.true_queued)",
        [("true-queued", {"true_queued": True})],
    ),
    "true-running": (
        "replay ours again with running jobs' true remainder (SimConfig.true_running)",
        [("true-running", {"true_running": True})],
    ),
    "true-placed": (
        "as --true-queued for the jobs placed here only (SimConfig.true_placed)",
        [("true-placed", {"true_placed": True})],
    ),
    "true-unplaced": (
        "as --true-queued for the jobs not placed yet only (SimConfig.true_unplaced)",
        [("true-unplaced", {"true_unplaced": True})],
    ),
    "limit-history": (
        "replay ours again estimating reads per second of time limit",
        [("limit-history", {"limit_history": True})],
    ),
    "array-history": (
        "replay ours again estimating placed jobs' reads from their arrays' elements",
        [("array-node", {"array_history": "node"}), ("array-fleet", {"array_history": "fleet"})],
    ),
    "array-oracle": (
        "replay ours again with placed array elements' true bytes",
        [("array-oracle", {"array_history": "oracle"})],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="?", type=int, default=1500)
    parser.add_argument("--many", action="store_true", help="add the many-node workload")
    parser.add_argument("--tables", action="store_true", help="add the developers' workloads")
    parser.add_argument("--unplaced-cap", type=float, action="append", default=[])
    parser.add_argument(
        "--backfill-window",
        type=float,
        default=3600.0,
        help="seconds ahead backfill's placements are known (SimConfig)",
    )
    parser.add_argument(
        "--estimate-noise",
        type=float,
        default=0.0,
        help="standard deviation (s) of the start estimates' error",
    )
    parser.add_argument("--oracle", action="store_true", help="add the queue oracle")
    parser.add_argument("--bound", action="store_true", help="what the bound allows")
    for flag, (help_text, _) in EXPERIMENTS.items():
        parser.add_argument(f"--{flag}", action="store_true", help=help_text)
    parser.add_argument(
        "--array-stats",
        action="store_true",
        help="replay nothing: how many placed jobs have a job array with an ended element",
    )
    args = parser.parse_args()
    variants = [
        variant
        for flag, (_, flag_variants) in EXPERIMENTS.items()
        if getattr(args, flag.replace("-", "_"))
        for variant in flag_variants
    ]
    if args.true_queued and args.true_running:
        variants.append(("true-both", {"true_queued": True, "true_running": True}))
    baselines = BASELINES + (("queue-oracle", BLIND) if args.oracle else ())
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
        if args.array_stats:
            print(f"{title:9s} {array_stats(trace)}", flush=True)
            continue
        for share in shares:
            capacity = int(trace.catalog_bytes() * share)
            started = time.perf_counter()
            model = {"backfill_window": args.backfill_window, "estimate_noise": args.estimate_noise}
            report = simulate(trace, SimConfig(capacity, **model), baselines, bound=args.bound)
            slow = {p: report.results[p].slow_bytes for p in baselines}
            extra = ""
            if args.oracle:
                oracle = report.results["queue-oracle"]
                blind = report.results[BLIND]
                extra += (f" | oracle {oracle.slow_bytes / 1e12:8.1f} TB"
                          f" oracle/future-bytes {slow['queue-oracle'] / slow['future-bytes']:.3f}"
                          f" ({oracle.seconds:.0f}s)"
                          f" | blind {blind.slow_bytes / 1e12:8.1f} TB"
                          f" blind/oracle {slow[BLIND] / slow['queue-oracle']:.3f}"
                          f" ({blind.seconds:.0f}s)"
                          f" | future-bytes {slow['future-bytes'] / 1e12:8.1f} TB")  # fmt: skip
                # The same planner told the whole future (jobs not yet submitted too):
                # what is left against future-bytes is not information.
                whole = simulate(trace, SimConfig(capacity, **model), {"all": _whole_future},
                                 bound=False).results["all"].slow_bytes  # fmt: skip
                extra += f" | whole-future planner/future-bytes {whole / slow['future-bytes']:.3f}"
            if args.bound:
                from scratch_stage.simulate.targets import attainability

                for a in attainability(report):
                    extra += f" | best vs {a.baseline} {a.best:+.1%}"
                    extra += " out of reach" if a.out_of_reach else ""
                extra += f" | bound {report.bound.lower / 1e12:.1f} TB" if report.bound else ""
            baselines_seconds = time.perf_counter() - started
            for cap in caps:
                started = time.perf_counter()
                config = SimConfig(capacity, **model)
                if cap is not None:
                    config = SimConfig(capacity, **model, unplaced_cap=cap)
                ours = simulate(trace, config, ("ours",), bound=False).results["ours"].slow_bytes
                label = "" if cap is None else f" cap {cap:g}"
                if args.oracle:
                    extra_ours = (f" | ours/oracle {ours / slow['queue-oracle']:.3f}"
                                  f" | ours/blind {ours / slow[BLIND]:.3f}")  # fmt: skip
                else:
                    extra_ours = ""
                for variant, knobs in variants:
                    variant_started = time.perf_counter()
                    other = simulate(trace, replace(config, **knobs), ("ours",),
                                     bound=False).results["ours"].slow_bytes  # fmt: skip
                    extra_ours += (f" | {variant} {other / 1e12:8.1f} TB"
                                   f" {other / ours - 1:+.1%} vs ours"
                                   f" ({time.perf_counter() - variant_started:.0f}s)")  # fmt: skip
                    started += time.perf_counter() - variant_started
                print(
                    f"{title:9s} {share:4.0%}{label} ours {ours / 1e12:8.1f} TB"
                    f" | fewer than lru {1 - ours / slow['lru']:+.1%}"
                    f" | than scratch_manager {1 - ours / slow['scratch_manager']:+.1%}"
                    f" | ours/future-bytes {ours / slow['future-bytes']:.3f}"
                    f"{extra_ours}{extra}"
                    f" | {time.perf_counter() - started:.0f}s (baselines {baselines_seconds:.0f}s)",
                    flush=True,
                )


def array_stats(trace: Trace) -> str:
    """How many of the jobs placed on a node (backfill's default hour ahead) are elements
    of a job array, and have a sibling that ended before they start, on their node or on
    any node: count (share of the placed jobs' bytes)."""
    work = split_by_node(trace, SimConfig(capacity=1))
    ends: dict[str, list[float]] = {}  # array -> its node jobs' ends, on any node
    here: dict[tuple[str, str], list[float]] = {}  # (node, array) -> ends there
    for node in work.values():
        for job in node.jobs:
            if job.array is not None:
                ends.setdefault(job.array, []).append(job.end)
                here.setdefault((node.name, job.array), []).append(job.end)
    counts = [0, 0, 0, 0]  # placed, elements, sibling ended here, on any node
    amounts = [0.0, 0.0, 0.0, 0.0]
    for node in work.values():
        for p in node.pending:
            found = (
                True,
                p.array is not None,
                p.array is not None and any(e < p.start for e in here[(node.name, p.array)]),
                p.array is not None and any(e < p.start for e in ends[p.array]),
            )
            for k, hit in enumerate(found):
                counts[k] += hit
                amounts[k] += sum(p.reads) if hit else 0.0
    labels = ("placed", "array elements", "a sibling ended here", "on any node")
    return " | ".join(
        f"{label} {c} ({a / amounts[0]:.1%})" for label, c, a in zip(labels, counts, amounts)
    )


def _whole_future() -> Any:
    from scratch_stage.simulate.policies import QueueOracle

    return QueueOracle(submitted_only=False)


if __name__ == "__main__":
    main()
