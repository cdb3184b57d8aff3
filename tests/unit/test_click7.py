"""The CLI under click 7.1.2, what RHEL 9 ships as python3-click (pyproject: click>=7.1).

A throw-away virtualenv with click 7.1.2 and PyYAML runs the package from this tree: every
command's --help, the errors' exit codes, commands with path arguments, `config check`.
Skipped, with the reason, when click 7.1.2 cannot be installed (no package index).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scratch_stage.cli import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def click7(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("click7") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "click==7.1.2", "pyyaml"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"click 7.1.2 cannot be installed here: {done.stderr.strip()[-200:]}")
    return venv / "bin" / "python"


def run7(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
           "SCRATCH_STAGE_RUNDIR": str(cwd / "run"), "LANG": "C.UTF-8"}  # fmt: skip
    return subprocess.run(
        [str(python), "-m", "scratch_stage", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


def all_commands() -> list[list[str]]:
    import click

    found: list[list[str]] = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, command in group.commands.items():
            found.append([*prefix, name])
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli, [])
    return found


def test_it_is_click_7(click7: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(click7), "-c", "import click; print(click.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "7.1.2"


def test_every_command_helps(click7: Path, tmp_path: Path) -> None:
    for command in all_commands():
        done = run7(click7, *command, "--help", cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        assert "Usage:" in done.stdout, command


def test_errors_and_paths_under_click_7(click7: Path, tmp_path: Path) -> None:
    version = run7(click7, "--version", cwd=tmp_path)
    assert version.returncode == 0 and "scratch-stage" in version.stdout, version.stderr
    bad = run7(click7, "no-such-command", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("scratch-stage: usage:"), bad.stderr
    site = run7(click7, "install-site-files", str(tmp_path / "site"), "--bin", "/usr/bin/x",
                cwd=tmp_path)  # fmt: skip
    assert site.returncode == 0, site.stderr
    assert (
        (tmp_path / "site" / "slurm" / "prolog.sh")
        .read_text()
        .endswith("exec /usr/bin/x --config /etc/scratch-stage/config.yaml prolog\n")
    )
    for d in ("data", "cache"):
        (tmp_path / d).mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"datadir: {tmp_path}/data\ncachedir: {tmp_path}/cache\nstatedir: {tmp_path}/state\n"
        "demand: {source: none}\nmount_command: /bin/true\numount_command: /bin/true\n"
    )
    check = run7(click7, "--config", str(config), "config", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines()[-1].startswith(f"{config}: ok")
    wrong = run7(click7, "--config", str(config), "image", "build", str(tmp_path / "nope"), "x",
                 cwd=tmp_path)  # fmt: skip
    assert wrong.returncode == 1 and len(wrong.stderr.splitlines()) == 1, wrong.stderr
    assert wrong.stderr.startswith("scratch-stage: error:"), wrong.stderr
