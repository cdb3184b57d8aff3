"""Demand through pyslurm, when it imports and matches the running Slurm's major.minor.

pyslurm tracks Slurm's major version (its 23.2 speaks to Slurm 23.02 only); a mismatch
or an import failure means the CLI backend, with one log line saying why. The adapter
reads pyslurm's job and partition objects (`pyslurm.Jobs.load()`,
`pyslurm.Partitions.load()`, pyslurm >= 23.2) into the same Snapshot the CLI parsers make.
"""

from __future__ import annotations

import re
from typing import Any

from scratch_stage.host.logger import get_logger
from scratch_stage.slurm.demand import PendingJob, Snapshot, comment_datasets, expand_hosts

log = get_logger(__name__)

_VERSION_RE = re.compile(r"(\d+)\.(\d+)")


def major_minor(text: str) -> tuple[int, int] | None:
    """(22, 5) from 'slurm-wlm 22.05.8' or from pyslurm's '22.5.0'."""
    match = _VERSION_RE.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def usable_pyslurm(scontrol_version: str) -> tuple[Any, str]:
    """(the pyslurm module, '') when it fits this Slurm, else (None, why not)."""
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


def snapshot_from_pyslurm(pyslurm: Any, now: float) -> Snapshot:
    """The pending jobs with datasets and the partitions, read through pyslurm."""
    jobs = []
    for job in pyslurm.Jobs.load().values():
        comment = job.comment or ""
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
            )
        )
    partitions = {
        str(name): expand_hosts(str(part.nodes or ""))
        for name, part in pyslurm.Partitions.load().items()
    }
    return Snapshot(tuple(jobs), partitions, now)
