"""The offline schedule from a mixed-integer programme (`mip-schedule`): what it plans, that
the replay runs it, and that it needs scipy (docs/simulate.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scratch_stage.cli import run_cli
from scratch_stage.simulate import offline
from scratch_stage.simulate.inputs import SimConfig, replay_start, split_by_node, unplaced_demand
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Job, Trace, write_trace
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes
from tests.unit.sim_helpers import GB, SIZES, random_trace, tiny_trace

MIP = "mip-schedule"


def _plan(trace: Trace, config: SimConfig) -> list[offline.Block]:
    (work,) = split_by_node(trace, config).values()
    start = replay_start(work, unplaced_demand(trace, config))
    return offline.plan(work.jobs, trace.datasets, config.capacity, config.bandwidth, start)


def test_a_copy_is_planned_to_land_as_its_first_job_starts_and_kept_through_the_gap() -> None:
    # a (100 GB, 100 s to copy) is read by job 1 (1000-4600 s) and job 2 (5000-8600 s), both
    # known from 0 s: copy from 900 s, keep it through the gap (cheaper than a second copy)
    config = SimConfig(capacity=150 * GB, interval=100.0, bandwidth=1e9)
    assert _plan(tiny_trace(), config) == [offline.Block("a", 900.0, 8600.0)]
    result = simulate(tiny_trace(), config, [MIP], bound=False).results[MIP]
    assert result.slow_read_bytes == 0 and result.copied_bytes == 100 * GB


def test_with_room_for_one_it_copies_the_one_read_more() -> None:
    # a and b (100 GB each), read 3 and 1.5 times at once from 1000 s; room for one
    trace = Trace(
        {"a": 100 * GB, "b": 100 * GB},
        (
            Job("1", 0.0, 1000.0, 4600.0, ("n1",), {"a": 300 * GB}),
            Job("2", 0.0, 1000.0, 4600.0, ("n1",), {"b": 150 * GB}),
        ),
    )
    config = SimConfig(capacity=150 * GB, interval=100.0, bandwidth=1e9)
    assert [b.name for b in _plan(trace, config)] == ["a"]
    result = simulate(trace, config, [MIP], bound=False).results[MIP]
    assert result.copied_bytes == 100 * GB
    assert result.slow_bytes == pytest.approx(250 * GB, rel=1e-9)  # a's copy, b's reads


def test_a_copy_a_job_reads_is_not_dropped_before_the_job_ends() -> None:
    # Job 1 reads a (100 GB) once over 0-36 000 s, job 2 reads b (100 GB) 4 times over
    # 10 000-13 600 s; room for one. Dropping a at 10 000 s to serve b would pay off in
    # the relaxation, but a is held by job 1: b is read from slow storage.
    trace = Trace(
        {"a": 100 * GB, "b": 100 * GB},
        (
            Job("1", 0.0, 0.0, 36000.0, ("n1",), {"a": 100 * GB + 1}),
            Job("2", 0.0, 10000.0, 13600.0, ("n1",), {"b": 400 * GB}),
        ),
    )
    config = SimConfig(capacity=150 * GB, interval=100.0, bandwidth=1e9)
    for block in _plan(trace, config):
        if block.name == "a":
            assert block.drop >= 36000.0
    report = simulate(trace, config, [MIP])
    assert report.bound is not None
    assert report.results[MIP].slow_bytes >= report.bound.lower * (1 - 1e-9)


def test_on_a_generated_workload_it_runs_as_planned_and_costs_at_least_the_bound() -> None:
    spec = WorkloadSpec(jobs=120, nodes=2, datasets=20, max_duration=6 * 3600.0, seed=3)
    trace = generate(spec, load_sizes(SIZES))
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.1))
    report = simulate(trace, config, [MIP, "future-bytes", "none"], workers=2)
    assert report.bound is not None
    mip = report.results[MIP]
    assert mip.refused_copies == 0  # the executor ran every copy it planned
    assert report.bound.lower * (1 - 1e-9) <= mip.slow_bytes < report.results["none"].slow_bytes


@pytest.mark.parametrize("seed", range(6))
def test_it_never_costs_less_than_the_bound(seed: int) -> None:
    trace = random_trace(seed, datasets=4, jobs=10, nodes=2)
    report = simulate(trace, SimConfig(capacity=50 * GB, interval=60.0, bandwidth=5e8), [MIP])
    assert report.bound is not None
    assert report.results[MIP].slow_bytes >= report.bound.lower * (1 - 1e-9)


def test_without_scipy_the_command_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.jsonl"
    with path.open("w") as out:
        write_trace(tiny_trace(), out)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # its import now fails
    assert not offline.available()
    assert run_cli(["simulate", str(path), "--capacity", "150GB", "--policy", MIP]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "scratch-stage: error: --policy mip-schedule: the mip-schedule policy needs scipy: "
        "pip install 'scratch-stage[offline]'"
    ]


def test_what_the_solver_prints_does_not_reach_standard_output(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # HiGHS writes lines to C's stdout, which would break `simulate --json`
    import ctypes
    import os

    libc = ctypes.CDLL(None)
    with offline.quiet_stdout():
        os.write(1, b"raw\n")
        libc.printf(b"buffered by C\n")
    print("after", flush=True)
    assert capfd.readouterr().out == "after\n"
