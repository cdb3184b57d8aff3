"""Trace format, the generator's reproducibility, the SWF converter, the command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scratch_stage.simulate.command import simulate
from scratch_stage.simulate.trace import TraceError, parse_trace, write_trace
from scratch_stage.simulate.workload import WorkloadSpec, convert_swf, generate, load_sizes
from tests.unit.sim_helpers import GB, tiny_trace

SIZES = Path(__file__).resolve().parents[2] / "tests/data/dataset-sizes.csv"
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
    ],
)  # fmt: skip
def test_bad_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_trace([HEADER, line])


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
