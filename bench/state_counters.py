"""What the counters cost every state transaction (the prolog takes one or two).

A transaction parses state.json, decodes it, encodes it and compares the bytes. This times
that round trip for a busy node's state (32 jobs, 64 cached copies, heat for 64 datasets)
with no counters (the baseline, as before counters existed) and with counters for N
datasets (all ten counters set, a loop-device mark per dataset), interleaved, and prints
the median of each and its ratio to the baseline. Pure Python, no root needed. Run:
  .venv/bin/python bench/state_counters.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.counters import DATASET_FIELDS, REFUSAL_REASONS, Counters, Mark
from scratch_stage.host.heat import HeatMemory
from scratch_stage.host.state import CachedCopy, Hold, NodeState


def busy_state(counted: int) -> NodeState:
    state = NodeState()
    for j in range(32):
        state.jobs[str(1000 + j)] = Hold((f"ds{j % 64}", f"ds{(j + 7) % 64}"), "user", 1e9)
    for d in range(64):
        fp = Fingerprint(size=2**34 + d, mtime_ns=10**18 + d, inode=1000 + d, ctime_ns=10**18)
        state.cached[f"ds{d}"] = CachedCopy(fp, 1e9, 5000 + d)
    state.heat = HeatMemory(
        {f"loop{d}": (f"/data/ds{d}.sqfs", 10**9 + d) for d in range(64)},
        {f"ds{d}": tuple((1e9 + 60 * i, 10**9 * i) for i in range(10)) for d in range(64)},
    )
    counters = Counters()
    for d in range(counted):
        for i, field in enumerate(DATASET_FIELDS):
            counters.add(f"ds{d}", field, 10**12 + i if "bytes" in field else 17 + i)
        counters.attached(f"loop{d}", Mark(str(100 + d), f"/data/ds{d}.sqfs", 10**9 + d))
    for reason in REFUSAL_REASONS:
        counters.refusals[reason] = 3
    counters.record_rebalance(end=1e9, duration=0.25, outcome="ok")
    state.counters = counters
    return state


def round_trip(raw: bytes) -> float:
    """Seconds for what a transaction does with the bytes: parse, decode, encode, compare."""
    start = time.perf_counter()
    state = NodeState.from_json(json.loads(raw))
    encoded = json.dumps(state.to_json(), sort_keys=True).encode()
    assert encoded == raw
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    sizes = (0, 64, 512)
    raws = {}
    for n in sizes:
        state = busy_state(n)
        if n == 0:
            state.counters = Counters()  # the baseline: no counters at all
        raws[n] = json.dumps(state.to_json(), sort_keys=True).encode()
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(args.rounds):
        for n in sizes:  # interleaved: load changes hit every variant alike
            times[n].append(round_trip(raws[n]))
    base = statistics.median(times[0])
    print(f"{'counted datasets':>16}  {'state.json':>10}  {'median':>9}  ratio")
    for n in sizes:
        median = statistics.median(times[n])
        print(f"{n:>16}  {len(raws[n]):>9}B  {median * 1000:>7.3f}ms  {median / base:.2f}x")


if __name__ == "__main__":
    main()
