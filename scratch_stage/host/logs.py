"""Logging setup: syslog for prolog and epilog (Slurm drops their output), stderr otherwise.

Both setups are idempotent and replace each other: the handlers they install carry a name
of their own, and each call first removes every handler of that name. A prolog run through
click (`scratch-stage --config PATH prolog`) sets up the CLI's logging, then the hook's:
each line still appears once.
"""

from __future__ import annotations

import logging
import os
import sys

from scratch_stage.core.text import printable

SYSLOG_SOCKET = "/dev/log"
HANDLER_NAME = "scratch-stage"


class SafeFormatter(logging.Formatter):
    """Escapes the message (scratch_stage.core.text.printable): one line, no terminal controls.

    Log messages carry names from datadir and job comments; a newline in one would forge
    a log line, an escape sequence would reach whoever reads the log on a terminal. A
    traceback (debug output of a bug) is appended unescaped, as the formatter does.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class SyslogHandler(logging.Handler):
    """Records to syslog(3) through the C module: cheaper than logging.handlers' socket."""

    _PRIORITIES = ((logging.ERROR, "LOG_ERR"), (logging.WARNING, "LOG_WARNING"))

    def __init__(self, ident: str) -> None:
        super().__init__()
        import syslog

        self.syslog = syslog
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)

    def emit(self, record: logging.LogRecord) -> None:
        name = next((p for level, p in self._PRIORITIES if record.levelno >= level), "LOG_INFO")
        try:
            self.syslog.syslog(getattr(self.syslog, name), self.format(record))
        except Exception:
            self.handleError(record)


def _install(level: int, handlers: list[logging.Handler]) -> None:
    """Make HANDLERS the root logger's scratch-stage handlers (replacing earlier ones)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.setLevel(level)
    for handler in handlers:
        handler.set_name(HANDLER_NAME)
        root.addHandler(handler)


def setup_hook_logging(kind: str) -> None:
    """Log to syslog (the journal) when it is there, and to stderr for Slurm's own log."""
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(
        SafeFormatter(f"scratch-stage {kind}[{os.getpid()}]: %(levelname)s %(message)s")
    )
    handlers: list[logging.Handler] = [stderr]
    if os.path.exists(SYSLOG_SOCKET):
        handler = SyslogHandler(f"scratch-stage-{kind}")
        handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
        handlers.append(handler)
    _install(logging.INFO, handlers)


def setup_cli_logging(verbosity: int) -> None:
    """Warnings to stderr; -v adds progress and actions, -vv debugging."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("scratch-stage: %(levelname)s: %(message)s"))
    _install(level, [handler])
