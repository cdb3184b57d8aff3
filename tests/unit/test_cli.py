"""The CLI's one error handler: exit codes of DESIGN section 5, one line on stderr."""

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
