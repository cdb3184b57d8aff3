"""Trace format, the generator's reproducibility, the SWF converter, the command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scratch_stage.cli import run_cli
from scratch_stage.simulate.__main__ import main as generate_main
from scratch_stage.simulate.command import simulate
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.run import simulate as simulate_trace
from scratch_stage.simulate.trace import Job, TraceError, parse_trace, write_trace
from scratch_stage.simulate.workload import (
    PRESETS,
    WorkloadSpec,
    convert_swf,
    generate,
    load_sizes,
)
from tests.unit.sim_helpers import GB, SIZES, tiny_trace

HEADER = '{"format": "scratch-stage-trace", "version": 1, "datasets": {"a": 100}}'


def test_round_trip_and_passes_become_bytes() -> None:
    out = io.StringIO()
    write_trace(tiny_trace(), out)
    assert parse_trace(out.getvalue().splitlines()) == tiny_trace()
    job = '{"id": 1, "submit": 0, "start": 5, "end": 9, "nodes": ["n"], "passes": {"a": 2.5}}'
    assert parse_trace([HEADER, job]).jobs[0].reads == {"a": 250}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": 1, "submit": 9, "start": 5, "end": 9, "nodes": ["n"]}', "line 2: times"),
        ('{"id": 1, "submit": 0, "start": 5, "end": 9, "nodes": []}', "line 2: 'nodes'"),
        ('{"id": 1, "submit": 0, "start": 5, "end": 9, "nodes": ["n"], "bytes": {"b": 1}}',
         "line 2: dataset 'b'"),
        ("not json", "line 2"),
        ('{"id": 1, "submit": 0, "start": 5, "end": 9, "nodes": ["n", "m", "n"]}',
         "line 2: node 'n' is listed twice"),
        ('{"id": 1, "submit": 0, "start": 5, "end": Infinity, "nodes": ["n"]}',
         "line 2: times must be finite"),
        ('{"id": 1, "submit": 0, "start": 5, "end": 9, "nodes": ["n"], "passes": {"a": 1e400}}',
         "line 2: passes for 'a' must be a finite number"),
        ('{"id": 1, "submit": 0, "start": 5, "end": 9, "nodes": ["n"], "bytes": {"a": NaN}}',
         "line 2: bytes for 'a' must be a finite number"),
    ],
)  # fmt: skip
def test_bad_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_trace([HEADER, line])


def _job(job_id: str, start: float, end: float, nodes: list[str]) -> str:
    record = {"id": job_id, "submit": 0, "start": start, "end": end, "nodes": nodes,
              "bytes": {"a": 50}}  # fmt: skip
    return json.dumps(record)


def test_same_id_running_twice_on_a_node_is_refused_naming_both_lines() -> None:
    lines = [HEADER, _job("7", 0, 100, ["n1", "n2"]), "", _job("7", 50, 60, ["n3", "n2"])]
    with pytest.raises(TraceError, match=r"^trace line 4: job id '7' overlaps the job on line 2 "
                                         r"on node 'n2'"):  # fmt: skip
        parse_trace(lines)
    # zero-length reads are replayed as one second: these two overlap as replayed
    with pytest.raises(TraceError, match="line 3: job id '7'"):
        parse_trace([HEADER, _job("7", 10, 10, ["n"]), _job("7", 10.5, 10.5, ["n"])])


def test_same_id_on_other_nodes_or_after_the_end_is_replayed() -> None:
    trace = parse_trace([
        HEADER, _job("7", 0, 100, ["n1"]), _job("7", 50, 60, ["n2"]), _job("7", 100, 200, ["n1"]),
    ])  # fmt: skip
    config = SimConfig(capacity=1000, interval=10)
    report = simulate_trace(trace, config, ["ours", "lru", "belady"], bound=False)
    for result in report.results.values():
        assert result.read_bytes == 150


def test_command_reports_a_bad_trace_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join([HEADER, _job("7", 0, 100, ["n1"]), _job("7", 5, 6, ["n1"])]))
    assert run_cli(["simulate", str(path), "--capacity", "5%"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "scratch-stage: error: trace line 3: job id '7' overlaps the job on line 2 on node 'n1' "
        "(ids must be unique among jobs running on a node)"
    ]


def test_unknown_version_is_refused() -> None:
    with pytest.raises(TraceError, match="version 2"):
        parse_trace([HEADER.replace('"version": 1', '"version": 2')])


def test_generator_is_reproducible_from_its_seed() -> None:
    sizes = load_sizes(SIZES)
    spec = WorkloadSpec(jobs=200, datasets=30, seed=7)
    first = generate(spec, sizes)
    assert first == generate(spec, sizes)
    assert first != generate(WorkloadSpec(jobs=200, datasets=30, seed=8), sizes)
    assert len(first.jobs) == 200 and len(first.datasets) == 30
    per_slot: dict[str, int] = {}
    for job in first.jobs:
        assert job.submit <= job.start <= job.end
        per_slot[job.nodes[0]] = per_slot.get(job.nodes[0], 0) + 1
    assert len(per_slot) <= spec.nodes


def test_generator_drift_bursts_and_partial_reads() -> None:
    sizes = load_sizes(SIZES)
    base = WorkloadSpec(jobs=600, datasets=40, zipf=1.5, sweep_share=0.5, seed=3)
    assert generate(base, sizes) == generate(WorkloadSpec(**{**base.__dict__, "burst": 1}), sizes)

    def top(jobs: tuple[Job, ...]) -> str:
        counts: dict[str, int] = {}
        for job in jobs:
            for name in job.reads:
                counts[name] = counts.get(name, 0) + 1
        return max(counts, key=lambda n: counts[n])

    singles = WorkloadSpec(**{**base.__dict__, "sweep_share": 0.0})
    drifting = generate(WorkloadSpec(**{**singles.__dict__, "drift": 0.5}), sizes)
    by_submit = sorted(drifting.jobs, key=lambda j: j.submit)
    assert top(by_submit[:150]) != top(by_submit[-150:])
    steady = sorted(generate(singles, sizes).jobs, key=lambda j: j.submit)
    assert top(steady[:150]) == top(steady[-150:])

    bursty = generate(WorkloadSpec(**{**base.__dict__, "burst": 3}), sizes)
    together: dict[float, set[str]] = {}
    for job in bursty.jobs:
        together.setdefault(job.submit, set()).update(job.reads)
    assert max(len(names) for names in together.values()) >= 2  # sweeps on several datasets

    partial = generate(WorkloadSpec(**{**base.__dict__, "partial_share": 0.5}), sizes)
    shares = [b / partial.datasets[n] for j in partial.jobs for n, b in j.reads.items()]
    assert any(0.05 - 1e-9 <= x <= 0.2 + 1e-9 for x in shares)
    assert all(x >= 0.05 - 1e-9 for x in shares)


def test_generator_many_node_jobs() -> None:
    """`wide_share`: jobs spanning wide_min..wide_max distinct nodes, started together, never
    more than `slots` jobs at once on a node; the preset `many` is 64 nodes, half wide."""
    sizes = load_sizes(SIZES)
    spec = WorkloadSpec(jobs=400, nodes=12, slots=2, datasets=20, wide_share=0.5,
                        wide_min=2, wide_max=8, seed=4)  # fmt: skip
    trace = generate(spec, sizes)
    widths = [len(job.nodes) for job in trace.jobs]
    assert min(widths) == 1 and max(widths) <= 8 and len(set(widths)) >= 5
    assert all(len(set(job.nodes)) == len(job.nodes) for job in trace.jobs)
    assert all(len(job.reads) == 1 for job in trace.jobs)  # the same dataset on each node
    events: dict[str, list[tuple[float, int]]] = {}
    for job in trace.jobs:
        for node in job.nodes:
            events.setdefault(node, []).extend([(job.start, 1), (job.end, -1)])
    for node_events in events.values():
        running = 0
        for _, step in sorted(node_events):  # an end sorts before a start at the same time
            running += step
            assert running <= spec.slots
    # wide_share 0 (the default) draws nothing more: the traces are as before
    narrow = WorkloadSpec(jobs=200, datasets=30, seed=7)
    assert generate(narrow, sizes) == generate(
        WorkloadSpec(**{**narrow.__dict__, "wide_min": 5, "wide_max": 9}), sizes
    )
    assert PRESETS["many"]["nodes"] == 64 and PRESETS["many"]["wide_share"] > 0


def test_generate_command_preset_and_bad_knobs(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = CliRunner().invoke(generate_main, [
        "generate", "--sizes", str(SIZES), "--preset", "many", "--set", "jobs=60",
        "--set", "datasets=10", "-o", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    trace = parse_trace(out.read_text().splitlines())
    assert len(trace.jobs) == 60 and any(len(job.nodes) > 1 for job in trace.jobs)
    result = CliRunner().invoke(generate_main, [
        "generate", "--sizes", str(SIZES), "--set", "wide_share=0.5", "--set", "wide_min=9",
        "--set", "wide_max=3",
    ])  # fmt: skip
    assert result.exit_code != 0
    assert "wide_min" in result.output and "Traceback" not in result.output


def test_swf_executable_numbers_become_datasets() -> None:
    swf = [
        "; Version: 2.2",
        "1 0 10 3600 64 -1 -1 64 3600 -1 1 5 1 3 1 -1 -1 -1",
        "2 5 0 100 32 -1 -1 32 100 -1 1 6 1 4 1 -1 -1 -1",
        "3 9 0 0 32 -1 -1 32 100 -1 5 6 1 4 1 -1 -1 -1",  # never ran
    ]
    trace = convert_swf(swf, {"a": 1 * GB, "b": 2 * GB}, nodes=4, cores_per_node=32)
    assert [j.id for j in trace.jobs] == ["2", "1"]
    by_id = {j.id: j for j in trace.jobs}
    assert by_id["1"].reads == {"b": 2 * GB} and len(by_id["1"].nodes) == 2  # executable 3
    assert by_id["2"].reads == {"a": 1 * GB} and by_id["2"].start == 5.0  # executable 4


def test_command_prints_a_table_and_json(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    with path.open("w") as f:
        write_trace(tiny_trace(), f)
    runner = CliRunner()
    result = runner.invoke(simulate, [str(path), "--capacity", "150GB", "--interval", "100"])
    assert result.exit_code == 0, result.output
    assert "ours" in result.output and "lower bound" in result.output
    result = runner.invoke(simulate, [str(path), "--capacity", "30%", "--policy", "lru", "--json"])
    data = json.loads(result.output)
    assert [p["policy"] for p in data["policies"]] == ["lru"]
    assert data["capacity_bytes"] == 150 * GB


def test_command_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "trace.jsonl"
    with path.open("w") as f:
        write_trace(tiny_trace(), f)
    png = tmp_path / "out.png"
    result = CliRunner().invoke(simulate, [str(path), "--capacity", "150GB", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
