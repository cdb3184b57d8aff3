"""Small traces shared by the simulator tests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, TypeVar

from scratch_stage.simulate.engine import Policy
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Job, Trace

P = TypeVar("P", bound=Policy)

GB = 10**9
# A real HPC cluster's catalog: the dataset sizes the generated workloads draw from.
SIZES = Path(__file__).resolve().parents[2] / "tests/data/dataset-sizes.csv"


def tiny_trace() -> Trace:
    """One node, dataset a (100 GB) read 2 passes by job 1 and once by job 2."""
    return Trace(
        {"a": 100 * GB, "big": 400 * GB},
        (
            Job("1", 0.0, 1000.0, 4600.0, ("n1",), {"a": 200 * GB}),
            Job("2", 0.0, 5000.0, 8600.0, ("n1",), {"a": 100 * GB}),
        ),
    )


def random_trace(seed: int, *, datasets: int = 3, jobs: int = 4, nodes: int = 1) -> Trace:
    """A small random trace: sizes 1-4 units of 10 GB, passes 0.5-4, overlapping jobs."""
    rng = random.Random(seed)
    sizes = {f"d{i}": rng.randint(1, 4) * 10 * GB for i in range(datasets)}
    out = []
    for i in range(jobs):
        start = rng.uniform(0, 20_000)
        name = rng.choice(sorted(sizes))
        reads = {name: int(sizes[name] * rng.uniform(0.5, 4))}
        submit = max(0.0, start - rng.uniform(0, 7200))
        node = f"n{rng.randrange(nodes)}"
        out.append(Job(str(i), submit, start, start + rng.uniform(600, 9000), (node,), reads))
    out.sort(key=lambda j: (j.start, j.id))
    return Trace(sizes, tuple(out))


def replay_recorded(trace: Trace, config: SimConfig, make: Callable[[], P]) -> list[P]:
    """Replay TRACE under the name `ours` with a policy MAKE builds for each node (one
    that records what it sees); the policies, to read their records."""
    made: list[P] = []

    def factory() -> P:
        made.append(make())
        return made[-1]

    simulate(trace, config, {"ours": factory}, bound=False)
    return made
