"""Every test runs away from the node's real configuration and state (as pre-commit does)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from scratch_stage.host import config


@pytest.fixture(autouse=True)
def forbid_real_defaults(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/etc/scratch-stage, /var/lib/scratch-stage and /datasets become paths that fail.

    They are moved below a regular file, so reading or creating them raises ENOTDIR; the
    configuration cache goes to a fresh directory; and no SCRATCH_STAGE_* variable of the
    calling shell leaks into a test.
    """
    blocker = tmp_path_factory.mktemp("off-limits") / "real-defaults-are-off-limits"
    blocker.write_text("tests must not touch the real defaults\n")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(blocker / "config.yaml"))
    monkeypatch.setattr(config, "DEFAULT_STATEDIR", str(blocker / "statedir"))
    monkeypatch.setattr(config, "DEFAULT_MOUNTDIR", str(blocker / "mountdir"))
    monkeypatch.setattr(config, "RUNDIR", str(tmp_path_factory.mktemp("rundir-parent") / "run"))
    for name in list(os.environ):
        if name.startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def restore_stop_signals() -> Iterator[None]:
    """A command run in-process (`run_cli` of prestage, rebalance...) turns SIGTERM and SIGINT
    into a flag (host/interrupts.py); put pytest's own handlers back after each test, so a
    later test's forked workers still die on SIGTERM and Ctrl-C still stops the run."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
