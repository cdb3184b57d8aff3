"""The pass report: its JSON, and last-rebalance.json kept for `status`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from scratch_stage.policy.planner import PlanInput, plan
from scratch_stage.policy.report import (
    LAST_REPORT,
    DoneRecord,
    FailedRecord,
    Figures,
    PassReport,
    last_figures,
    read_last_report,
    save_report,
    skipped_report,
)

MB = 1_000_000


def a_report() -> PassReport:
    node = PlanInput(sizes={"hot": 100 * MB, "cold": 50 * MB, "old": 10 * MB},
                     cached={"old": 10 * MB}, fresh=frozenset({"old"}),
                     blocked={"cold": "copy failed: backing off"})  # fmt: skip
    heat = {"hot": 1e6}
    demand = {"cold": 0.5}
    return PassReport(plan(node, heat, demand, 105 * MB), heat, demand, 105 * MB)


def test_json_has_every_decision_with_its_figures() -> None:
    data = a_report().to_json()
    assert data["stage"] == ["hot"] and data["evict"] == ["old"]
    assert data["used_after_bytes"] == 100 * MB and data["capacity_bytes"] == 105 * MB
    assert list(data["decisions"]) == ["cold", "hot", "old"]
    hot = data["decisions"]["hot"]
    assert hot["action"] == "stage" and hot["heat"] == 1e6 and hot["demand"] == 0.0
    assert hot["reason"].startswith("selected: value ")
    assert data["decisions"]["cold"] == {
        "action": "none", "value": data["decisions"]["cold"]["value"],
        "reason": "copy failed: backing off", "heat": 0.0, "demand": 0.5,
    }  # fmt: skip
    assert json.loads(json.dumps(data)) == data


def test_saved_report_is_read_back_with_its_time(tmp_path: Path) -> None:
    report = a_report()
    report.done.append(DoneRecord("evicted", "old", "not selected"))
    report.failed.append(FailedRecord("stage", "cold", "no space"))
    save_report(tmp_path, report, 1234.5)
    assert read_last_report(tmp_path) == {"at": 1234.5, **report.to_json()}
    assert not [p for p in tmp_path.iterdir() if p.name != LAST_REPORT]  # no temp file left


@pytest.mark.parametrize("content", [None, b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_missing_or_bad_report_reads_as_empty(tmp_path: Path, content: bytes | None) -> None:
    if content is not None:
        (tmp_path / LAST_REPORT).write_bytes(content)
    assert read_last_report(tmp_path) == {}


def test_unsavable_report_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="scratch_stage.policy.report"):
        save_report(tmp_path / "gone", a_report(), 1.0)
    assert ["cannot save the rebalance report" in r.getMessage() for r in caplog.records] == [True]


def test_skipped_report_says_why_and_plans_nothing() -> None:
    data = skipped_report(7, "another rebalance is running").to_json()
    assert data["skipped"] == "another rebalance is running"
    assert (data["evict"], data["stage"], data["decisions"], data["method"]) == ([], [], {}, "none")


def test_saved_records_are_objects_and_figures_read_back_typed(tmp_path: Path) -> None:
    report = a_report()
    report.done.append(DoneRecord("copied", "hot", "mounted cached copy over 1 layer(s)"))
    save_report(tmp_path, report, 1.0)
    data = read_last_report(tmp_path)
    assert data["done"] == [
        {"action": "copied", "dataset": "hot", "detail": "mounted cached copy over 1 layer(s)"}
    ]
    figures = last_figures(tmp_path)
    assert figures["hot"] == Figures(1e6, 0.0, report.plan.decisions["hot"].value)
    assert figures["cold"].demand == 0.5


@pytest.mark.parametrize(
    "decisions",
    [[1, 2], {"a": "x"}, {"a": {"heat": "hot"}}, {"a": {"heat": True, "demand": 0}}],
)
def test_malformed_figures_are_dropped(tmp_path: Path, decisions: object) -> None:
    (tmp_path / LAST_REPORT).write_text(json.dumps({"decisions": decisions}))
    assert last_figures(tmp_path) == {}
