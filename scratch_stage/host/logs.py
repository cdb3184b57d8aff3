"""The CLI's logging setup: warnings (or more with -v) to stderr through `logging`.

Prolog and epilog do not use `logging` at all (host/logger.py: a direct sink to stderr
and syslog). The setup is idempotent: its handler carries a name of its own, each call
first removes every handler of that name, and it removes a hook sink set up earlier in
the process, so each line appears once.
"""

from __future__ import annotations

import logging
import sys

from scratch_stage.core.text import printable
from scratch_stage.host.logger import use_logging

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


def setup_cli_logging(verbosity: int) -> None:
    """Warnings to stderr; -v adds progress and actions, -vv debugging."""
    use_logging()
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("scratch-stage: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.setLevel(level)
    handler.set_name(HANDLER_NAME)
    root.addHandler(handler)
