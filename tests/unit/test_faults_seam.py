"""The fault seam's pause (SCRATCH_STAGE_FAULT_DELAY=<point>=<seconds>): it sleeps at the
named point only; the kill (SCRATCH_STAGE_FAULT) is tested by tests/privileged/test_faults.py."""

from __future__ import annotations

import time

import pytest

from scratch_stage.host import faults


def test_a_named_point_pauses_and_others_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.DELAY_ENV, "after-coop-read=0.3")
    started = time.monotonic()
    faults.point("after-mount")
    assert time.monotonic() - started < 0.2
    faults.point("after-coop-read")
    assert time.monotonic() - started >= 0.3


def test_unset_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.DELAY_ENV, raising=False)
    monkeypatch.delenv(faults.ENV, raising=False)
    started = time.monotonic()
    for name in faults.POINTS:
        faults.point(name)
    assert time.monotonic() - started < 0.2
