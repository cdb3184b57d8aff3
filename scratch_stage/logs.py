"""Logging setup: syslog for prolog and epilog (Slurm drops their output), stderr otherwise."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys

SYSLOG_SOCKET = "/dev/log"


def setup_hook_logging(kind: str) -> None:
    """Log to syslog (the journal) when it is there, and to stderr for Slurm's own log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if os.path.exists(SYSLOG_SOCKET):
        with contextlib.suppress(OSError):
            handlers.append(logging.handlers.SysLogHandler(address=SYSLOG_SOCKET))
    fmt = logging.Formatter(f"scratch-stage {kind}[{os.getpid()}]: %(levelname)s %(message)s")
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)


def setup_cli_logging(verbosity: int) -> None:
    """Warnings to stderr; -v adds progress and actions, -vv debugging."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("scratch-stage: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)
