"""What issue 12's targets allow on a workload: which the lower bound proves out of reach.

The bound with copy time is at most the slow bytes of every schedule the replay can run
(docs/simulate.md), online or offline. So if bound >= (1 - share) x X's slow bytes, no
policy can read SHARE fewer slow bytes than X: the target is out of reach there, whatever
the policy. Below that the bound proves nothing either way (it is a relaxation): the
target is only shown attainable when some replayed policy met it. A target against the
bound itself ("<= 1.10x the bound") cannot be proven out of reach this way: the bound's
relaxation gap is not known exactly. Every replayed policy's cost is a real schedule's,
so the optimum lies between the bound and the cheapest of them (`optimum_range`;
`mip-schedule` is replayed to make that range narrow).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scratch_stage.simulate.metrics import Report

# Issue 12: `ours` reads at least this share fewer slow bytes than each baseline.
FEWER_THAN = {"lru": 0.25, "scratch_manager": 0.40}


@dataclass(frozen=True)
class Attainable:
    """Against BASELINE: the best any policy could do, (bound - X) / X, and what follows."""

    baseline: str
    target: float  # the share fewer asked for (0.25: -25 %)
    best: float  # (bound - X) / X: no policy reads less than this, relative to X
    out_of_reach: bool  # proven: bound >= (1 - target) X
    met_by: tuple[str, ...] = ()  # replayed policies that met it (so it is attainable)

    def describe(self) -> str:
        head = f"vs {self.baseline}: best possible {self.best:+.1%}; target -{self.target:.0%}"
        return f"{head}: {self.verdict()}"

    def verdict(self) -> str:
        if self.out_of_reach:
            return "out of reach for every policy (proven by the bound)"
        if self.met_by:
            return f"attainable (met by {', '.join(self.met_by)})"
        return "not excluded by the bound, met by no policy replayed"

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline, "target_fewer": self.target, "best_possible": self.best,
            "out_of_reach": self.out_of_reach, "met_by": list(self.met_by),
        }  # fmt: skip


def attainability(report: Report, targets: Mapping[str, float] = FEWER_THAN) -> list[Attainable]:
    """For each baseline of TARGETS replayed in REPORT (with a positive bound): the best
    possible against it, whether the bound proves the target out of reach (the bound
    above (1 - share) x its slow bytes: reading exactly that much would meet it), and the
    replayed policies that met it."""
    bound = report.bound
    if bound is None or bound.lower <= 0:
        return []
    out = []
    for baseline, share in targets.items():
        result = report.results.get(baseline)
        if result is None or result.slow_bytes <= 0:
            continue
        theirs = result.slow_bytes
        goal = (1 - share) * theirs
        met = tuple(
            name for name, r in report.results.items() if name != baseline and r.slow_bytes <= goal
        )
        out.append(Attainable(baseline, share, (bound.lower - theirs) / theirs,
                              bound.lower > goal, met))  # fmt: skip
    return out


def optimum_range(report: Report) -> tuple[str, float] | None:
    """The cheapest replayed policy and its slow bytes over the bound: the optimum lies
    between 1 and that many times the bound (None without a positive bound)."""
    bound = report.bound
    if bound is None or bound.lower <= 0 or not report.results:
        return None
    name = min(report.results, key=lambda n: (report.results[n].slow_bytes, n))
    return name, report.results[name].slow_bytes / bound.lower


def format_attainability(report: Report) -> str:
    """Lines for the simulate command's table ('' when there is nothing to say)."""
    found = attainability(report)
    if not found:
        return ""
    lines = ["what the bound allows (issue 12's targets: fewer slow bytes than a baseline):"]
    lines += [f"  {a.describe()}" for a in found]
    cheapest = optimum_range(report)
    if cheapest is not None:
        name, ratio = cheapest
        lines.append(f"  the optimum lies between the bound and {ratio:.2f}x it (the cheapest"
                     f" schedule replayed: {name}); <= 1.10x the bound cannot be proven out of"
                     " reach")  # fmt: skip
    return "\n".join(lines)
