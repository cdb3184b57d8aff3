from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from scratch_stage.host.events import EVENTS_FILE, KINDS, EventLog


@pytest.fixture
def events(tmp_path: Path) -> EventLog:
    return EventLog(tmp_path)


def test_emit_appends_one_json_line_per_event(events: EventLog, tmp_path: Path) -> None:
    before = time.time()
    events.emit("mount", "imagenet", job="17", detail="mounted slow copy")
    events.emit("recovered", cached=["a"], mounted=[])
    lines = (tmp_path / EVENTS_FILE).read_text().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["event"] == "mount"
    assert first["dataset"] == "imagenet"
    assert first["job"] == "17"
    assert before - 1 <= first["ts"] <= time.time() + 1
    assert "dataset" not in second
    assert second["cached"] == ["a"]


def test_tail_returns_the_last_events_in_order(events: EventLog) -> None:
    for i in range(10):
        events.emit("request", f"ds{i % 2}", job=str(i))
    assert [e["job"] for e in events.tail(3)] == ["7", "8", "9"]
    assert len(events.tail(100)) == 10


def test_tail_filters_by_dataset(events: EventLog) -> None:
    for i in range(10):
        events.emit("request", f"ds{i % 2}", job=str(i))
    events.emit("recovered")
    tail = events.tail(3, "ds0")
    assert [e["job"] for e in tail] == ["4", "6", "8"]
    assert all(e["dataset"] == "ds0" for e in tail)
    assert events.tail(5, "ds") == []


def test_dataset_names_with_dots_are_distinct(events: EventLog) -> None:
    events.emit("mount", "imagenet.v2")
    events.emit("mount", "imagenet")
    assert [e["dataset"] for e in events.tail(10, "imagenet")] == ["imagenet"]


def test_long_fields_are_truncated(events: EventLog, tmp_path: Path) -> None:
    events.emit("refused", "x", reason="$(rm -rf /)" * 1000, count=10**30)
    line = (tmp_path / EVENTS_FILE).read_text()
    assert len(line) < 600
    record = events.tail(1)[0]
    assert record["reason"].endswith("...")
    assert record["reason"].startswith("$(rm -rf /)")
    assert len(record["reason"]) == 203
    assert record["count"] == 10**30


def test_non_ascii_and_newlines_stay_on_one_line(events: EventLog, tmp_path: Path) -> None:
    events.emit("refused", "x", reason="line1\nline2 \u2603 \x1b[31m")
    raw = (tmp_path / EVENTS_FILE).read_bytes()
    assert raw.count(b"\n") == 1
    assert raw.isascii()
    assert events.tail(1)[0]["reason"] == "line1\nline2 \u2603 \x1b[31m"


def test_unknown_kind_is_a_programming_error(events: EventLog) -> None:
    with pytest.raises(AssertionError):
        events.emit("no-such-kind")
    assert "refused" in KINDS


def test_emit_failure_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events = EventLog(tmp_path / "missing-statedir")
    with caplog.at_level(logging.WARNING, logger="scratch_stage.host.events"):
        events.emit("mount", "imagenet")
    assert not (tmp_path / "missing-statedir").exists()
    assert any("cannot append to event log" in r.getMessage() for r in caplog.records)
    assert events.tail(10) == []


def test_tail_skips_corrupt_lines(events: EventLog, tmp_path: Path) -> None:
    events.emit("mount", "a")
    with open(tmp_path / EVENTS_FILE, "ab") as f:
        f.write(b'{"truncated": \n\xff\xfe garbage\n[1, 2]\n"string"\n')
    events.emit("unmount", "a")
    assert [e["event"] for e in events.tail(10)] == ["mount", "unmount"]


def test_tail_of_a_missing_log_is_empty(events: EventLog) -> None:
    assert events.tail(10) == []
