"""Prolog and epilog (DESIGN section 6): a user's mistake is a log line, never a drained node."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scratch_stage.errors import DatasetError, NodeFault, ScratchStageError
from scratch_stage.requests import Request, parse_request, shorten

if TYPE_CHECKING:  # lazy: a prolog for a job without datasets never loads the node's modules
    from scratch_stage.catalog import Image
    from scratch_stage.node import Node

log = logging.getLogger(__name__)

# A hostile comment may hold thousands of bad entries: log a few, count the rest.
_MAX_LOGGED_REJECTIONS = 5


@dataclass(frozen=True)
class Job:
    """What Slurm tells a prolog or epilog about the job, from the environment only."""

    job_id: str
    user: str
    uid: int
    gid: int
    request: Request

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Job:
        """The job in ENVIRON; NodeFault if it is not a Slurm prolog/epilog environment."""
        job_id = environ.get("SLURM_JOB_ID", "")
        if not (job_id.isascii() and job_id.isdigit()):  # not '²': str.isdigit is Unicode
            raise NodeFault(f"SLURM_JOB_ID is missing or not a job id: {shorten(job_id)}")
        request = parse_request(
            environ.get("SLURM_JOB_COMMENT", ""), environ.get("SPANK_DATASETS", "")
        )
        return cls(
            job_id, environ.get("SLURM_JOB_USER", ""), _int(environ.get("SLURM_JOB_UID")),
            _int(environ.get("SLURM_JOB_GID")), request,
        )  # fmt: skip


def _int(value: str | None) -> int:
    # An unknown uid is treated as "nobody": it can read only world-readable images.
    return int(value) if value and value.isascii() and value.isdigit() else 65534


def run_prolog(node: Node, job: Job) -> int:
    """Mount every permitted dataset of JOB and record it as holder; NodeFault on node faults."""
    _log_rejections(node, job)
    images = [
        image for image in map(lambda n: _permitted(node, job, n), job.request.names) if image
    ]
    if not images:
        return 0
    from scratch_stage.mounts import ensure_mounted
    from scratch_stage.recovery import reap_dead_copies
    from scratch_stage.state import Hold

    with node.store.transaction() as state:
        if state.staging:
            reap_dead_copies(node, state)
        done = [(image, ensure_mounted(node, state, image)) for image in images]
        held = state.jobs.get(job.job_id)
        names = tuple(dict.fromkeys((*(held.datasets if held else ()), *(i.name for i in images))))
        state.jobs[job.job_id] = Hold(names, job.user, node.clock())
    for image, action in done:
        node.events.emit("request", image.name, job=job.job_id, user=job.user)
        if action:
            node.events.emit("mount", image.name, job=job.job_id, detail=action)
    if node.config.prolog_stage_budget > 0:
        _stage_within_budget(node, job, images)
    return 0


def _permitted(node: Node, job: Job, name: str) -> Image | None:
    """The image for NAME if JOB may have it; a refusal is logged, a node fault raised."""
    from scratch_stage.catalog import image_access_problem, lookup_image, user_gids

    try:
        image = lookup_image(node.config.datadir, name)
    except DatasetError as e:
        _refuse(node, job, name, str(e))
        return None
    gids = user_gids(job.user, job.gid) if job.user else frozenset([job.gid])
    problem = image_access_problem(image, job.uid, gids, node.config.access)  # name and target
    if problem:
        _refuse(node, job, name, problem)
        return None
    return image


def _refuse(node: Node, job: Job, entry: str, reason: str) -> None:
    log.warning("job %s: dataset %s refused: %s", job.job_id, shorten(entry), reason)
    node.events.emit("refused", entry[:128], job=job.job_id, user=job.user, reason=reason)


def _log_rejections(node: Node, job: Job) -> None:
    rejected = job.request.rejected
    for rejection in rejected[:_MAX_LOGGED_REJECTIONS]:
        _refuse(node, job, rejection.entry, rejection.reason)
    if len(rejected) > _MAX_LOGGED_REJECTIONS:
        _refuse(node, job, "...", f"{len(rejected) - _MAX_LOGGED_REJECTIONS} more bad entries")


def _stage_within_budget(node: Node, job: Job, images: list[Image]) -> None:
    """Wait up to the staging budget for cached copies; on any failure keep the slow mount."""
    from scratch_stage.stager import stage

    deadline = node.clock() + node.config.prolog_stage_budget
    for image in images:
        try:
            stage(node, image.name, deadline=deadline)
        except ScratchStageError as e:
            log.info("job %s: %s stays on slow storage: %s", job.job_id, image.name, e)


def run_epilog(node: Node, job: Job) -> int:
    """Release JOB's holds; idempotent, 0 for a job that held nothing."""
    if job.job_id not in node.store.read().jobs:
        return 0
    with node.store.transaction() as state:
        hold = state.jobs.pop(job.job_id, None)
        for name in hold.datasets if hold else ():
            state.last_used[name] = node.clock()  # the idle-unmount timer starts now
    if hold is not None:
        for name in hold.datasets:
            node.events.emit("release", name, job=job.job_id)
    return 0
