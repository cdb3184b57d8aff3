"""Bytes a queued job is expected to read from a dataset: one function for the node's
demand (`slurm.demand.node_demand`) and the simulator's (docs/planner.md, "Demand")."""

from __future__ import annotations

import math

# The most that the queued jobs of one dataset that backfill has not placed count for on
# a node, together: this many jobs sure to run there (docs/planner.md, "Demand"). Their
# weights (each its share of its partitions' nodes) are scaled down to sum to it. 2 was
# as good as no cap on every simulated workload, 1 up to 1.6 % worse (docs/benchmarks.md).
UNPLACED_CAP = 2.0


def expected_read(
    size: float, limit: float | None, per_job: float | None, read_rate: float
) -> float:
    """Bytes a queued job is expected to read from a dataset of SIZE bytes (pure).

    PER_JOB is what a job of this dataset read on this node on average (its history),
    None without history: then one pass (SIZE). Either way at most what the job can read
    within its time limit LIMIT (seconds; None: no limit, no cap) at READ_RATE bytes/s.
    """
    expected = size if per_job is None else per_job
    if limit is not None:
        expected = min(expected, read_rate * limit)
    return expected if expected > 0 else 0.0


def wait_discount(wait: float, land: float, horizon: float) -> float:
    """The weight of a job expected to start WAIT seconds from now, for a dataset whose
    copy would take LAND seconds (0: cached or in flight): exp(-max(0, WAIT - LAND) /
    HORIZON) (pure). The wait counts from when the copy must start to land in time, not
    from now: a job due in 3 h on an image taking 2.5 h to copy weighs what a job due in
    30 min weighs on one cached (docs/planner.md, "Demand")."""
    return math.exp(-max(0.0, wait - land) / horizon)


def after_landing(start: float, limit: float | None, land: float) -> float:
    """The share of a job's reads that come after a copy lands at LAND (pure).

    The job starts at START and reads evenly over its time limit LIMIT (seconds; None:
    unknown, its reads counted at its start): all of them if it starts after LAND, none
    if its limit has run out by then, else the share of its limit left at LAND.
    """
    if land <= start:
        return 1.0
    if limit is None or limit <= 0 or start + limit <= land:
        return 0.0
    return (start + limit - land) / limit


# A running job's time limit counts at most this far ahead (seconds): a limit of a year
# weighs what a limit of a day does (docs/planner.md, "Running jobs").
RUNNING_HORIZON_CAP = 86400.0


def running_read(rate: float, now: float, start: float, limit: float | None, land: float) -> float:
    """Bytes a job running since START is expected to read after a copy lands LAND
    seconds from NOW (pure).

    RATE is what the job reads per second (the dataset's heat over its running jobs). It
    ends, with no other knowledge, at a time uniform between NOW and the end of its time
    LIMIT (seconds; counted at most RUNNING_HORIZON_CAP ahead of NOW; None: unknown, 0):
    the expected reads after the landing are RATE x (end - landing)^2 / (2 (end - NOW)).
    """
    if limit is None or rate <= 0:
        return 0.0
    end = min(start + limit, now + RUNNING_HORIZON_CAP)
    after = now + max(0.0, land)
    if after >= end:
        return 0.0
    return rate * (end - after) ** 2 / (2.0 * (end - now))
