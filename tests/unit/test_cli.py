"""The CLI's one error handler: exit codes of docs/design.md, one line on stderr."""

from __future__ import annotations

import pytest

from scratch_stage.cli import run_cli


def one_line(text: str) -> str:
    lines = text.strip("\n").split("\n")
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["purge"], 2, "name datasets to purge, or give --all"),
        (["no-such-command"], 2, "No such command"),
        (["pin", "x", "--ttl", "soon"], 2, "not a duration"),
        (["status"], 4, "cannot read configuration"),
    ],
)
def test_errors_are_one_line_with_their_exit_code(
    args: list[str], code: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(args) == code
    line = one_line(capsys.readouterr().err)
    assert line.startswith("scratch-stage: ") and fragment in line


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--version"]) == 0
    assert "scratch-stage, version" in capsys.readouterr().out
    assert run_cli(["--help"]) == 0
    assert "rebalance" in capsys.readouterr().out


def test_prolog_of_a_job_without_datasets_exits_0_without_any_configuration() -> None:
    import subprocess
    import sys

    from scratch_stage.__main__ import asks_for_datasets

    assert not asks_for_datasets({"SLURM_JOB_COMMENT": "lr=0.1 sweep"})
    assert asks_for_datasets({"SLURM_JOB_COMMENT": "x datasets:a"})
    assert asks_for_datasets({"SPANK_DATASETS": "a"})
    assert not asks_for_datasets({"SPANK_DATASETS": "  "})
    env = {"SLURM_JOB_ID": "5", "SCRATCH_STAGE_CONFIG": "/nonexistent/config.yaml"}
    done = subprocess.run(
        [sys.executable, "-m", "scratch_stage", "prolog"], env=env, capture_output=True
    )
    assert (done.returncode, done.stderr) == (0, b"")
    env["SLURM_JOB_COMMENT"] = "datasets:a"  # now it needs the configuration: a node fault
    done = subprocess.run(
        [sys.executable, "-m", "scratch_stage", "prolog"], env=env, capture_output=True
    )
    assert done.returncode == 4 and b"cannot read configuration" in done.stderr
