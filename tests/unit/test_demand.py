"""Demand: squeue/sinfo parsing, per-node weighting, the published file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scratch_stage.core.expected import UNPLACED_CAP
from scratch_stage.host.counters import Counters
from scratch_stage.slurm.demand import (
    PendingJob,
    Snapshot,
    history_per_job,
    node_demand,
    parse_running,
    parse_sinfo,
    parse_slurm_time,
    parse_squeue,
    parse_time_limit,
    read_demand_file,
    running_demand,
)

NOW = 1_800_000_000.0
H = 3600.0


def job(job_id: str, datasets: tuple[str, ...], *, start: float | None = NOW,
        sched: tuple[str, ...] = (), partitions: tuple[str, ...] = ("debug",),
        nodes: int = 1, limit: float | None = None) -> PendingJob:  # fmt: skip
    return PendingJob(job_id, partitions, 100, nodes, start, sched, datasets, limit)


PARTITIONS = {"debug": ("n1", "n2", "n3", "n4"), "gpu": ("g1",)}


def test_parse_squeue_keeps_jobs_with_datasets_and_pipes_in_comments() -> None:
    text = (
        "12|debug|4294901757|1|2026-11-21T10:00:00|n[1-2]|1:00:00|datasets:imagenet\n"
        "13|debug,gpu|100|2|N/A|(null)|UNLIMITED|sweep a|b datasets:coco,imagenet extra\n"
        "14|debug|100|1|N/A|(null)|5|no datasets here\n"
        "garbage line\n"
    )
    jobs = parse_squeue(text)
    assert [j.job_id for j in jobs] == ["12", "13"]
    assert jobs[0].time_limit == 3600.0 and jobs[1].time_limit is None
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
    assert demand["a"] == 1.0  # counted once: placed here is certain, not double
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
    with_running = Snapshot(snap.jobs, PARTITIONS, NOW, {"7": 3600.0, "8": None})
    path.write_text(json.dumps(with_running.to_json()))
    assert read_demand_file(path, now=NOW, max_age=300) == with_running
    older = with_running.to_json()
    del older["running"]  # published before running jobs were: none known
    path.write_text(json.dumps(older))
    assert read_demand_file(path, now=NOW, max_age=300) == snap


def test_parse_running_reads_job_ids_and_time_limits() -> None:
    text = "12|1:00:00\n13|UNLIMITED\n14|2-00:00:00\nnot a record\n15|1|2\n|5\n"
    assert parse_running(text) == {"12": 3600.0, "13": None, "14": 172800.0}
    assert parse_running("") == {}


# --- recorded real output of Slurm 22.05.8 (tests/data/slurm-22.05/README.md) ---------

RECORDED = Path(__file__).resolve().parent.parent / "data" / "slurm-22.05"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def test_recorded_squeue_after_backfill_schedules_jobs_here() -> None:
    jobs = parse_squeue(recorded("squeue-pd-o.txt"), limit=False)
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
    jobs = parse_squeue(recorded("squeue-pd-o-before-backfill.txt"), limit=False)
    assert all(j.sched_nodes == () and j.start is None for j in jobs)
    snap = Snapshot(tuple(jobs), parse_sinfo(recorded("sinfo-o.txt")), NOW)
    demand = node_demand(snap, "localhost", now=NOW, horizon=H)
    assert demand["imagenet"] == pytest.approx(min(2, UNPLACED_CAP) * math.exp(-1))
    # two unplaced jobs on a one-node partition, a cap of one: one job sure to run here
    one = node_demand(snap, "localhost", now=NOW, horizon=H, unplaced_cap=1.0)
    assert one["imagenet"] == pytest.approx(math.exp(-1))


def test_recorded_pipe_in_comment_and_empty_output() -> None:
    jobs = parse_squeue(recorded("squeue-pd-o-pipe-comment.txt"), limit=False)
    assert [j.job_id for j in jobs] == ["3", "4"]  # "datasets:imagenet|not" is malformed
    assert parse_squeue(recorded("squeue-pd-o-empty.txt")) == []
    assert parse_squeue(recorded("squeue-pd-O.txt"), limit=False) == parse_squeue(
        recorded("squeue-pd-o.txt"), limit=False
    )


# The recorded files above were taken with SQUEUE_FORMAT_NO_LIMIT (no %l): parse_squeue
# reads them with limit=False; the live format's %l is read by the e2e tier on Slurm.


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1-02:03:04", 93784.0), ("02:03:04", 7384.0), ("03:04", 184.0), ("5", 300.0),
     ("UNLIMITED", None), ("NOT_SET", None), ("INVALID", None), ("", None), ("0:00", None),
     ("1-x", None), ("1:2:3:4", None)],
)  # fmt: skip
def test_parse_time_limit_reads_squeue_l(text: str, seconds: float | None) -> None:
    assert parse_time_limit(text) == seconds


GB = 10**9
SIZES = {"a": 100 * GB, "b": 10 * GB, "c": 1000 * GB}


def test_demand_in_bytes_is_one_pass_without_history_capped_by_the_time_limit() -> None:
    snap = Snapshot(
        (job("1", ("a",), sched=("n1",)),                       # no limit: one pass
         job("2", ("b",), sched=("n1",), limit=3600),            # one pass fits an hour
         job("3", ("c",), sched=("n1",), limit=60)),             # 60 s x 1 GB/s
        PARTITIONS, NOW,
    )  # fmt: skip
    demand = node_demand(snap, "n1", now=NOW, horizon=H, sizes=SIZES, read_rate=GB)
    assert demand == {"a": 100 * GB, "b": 10 * GB, "c": 60 * GB}


def test_demand_uses_the_bytes_jobs_read_here_and_ignores_datasets_not_here() -> None:
    counters = Counters()
    counters.add("a", "jobs_slow", 2)
    counters.add("a", "jobs_cached", 2)
    counters.add("a", "read_slow_bytes", 30 * GB)
    counters.add("a", "read_cached_bytes", 10 * GB)  # 40 GB over 4 jobs: 10 GB a job
    counters.add("b", "jobs_slow", 1)  # started, nothing read yet: no history
    history = history_per_job(counters.datasets)
    assert history == {"a": 10 * GB}
    snap = Snapshot((job("1", ("a", "b", "zz"), sched=("n1",)), job("2", ("a",))), PARTITIONS, NOW)
    demand = node_demand(snap, "n1", now=NOW, horizon=H, sizes=SIZES, history=history)
    assert demand["a"] == pytest.approx(10 * GB + 0.25 * 10 * GB)
    assert demand["b"] == 10 * GB
    assert "zz" not in demand  # not in this node's datadir


def test_a_huge_time_limit_cannot_raise_a_job_above_what_jobs_read_here() -> None:
    """Attacker's view: a job asking for a year cannot weigh more than one pass (no
    history) or the bytes a job of the dataset read here (history); many such jobs weigh
    what many jobs read, each discounted by its chance and soonness like any job."""
    year = 365 * 86400.0
    one = Snapshot((job("1", ("c",), start=None, limit=year),), PARTITIONS, NOW)
    alone = node_demand(one, "n1", now=NOW, horizon=H, sizes=SIZES)["c"]
    assert alone == pytest.approx(0.25 * math.exp(-1) * SIZES["c"])
    history = {"c": 5 * GB}
    assert node_demand(one, "n1", now=NOW, horizon=H, sizes=SIZES, history=history)[
        "c"
    ] == pytest.approx(0.25 * math.exp(-1) * 5 * GB)
    many = Snapshot(
        tuple(job(str(i), ("c",), start=None, limit=year) for i in range(1000)), PARTITIONS, NOW
    )
    flood = node_demand(many, "n1", now=NOW, horizon=H, sizes=SIZES, history=history)["c"]
    assert flood == pytest.approx(UNPLACED_CAP * math.exp(-1) * 5 * GB)
    uncapped = node_demand(
        many, "n1", now=NOW, horizon=H, sizes=SIZES, history=history, unplaced_cap=math.inf
    )["c"]
    assert uncapped == pytest.approx(1000 * 0.25 * math.exp(-1) * 5 * GB)


def test_a_held_job_counts_nothing_until_released() -> None:
    held = PendingJob("1", ("debug",), 0, 1, None, (), ("c",), 365 * 86400.0)
    snap = Snapshot((held,) * 50 + (job("2", ("a",)),), PARTITIONS, NOW)
    assert set(node_demand(snap, "n1", now=NOW, horizon=H, sizes=SIZES)) == {"a"}


def test_only_reads_after_the_copy_lands_count() -> None:
    from scratch_stage.core.expected import after_landing

    assert after_landing(100.0, 50.0, 90.0) == 1.0  # lands before the job starts
    assert after_landing(100.0, 50.0, 125.0) == 0.5  # half its limit left
    assert after_landing(100.0, 50.0, 150.0) == 0.0  # its limit is over
    assert after_landing(100.0, None, 101.0) == 0.0  # no limit known: reads at its start
    sizes = {"huge": 4000 * GB, "small": 10 * GB}
    # placed here, starting now, an hour's limit: a 4 TB copy at 1 GB/s lands after it
    snap = Snapshot((job("1", ("huge", "small"), sched=("n1",), limit=3600.0),), PARTITIONS, NOW)
    copy = {n: s / GB for n, s in sizes.items()}
    demand = node_demand(snap, "n1", now=NOW, horizon=H, sizes=sizes, copy_seconds=copy)
    assert demand["huge"] == 0.0
    assert demand["small"] == pytest.approx(10 * GB * (3600 - 10) / 3600)
    cached = node_demand(snap, "n1", now=NOW, horizon=H, sizes=sizes)  # nothing to copy
    assert cached["huge"] == 3600 * GB  # its limit at the prior rate: 3.6 of 4 TB


def test_the_copy_rate_is_what_this_nodes_copies_ran_at() -> None:
    counters = Counters()
    assert counters.copy_rate() is None
    counters.add("a", "copied_bytes", 100 * GB)
    counters.add("a", "copy_seconds", 200)
    counters.add("b", "copied_bytes", 50 * GB)
    counters.add("b", "copy_seconds", 100)
    assert counters.copy_rate() == pytest.approx(0.5 * GB)


BIG = tuple(f"c{i}" for i in range(64))
CAP = UNPLACED_CAP * math.exp(-1)  # the most unplaced jobs of one dataset weigh


def test_unplaced_jobs_of_one_dataset_count_at_most_the_cap() -> None:
    """500 queued one-node jobs of one user on x, none placed, over 64 nodes: each is a
    1/64 share, 7.8 jobs together uncapped; capped, UNPLACED_CAP jobs (x e^-1, unknown
    start) on every node, whatever their number or time limits. A job placed here, a job of another
    dataset and the prospect keep their own weights; held jobs do not count in the sum."""
    partitions = {"big": BIG}
    size = 10**12
    sizes = {"x": size, "y": size}
    flood = tuple(job(str(i), ("x",), start=None, partitions=("big",), limit=3600.0 * (1 + i % 3))
                  for i in range(500))  # fmt: skip
    held = tuple(PendingJob(f"h{i}", ("big",), 0, 1, None, (), ("y",), None) for i in range(50))
    lone = job("y1", ("y",), start=None, partitions=("big",))
    here = job("x1", ("x",), start=NOW, sched=("c0",), partitions=("big",))
    snap = Snapshot((*flood, *held, lone), partitions, NOW)
    for node in ("c0", "c63"):
        jobs = node_demand(snap, node, now=NOW, horizon=H)
        assert jobs["x"] == pytest.approx(CAP)
        assert jobs["y"] == pytest.approx(math.exp(-1) / 64)  # one unplaced job: its share
        demand = node_demand(snap, node, now=NOW, horizon=H, sizes=sizes)
        assert demand["x"] == pytest.approx(CAP * size)  # one pass of each of CAP jobs
        prospect = node_demand(snap, node, now=NOW, horizon=H, sizes=sizes, discount=False)
        assert prospect["x"] == pytest.approx(UNPLACED_CAP * size)
        uncapped = node_demand(snap, node, now=NOW, horizon=H, unplaced_cap=math.inf)
        assert uncapped["x"] == pytest.approx(500 / 64 * math.exp(-1))
    placed = node_demand(Snapshot((*flood, here), partitions, NOW), "c0", now=NOW, horizon=H)
    assert placed["x"] == pytest.approx(1 + CAP)  # the placed job counts in full
    # time limits scale together: a limit caps its job's bytes, the sum stays under one job
    limited = node_demand(snap, "c0", now=NOW, horizon=H, sizes=sizes, read_rate=1e8)
    expected = CAP * sum(min(size, 1e8 * 3600.0 * (1 + i % 3)) for i in range(500)) / 500
    assert limited["x"] == pytest.approx(expected)


def test_unplaced_jobs_starting_far_away_do_not_dilute_the_others() -> None:
    """Jobs backfill has not placed but whose start Slurm estimates a year away weigh ~0
    in the demand, and ~0 in the cap's sum: a job with an unknown start keeps its
    weight. In the prospect (no discount) they count by their shares."""
    far = tuple(job(str(i), ("x",), start=NOW + 365 * 86400, partitions=("big",))
                for i in range(500))  # fmt: skip
    unknown = job("u", ("x",), start=None, partitions=("big",))
    snap = Snapshot((*far, unknown), {"big": BIG}, NOW)
    assert node_demand(snap, "c0", now=NOW, horizon=H)["x"] == pytest.approx(math.exp(-1) / 64)
    prospect = node_demand(snap, "c0", now=NOW, horizon=H, discount=False)["x"]
    assert prospect == pytest.approx(UNPLACED_CAP)  # 501/64 shares, capped


def test_the_cap_counts_only_jobs_that_may_run_on_this_node() -> None:
    # a cap of 1: four unplaced jobs in debug (n1-n4) each 1/4 are exactly the cap on n1;
    # the nine in gpu (g1 alone) count on g1 only
    jobs = [job(str(i), ("x",), start=None) for i in range(4)]
    jobs += [job(f"g{i}", ("x",), start=None, partitions=("gpu",)) for i in range(9)]
    snap = Snapshot(tuple(jobs), PARTITIONS, NOW)

    def on(snapshot: Snapshot, node: str) -> float:
        return node_demand(snapshot, node, now=NOW, horizon=H, unplaced_cap=1.0)["x"]

    assert on(snap, "n1") == pytest.approx(math.exp(-1))
    assert on(snap, "g1") == pytest.approx(math.exp(-1))
    five = Snapshot((*jobs, job("5", ("x",), start=None)), PARTITIONS, NOW)
    assert on(five, "n1") == pytest.approx(math.exp(-1))
    assert on(five, "n2") == pytest.approx(math.exp(-1))


def test_a_running_job_counts_its_expected_reads_after_the_copy_lands() -> None:
    """The job ends at a time uniform between now and its limit's end: half of what the
    limit leaves at its read rate, only after a copy would land, none once cached."""
    from scratch_stage.core.expected import running_read

    rate = 0.5 * GB
    # started an hour ago with a 5 h limit: 4 h left, a copy landing at once
    assert running_read(rate, NOW, NOW - H, 5 * H, 0.0) == pytest.approx(rate * 2 * H)
    # a copy landing in 2 h: rate x (4h - 2h)^2 / (2 x 4h)
    assert running_read(rate, NOW, NOW - H, 5 * H, 2 * H) == pytest.approx(rate * H / 2)
    assert running_read(rate, NOW, NOW - H, 5 * H, 4 * H) == 0.0  # lands after its limit
    assert running_read(rate, NOW, NOW - H, None, 0.0) == 0.0  # no limit known
    assert running_read(0.0, NOW, NOW - H, 5 * H, 0.0) == 0.0  # reads nothing now
    holds = {"7": (("a", "b"), NOW - H), "8": (("a",), NOW - 60), "9": (("c",), NOW)}
    limits = {"7": 5 * H, "8": 5 * H}  # 9: no limit known
    heat = {"a": 2 * rate, "b": rate, "c": rate}
    copy = {"a": 2 * H, "c": 60.0}  # b is cached: nothing to count
    got = running_demand(holds, limits, heat, copy, NOW)
    assert set(got) == {"a"}
    # a's heat shared by its two jobs: rate each
    assert got["a"] == pytest.approx(
        running_read(rate, NOW, NOW - H, 5 * H, 2 * H)
        + running_read(rate, NOW, NOW - 60, 5 * H, 2 * H)
    )


def test_a_running_job_cannot_claim_more_than_it_reads_for_a_day() -> None:
    """Attacker's view: a year's time limit counts as a day's; a job that reads nothing
    counts nothing; splitting the same reads over many jobs counts no more."""
    from scratch_stage.core.expected import RUNNING_HORIZON_CAP, running_read

    rate = 0.1 * GB
    year, day = 365 * 86400.0, RUNNING_HORIZON_CAP
    assert running_read(rate, NOW, NOW, year, 0.0) == running_read(rate, NOW, NOW, day, 0.0)
    assert running_read(rate, NOW, NOW, year, 0.0) == pytest.approx(rate * day / 2)
    copy = {"c": 600.0}
    one = running_demand({"1": (("c",), NOW)}, {"1": year}, {"c": rate}, copy, NOW)
    many = running_demand(
        {str(i): (("c",), NOW) for i in range(1000)},
        {str(i): year for i in range(1000)},
        {"c": rate},
        copy,
        NOW,
    )
    assert many["c"] == pytest.approx(one["c"]) and one["c"] <= rate * day / 2
    assert running_demand({"1": (("c",), NOW)}, {"1": year}, {}, copy, NOW) == {}


def test_a_placed_jobs_wait_counts_from_when_its_copy_must_start() -> None:
    """A job backfill placed here, due in 3 h on an image taking 2.5 h to copy, weighs what
    a job due in 30 min weighs on a cached image: exp(-0.5). Counted from now it would weigh
    exp(-3). A job due before its copy could land weighs 1 (and counts its reads after the
    landing only). A job not placed keeps its plain discount, start estimate or not."""
    from scratch_stage.core.expected import wait_discount

    assert wait_discount(3 * H, 2.5 * H, H) == pytest.approx(math.exp(-0.5))
    assert wait_discount(0.5 * H, 0.0, H) == pytest.approx(math.exp(-0.5))
    assert wait_discount(H, 2 * H, H) == 1.0
    sizes = {"big": 9000 * GB, "small": 10 * GB}
    copy = {"big": 2.5 * H}  # small is cached: nothing to copy
    snap = Snapshot(
        (job("1", ("big",), start=NOW + 3 * H, sched=("n1",)),
         job("2", ("small",), start=NOW + 0.5 * H, sched=("n1",))),
        PARTITIONS, NOW,
    )  # fmt: skip
    demand = node_demand(snap, "n1", now=NOW, horizon=H, sizes=sizes, copy_seconds=copy)
    assert demand["big"] == pytest.approx(math.exp(-0.5) * 9000 * GB)
    assert demand["small"] == pytest.approx(math.exp(-0.5) * 10 * GB)
    plain = node_demand(snap, "n1", now=NOW, horizon=H, sizes=sizes)  # copies land at once
    assert plain["big"] == pytest.approx(math.exp(-3) * 9000 * GB)
    unplaced = Snapshot((job("3", ("big",), start=NOW + 3 * H),), PARTITIONS, NOW)
    shares = node_demand(unplaced, "n1", now=NOW, horizon=H, sizes=sizes, copy_seconds=copy)
    assert shares["big"] == pytest.approx(0.25 * math.exp(-3) * 9000 * GB)


def test_far_placed_jobs_on_a_big_image_cannot_evict_a_dataset_being_read_hard() -> None:
    """Attacker's view: a user gets backfill to place jobs here wanting a 9 TB image (2.5 h
    to copy), with a year's time limit. Ten of them due in 12 h weigh about nothing; one
    due in 3 h weighs at most one pass (its limit raises nothing), exp(-0.5) of it: not
    worth the copy, so the 1 TB dataset read at 1 GB/s keeps its room."""
    from scratch_stage.policy.planner import PlanInput, PlanParams, plan

    year = 365 * 86400.0
    sizes = {"big": 9000 * GB, "hot": 1000 * GB}
    node = PlanInput(sizes, {"hot": 1000 * GB}, frozenset({"hot"}))
    params = PlanParams(copy_rate=GB)
    copy = {"big": 9000.0}
    for count, due in ((10, 12 * H), (1, 3 * H)):
        jobs = tuple(
            job(str(i), ("big",), start=NOW + due, sched=("n1",), limit=year)
            for i in range(count)
        )  # fmt: skip
        snap = Snapshot(jobs, PARTITIONS, NOW)
        demand = node_demand(snap, "n1", now=NOW, horizon=H, sizes=sizes, copy_seconds=copy)
        assert demand["big"] <= math.exp(-0.5) * 9000 * GB * (1 + 1e-9)
        result = plan(node, {"hot": 1 * GB}, demand, 9000 * GB, params=params)
        assert result.empty and result.decisions["hot"].action == "keep", result.decisions
        assert result.decisions["big"].value < 0
