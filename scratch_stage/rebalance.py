"""One rebalance pass: measure heat, read demand, plan, act (DESIGN section 8)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from scratch_stage import runner
from scratch_stage.catalog import Catalog, Fingerprint, scan_catalog
from scratch_stage.demand import Snapshot, node_demand, read_demand_file, snapshot_from_cli
from scratch_stage.errors import ConfigError, ScratchStageError
from scratch_stage.heat import dataset_of_path, parse_diskstats, read_loop_backings, update_heat
from scratch_stage.mountinfo import read_all_stacks
from scratch_stage.node import Node
from scratch_stage.plan_input import plan_input
from scratch_stage.planner import Plan, PlanParams, ValueFunction, default_value, plan
from scratch_stage.state import NodeState

log = logging.getLogger(__name__)

REBALANCE_LOCK = "rebalance.lock"
LAST_REPORT = "last-rebalance.json"


@dataclass
class Report:
    """What a pass saw, decided and did."""

    plan: Plan
    heat: Mapping[str, float]
    demand: Mapping[str, float]
    capacity: int
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        decisions = {
            n: {"action": d.action, "value": d.value, "reason": d.reason,
                "heat": self.heat.get(n, 0.0), "demand": self.demand.get(n, 0.0)}
            for n, d in sorted(self.plan.decisions.items())
        }  # fmt: skip
        return {
            "capacity_bytes": self.capacity,
            "used_after_bytes": self.plan.used_after,
            "evict": list(self.plan.evict),
            "stage": list(self.plan.stage),
            "unfit_pins": list(self.plan.unfit_pins),
            "method": self.plan.method,
            "decisions": decisions,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
        }


def load_value_function(spec: str) -> ValueFunction:
    """The callable named 'module:function' in the config, or the built-in one."""
    if not spec:
        return default_value
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"value_function {spec!r} cannot be loaded: {e}") from None
    if not callable(func):
        raise ConfigError(f"value_function {spec!r} is not callable")
    return func  # type: ignore[no-any-return]


def read_demand(node: Node, now: float) -> Mapping[str, float]:
    """This node's demand from the configured source; empty (logged) when unavailable."""
    snapshot = read_snapshot(node, now)
    if snapshot is None:
        return {}
    return node_demand(snapshot, node.config.node, now=now, horizon=node.config.horizon)


def read_snapshot(node: Node, now: float) -> Snapshot | None:
    """The cluster's pending jobs from squeue/sinfo or the published file."""
    config = node.config
    if config.demand.source == "none":
        return None
    if config.demand.source == "file":
        assert config.demand.path is not None
        return read_demand_file(config.demand.path, now=now, max_age=config.demand.max_age)
    if config.demand.source == "pyslurm":
        snapshot = _pyslurm_snapshot(node, now)
        if snapshot is not None:
            return snapshot
    from scratch_stage.demand import SINFO_FORMAT, SQUEUE_FORMAT

    try:
        squeue = runner.run([*config.squeue_command, "-h", "-t", "PD", "-o", SQUEUE_FORMAT],
                            timeout=config.command_timeout)  # fmt: skip
        sinfo = runner.run([*config.sinfo_command, "-h", "-o", SINFO_FORMAT],
                           timeout=config.command_timeout)  # fmt: skip
    except ScratchStageError as e:
        log.warning("no demand this pass: %s", e)
        return None
    return snapshot_from_cli(squeue, sinfo, now)


def _pyslurm_snapshot(node: Node, now: float) -> Snapshot | None:
    """The snapshot through pyslurm, or None (with one log line why) to use the CLI."""
    from scratch_stage.pyslurm_source import snapshot_from_pyslurm, usable_pyslurm

    config = node.config
    try:
        version = runner.run(
            [*config.scontrol_command, "--version"], timeout=config.command_timeout
        )
    except ScratchStageError as e:
        version = f"unknown ({e})"
    pyslurm, why = usable_pyslurm(version)
    if pyslurm is None:
        log.info("demand through squeue, not pyslurm: %s", why)
        return None
    try:
        return snapshot_from_pyslurm(pyslurm, now)
    except Exception as e:  # a pyslurm call failing is no reason to lose the pass
        log.warning("demand through squeue, pyslurm failed: %s", e)
        return None


def measure_heat(node: Node, state: NodeState, now: float) -> dict[str, float]:
    """Sample /proc/diskstats into STATE's heat memory; bytes/s per dataset over `period`."""
    text = (node.root / "proc/diskstats").read_text()
    dataset_of = dataset_of_path(str(node.config.datadir), str(node.config.cachedir))
    memory, rates = update_heat(
        state.heat, parse_diskstats(text), read_loop_backings(node.root), dataset_of,
        now=now, period=node.config.period,
    )  # fmt: skip
    state.heat = memory
    for name, rate in rates.items():
        if rate > 0:
            state.last_used[name] = now
    return rates


@contextlib.contextmanager
def single_rebalance(node: Node) -> Iterator[bool]:
    """True when this process is the node's only rebalance; False if another one runs."""
    from scratch_stage.locks import try_flock

    node.store.ensure_statedir()
    fd = try_flock(node.config.statedir / REBALANCE_LOCK)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def rebalance(node: Node, *, dry_run: bool = False, progress: Any = None) -> Report:
    """One pass; with DRY_RUN nothing is changed, not even the heat samples."""
    with single_rebalance(node) as alone:
        if not alone:
            return _skipped(node)
        return _rebalance(node, dry_run=dry_run, progress=progress)


def _skipped(node: Node) -> Report:
    empty = Plan((), (), {}, method="none")
    return Report(empty, {}, {}, node.capacity_bytes(), skipped="another rebalance is running")


def _rebalance(node: Node, *, dry_run: bool, progress: Any) -> Report:
    value = load_value_function(node.config.value_function)
    catalog = scan_catalog(node.config.datadir)
    now = node.clock()
    demand = read_demand(node, now)
    capacity = node.capacity_bytes()
    params = PlanParams(horizon=node.config.horizon, hysteresis=node.config.hysteresis)
    fingerprints = {n: i.fingerprint for n, i in catalog.images.items()}
    if dry_run:
        state = node.store.read()
        heat = measure_heat(node, state, now)
        the_plan = plan(
            plan_input(state, fingerprints, now), heat, demand, capacity,
            params=params, value=value,
        )  # fmt: skip
        return Report(the_plan, heat, demand, capacity)
    with node.store.transaction() as state:
        from scratch_stage.recovery import reap_dead_copies

        reap_dead_copies(node, state)
        heat = measure_heat(node, state, now)
        the_plan = plan(
            plan_input(state, fingerprints, now), heat, demand, capacity,
            params=params, value=value,
        )  # fmt: skip
        report = Report(the_plan, heat, demand, capacity)
        _evict(node, state, the_plan, report)
        _unmount_idle(node, state, catalog, now, report)
    _stage(node, the_plan, report, progress)
    if node.config.node_features:
        _publish_features(node, report)
    _save_report(node, report, now)
    return report


def _publish_features(node: Node, report: Report) -> None:
    from scratch_stage.features import publish_features

    try:
        changed = publish_features(node, sorted(node.store.read().cached))
    except ScratchStageError as e:
        report.failed.append(f"node features: {e}")
        return
    if changed:
        report.done.append(changed)


def _save_report(node: Node, report: Report, now: float) -> None:
    """Keep the last pass's figures for `status` (heat, demand and value per dataset)."""
    import json

    from scratch_stage.state import write_atomically

    data = {"at": now, **report.to_json()}
    try:
        write_atomically(node.config.statedir / LAST_REPORT, json.dumps(data).encode())
    except OSError as e:
        log.warning("cannot save the rebalance report: %s", e)


def read_last_report(node: Node) -> dict[str, Any]:
    """The last pass's report, or an empty one."""
    import json

    try:
        data = json.loads((node.config.statedir / LAST_REPORT).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _evict(node: Node, state: NodeState, the_plan: Plan, report: Report) -> None:
    """Evict first (under the lock): unmount the cached layer, then delete the copy."""
    from scratch_stage.mounts import unmount_file

    for name in the_plan.evict:
        if state.holders(name) or name not in state.cached:
            continue
        path = node.cached_path(name)
        try:
            unmount_file(node, name, path)
        except ScratchStageError as e:
            report.failed.append(f"evict {name}: {e}")
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        del state.cached[name]
        reason = the_plan.decisions[name].reason
        node.events.emit("evict", name, reason=reason)
        report.done.append(f"evicted {name} ({reason})")


def _unmount_idle(
    node: Node, state: NodeState, catalog: Catalog, now: float, report: Report
) -> None:
    """Unmount stacks nobody holds that are removed, replaced, or idle past idle_unmount."""
    from scratch_stage.mounts import unmount_all

    for name, layers in sorted(read_all_stacks(node.root, str(node.mountdir)).items()):
        if state.holders(name) or not layers:
            continue
        image = catalog.images.get(name)
        why = _idle_reason(node, state, name, layers, image.fingerprint if image else None, now)
        if why is None:
            continue
        try:
            unmount_all(node, name)
        except ScratchStageError as e:
            report.failed.append(f"unmount {name}: {e}")
            continue
        state.last_used.pop(name, None)
        node.events.emit("unmount", name, reason=why)
        report.done.append(f"unmounted {name} ({why})")


def _idle_reason(
    node: Node, state: NodeState, name: str, layers: list[Any],
    fingerprint: Fingerprint | None, now: float,
) -> str | None:  # fmt: skip
    if fingerprint is None:
        return "image removed from datadir"
    if any(layer.deleted for layer in layers):
        return "image replaced in datadir"
    cached_path = os.path.realpath(node.cached_path(name))  # as the loop device reports it
    if any(layer.backing_path == cached_path for layer in layers) and name in state.cached:
        return None  # cached copies stay mounted; eviction decides about them
    last = state.last_used.setdefault(name, now)
    limit = node.config.idle_unmount
    if limit > 0 and now - last >= limit:
        return f"idle for {now - last:.0f}s"
    return None


def _stage(node: Node, the_plan: Plan, report: Report, progress: Any) -> None:
    """Copy in value order, outside the state lock; one failure does not stop the rest."""
    from scratch_stage.stager import stage

    for name in the_plan.stage:
        try:
            report.done.append(stage(node, name, progress=progress(name) if progress else None))
        except ScratchStageError as e:
            report.failed.append(f"stage {name}: {e}")
            log.warning("staging %s failed: %s", name, e)
