"""One rebalance pass: measure heat, read demand, plan, act (DESIGN section 8)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from scratch_stage.catalog import Catalog, Fingerprint, scan_catalog
from scratch_stage.demand_sources import read_demand
from scratch_stage.errors import ConfigError, ScratchStageError
from scratch_stage.heat import dataset_of_path, parse_diskstats, read_loop_backings, update_heat
from scratch_stage.mountinfo import read_all_stacks
from scratch_stage.node import Node
from scratch_stage.plan_input import plan_input
from scratch_stage.planner import Plan, PlanParams, ValueFunction, default_value, plan
from scratch_stage.report import PassReport, save_report, skipped_report
from scratch_stage.state import NodeState

log = logging.getLogger(__name__)

REBALANCE_LOCK = "rebalance.lock"


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


def rebalance(node: Node, *, dry_run: bool = False, progress: Any = None) -> PassReport:
    """One pass; with DRY_RUN nothing is changed, not even the heat samples."""
    with single_rebalance(node) as alone:
        if not alone:
            return _skipped(node)
        return _rebalance(node, dry_run=dry_run, progress=progress)


def _skipped(node: Node) -> PassReport:
    return skipped_report(node.capacity_bytes(), "another rebalance is running")


def _rebalance(node: Node, *, dry_run: bool, progress: Any) -> PassReport:
    value = load_value_function(node.config.value_function)
    catalog = scan_catalog(node.config.datadir)
    now = node.clock()
    demand = read_demand(node.config, now)
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
        return PassReport(the_plan, heat, demand, capacity)
    with node.store.transaction() as state:
        from scratch_stage.recovery import reap_dead_copies

        reap_dead_copies(node, state)
        heat = measure_heat(node, state, now)
        the_plan = plan(
            plan_input(state, fingerprints, now), heat, demand, capacity,
            params=params, value=value,
        )  # fmt: skip
        report = PassReport(the_plan, heat, demand, capacity)
        _evict(node, state, the_plan, report)
        _unmount_idle(node, state, catalog, now, report)
    _stage(node, the_plan, report, progress)
    if node.config.node_features:
        _publish_features(node, report)
    save_report(node.config.statedir, report, now)
    return report


def _publish_features(node: Node, report: PassReport) -> None:
    from scratch_stage.features import publish_features

    try:
        changed = publish_features(node, sorted(node.store.read().cached))
    except ScratchStageError as e:
        report.failed.append(f"node features: {e}")
        return
    if changed:
        report.done.append(changed)


def _evict(node: Node, state: NodeState, the_plan: Plan, report: PassReport) -> None:
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
    node: Node, state: NodeState, catalog: Catalog, now: float, report: PassReport
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


def _stage(node: Node, the_plan: Plan, report: PassReport, progress: Any) -> None:
    """Copy in value order, outside the state lock; one failure does not stop the rest."""
    from scratch_stage.stager import stage

    for name in the_plan.stage:
        try:
            report.done.append(stage(node, name, progress=progress(name) if progress else None))
        except ScratchStageError as e:
            report.failed.append(f"stage {name}: {e}")
            log.warning("staging %s failed: %s", name, e)
