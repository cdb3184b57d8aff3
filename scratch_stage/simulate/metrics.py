"""What a replay measured per policy, summed over nodes; the table and the JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from scratch_stage.simulate.bound import Bound
from scratch_stage.simulate.node import Costs


@dataclass
class PolicyResult(Costs):
    """One policy over the whole trace: its nodes' costs summed (peak: the largest)."""

    policy: str = ""
    seconds: float = 0.0

    @property
    def ssd_share(self) -> float:
        """Share of job-read bytes served from the SSD."""
        if not self.read_bytes:
            return 0.0
        return max(0.0, 1.0 - self.slow_read_bytes / self.read_bytes)  # float rounding

    def add(self, costs: Costs) -> None:
        for f in fields(Costs):
            mine, theirs = getattr(self, f.name), getattr(costs, f.name)
            if f.name in ("series", "spans"):
                mine.extend(theirs)
            elif f.name == "peak_used":
                self.peak_used = max(mine, theirs)
            else:
                setattr(self, f.name, mine + theirs)

    def cumulative(self) -> tuple[list[float], list[float]]:
        """Times and cumulative slow-storage bytes (for the plot)."""
        times, totals, running = [], [], 0.0
        for t, amount in sorted(self.series):
            running += amount
            times.append(t)
            totals.append(running)
        return times, totals

    def to_json(self, bound: Bound | None, instant: Bound | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "policy": self.policy,
            "slow_bytes": self.slow_bytes,
            "slow_read_bytes": self.slow_read_bytes,
            "copied_bytes": self.copied_bytes,
            "read_bytes": self.read_bytes,
            "ssd_share": self.ssd_share,
            "copies": self.copies,
            "evictions": self.evictions,
            "refused_copies": self.refused_copies,
            "slow_read_seconds": self.slow_read_seconds,
            "waited_seconds": self.waited_seconds,
            "peak_used_bytes": self.peak_used,
            "decisions": self.decisions,
            "seconds": self.seconds,
        }
        if bound is not None and bound.lower > 0:
            data["ratio_to_bound"] = self.slow_bytes / bound.lower
        if instant is not None and instant.lower > 0:
            data["ratio_to_instant_bound"] = self.slow_bytes / instant.lower
        return data


@dataclass
class Report:
    """Every policy's result, the bounds, and what was replayed.

    BOUND accounts for copy time; INSTANT_BOUND is the relaxation with instant copies
    (docs/simulate.md), reported beside it."""

    results: Mapping[str, PolicyResult]
    bound: Bound | None
    jobs: int
    nodes: int
    capacity: int
    catalog_bytes: int
    bound_seconds: float = 0.0
    instant_bound: Bound | None = None

    def to_json(self) -> dict[str, Any]:
        bound = None
        if self.bound is not None:
            bound = {
                "lower": self.bound.lower, "relaxation_upper": self.bound.upper,
                "iterations": self.bound.iterations, "seconds": self.bound_seconds,
            }  # fmt: skip
            if self.instant_bound is not None:
                bound["instant_copies_lower"] = self.instant_bound.lower
        return {
            "jobs": self.jobs,
            "nodes": self.nodes,
            "capacity_bytes": self.capacity,
            "catalog_bytes": self.catalog_bytes,
            "bound": bound,
            "policies": [r.to_json(self.bound, self.instant_bound) for r in self.results.values()],
        }


COLUMNS = ("policy", "slow TB", "x bound", "SSD share", "copied TB", "copies", "evictions",
           "slow-read h", "wait h", "decisions", "time s")  # fmt: skip


def format_table(report: Report) -> str:
    """A fixed-width table, one row per policy, then the bound."""
    rows = [list(COLUMNS)]
    rows.extend(_row(r, report.bound) for r in report.results.values())
    if report.bound is not None:
        b = report.bound
        rows.append(["lower bound", f"{b.lower / 1e12:.2f}", "1.00", "", "", "", "", "", "",
                     f"{b.iterations} it", f"{report.bound_seconds:.1f}"])  # fmt: skip
        if report.instant_bound is not None:
            i = report.instant_bound
            ratio = f"{i.lower / b.lower:.2f}" if b.lower > 0 else "-"
            rows.append(["bound, instant copies", f"{i.lower / 1e12:.2f}", ratio, "", "", "", "",
                         "", "", "", ""])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]  # fmt: skip
    head = (
        f"{report.jobs} jobs on {report.nodes} nodes, cache {report.capacity / 1e12:.2f} TB "
        f"per node ({report.capacity / max(report.catalog_bytes, 1):.1%} of the catalog)"
    )
    return "\n".join([head, *lines])  # fmt: skip


def _row(r: PolicyResult, bound: Bound | None) -> list[str]:
    ratio = f"{r.slow_bytes / bound.lower:.2f}" if bound is not None and bound.lower > 0 else "-"
    return [
        r.policy, f"{r.slow_bytes / 1e12:.2f}", ratio, f"{r.ssd_share:.1%}",
        f"{r.copied_bytes / 1e12:.2f}", str(r.copies), str(r.evictions),
        f"{r.slow_read_seconds / 3600:.0f}", f"{r.waited_seconds / 3600:.0f}",
        str(r.decisions), f"{r.seconds:.1f}",
    ]  # fmt: skip
