"""pyslurm demand source: version gating and the adapter, on a stand-in module.

pyslurm cannot be built against Debian's Slurm 22.05 (it tracks Slurm's major version), so
here the adapter is exercised with a stand-in exposing pyslurm's attributes; the real
fallback (no pyslurm in this venv) is exercised for real. tests/e2e/test_pyslurm.py runs the
adapter with the real pyslurm 25.11 against a real Slurm 25.11 controller.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from scratch_stage.slurm.pyslurm_source import major_minor, snapshot_from_pyslurm, usable_pyslurm


def fake_pyslurm(version: str) -> types.ModuleType:
    def job(**fields: Any) -> Any:
        base = dict(partition="debug", priority=10, num_nodes=1, start_time=None,
                    scheduled_nodes=None, comment=None)  # fmt: skip
        return types.SimpleNamespace(**{**base, **fields})

    module = types.ModuleType("pyslurm")
    module.__version__ = version  # type: ignore[attr-defined]
    jobs = {
        3: job(id=3, state="PENDING", comment="datasets:imagenet", scheduled_nodes="n[1-2]",
               start_time=1_800_000_000),
        4: job(id=4, state="RUNNING", comment="datasets:coco", time_limit=90),
        6: job(id=6, state="RUNNING", time_limit=None),
        5: job(id=5, state="PENDING", comment="no request"),
    }  # fmt: skip
    parts = {"debug": types.SimpleNamespace(nodes="n[1-4]")}
    module.Jobs = types.SimpleNamespace(load=lambda: jobs)  # type: ignore[attr-defined]
    module.Partitions = types.SimpleNamespace(load=lambda: parts)  # type: ignore[attr-defined]
    return module


def test_major_minor() -> None:
    assert major_minor("slurm-wlm 22.05.8") == (22, 5)
    assert major_minor("22.5.0") == (22, 5)
    assert major_minor("nothing") is None


def test_no_pyslurm_here_means_the_cli_with_a_reason() -> None:
    module, why = usable_pyslurm("slurm-wlm 22.05.8")
    assert module is None and "pyslurm" in why


def test_version_mismatch_and_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", fake_pyslurm("25.11.0"))
    module, why = usable_pyslurm("slurm-wlm 22.05.8")
    assert module is None and "does not match" in why
    monkeypatch.setitem(sys.modules, "pyslurm", fake_pyslurm("22.5.0"))
    module, why = usable_pyslurm("slurm-wlm 22.05.8")
    assert module is sys.modules["pyslurm"] and why == ""


def test_adapter_keeps_pending_jobs_with_datasets() -> None:
    snap = snapshot_from_pyslurm(fake_pyslurm("22.5.0"), now=1.0)
    assert [(j.job_id, j.datasets, j.sched_nodes) for j in snap.jobs] == [
        ("3", ("imagenet",), ("n1", "n2"))
    ]
    assert snap.jobs[0].start == 1_800_000_000.0
    assert snap.partitions == {"debug": ("n1", "n2", "n3", "n4")}
    assert snap.running == {"4": 5400.0, "6": None}  # running jobs' time limits


def test_a_pyslurm_that_ends_the_process_on_import_costs_only_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real pyslurm's import runs slurm_init(), which exits the process when it finds no
    # Slurm configuration; this stand-in does the same, on the path a child inherits.
    package = tmp_path / "pyslurm"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os, sys\n"
        "sys.stderr.write('python: fatal: Could not establish a configuration source\\n')\n"
        "os._exit(1)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyslurm", raising=False)
    module, why = usable_pyslurm("slurm 25.11.7")
    assert module is None
    assert why == (
        "pyslurm does not import in a child process (Could not establish a configuration source)"
    )
    assert "pyslurm" not in sys.modules  # this process never imported it
