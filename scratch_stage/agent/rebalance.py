"""One rebalance pass: measure heat, read demand, plan, act (docs/design.md)."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Callable

from scratch_stage.agent.mounts import perform_unmount
from scratch_stage.agent.node import Node
from scratch_stage.core.errors import ConfigError, Interrupted, ScratchStageError
from scratch_stage.host.catalog import Catalog, scan_catalog
from scratch_stage.host.config import simulator_only
from scratch_stage.host.counters import count_reads, layer_of_path, read_diskseqs
from scratch_stage.host.heat import (
    dataset_of_path,
    parse_diskstats,
    read_loop_backings,
    update_heat,
)
from scratch_stage.host.logger import get_logger
from scratch_stage.host.mountinfo import read_all_stacks
from scratch_stage.host.state import Failure, NodeState
from scratch_stage.policy.plan_input import plan_input
from scratch_stage.policy.planner import Plan, PlanParams, ValueFunction, default_value, plan
from scratch_stage.policy.report import (
    DoneRecord,
    FailedRecord,
    PassReport,
    save_report,
    skipped_report,
)
from scratch_stage.policy.unmounts import UnmountPlan, decide_unmounts
from scratch_stage.slurm.demand import Snapshot, running_demand
from scratch_stage.slurm.demand_sources import demand_here, read_snapshot

if TYPE_CHECKING:
    from scratch_stage.agent.mounts import MountStep, UnmountStep
    from scratch_stage.agent.stager import Progress, Staged
    from scratch_stage.agent.views import ExpectedBytes

# Makes the progress callback of one dataset's copy (the CLI's bar or log lines).
ProgressFactory = Callable[[str], "Progress"]

log = get_logger(__name__)

REBALANCE_LOCK = "rebalance.lock"


def load_value_function(spec: str) -> ValueFunction:
    """The callable named 'module:function' in the config, or the built-in one."""
    if not spec:
        return default_value
    problem = simulator_only(spec)
    if problem:
        raise ConfigError(f"value_function: {problem}")
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"value_function {spec!r} cannot be loaded: {e}") from None
    if not callable(func):
        raise ConfigError(f"value_function {spec!r} is not callable")
    return func  # type: ignore[no-any-return]


def measure_heat(
    node: Node, state: NodeState, now: float, *, count: bool = True
) -> dict[str, float]:
    """Sample /proc/diskstats into STATE's heat memory; bytes/s per dataset over `period`.

    With COUNT the bytes read since the last sample are added to the per-layer counters.
    """
    with open(os.path.join(node.root, "proc/diskstats")) as f:
        text = f.read()
    datadir, cachedir = str(node.config.datadir), str(node.config.cachedir)
    dataset_of = dataset_of_path(datadir, cachedir)
    sectors, backings = parse_diskstats(text), read_loop_backings(node.root)
    memory, rates = update_heat(
        state.heat, sectors, backings, dataset_of, now=now, period=node.config.period,
    )  # fmt: skip
    state.heat = memory
    if count:
        seqs = read_diskseqs(str(node.root), list(backings))
        count_reads(
            state.counters, sectors, backings, seqs, dataset_of, layer_of_path(datadir, cachedir)
        )
    for name, rate in rates.items():
        if rate > 0:
            state.last_used[name] = now
    return rates


@contextlib.contextmanager
def single_rebalance(node: Node) -> Iterator[bool]:
    """True when this process is the node's only rebalance; False if another one runs."""
    from scratch_stage.host.locks import try_flock

    node.store.ensure_statedir()
    fd = try_flock(os.path.join(node.config.statedir, REBALANCE_LOCK))
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def rebalance(
    node: Node, *, dry_run: bool = False, progress: ProgressFactory | None = None
) -> PassReport:
    """One pass; with DRY_RUN nothing is changed, not even the heat samples."""
    import time

    with single_rebalance(node) as alone:
        if not alone:
            return _skipped(node)
        if dry_run:
            return _rebalance(node, dry_run=True, progress=progress)
        started = time.monotonic()
        outcome = "error"
        try:
            report = _rebalance(node, dry_run=False, progress=progress)
            outcome = "failed" if report.failed else "ok"
            return report
        except Interrupted:
            outcome = "interrupted"
            raise
        finally:
            _record_pass(node, time.monotonic() - started, outcome)
            _write_metrics(node)


def _write_metrics(node: Node) -> None:
    """The node's metrics file after each pass, if configured; never fails the pass."""
    if node.config.metrics_dir is None:
        return
    from scratch_stage.agent.metrics import write_node_metrics

    try:
        write_node_metrics(node)
    except ScratchStageError as e:
        log.warning("metrics not written: %s", e)


def _record_pass(node: Node, duration: float, outcome: str) -> None:
    """The pass's time, duration and outcome in the counters; never fails the pass."""
    try:
        with node.store.transaction() as state:
            state.counters.record_rebalance(end=node.clock(), duration=duration, outcome=outcome)
    except ScratchStageError as e:
        log.warning("rebalance outcome not recorded: %s", e)


def _skipped(node: Node) -> PassReport:
    return skipped_report(node.capacity_bytes(), "another rebalance is running")


def pass_demand(
    node: Node, snapshot: Snapshot | None, state: NodeState, now: float, sizes: dict[str, int],
    heat: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float], PlanParams]:  # fmt: skip
    """This pass's demand, prospect and planner knobs: copies run at the rate this node's
    finished copies ran (the counters), else at `copy_rate`; a dataset not cached or in
    flight counts only the reads after its copy would land. With HEAT, the demand also
    counts what the jobs running here will read after a copy lands (`running_demand`:
    their time limits from SNAPSHOT, their starts from the state)."""
    config = node.config
    rate = state.counters.copy_rate() or float(config.copy_rate)
    copy_seconds = {
        n: size / rate
        for n, size in sizes.items()
        if n not in state.cached and n not in state.staging
    }
    demand, prospect = demand_here(
        config, snapshot, now, sizes, state.counters.datasets, copy_seconds
    )
    if heat is not None and snapshot is not None and snapshot.running:
        holds = {j: (h.datasets, h.since) for j, h in state.jobs.items()}
        running = running_demand(holds, snapshot.running, heat, copy_seconds, now)
        for name, amount in running.items():
            demand[name] = demand.get(name, 0.0) + amount
    params = PlanParams(horizon=config.horizon, hysteresis=config.hysteresis, copy_rate=rate)
    return demand, prospect, params


def expected_bytes(
    node: Node, snapshot: Snapshot, now: float, *, with_state: bool
) -> ExpectedBytes:
    """What the next rebalance would take as demand from SNAPSHOT (`pass_demand`), for the
    `demand` command: the catalog's sizes and, WITH_STATE (root), the node's counters
    (bytes read per job here, the copy rate) and its cached copies and copies in flight
    (their reads need no copy); without, the prior for every dataset (and no sizes if
    this user cannot list datadir)."""
    from scratch_stage.agent.views import ExpectedBytes
    from scratch_stage.slurm.demand import history_per_job, unplaced_scale

    try:
        catalog = scan_catalog(node.config.datadir, trust=node.trust)
        sizes = {n: i.fingerprint.size for n, i in catalog.images.items()}
    except ScratchStageError:
        if with_state:
            raise
        sizes = {}  # a datadir this user cannot list: no bytes to show, the jobs still
    state = node.store.read() if with_state else NodeState()
    demand, prospect, _ = pass_demand(node, snapshot, state, now, sizes)
    return ExpectedBytes(
        demand, prospect, sizes, history_per_job(state.counters.datasets), with_state,
        node.config.read_rate,
        unplaced_scale(snapshot, node.config.node, now=now, horizon=node.config.horizon),
    )  # fmt: skip


def _rebalance(node: Node, *, dry_run: bool, progress: ProgressFactory | None) -> PassReport:
    value = load_value_function(node.config.value_function)
    catalog = scan_catalog(node.config.datadir, trust=node.trust)
    now = node.clock()
    snapshot = read_snapshot(node.config, now, trust=node.trust)  # outside the lock
    sizes = {n: i.fingerprint.size for n, i in catalog.images.items()}
    capacity = node.capacity_bytes()
    fingerprints = {n: i.fingerprint for n, i in catalog.images.items()}
    if dry_run:
        state = node.store.read()
        heat = measure_heat(node, state, now, count=False)
        demand, prospect, params = pass_demand(node, snapshot, state, now, sizes, heat)
        the_plan = plan(
            plan_input(state, fingerprints, now), heat, demand, capacity,
            params=params, value=value, prospect=prospect,
        )  # fmt: skip
        return PassReport(the_plan, heat, demand, capacity)
    with node.store.transaction() as state:
        from scratch_stage.agent.reconcile import settle

        settle(node, state, full=True)
        heat = measure_heat(node, state, now)
        demand, prospect, params = pass_demand(node, snapshot, state, now, sizes, heat)
        # counters of datasets gone from datadir and the cache go too: the state stays small
        gone = set(state.counters.datasets) - set(catalog.images) - set(state.cached)
        state.counters.forget(
            gone - set(heat) - {n for h in state.jobs.values() for n in h.datasets}
        )
        backoff = {n: f for n, f in state.failures.items() if f.retry_at > now}
        blocked = {n: _backoff_text(f, now) for n, f in backoff.items()}
        blocked.update(
            (n, f"{i.kind} in progress by pid {i.pid}") for n, i in state.intents.items()
        )
        the_plan = plan(
            plan_input(state, fingerprints, now, blocked=blocked), heat, demand, capacity,
            params=params, value=value, prospect=prospect,
        )  # fmt: skip
        report = PassReport(the_plan, heat, demand, capacity)
        decided = _decide_unmounts(node, state, the_plan, catalog, now)
        for name in decided.idle_since_now:
            state.last_used[name] = now
        steps = _claim_unmounts(node, state, decided)
        remounts = _claim_remounts(node, state, catalog, decided)
    _act(node, steps, the_plan, report)
    _remount(node, remounts, report)
    report.failed += [
        FailedRecord("stage", n, blocked[n]) for n in sorted(backoff) if n in fingerprints
    ]
    _stage(node, the_plan, report, progress)
    if node.config.node_features:
        _publish_features(node, report)
    save_report(node.config.statedir, report, now)
    _publish_summary(node)
    return report


def _publish_features(node: Node, report: PassReport) -> None:
    from scratch_stage.agent.features import publish_features

    try:
        changed = publish_features(node, sorted(node.store.read().cached))
    except ScratchStageError as e:
        report.failed.append(FailedRecord("features", None, str(e)))
        return
    if changed is not None:
        report.done.append(DoneRecord("features", None, ",".join(changed) or "no datasets"))


def _publish_summary(node: Node) -> None:
    """The public summary for users' `status`; a failure here never fails the pass."""
    from scratch_stage.agent.admin import publish_summary

    try:
        publish_summary(node)
    except ScratchStageError as e:
        log.warning("public summary not written: %s", e)


def _decide_unmounts(
    node: Node, state: NodeState, the_plan: Plan, catalog: Catalog, now: float
) -> UnmountPlan:
    """The pass's unmounts and remounts (a value: policy/unmounts.py) from this node."""
    from scratch_stage.agent.mounts import real_path

    stacks = read_all_stacks(node.root, str(node.mountdir))
    # as the loop device reports it (cachedir may be a symlink)
    cached_backing = {name: real_path(node.cached_path(name)) for name in stacks}
    return decide_unmounts(
        state, the_plan, stacks, catalog.images, cached_backing,
        idle_unmount=node.config.idle_unmount, now=now,
    )  # fmt: skip


def _claim_unmounts(node: Node, state: NodeState, decided: UnmountPlan) -> list[UnmountStep]:
    """Claim each decided eviction and unmount as an intent (under the lock)."""
    from scratch_stage.agent.mounts import UnmountStep, claim

    steps = []
    for unmount in decided.unmounts:
        if unmount.evict:
            path = node.cached_path(unmount.name)
            if claim(node, state, unmount.name, "evict", str(path)):
                steps.append(UnmountStep(unmount.name, path, delete=True))
        elif claim(node, state, unmount.name, "unmount", unmount.reason):
            steps.append(UnmountStep(unmount.name, None, delete=False))
    return steps


def _claim_remounts(
    node: Node, state: NodeState, catalog: Catalog, decided: UnmountPlan
) -> list[MountStep]:
    """Claim a mount for each held dataset whose stack is empty (a process died mid-way)."""
    from scratch_stage.agent.mounts import claim, prepare_mount

    steps = []
    for name in decided.remounts:
        step = prepare_mount(node, state, catalog.images[name])
        if step is not None and claim(node, state, name, "mount", str(step.source)):
            steps.append(step)
    return steps


def _remount(node: Node, steps: list[MountStep], report: PassReport) -> None:
    """Mount what held datasets lack, outside the lock."""
    from scratch_stage.agent.mounts import describe, perform_mount, record_attach, release_claim

    for step in steps:
        attach = None
        try:
            attach = perform_mount(node, step)
        except ScratchStageError as e:
            report.failed.append(FailedRecord("remount", step.name, str(e)))
        else:
            node.events.emit("mount", step.name, detail=describe(step), reason="held, unmounted")
            report.done.append(DoneRecord("remounted", step.name, "held but not mounted"))
        finally:
            with node.store.transaction() as state:
                release_claim(state, step.name)
                record_attach(state, attach)


# Finished steps are recorded together, every this many steps or seconds: hundreds of
# unmounts in a pass must not queue hundreds of state writes in front of the prologs.
_FINISH_EVERY = 16
_FINISH_SECONDS = 0.25


def _act(node: Node, steps: list[UnmountStep], the_plan: Plan, report: PassReport) -> None:
    """Carry out the claimed evictions and unmounts outside the lock, finishing them in
    small batches (an unfinished step is an intent: reconcile settles it after a crash)."""
    import time

    from scratch_stage.host import interrupts

    done: list[tuple[UnmountStep, str]] = []
    last = time.monotonic()
    for i, step in enumerate(steps):
        if interrupts.requested():  # stop between steps: drop the claims not acted on
            _finish(node, done, steps[i:], the_plan, report)
            interrupts.check()
        error = ""
        try:
            perform_unmount(node, step)
        except ScratchStageError as e:
            error = str(e)
        done.append((step, error))
        if len(done) >= _FINISH_EVERY or time.monotonic() - last >= _FINISH_SECONDS:
            _finish(node, done, [], the_plan, report)
            done, last = [], time.monotonic()
    _finish(node, done, [], the_plan, report)


def _finish(
    node: Node,
    done: list[tuple[UnmountStep, str]],
    abandoned: list[UnmountStep],
    the_plan: Plan,
    report: PassReport,
) -> None:
    """Record DONE steps (release their claims, drop evicted records) and drop ABANDONED."""
    from scratch_stage.agent.mounts import release_claim

    if not done and not abandoned:
        return
    reasons: dict[str, str] = {}
    with node.store.transaction() as state:
        for step, error in done:
            intent = state.intents.get(step.name)
            reasons[step.name] = intent.source if intent else "idle"
            release_claim(state, step.name)
            if not error and step.delete:
                state.cached.pop(step.name, None)
                state.counters.add(step.name, "evictions")
            if not error and not step.delete:
                state.last_used.pop(step.name, None)
        for step in abandoned:
            release_claim(state, step.name)
    for step, error in done:
        if error:
            report.failed.append(
                FailedRecord("evict" if step.delete else "unmount", step.name, error)
            )
        elif step.delete:
            why = the_plan.decisions[step.name].reason
            node.events.emit("evict", step.name, reason=why)
            report.done.append(DoneRecord("evicted", step.name, why))
        else:
            node.events.emit("unmount", step.name, reason=reasons[step.name])
            report.done.append(DoneRecord("unmounted", step.name, reasons[step.name]))


def _backoff_text(failure: Failure, now: float) -> str:
    from scratch_stage.core.units import format_duration

    wait = format_duration(max(1, round(failure.retry_at - now)))
    return f"not retried before another {wait} after {failure.count} failure(s): {failure.reason}"


def _stage(
    node: Node, the_plan: Plan, report: PassReport, progress: ProgressFactory | None
) -> None:
    """Copy in value order, outside the state lock; one failure does not stop the rest."""
    from scratch_stage.agent.stager import stage
    from scratch_stage.host import interrupts

    for name in the_plan.stage:
        interrupts.check()
        try:
            staged = stage(node, name, progress=progress(name) if progress else None)
            report.done.append(staged_record(staged))
        except ScratchStageError as e:
            if isinstance(e, Interrupted):
                raise
            report.failed.append(FailedRecord("stage", name, str(e)))
            log.warning("staging %s failed: %s", name, e)
        except OSError as e:  # the cache filesystem misbehaving must not end the daemon
            report.failed.append(FailedRecord("stage", name, str(e.strerror or e)))
            log.warning("staging %s failed: %s", name, e)


def staged_record(staged: Staged) -> DoneRecord:
    """The report's record of one `stage` outcome."""
    from scratch_stage.agent.mounts import describe

    detail = describe(staged.mount) if staged.mount is not None else ""
    return DoneRecord("copied" if staged.copied else "already-cached", staged.name, detail)
