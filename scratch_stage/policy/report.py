"""A rebalance pass's report: what it saw, decided and did; kept for `status`.

The JSON form is what `rebalance --json` prints and what `statedir/last-rebalance.json`
holds (with the time of the pass under `at`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratch_stage.host.logger import get_logger
from scratch_stage.policy.planner import Plan

log = get_logger(__name__)

LAST_REPORT = "last-rebalance.json"


@dataclass
class PassReport:
    """What a pass saw (heat, demand, capacity), decided (the plan) and did."""

    plan: Plan
    heat: Mapping[str, float]
    demand: Mapping[str, float]
    capacity: int
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
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
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
        }


def skipped_report(capacity: int, why: str) -> PassReport:
    """The report of a pass that did not run (another rebalance holds the node)."""
    return PassReport(Plan((), (), {}, method="none"), {}, {}, capacity, skipped=why)


def save_report(statedir: Path, report: PassReport, now: float) -> None:
    """Keep the pass's figures in STATEDIR for `status`; a failure is only logged."""
    from scratch_stage.host.state import write_atomically

    data = {"at": now, **report.to_json()}
    try:
        write_atomically(statedir / LAST_REPORT, json.dumps(data).encode())
    except OSError as e:
        log.warning("cannot save the rebalance report: %s", e)


def read_last_report(statedir: Path) -> dict[str, Any]:
    """The last pass's report in STATEDIR, or an empty one."""
    try:
        data = json.loads((statedir / LAST_REPORT).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
