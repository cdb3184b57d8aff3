"""Demand through pyslurm, when it imports and matches the running Slurm's major.minor.

pyslurm tracks Slurm's major version (its 23.2 speaks to Slurm 23.02 only); a mismatch
or an import failure means the CLI backend, with one log line saying why. The adapter
reads pyslurm's job and partition objects (`pyslurm.Jobs.load()`,
`pyslurm.Partitions.load()`, pyslurm >= 23.2) into the same Snapshot the CLI parsers make;
tests/e2e/test_pyslurm.py compares the two on a real Slurm 25.11 queue.

Importing the real pyslurm runs libslurm's slurm_init(), which ends the whole process
(`fatal: Could not establish a configuration source`, exit 1) when it finds no Slurm
configuration: the first import is therefore tried in a child process (IMPORT_PROBE).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.host import runner
from scratch_stage.host.logger import get_logger
from scratch_stage.slurm.demand import PendingJob, Snapshot, comment_datasets, expand_hosts

log = get_logger(__name__)

_VERSION_RE = re.compile(r"(\d+)\.(\d+)")
IMPORT_PROBE = "import sys, pyslurm; sys.stdout.write(pyslurm.__version__)"


def major_minor(text: str) -> tuple[int, int] | None:
    """(22, 5) from 'slurm-wlm 22.05.8' or from pyslurm's '22.5.0'."""
    match = _VERSION_RE.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def usable_pyslurm(
    scontrol_version: str, run: Callable[..., str] = runner.run, timeout: float = 30.0
) -> tuple[Any, str]:
    """(the pyslurm module, '') when it fits this Slurm, else (None, why not).

    Until this process has imported pyslurm, a child (through RUN) imports it first: a
    libslurm that exits on import ends that child, not this process.
    """
    if "pyslurm" not in sys.modules:
        try:
            run([sys.executable, "-c", IMPORT_PROBE], timeout=timeout)
        except ScratchStageError as e:
            return None, f"pyslurm does not import in a child process ({str(e).split(': ')[-1]})"
    try:
        import pyslurm  # type: ignore[import-not-found]
    except Exception as e:  # an ImportError, or a broken build failing on load
        return None, f"pyslurm does not import ({e})"
    ours = major_minor(getattr(pyslurm, "__version__", ""))
    theirs = major_minor(scontrol_version)
    if ours is None or theirs is None or ours != theirs:
        return None, (
            f"pyslurm {getattr(pyslurm, '__version__', '?')} does not match "
            f"Slurm {scontrol_version.strip() or '?'}"
        )
    if not hasattr(pyslurm, "Jobs") or not hasattr(pyslurm, "Partitions"):
        return None, "pyslurm lacks the Jobs/Partitions API (pyslurm >= 23.2 needed)"
    return pyslurm, ""


def _limit_seconds(minutes: Any) -> float | None:
    """pyslurm's `Job.time_limit` (minutes; None or a non-number when unlimited) in seconds."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        return None
    return float(minutes) * 60.0


def snapshot_from_pyslurm(pyslurm: Any, now: float) -> Snapshot:
    """The pending jobs with datasets and the partitions, read through pyslurm."""
    jobs = []
    running: dict[str, float | None] = {}
    for job in pyslurm.Jobs.load().values():
        comment = job.comment or ""
        if str(job.state).upper() == "RUNNING":
            running[str(job.id)] = _limit_seconds(getattr(job, "time_limit", None))
            continue
        if str(job.state).upper() != "PENDING" or "datasets:" not in comment:
            continue
        start = job.start_time
        jobs.append(
            PendingJob(
                str(job.id),
                tuple(p for p in str(job.partition or "").split(",") if p),
                int(job.priority or 0),
                int(job.num_nodes or 1),
                float(start) if start else None,
                expand_hosts(str(job.scheduled_nodes or "")),
                comment_datasets(comment),
                _limit_seconds(getattr(job, "time_limit", None)),
            )
        )
    partitions = {
        str(name): expand_hosts(str(part.nodes or ""))
        for name, part in pyslurm.Partitions.load().items()
    }
    return Snapshot(tuple(jobs), partitions, now, running)
