from __future__ import annotations

import io
import logging
import os
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratch_stage.cli import format_report, format_status
from scratch_stage.core.text import printable
from scratch_stage.host.logs import SafeFormatter

HOSTILE = "\x1b]0;owned\x07\x1b[2J\u202e\x9b\nforged line\r\t\x00\x7f\udcff\u2028x"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("imagenet.v2", "imagenet.v2"),
        ("données é ü 数据", "données é ü 数据"),  # printable non-ASCII text is kept
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("back\\slash", "back\\\\slash"),  # so "\\x1b" in a name cannot pose as an escape
        ("\x00\x7f", "\\x00\\x7f"),
        ("\x9b\xa0\xad", "\\u009b\\u00a0\\u00ad"),  # C1 CSI, no-break space, soft hyphen
        ("\u202eevil", "\\u202eevil"),  # bidi override
        ("\u2028", "\\u2028"),  # line separator
        ("\udcff\udcfe", "\\xff\\xfe"),  # undecodable bytes of a file name
        ("\U000e0001", "\\U000e0001"),  # a format character outside the BMP
        (42, "42"),
    ],
)
def test_printable(text: object, shown: str) -> None:
    assert printable(text) == shown


@given(st.text())
def test_printable_output_is_one_safe_line(text: str) -> None:
    out = printable(text)
    assert out.isprintable()
    assert all(unicodedata.category(c)[0] != "C" for c in out)
    out.encode("utf-8")  # no lone surrogate left: it can always be written


@given(st.binary())
def test_printable_handles_any_file_name_bytes(raw: bytes) -> None:
    out = printable(os.fsdecode(raw))
    assert out.isprintable()
    out.encode("ascii" if raw.isascii() else "utf-8")


@given(st.text(), st.text())
def test_printable_is_injective(one: str, other: str) -> None:
    # Distinct names stay distinct on screen: a name cannot pass for another one.
    if one != other:
        assert printable(one) != printable(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [("\\x1b", "\x1b"), ("\udc9b", "\x9b"), ("\udca0", "\xa0"), ("\\n", "\n")],
)
def test_printable_never_confuses_two_names(one: str, other: str) -> None:
    assert printable(one) != printable(other)


def test_status_table_escapes_names_and_problems() -> None:
    from scratch_stage.agent.views import DatasetRow, StatusView

    row = DatasetRow(name=HOSTILE, size=1, state="cold", cached=False, holders=(HOSTILE,))
    view = StatusView("n", 1, 0, (row,), {HOSTILE: HOSTILE})
    text = format_status(view)
    assert len(text.splitlines()) == 7  # header, row, cache, problem, 3 of legend
    assert all(line.isprintable() for line in text.splitlines())
    assert "\\x1b]0;owned\\x07" in text.splitlines()[1]


def test_rebalance_report_escapes_every_line() -> None:
    from scratch_stage.policy.planner import Decision, Plan
    from scratch_stage.policy.report import DoneRecord, FailedRecord, PassReport

    the_plan = Plan((HOSTILE,), (), {HOSTILE: Decision("keep", 1.0, HOSTILE)}, (HOSTILE,))
    report = PassReport(the_plan, {}, {}, 1)
    report.done.append(DoneRecord("evicted", HOSTILE, HOSTILE))
    report.failed.append(FailedRecord("stage", HOSTILE, HOSTILE))
    text = format_report(report, explain=True, dry_run=True)
    assert len(text.splitlines()) == 5
    assert all(line.isprintable() for line in text.splitlines())


def test_log_lines_are_escaped() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test_text.safe")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("dataset %s refused: %s", HOSTILE, "reason\nINFO forged")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("WARNING dataset \\x1b]0;owned\\x07")
    assert lines[0].endswith("reason\\nINFO forged")
    assert lines[0].isprintable()
