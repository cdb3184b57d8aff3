"""A rebalance pass's report: what it saw, decided and did; kept for `status`.

The JSON form is what `rebalance --json` prints and what `statedir/last-rebalance.json`
holds (with the time of the pass under `at`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from scratch_stage.host.logger import get_logger
from scratch_stage.policy.planner import Plan

log = get_logger(__name__)

LAST_REPORT = "last-rebalance.json"

# What a pass did to one dataset (or, for `features`, to the node).
DoneAction = Literal["copied", "already-cached", "evicted", "unmounted", "remounted", "features"]
# The step of a pass that failed.
FailedStep = Literal["stage", "evict", "unmount", "remount", "features"]


@dataclass(frozen=True)
class DoneRecord:
    """One thing a pass did: ACTION on DATASET (None: the node), DETAIL its cause or result
    in a few words (the plan's reason, the mount made, the features published)."""

    action: DoneAction
    dataset: str | None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "dataset": self.dataset, "detail": self.detail}


@dataclass(frozen=True)
class FailedRecord:
    """One step of a pass that failed: STEP for DATASET (None: the node), and the ERROR."""

    step: FailedStep
    dataset: str | None
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "dataset": self.dataset, "error": self.error}


class Figures(NamedTuple):
    """A dataset's figures in the last pass: heat (bytes/s), demand (expected bytes queued
    jobs will read),
    value (slow bytes a cached copy saves over the horizon; None: not valued)."""

    heat: float
    demand: float
    value: float | None


@dataclass
class PassReport:
    """What a pass saw (heat, demand, capacity), decided (the plan) and did."""

    plan: Plan
    heat: Mapping[str, float]
    demand: Mapping[str, float]
    capacity: int
    done: list[DoneRecord] = field(default_factory=list)
    failed: list[FailedRecord] = field(default_factory=list)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        decisions = {
            n: {"action": d.action, "value": d.value, "reason": d.reason,
                "heat": self.heat.get(n, 0.0), "demand": self.demand.get(n, 0.0)}
            for n, d in sorted(self.plan.decisions.items())
        }  # fmt: skip
        return {
            "capacity_bytes": self.capacity,
            "used_after_bytes": self.plan.used_after,
            "evict": list(self.plan.evict),
            "stage": list(self.plan.stage),
            "unfit_pins": list(self.plan.unfit_pins),
            "method": self.plan.method,
            "decisions": decisions,
            "done": [d.to_json() for d in self.done],
            "failed": [f.to_json() for f in self.failed],
            "skipped": self.skipped,
        }


def skipped_report(capacity: int, why: str) -> PassReport:
    """The report of a pass that did not run (another rebalance holds the node)."""
    return PassReport(Plan((), (), {}, method="none"), {}, {}, capacity, skipped=why)


def save_report(statedir: str | os.PathLike[str], report: PassReport, now: float) -> None:
    """Keep the pass's figures in STATEDIR for `status`; a failure is only logged."""
    statedir = Path(statedir)
    from scratch_stage.host.state import write_atomically

    data = {"at": now, **report.to_json()}
    try:
        write_atomically(statedir / LAST_REPORT, json.dumps(data).encode())
    except OSError as e:
        log.warning("cannot save the rebalance report: %s", e)


def read_last_report(statedir: str | os.PathLike[str]) -> dict[str, Any]:
    """The last pass's report in STATEDIR, or an empty one."""
    try:
        data = json.loads((Path(statedir) / LAST_REPORT).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def last_figures(statedir: str | os.PathLike[str]) -> dict[str, Figures]:
    """Each dataset's figures in the last pass's saved report; malformed entries dropped."""
    figures: dict[str, Figures] = {}
    decisions = read_last_report(statedir).get("decisions")
    if not isinstance(decisions, dict):
        return figures
    for name, d in decisions.items():
        if not isinstance(d, dict):
            continue
        heat, demand = _number(d.get("heat", 0.0)), _number(d.get("demand", 0.0))
        if heat is not None and demand is not None:
            figures[str(name)] = Figures(heat, demand, _number(d.get("value")))
    return figures


def _number(x: object) -> float | None:
    """X as a float if it is a JSON number, else None."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return None
