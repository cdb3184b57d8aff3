"""One hook entry point: the fast path with --config, click's prolog/epilog, log lines once."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scratch_stage.hookmain import hook_arguments
from scratch_stage.host.logger import hook_sink, setup_hook_logging, use_logging
from scratch_stage.host.logs import HANDLER_NAME, setup_cli_logging

CONSOLE_SCRIPT = Path(sys.prefix) / "bin" / "scratch-stage"
CLI = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "scratch_stage"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["prolog"], ("prolog", None)),
        (["epilog"], ("epilog", None)),
        (["--config", "/etc/x.yaml", "prolog"], ("prolog", "/etc/x.yaml")),
        (["--config=/etc/x.yaml", "epilog"], ("epilog", "/etc/x.yaml")),
        (["--config", "prolog", "epilog"], ("epilog", "prolog")),  # PATH may be any word
        (["status"], None),
        (["--config", "/etc/x.yaml"], None),
        (["--config", "/etc/x.yaml", "status"], None),
        (["-v", "prolog"], None),  # click handles the rest, through the same process
        (["prolog", "--help"], None),
        (["prolog", "extra"], None),
        ([], None),
    ],
)
def test_hook_arguments(args: list[str], expected: tuple[str, str | None] | None) -> None:
    assert hook_arguments(args) == expected


def imported_modules(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"SLURM_JOB_ID": "9", "SLURM_JOB_USER": "root", "SLURM_JOB_UID": "0", **env}
    return subprocess.run(
        [*CLI, *args], env=environ, capture_output=True, text=True, timeout=60, cwd="/"
    )


@pytest.mark.parametrize(
    "args",
    [["--config", "/nonexistent/c.yaml", "prolog"], ["--config=/nonexistent/c.yaml", "prolog"]],
)
def test_prolog_with_config_option_and_no_datasets_imports_nothing(args: list[str]) -> None:
    done = run(args, SLURM_JOB_COMMENT="lr=0.1", PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 0
    modules = imported_modules(done.stderr)
    assert "scratch_stage.hookmain" in modules  # the measurement sees our modules
    for heavy in (
        "scratch_stage.host.config",
        "scratch_stage.agent.hooks",
        "click",
        "yaml",
        "logging",
    ):
        assert heavy not in modules, heavy
    # The same job with a dataset does need the configuration (here: none, a node fault).
    done = run(args, SLURM_JOB_COMMENT="datasets:a", PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 4
    assert "scratch_stage.host.config" in imported_modules(done.stderr)
    assert "click" not in imported_modules(done.stderr)


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    for directory in ("data", "state"):
        (tmp_path / directory).mkdir()
    path = tmp_path / "c.yaml"
    path.write_text(
        f"datadir: {tmp_path / 'data'}\ncachedir: {tmp_path / 'cache'}\n"
        f"mountdir: {tmp_path / 'mnt'}\nstatedir: {tmp_path / 'state'}\n"
    )
    return path


@pytest.mark.parametrize(
    "prefix",
    [[], ["-v"], ["-vv"], ["--version-not-an-option-so-click-fails"]],
    ids=["fast-path", "click-v", "click-vv", "usage-error"],
)
def test_each_log_line_appears_once(node_config: Path, tmp_path: Path, prefix: list[str]) -> None:
    args = [*prefix, "--config", str(node_config), "prolog"]
    done = run(args, SLURM_JOB_COMMENT="datasets:nosuch", SCRATCH_STAGE_RUNDIR=str(tmp_path / "r"))
    if prefix and "not-an-option" in prefix[0]:
        assert done.returncode == 2  # click still reports usage errors as before
        return
    assert done.returncode == 0, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "refused" in line]
    assert len(refusals) == 1, done.stderr
    assert refusals[0].startswith("scratch-stage prolog[")  # the hook's format, not the CLI's
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_click_prolog_keeps_the_exit_code_of_a_node_fault(tmp_path: Path) -> None:
    args = ["-v", "--config", str(tmp_path / "missing.yaml"), "epilog"]
    done = run(args, SCRATCH_STAGE_RUNDIR=str(tmp_path / "r"))
    assert done.returncode == 4
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "cannot read configuration" in lines[0], lines


@pytest.fixture
def root_handlers() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        use_logging()
        root.handlers[:] = saved
        root.setLevel(level)


def test_logging_setup_is_idempotent(root_handlers: logging.Logger) -> None:
    foreign = logging.NullHandler()  # pytest's or a library's handlers stay
    root_handlers.addHandler(foreign)

    def ours() -> list[logging.Handler]:
        return [h for h in root_handlers.handlers if h.get_name() == HANDLER_NAME]

    setup_cli_logging(0)
    setup_cli_logging(1)
    assert len(ours()) == 1 and root_handlers.level == logging.INFO
    assert hook_sink() is None
    setup_hook_logging("prolog")
    sink = setup_hook_logging("prolog")
    assert hook_sink() is sink  # one sink: the second setup replaced the first
    assert foreign in root_handlers.handlers
    setup_cli_logging(0)  # and the CLI's setup takes the records back
    assert hook_sink() is None and len(ours()) == 1
