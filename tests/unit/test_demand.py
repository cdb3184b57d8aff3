"""Demand: squeue/sinfo parsing, per-node weighting, the published file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scratch_stage.slurm.demand import (
    PendingJob,
    Snapshot,
    node_demand,
    parse_sinfo,
    parse_slurm_time,
    parse_squeue,
    read_demand_file,
)

NOW = 1_800_000_000.0
H = 3600.0


def job(job_id: str, datasets: tuple[str, ...], *, start: float | None = NOW,
        sched: tuple[str, ...] = (), partitions: tuple[str, ...] = ("debug",),
        nodes: int = 1) -> PendingJob:  # fmt: skip
    return PendingJob(job_id, partitions, 100, nodes, start, sched, datasets)


PARTITIONS = {"debug": ("n1", "n2", "n3", "n4"), "gpu": ("g1",)}


def test_parse_squeue_keeps_jobs_with_datasets_and_pipes_in_comments() -> None:
    text = (
        "12|debug|4294901757|1|2026-11-21T10:00:00|n[1-2]|datasets:imagenet\n"
        "13|debug,gpu|100|2|N/A|(null)|sweep a|b datasets:coco,imagenet extra\n"
        "14|debug|100|1|N/A|(null)|no datasets here\n"
        "garbage line\n"
    )
    jobs = parse_squeue(text)
    assert [j.job_id for j in jobs] == ["12", "13"]
    assert jobs[0].sched_nodes == ("n1", "n2")
    assert jobs[0].start == parse_slurm_time("2026-11-21T10:00:00")
    assert jobs[1].partitions == ("debug", "gpu")
    assert jobs[1].datasets == ("coco", "imagenet")
    assert jobs[1].start is None and jobs[1].nodes == 2


def test_parse_sinfo_merges_lines_of_one_partition() -> None:
    text = "debug|n[1-2]\ndebug|n3\ngpu|g1\n"
    assert parse_sinfo(text) == {"debug": ("n1", "n2", "n3"), "gpu": ("g1",)}


def test_job_scheduled_here_outweighs_partition_share_and_elsewhere_counts_zero() -> None:
    snap = Snapshot(
        (job("1", ("a",), sched=("n1",)), job("2", ("b",)), job("3", ("c",), sched=("n2",))),
        PARTITIONS, NOW,
    )  # fmt: skip
    demand = node_demand(snap, "n1", now=NOW, horizon=H)
    assert demand["a"] == 2.0
    assert demand["b"] == pytest.approx(0.25)
    assert "c" not in demand


EIGHT = {"debug": tuple(f"n{i}" for i in range(1, 9))}


def test_a_planned_many_node_job_counts_on_its_planned_nodes_and_no_other() -> None:
    planned = job("1", ("a",), nodes=4, sched=("n2", "n3", "n5", "n8"))
    unplanned = job("2", ("b",), nodes=4)
    snap = Snapshot((planned, unplanned), EIGHT, NOW)
    demand = {n: node_demand(snap, n, now=NOW, horizon=H) for n in EIGHT["debug"]}
    assert {n for n, d in demand.items() if d.get("a", 0) > 0} == {"n2", "n3", "n5", "n8"}
    assert len({demand[n]["a"] for n in ("n2", "n3", "n5", "n8")}) == 1  # equally on each
    # not yet planned: half the partition's nodes will run it, so half a job on each
    assert all(d["b"] == pytest.approx(0.5) for d in demand.values())


def test_peers_list_the_planned_nodes_of_each_dataset() -> None:
    snap = Snapshot(
        (job("1", ("a", "b"), nodes=2, sched=("n10", "n2")), job("2", ("a",), sched=("n3",)),
         job("3", ("c",), nodes=4), job("4", ("a",), sched=("n2",))),
        EIGHT, NOW,
    )  # fmt: skip
    assert snap.peers() == {"a": ("n2", "n3", "n10"), "b": ("n2", "n10")}  # c: not planned
    assert snap.peers_of("n2", "a") == ("n3", "n10")
    assert snap.peers_of("n4", "a") == ()  # n4 is not planned to read a
    assert snap.peers_of("n2", "c") == ()
    published = snap.to_json()
    assert published["peers"] == {"a": ["n2", "n3", "n10"], "b": ["n2", "n10"]}
    assert Snapshot.from_json(json.loads(json.dumps(published))) == snap


def test_sooner_jobs_weigh_more_and_other_partitions_not_at_all() -> None:
    snap = Snapshot(
        (job("1", ("a",), start=NOW + 60), job("2", ("b",), start=NOW + 3 * H),
         job("3", ("g",), partitions=("gpu",))),
        PARTITIONS, NOW,
    )  # fmt: skip
    demand = node_demand(snap, "n1", now=NOW, horizon=H)
    assert demand["a"] > demand["b"] > 0
    assert demand["b"] == pytest.approx(0.25 * math.exp(-3))
    assert "g" not in demand


def test_snapshot_round_trips_and_stale_or_bad_files_mean_no_demand(tmp_path: Path) -> None:
    snap = Snapshot((job("1", ("a",), sched=("n1",)),), PARTITIONS, NOW)
    path = tmp_path / "demand.json"
    path.write_text(json.dumps(snap.to_json()))
    assert read_demand_file(path, now=NOW + 10, max_age=300) == snap
    assert read_demand_file(path, now=NOW + 301, max_age=300) is None
    path.write_text("{not json")
    assert read_demand_file(path, now=NOW, max_age=300) is None
    assert read_demand_file(tmp_path / "missing.json", now=NOW, max_age=300) is None


# --- recorded real output of Slurm 22.05.8 (tests/data/slurm-22.05/README.md) ---------

RECORDED = Path(__file__).resolve().parent.parent / "data" / "slurm-22.05"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def test_recorded_squeue_after_backfill_schedules_jobs_here() -> None:
    jobs = parse_squeue(recorded("squeue-pd-o.txt"))
    assert [(j.job_id, j.datasets) for j in jobs] == [
        ("3", ("imagenet",)),
        ("4", ("coco", "imagenet")),
    ]  # job 5 has no comment: "(null)"
    assert all(j.sched_nodes == ("localhost",) and j.start is not None for j in jobs)
    assert jobs[0].priority == 4294901757
    snap = Snapshot(tuple(jobs), parse_sinfo(recorded("sinfo-o.txt")), jobs[0].start or 0)
    demand = node_demand(snap, "localhost", now=jobs[0].start or 0, horizon=H)
    assert demand["imagenet"] > demand["coco"] > 0
    assert node_demand(snap, "othernode", now=0, horizon=H) == {}


def test_recorded_squeue_before_backfill_counts_by_partition() -> None:
    jobs = parse_squeue(recorded("squeue-pd-o-before-backfill.txt"))
    assert all(j.sched_nodes == () and j.start is None for j in jobs)
    snap = Snapshot(tuple(jobs), parse_sinfo(recorded("sinfo-o.txt")), NOW)
    demand = node_demand(snap, "localhost", now=NOW, horizon=H)
    assert demand["imagenet"] == pytest.approx(2 * math.exp(-1))


def test_recorded_pipe_in_comment_and_empty_output() -> None:
    jobs = parse_squeue(recorded("squeue-pd-o-pipe-comment.txt"))
    assert [j.job_id for j in jobs] == ["3", "4"]  # "datasets:imagenet|not" is malformed
    assert parse_squeue(recorded("squeue-pd-o-empty.txt")) == []
    assert parse_squeue(recorded("squeue-pd-O.txt")) == parse_squeue(recorded("squeue-pd-o.txt"))
