"""Loggers that cost a prolog nothing: `logging` is imported only where it is used.

Every module logs through `log = get_logger(__name__)`. In a prolog or epilog,
`setup_hook_logging` installs a direct sink: each line goes to stderr (Slurm's own log)
as `scratch-stage prolog[PID]: LEVEL message` and, when /dev/log exists, to syslog(3)
through the C module as `LEVEL message` -- the lines the `logging` setup wrote before,
without importing `logging` (about 10 ms of every job start with its `re`, `enum`,
`traceback` and `string`). Everywhere else (the CLI, the daemon, tests) a logger hands
each record to `logging.getLogger(name)`, imported at the first record, so
`setup_cli_logging` (host/logs.py), pytest's caplog and -v work as before.

The setups are idempotent and exclusive: a hook sink replaces an earlier one, and
`setup_cli_logging` removes it; with the sink in place no record reaches `logging`, so a
prolog run through click (`scratch-stage --config PATH prolog`) still writes each line once.
"""

from __future__ import annotations

import os
import sys

from scratch_stage.core.text import printable

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from typing import Any

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_LEVEL_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
SYSLOG_SOCKET = "/dev/log"


class HookSink:
    """Where a prolog's or epilog's lines go: stderr, and syslog when it is there."""

    def __init__(self, kind: str, *, level: int = INFO, use_syslog: bool | None = None) -> None:
        self.kind = kind
        self.level = level
        self.prefix = f"scratch-stage {kind}[{os.getpid()}]: "
        self.syslog: Any = None
        if use_syslog is None:
            use_syslog = os.path.exists(SYSLOG_SOCKET)
        if use_syslog:
            import syslog

            syslog.openlog(f"scratch-stage-{kind}", syslog.LOG_PID, syslog.LOG_DAEMON)
            self.syslog = syslog

    def write(self, level: int, message: str, trace: str) -> None:
        """One record at LEVEL: MESSAGE escaped to one line, TRACE (a traceback) appended."""
        if level < self.level:
            return
        line = f"{_LEVEL_NAMES.get(level, 'INFO')} {printable(message)}"
        if trace:
            line += "\n" + trace.rstrip("\n")
        try:
            sys.stderr.write(self.prefix + line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # Slurm closed our stderr: syslog still gets the line
            pass
        if self.syslog is not None:
            syslog = self.syslog
            priority = (
                syslog.LOG_ERR
                if level >= ERROR
                else syslog.LOG_WARNING
                if level >= WARNING
                else syslog.LOG_INFO
            )
            try:  # noqa: SIM105 - contextlib costs the prolog an import
                syslog.syslog(priority, line)
            except (OSError, ValueError):
                pass


_sink: HookSink | None = None


def setup_hook_logging(kind: str) -> HookSink:
    """Send every logger's lines to stderr and syslog, as prolog or epilog KIND."""
    global _sink
    _sink = HookSink(kind)
    return _sink


def hook_sink() -> HookSink | None:
    """The sink set up by `setup_hook_logging`, or None when records go to `logging`."""
    return _sink


def use_logging() -> None:
    """Hand records to `logging` again (the CLI's setup; tests that set up a hook)."""
    global _sink
    _sink = None


class Logger:
    """`logging.Logger`'s debug/info/warning/error/exception, %-style arguments."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, message: str, *args: object) -> None:
        self._log(DEBUG, message, args)

    def info(self, message: str, *args: object) -> None:
        self._log(INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        self._log(WARNING, message, args)

    def error(self, message: str, *args: object) -> None:
        self._log(ERROR, message, args)

    def exception(self, message: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        self._log(ERROR, message, args, trace=True)

    def _log(
        self, level: int, message: str, args: tuple[object, ...], *, trace: bool = False
    ) -> None:
        sink = _sink
        if sink is None:
            import logging

            logging.getLogger(self.name).log(level, message, *args, exc_info=trace, stacklevel=3)
            return
        if level < sink.level:
            return
        try:
            text = message % args if args else message
        except (TypeError, ValueError) as e:  # a bug in a log call must not fail the hook
            text = f"{message!r} % {args!r} ({e})"
        formatted = ""
        if trace and sys.exc_info()[0] is not None:
            import traceback

            formatted = traceback.format_exc()
        sink.write(level, text, formatted)


def get_logger(name: str) -> Logger:
    """The logger for module NAME (`get_logger(__name__)`)."""
    return Logger(name)
