"""Counters: reads attributed by layer and attachment, JSON round trip, bad input refused."""

from __future__ import annotations

import json

import pytest

from scratch_stage.host.counters import (
    SECTOR_BYTES,
    Counters,
    Mark,
    count_reads,
    layer_of_path,
)
from scratch_stage.host.heat import dataset_of_path
from scratch_stage.host.state import NodeState

dataset_of = dataset_of_path("/slow", "/fast")
layer_of = layer_of_path("/slow", "/fast")


def sample(counters: Counters, sectors: dict[str, int], backings: dict[str, str],
           seqs: dict[str, str]) -> dict[str, dict[str, int]]:  # fmt: skip
    return count_reads(counters, sectors, backings, seqs, dataset_of, layer_of)


def test_reads_counted_per_layer_from_the_second_sample() -> None:
    c = Counters()
    backings = {"loop0": "/slow/a.sqfs", "loop1": "/fast/a.sqfs", "loop2": "/elsewhere/x.sqfs"}
    seqs = {"loop0": "10", "loop1": "11", "loop2": "12"}
    assert sample(c, {"loop0": 100, "loop1": 5, "loop2": 9}, backings, seqs) == {}
    assert "loop2" not in c.devices  # not ours
    added = sample(c, {"loop0": 150, "loop1": 25, "loop2": 99}, backings, seqs)
    assert added == {"a": {"slow": 50 * SECTOR_BYTES, "cached": 20 * SECTOR_BYTES}}
    assert c.get("a", "read_slow_bytes") == 50 * SECTOR_BYTES
    assert c.get("a", "read_cached_bytes") == 20 * SECTOR_BYTES


def test_attach_mark_makes_the_first_sample_count() -> None:
    c = Counters()
    c.attached("loop3", Mark("7", "/slow/b.sqfs", 1000))  # old attachment's count
    sample(c, {"loop3": 1400}, {"loop3": "/slow/b.sqfs"}, {"loop3": "7"})
    assert c.get("b", "read_slow_bytes") == 400 * SECTOR_BYTES


def test_reused_device_never_carries_its_old_count() -> None:
    c = Counters()
    sample(c, {"loop0": 100}, {"loop0": "/slow/a.sqfs"}, {"loop0": "1"})
    sample(c, {"loop0": 300}, {"loop0": "/slow/a.sqfs"}, {"loop0": "1"})
    assert c.get("a", "read_slow_bytes") == 200 * SECTOR_BYTES
    # detached and attached again to another image: the kernel keeps counting from 300
    sample(c, {"loop0": 900}, {"loop0": "/fast/b.sqfs"}, {"loop0": "2"})
    assert c.get("b", "read_cached_bytes") == 0
    assert c.get("a", "read_slow_bytes") == 200 * SECTOR_BYTES
    # attached again to the same image (same backing, new diskseq): not counted either
    sample(c, {"loop0": 1900}, {"loop0": "/fast/b.sqfs"}, {"loop0": "3"})
    assert c.get("b", "read_cached_bytes") == 0
    sample(c, {"loop0": 2000}, {"loop0": "/fast/b.sqfs"}, {"loop0": "3"})
    assert c.get("b", "read_cached_bytes") == 100 * SECTOR_BYTES


def test_without_diskseq_the_backing_file_tells_attachments_apart() -> None:
    c = Counters()
    sample(c, {"loop0": 100}, {"loop0": "/slow/a.sqfs"}, {})
    sample(c, {"loop0": 500}, {"loop0": "/slow/b.sqfs"}, {})
    assert c.datasets == {}
    sample(c, {"loop0": 50}, {"loop0": "/slow/b.sqfs"}, {})  # went backwards: a new device
    assert c.datasets == {}


def test_detached_devices_are_forgotten() -> None:
    c = Counters()
    sample(c, {"loop0": 1, "loop1": 1}, {"loop0": "/slow/a.sqfs", "loop1": "/slow/b.sqfs"}, {})
    sample(c, {"loop0": 2}, {"loop0": "/slow/a.sqfs"}, {})
    assert set(c.devices) == {"loop0"}


def test_round_trip_through_the_state_file() -> None:
    state = NodeState()
    state.counters.add("a", "jobs_cached")
    state.counters.add("a", "copy_seconds", 1.5)
    state.counters.refused("forbidden")
    state.counters.attached("loop1", Mark("4", "/fast/a.sqfs", 12))
    state.counters.record_rebalance(end=100.0, duration=0.25, outcome="ok")
    state.counters.record_rebalance(end=160.0, duration=0.5, outcome="failed")
    back = NodeState.from_json(json.loads(json.dumps(state.to_json())))
    assert back == state
    assert back.counters.rebalance == {
        "time": 160.0, "duration": 0.5, "outcome": "failed", "passes": 2
    }  # fmt: skip
    assert back.counters.refusals == {"forbidden": 1}


def test_older_state_without_counters_reads_as_empty() -> None:
    data = NodeState().to_json()
    del data["counters"]
    assert NodeState.from_json(data).counters == Counters()


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"datasets": {"a": {"jobs_cached": 1}}},
        {"datasets": {"a": [1, 2]}},
        {"datasets": {"a": ["many"] * 10}},
        {"datasets": {"a": [True] * 10}},
        {"devices": {"loop0": ["1", "/x", "many"]}},
        {"devices": {"loop0": ["1"]}},
    ],
)
def test_malformed_counters_make_the_state_malformed(bad: object) -> None:
    data = NodeState().to_json()
    data["counters"] = bad
    with pytest.raises(ValueError, match="malformed state"):
        NodeState.from_json(data)


def test_rows_of_another_version_are_mapped_by_field_name() -> None:
    c = Counters.from_json({"fields": ["bogus", "jobs_cached"], "datasets": {"a": [1, 2]}})
    assert c.get("a", "jobs_cached") == 2 and c.values("a")["jobs_slow"] == 0
    assert c.to_json()["datasets"]["a"] == [2 if f == "jobs_cached" else 0
                                             for f in c.to_json()["fields"]]  # fmt: skip


def test_forget_drops_a_dataset_row() -> None:
    c = Counters()
    c.add("a", "evictions")
    c.add("b", "evictions")
    c.forget({"a", "zzz"})
    assert set(c.datasets) == {"b"}
