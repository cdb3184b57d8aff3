"""The hooks' logger: the lines `logging` wrote before, without importing `logging`."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from scratch_stage.host.logger import get_logger, hook_sink, use_logging

SCRIPT = textwrap.dedent(
    """
    import sys
    from scratch_stage.host import logger

    sink = logger.setup_hook_logging("epilog")
    sink.syslog = None  # stderr only: the test reads it
    log = logger.get_logger("scratch_stage.x")
    log.debug("hidden %s", 1)
    log.info("job %s: dataset %s", 7, "a\\nforged line")
    log.warning("no arguments, a literal %s")
    log.error("bad format %d", "text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("job %s failed", 8)
    print(sorted(m for m in ("logging", "typing", "dataclasses") if m in sys.modules))
    """
)


def run_script() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )


def test_hook_lines_escaped_one_per_record_and_no_logging_import() -> None:
    done = run_script()
    lines = done.stderr.splitlines()
    pid_prefix = lines[0].split(":", 1)[0]
    assert pid_prefix.startswith("scratch-stage epilog[") and pid_prefix.endswith("]")
    messages = [line[len(pid_prefix) + 2 :] for line in lines]
    assert messages[:3] == [
        "INFO job 7: dataset a\\nforged line",  # the newline escaped: no forged line
        "WARNING no arguments, a literal %s",
        "ERROR 'bad format %d' % ('text',) (%d format: a real number is required, not str)",
    ]
    assert messages[3] == "ERROR job 8 failed"
    assert lines[4] == "Traceback (most recent call last):"  # the traceback follows, raw
    assert lines[-1] == "RuntimeError: boom"
    assert not any("hidden" in line for line in lines)
    assert done.stdout.strip() == "[]"  # neither logging nor typing was imported


def test_without_a_hook_sink_records_go_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    use_logging()
    assert hook_sink() is None
    with caplog.at_level(logging.INFO, logger="scratch_stage.test"):
        get_logger("scratch_stage.test").info("value %s", 42)
        get_logger("scratch_stage.test").debug("not at INFO")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("scratch_stage.test", logging.INFO, "value 42")
    ]
    assert caplog.records[0].funcName == "test_without_a_hook_sink_records_go_to_logging"
