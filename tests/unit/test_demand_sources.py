"""Demand sources: squeue and sinfo (real processes printing recorded output), pyslurm's
fallback, the published file, none; and publishing the snapshot."""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.core.records import replace
from scratch_stage.host.config import Config, DemandConfig
from scratch_stage.slurm.demand import (
    RUNNING_FORMAT,
    SINFO_FORMAT,
    SQUEUE_FORMAT,
    PendingJob,
    Snapshot,
    parse_slurm_time,
    snapshot_from_cli,
    squeue_marker,
)
from scratch_stage.slurm.demand_sources import (
    demand_file,
    publish_snapshot,
    query_slurm,
    read_demand,
    read_snapshot,
)

RECORDED = Path(__file__).resolve().parent.parent / "data" / "slurm-22.05"
# Job 3 of the recorded squeue output is expected to start then (backfill placed it here).
START = parse_slurm_time("2026-11-21T21:55:29") or 0.0


def script(path: Path, body: str) -> tuple[str, ...]:
    """An executable shell script at PATH that logs its arguments next to itself."""
    log = path.with_suffix(".args")
    path.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n{body}\n')
    path.chmod(0o755)
    return (str(path),)


def config(tmp_path: Path, **kwargs: object) -> Config:
    """Slurm's clients as scripts printing the recorded output, unless KWARGS say otherwise."""
    recorded = {"squeue": "squeue-pd-o.txt", "sinfo": "sinfo-o.txt",
                "scontrol": "scontrol-version.txt"}  # fmt: skip
    for command, name in recorded.items():
        key = f"{command}_command"
        if key not in kwargs:
            body = f"cat {RECORDED / name}"
            if command == "squeue":  # like squeue: the literal text before %i starts each record
                # The recording predates %l: the jobs' limit (--time=5) as %l prints it goes
                # in as the 7th field.
                body = (
                    f"marker=${{5%%%i*}}; sed -E 's/^(([^|]*[|]){{6}})/\\15:00|/; "
                    f"s/^/'\"$marker\"'/' {RECORDED / name}"
                )
                # running jobs (-t R): the recorded two, limits of a year and of 2 h
                running = RECORDED / "squeue-r-o.txt"
                body = f'if [ "$3" = R ]; then cat {running}; exit; fi\n{body}'

            kwargs[key] = script(tmp_path / command, body)
    kwargs.setdefault("demand", DemandConfig(source="squeue"))
    return Config(datadir=tmp_path, cachedir=tmp_path, node="localhost", **kwargs)  # type: ignore[arg-type]


def args_of(tmp_path: Path, command: str) -> list[str]:
    log = tmp_path / f"{command}.args"
    return log.read_text().splitlines() if log.exists() else []


def forbidden(argv: Sequence[str], *, timeout: float) -> str:
    raise AssertionError(f"ran {argv}")


def test_squeue_source_runs_squeue_and_sinfo_and_weighs_this_node(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    snapshot = read_snapshot(cfg, START)
    assert snapshot is not None
    assert [(j.job_id, j.datasets) for j in snapshot.jobs] == [
        ("3", ("imagenet",)),
        ("4", ("coco", "imagenet")),
    ]
    assert snapshot.partitions == {"debug": ("localhost",)}
    squeue_args, running_args = args_of(tmp_path, "squeue")
    assert re.fullmatch(f"-h -t PD -o @[0-9a-f]{{16}}@{re.escape(SQUEUE_FORMAT)}", squeue_args)
    assert running_args == f"-h -t R -o {RUNNING_FORMAT}"
    assert snapshot.running == {"1": 365 * 86400.0, "2": 7200.0}
    assert args_of(tmp_path, "sinfo") == [f"-h -o {SINFO_FORMAT}"]
    assert [j.time_limit for j in snapshot.jobs] == [300.0, 300.0]
    sizes = {"imagenet": 10**12, "coco": 10**12}
    demand = read_demand(cfg, START, sizes=sizes)
    # 5 minutes at 1 GB/s: 300 GB of a 1 TB image, job 3 due now, job 4 a little later
    assert demand["imagenet"] > demand["coco"] > 0
    assert demand["imagenet"] <= 2 * 300e9
    elsewhere = replace(cfg, node="othernode")
    assert read_demand(elsewhere, START, sizes=sizes) == {}


def test_a_newline_in_a_comment_cannot_forge_a_job(tmp_path: Path) -> None:
    # job 7's comment ends in a line that looks like squeue's record of a job 666
    forged = "666|debug|999999|1|N/A|localhost|5|datasets:forged"
    body = (
        "m=${5%%%i*}\n"
        f'printf "%s\\n" "${{m}}7|debug|100|1|N/A|(null)|5|datasets:a" "{forged}" '
        '"${m}8|debug|100|1|N/A|(null)|5|datasets:b"'
    )
    cfg = config(tmp_path, squeue_command=script(tmp_path / "squeue", body))
    snapshot = read_snapshot(cfg, START)
    assert snapshot is not None
    assert [(j.job_id, j.datasets) for j in snapshot.jobs] == [("7", ("a",)), ("8", ("b",))]
    # the same output without the per-call marker is what made the forgery possible
    unmarked = "7|debug|100|1|N/A|(null)|5|datasets:a\n" + forged + "\n"
    assert [j.job_id for j in snapshot_from_cli(unmarked, "", START).jobs] == ["7", "666"]
    assert squeue_marker() != squeue_marker()


def test_failing_squeue_means_no_demand_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1"
    cfg = config(tmp_path, squeue_command=script(tmp_path / "squeue", down))
    with caplog.at_level(logging.WARNING, logger="scratch_stage.slurm.demand_sources"):
        assert read_snapshot(cfg, START) is None
        assert read_demand(cfg, START, sizes={"imagenet": 1}) == {}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert all("no demand this pass" in w and "Unable to contact" in w for w in warnings)
    assert args_of(tmp_path, "sinfo") == []  # gave up at squeue


def test_missing_squeue_means_no_demand(tmp_path: Path) -> None:
    cfg = config(tmp_path, squeue_command=(str(tmp_path / "no-such-squeue"),))
    assert read_demand(cfg, START, sizes={"imagenet": 1}) == {}


def test_pyslurm_source_falls_back_to_squeue_when_pyslurm_does_not_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, demand=DemandConfig(source="pyslurm"))
    with caplog.at_level(logging.INFO, logger="scratch_stage.slurm.demand_sources"):
        snapshot = read_snapshot(cfg, START)
    assert snapshot is not None and len(snapshot.jobs) == 2
    assert args_of(tmp_path, "scontrol") == ["--version"]
    assert args_of(tmp_path, "squeue") and args_of(tmp_path, "sinfo")
    assert any("demand through squeue, not pyslurm" in r.getMessage() for r in caplog.records)


def test_file_source_reads_the_published_snapshot_and_runs_nothing(tmp_path: Path) -> None:
    published = Snapshot(
        (PendingJob("9", ("debug",), 5, 1, START + 60, ("localhost",), ("coco",)),),
        {"debug": ("localhost",)},
        START,
    )
    path = tmp_path / "demand.json"
    publish_snapshot(published, path)
    cfg = config(tmp_path, demand=DemandConfig(source="file", path=path, max_age=300.0))
    assert read_snapshot(cfg, START + 10, run=forbidden) == published
    assert read_demand(cfg, START + 10, run=forbidden, sizes={"coco": 5})["coco"] > 0
    assert read_snapshot(cfg, START + 301, run=forbidden) is None  # too old
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".demand")]  # no temp left


def test_none_source_runs_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, demand=DemandConfig(source="none"))
    assert read_snapshot(cfg, START, run=forbidden) is None
    assert read_demand(cfg, START, run=forbidden, sizes={"coco": 5}) == {}


def test_publishing_where_it_cannot_be_written_is_a_one_line_error(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "demand.json"
    with pytest.raises(ScratchStageError) as info:
        publish_snapshot(Snapshot((), {}, START), target)
    assert str(info.value) == f"cannot publish the demand to {target}: No such file or directory"


def test_the_default_demand_file_is_in_datadir(tmp_path: Path) -> None:
    cfg = config(tmp_path, demand=DemandConfig(source="file"))
    assert demand_file(cfg) == tmp_path / ".scratch-stage-demand.json"
    publish_snapshot(Snapshot((), {}, START), demand_file(cfg))
    assert read_snapshot(cfg, START + 1, run=forbidden) == Snapshot((), {}, START)


def test_the_publisher_asks_slurm_whatever_its_nodes_read(tmp_path: Path) -> None:
    # A publisher whose own configuration reads the file must not republish the file.
    cfg = config(tmp_path, demand=DemandConfig(source="file"))
    snapshot = query_slurm(cfg, START)
    assert snapshot is not None and len(snapshot.jobs) == 2
    assert args_of(tmp_path, "squeue") and args_of(tmp_path, "sinfo")


def test_publish_configured_writes_where_the_nodes_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scratch_stage.cli import run_cli

    fake = config(tmp_path)
    squeue, sinfo = fake.squeue_command[0], fake.sinfo_command[0]
    conf = tmp_path / "config.yaml"
    conf.write_text(
        f"datadir: {tmp_path}\ncachedir: {tmp_path}\nstatedir: {tmp_path}/state\n"
        f"node: localhost\nsqueue_command: {squeue}\nsinfo_command: {sinfo}\n"
        "demand: {source: file}\n"
    )
    monkeypatch.setenv("SCRATCH_STAGE_RUNDIR", str(tmp_path / "run"))
    assert run_cli(["--config", str(conf), "demand", "--publish-configured"]) == 0
    out = capsys.readouterr().out
    assert f"published 2 pending job(s) to {tmp_path}/.scratch-stage-demand.json" in out
    cfg = config(tmp_path, demand=DemandConfig(source="file"))
    snapshot = read_snapshot(cfg, time.time(), run=forbidden)
    assert snapshot is not None and len(snapshot.jobs) == 2
    code = run_cli(["--config", str(conf), "demand", "--publish", "/x", "--publish-configured"])
    assert code == 2
    # where it cannot write, it says so before asking slurmctld anything
    (tmp_path / "squeue.args").unlink()
    code = run_cli(["--config", str(conf), "demand", "--publish", f"{tmp_path}/no/demand.json"])
    assert code == 1 and not (tmp_path / "squeue.args").exists()
    assert "cannot publish the demand to" in capsys.readouterr().err


def test_a_demand_file_not_written_by_a_trusted_owner_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from scratch_stage.host.catalog import Trust
    from scratch_stage.slurm.demand import load_demand_file

    path = tmp_path / "demand.json"
    publish_snapshot(Snapshot((), {}, START), path)
    owner = os.stat(path).st_uid
    trusted = Trust(frozenset({owner}), frozenset({0}))
    assert load_demand_file(path, now=START, max_age=60, trust=trusted) == Snapshot((), {}, START)
    stranger = Trust(frozenset({owner + 1}), frozenset({0}))
    with pytest.raises(ValueError, match=f"owned by uid {owner}, not a trusted owner"):
        load_demand_file(path, now=START, max_age=60, trust=stranger)
    path.chmod(0o646)
    with pytest.raises(ValueError, match=r"ignored: writable by any user \(mode 0646\)"):
        load_demand_file(path, now=START, max_age=60, trust=trusted)
    cfg = config(tmp_path, demand=DemandConfig(source="file", path=path))
    with caplog.at_level(logging.WARNING):
        assert read_snapshot(cfg, START, run=forbidden, trust=trusted) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"no demand this pass: demand file {path} ignored: writable by any user (mode 0646)"
    ]


def test_config_check_names_the_demand_source_and_its_cost(tmp_path: Path) -> None:
    from scratch_stage.agent.admin_config import check_config, demand_note

    squeue = config(tmp_path, interval=60.0)
    assert demand_note(squeue) == (
        "demand: squeue on every node: about 6 slurmctld RPCs per node per pass (every 60s): "
        "6/min per node, 600/min at 100 nodes, 6,000/min at 1,000; a published file "
        "(`demand: {source: file}`, scratch-stage-demand.timer on one host) costs 6 per 30s "
        "in all"
    )
    assert "12,000/min at 1,000" in demand_note(config(tmp_path, interval=30.0))
    published = config(tmp_path, demand=DemandConfig(source="file"))
    assert demand_note(published).startswith(
        f"demand: file {tmp_path}/.scratch-stage-demand.json (one publisher asks slurmctld"
    )
    assert demand_note(config(tmp_path, demand=DemandConfig(source="none"))).startswith(
        "demand: none"
    )
    missing = [f.message for f in check_config(published) if "demand" in f.message]
    assert missing == [
        f"demand: {tmp_path}/.scratch-stage-demand.json does not exist (yet): enable "
        "scratch-stage-demand.timer on one host; until then queued jobs prefetch nothing"
    ]
    publish_snapshot(Snapshot((), {}, time.time() - 3600), demand_file(published))
    stale = [f.message for f in check_config(published) if "demand" in f.message]
    assert len(stale) == 1 and "s old (max 300s)" in stale[0]
