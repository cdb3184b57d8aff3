"""Prolog and epilog: a user's mistake is a log line, never a drained node (docs/design.md)."""

from __future__ import annotations

from scratch_stage.core.errors import DatasetError, NodeFault, ScratchStageError
from scratch_stage.core.records import record
from scratch_stage.core.requests import Request, parse_request, shorten
from scratch_stage.host.logger import get_logger

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:  # lazy: a prolog for a job without datasets never loads the node's modules
    from collections.abc import Mapping

    from scratch_stage.agent.mounts import MountStep
    from scratch_stage.agent.node import Node
    from scratch_stage.host.catalog import Image
    from scratch_stage.host.heat import Attach
    from scratch_stage.host.state import NodeState

log = get_logger(__name__)

# A hostile comment may hold thousands of bad entries: log a few, count the rest.
_MAX_LOGGED_REJECTIONS = 5


@record(frozen=True)
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
    """Mount every permitted dataset of JOB and record it as holder; NodeFault on node faults.

    Decide under the lock (hold and intents recorded first, so a kill at any point loses no
    hold and leaves nothing unaccounted for), mount outside it, then drop the intents.
    A dataset whose image cannot be mounted, or that another process keeps busy past
    `lock_timeout`, is refused for this job: a user's image never drains the node.
    """
    import time

    tally: list[str] = []  # refusal reasons, counted with the next state write
    _log_rejections(node, job, tally)
    permitted = (_permitted(node, job, name, tally) for name in job.request.names)
    pending = {image.name: image for image in permitted if image is not None}
    if not pending:
        _count_refusals(node, tally)
        return 0
    deadline = time.monotonic() + node.config.lock_timeout
    mounted: list[str] = []
    first = True
    while pending:
        busy = _mount_round(node, job, pending, mounted, tally, announce=first)
        first = False
        pending = {name: pending[name] for name in busy}
        if pending and time.monotonic() >= deadline:
            _drop_holds(node, job, list(pending), refused_as="busy")
            for name in pending:
                _refuse(node, job, name, "another scratch-stage process kept it busy")
            break
        if pending:
            time.sleep(0.02)
    if node.config.prolog_stage_budget > 0 and mounted:
        _stage_within_budget(node, job, mounted)
    return 0


def _count_refusals(node: Node, tally: list[str]) -> None:
    """Count refusals no state write of this prolog counted (all its datasets refused).

    Only on a node that has a state already: a user's mistake never creates one (a rebuild).
    """
    import os

    from scratch_stage.host.state import STATE_FILE

    if tally and os.path.exists(os.path.join(node.config.statedir, STATE_FILE)):
        with node.store.transaction() as state:
            _flush(state, tally)


def _flush(state: NodeState, tally: list[str]) -> None:
    for reason in tally:
        state.counters.refused(reason)
    tally.clear()


def _mount_round(
    node: Node,
    job: Job,
    pending: dict[str, Image],
    mounted: list[str],
    tally: list[str],
    *,
    announce: bool,
) -> list[str]:
    """One decide-act-finish round; the names another process is acting on (to retry)."""
    from scratch_stage.agent.mounts import (
        claim,
        describe,
        fresh_copy,
        perform_mount,
        prepare_mount,
    )
    from scratch_stage.core.errors import CommandError
    from scratch_stage.host.state import Hold

    busy: list[str] = []
    steps = []
    with node.store.transaction() as state:
        _flush(state, tally)
        held = state.jobs.get(job.job_id)
        names = tuple(dict.fromkeys((*(held.datasets if held else ()), *pending)))
        state.jobs[job.job_id] = Hold(names, job.user, held.since if held else node.clock())
        for name, image in pending.items():
            if name in state.intents:
                busy.append(name)
                continue
            step = prepare_mount(node, state, image)
            if step is None:  # served already: this job starts on what is mounted
                mounted.append(name)
                cached = fresh_copy(node, state, image)
                state.counters.add(name, "jobs_cached" if cached else "jobs_slow")
            elif claim(node, state, name, "mount", str(step.source)):
                steps.append(step)
    if announce:
        waited = round(node.store.lock_waited * 1000, 1)
        for name in pending:
            node.events.emit("request", name, job=job.job_id, user=job.user, lock_wait_ms=waited)
    failed: dict[str, str] = {}
    attached: dict[str, Attach | None] = {}
    try:
        for step in steps:
            try:
                attached[step.name] = perform_mount(node, step)
            except CommandError as e:
                if e.missing:
                    raise
                failed[step.name] = str(e)
                continue
            except DatasetError as e:  # swapped or rewritten since it was checked
                failed[step.name] = str(e)
                continue
            mounted.append(step.name)
            node.events.emit("mount", step.name, job=job.job_id, detail=describe(step))
    except NodeFault:
        # The node cannot mount at all: the prolog fails (drain), and this job holds nothing.
        _finish(node, job, steps, {name: "node fault" for name in pending}, {}, refused=False)
        raise
    _finish(node, job, steps, failed, attached, refused=True)
    for name, why in failed.items():
        _refuse(node, job, name, f"cannot be mounted: {why}")
    return busy


def _finish(
    node: Node,
    job: Job,
    steps: list[MountStep],
    failed: dict[str, str],
    attached: dict[str, Attach | None],
    *,
    refused: bool,
) -> None:
    """Drop this process's intents; a dataset that failed to mount is no longer held (and,
    when REFUSED, counted as refused); a mounted one counts as a job start on its layer."""
    from scratch_stage.agent.mounts import record_attach, release_claim

    if not steps:
        return
    with node.store.transaction() as state:
        for step in steps:
            release_claim(state, step.name)
            if step.name in failed:
                if refused:
                    state.counters.refused("mount_failed")
            elif step.name in attached:
                state.counters.add(step.name, "jobs_cached" if step.cached else "jobs_slow")
                record_attach(state, attached[step.name])
        _unhold(state, job, list(failed))


def _drop_holds(node: Node, job: Job, names: list[str], *, refused_as: str) -> None:
    with node.store.transaction() as state:
        _unhold(state, job, names)
        for _ in names:
            state.counters.refused(refused_as)


def _unhold(state: NodeState, job: Job, names: list[str]) -> None:
    from scratch_stage.host.state import Hold

    hold = state.jobs.get(job.job_id)
    if hold is None or not names:
        return
    kept = tuple(n for n in hold.datasets if n not in names)
    if kept:
        state.jobs[job.job_id] = Hold(kept, hold.user, hold.since)
    else:
        del state.jobs[job.job_id]


def _permitted(node: Node, job: Job, name: str, tally: list[str]) -> Image | None:
    """The image for NAME if JOB may have it; a refusal is logged, a node fault raised."""
    from scratch_stage.host.catalog import image_access_problem, lookup_image, user_gids

    try:
        image = lookup_image(node.config.datadir, name, trust=node.trust)
    except DatasetError as e:
        _refuse(node, job, name, str(e))
        tally.append("unavailable")
        return None
    gids = user_gids(job.user, job.gid) if job.user else frozenset([job.gid])
    problem = image_access_problem(image, job.uid, gids, node.config.access)  # name and target
    if problem:
        _refuse(node, job, name, problem)
        tally.append("forbidden")
        return None
    return image


def _refuse(node: Node, job: Job, entry: str, reason: str) -> None:
    log.warning("job %s: dataset %s refused: %s", job.job_id, shorten(entry), reason)
    node.events.emit("refused", entry[:128], job=job.job_id, user=job.user, reason=reason)


def _log_rejections(node: Node, job: Job, tally: list[str]) -> None:
    rejected = job.request.rejected
    tally.extend("invalid_name" for _ in rejected)
    for rejection in rejected[:_MAX_LOGGED_REJECTIONS]:
        _refuse(node, job, rejection.entry, rejection.reason)
    if len(rejected) > _MAX_LOGGED_REJECTIONS:
        _refuse(node, job, "...", f"{len(rejected) - _MAX_LOGGED_REJECTIONS} more bad entries")


def _stage_within_budget(node: Node, job: Job, names: list[str]) -> None:
    """Wait up to the staging budget for cached copies; on any failure keep the slow mount."""
    import time

    from scratch_stage.agent.stager import stage

    deadline = time.monotonic() + node.config.prolog_stage_budget
    for name in names:
        try:
            stage(node, name, deadline=deadline)
        except (ScratchStageError, OSError) as e:
            log.info("job %s: %s stays on slow storage: %s", job.job_id, name, e)


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
