"""Administrator operations: status, info, pin, unpin, purge (the CLI only formats them)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from scratch_stage.agent.mounts import fresh_copy, stack
from scratch_stage.agent.node import Node
from scratch_stage.agent.views import (
    DatasetRow,
    DatasetState,
    EventView,
    FailureView,
    InfoView,
    IntentView,
    MountLayer,
    PinResult,
    PurgeResult,
    ReleaseResult,
    StatusView,
)
from scratch_stage.core.errors import DatasetError, ScratchStageError
from scratch_stage.core.requests import is_valid_name, shorten
from scratch_stage.host.catalog import Catalog, Image, lookup_image, scan_catalog
from scratch_stage.host.logger import get_logger
from scratch_stage.host.mountinfo import Layer, read_all_stacks
from scratch_stage.host.state import NodeState, Pin
from scratch_stage.policy.report import Figures, last_figures

if TYPE_CHECKING:
    from scratch_stage.agent.mounts import UnmountStep

log = get_logger(__name__)


def dataset_state(
    node: Node, state: NodeState, image: Image | None, layers: list[Layer]
) -> DatasetState:
    """'staging', 'cached', 'mounted' or 'cold' (docs/design.md, glossary)."""
    if image is not None and image.name in state.staging:
        return "staging"
    if image is not None and fresh_copy(node, state, image):
        return "cached"
    return "mounted" if layers else "cold"


def settled_state(node: Node) -> NodeState:
    """The state, reconciled with the node first (under the lock, briefly)."""
    with node.store.transaction() as state:
        return state


def status(node: Node) -> StatusView:
    """Every dataset known to this node and the cache budget (and rewrite the public summary)."""
    from scratch_stage.agent.space import used_bytes

    catalog = scan_catalog(node.config.datadir, trust=node.trust)
    state = settled_state(node)
    stacks = read_all_stacks(node.root, str(node.mountdir))
    names = sorted(set(catalog.images) | set(state.cached) | set(state.pins) | set(stacks))
    now = node.clock()
    figures = last_figures(node.config.statedir)
    view = StatusView(
        node=node.config.node,
        capacity_bytes=node.capacity_bytes(),
        used_bytes=used_bytes(node, state),
        datasets=tuple(
            _row(node, n, catalog, state, stacks.get(n, []), now, figures.get(n)) for n in names
        ),
        problems=dict(catalog.problems),
    )
    publish_summary(node, view)
    return view


def publish_summary(node: Node, view: StatusView | None = None) -> None:
    """Rewrite the public summary a non-root `status` reads (from VIEW, or a fresh status)."""
    from scratch_stage.host.summary import PublicRow, PublicSummary, write_summary

    if view is None:
        status(node)  # writes it
        return
    summary = PublicSummary(
        at=node.clock(),
        node=view.node,
        capacity_bytes=view.capacity_bytes,
        used_bytes=view.used_bytes,
        datasets=tuple(PublicRow(r.name, r.size, r.state, r.cached) for r in view.datasets),
    )
    try:
        write_summary(node.mountdir, summary)
    except OSError as e:
        log.warning("cannot write the public summary: %s", e)


def _row(
    node: Node,
    name: str,
    catalog: Catalog,
    state: NodeState,
    layers: list[Layer],
    now: float,
    figures: Figures | None,
) -> DatasetRow:
    image = catalog.images.get(name)
    cached = state.cached.get(name)
    pin = state.pins.get(name)
    failure = state.failures.get(name)
    heat, demand, value = figures or (0.0, 0.0, None)
    return DatasetRow(
        name=name,
        size=image.size if image else (cached.size if cached else 0),
        state=dataset_state(node, state, image, layers),
        cached=image is not None and fresh_copy(node, state, image),
        retry_at=failure.retry_at if failure and failure.retry_at > now else None,
        failures=failure.count if failure else 0,
        holders=tuple(state.holders(name)),
        pinned=pin is not None and pin.active(now),
        pin_expires=pin.expires if pin else None,
        layers=len(layers),
        in_datadir=image is not None,
        heat=heat,
        demand=demand,
        value=value,
    )


def info(node: Node, name: str, events: int = 10) -> InfoView:
    """One dataset in detail: paths, mount stack, holders, pin, fingerprint, last events."""
    _check_name(name)
    try:
        image: Image | None = lookup_image(node.config.datadir, name, trust=node.trust)
    except DatasetError:
        image = None
    state = settled_state(node)
    layers = stack(node, name)
    if image is None and name not in state.cached and not layers:
        lookup_image(
            node.config.datadir, name, trust=node.trust
        )  # raises the one-line "unknown dataset" error
    cached = state.cached.get(name)
    pin = state.pins.get(name)
    intent = state.intents.get(name)
    failure = state.failures.get(name)
    return InfoView(
        name=name,
        state=dataset_state(node, state, image, layers),
        mountpoint=str(node.mountpoint(name)),
        image=str(image.path) if image else None,
        fingerprint=image.fingerprint if image else None,
        cached_path=str(node.cached_path(name)) if cached else None,
        cached_fingerprint=cached.fingerprint if cached else None,
        mount_stack=tuple(MountLayer(la.source, la.backing) for la in layers),
        holders=tuple(state.holders(name)),
        pinned=pin is not None and pin.active(node.clock()),
        pin_expires=pin.expires if pin else None,
        staging_pid=state.staging[name].pid if name in state.staging else None,
        intent=None if intent is None else IntentView(intent.kind, intent.pid),
        failure=None
        if failure is None
        else FailureView(failure.count, failure.retry_at, failure.reason),
        events=tuple(EventView.from_record(e) for e in node.events.tail(events, name)),
    )


def _check_name(name: str) -> None:
    if not is_valid_name(name):
        raise DatasetError(f"not a dataset name: {shorten(name)}")


def pin(node: Node, name: str, ttl: float | None) -> PinResult:
    """Pin NAME (until now+TTL if given); the image must exist."""
    _check_name(name)
    lookup_image(node.config.datadir, name, trust=node.trust)
    now = node.clock()
    expires = now + ttl if ttl is not None else None
    with node.store.transaction() as state:
        state.pins[name] = Pin(now, expires)
    node.events.emit("pin", name, expires=expires)
    return PinResult(name, ttl, expires)


def unpin(node: Node, name: str) -> None:
    """Remove NAME's pin; an error if it had none."""
    _check_name(name)
    with node.store.transaction() as state:
        if state.pins.pop(name, None) is None:
            raise DatasetError(f"{name} is not pinned")
    node.events.emit("unpin", name)


def release(node: Node, job_id: str) -> ReleaseResult:
    """Remove JOB_ID's holds (a job id, or 'recovered' after a state rebuild)."""
    with node.store.transaction() as state:
        hold = state.jobs.pop(job_id, None)
        if hold is None:
            raise DatasetError(f"job {shorten(job_id)} holds nothing on this node")
        for name in hold.datasets:
            state.last_used[name] = node.clock()
    for name in hold.datasets:
        node.events.emit("release", name, job=job_id)
    return ReleaseResult(job_id, tuple(hold.datasets))


def purge(node: Node, names: Iterable[str], *, purge_all: bool, force: bool) -> list[PurgeResult]:
    """Drop cached copies (of all if PURGE_ALL); held ones only with FORCE. What was done.

    Decided and claimed under the lock, unmounted and deleted outside it (docs/design.md).
    """
    from scratch_stage.agent.mounts import UnmountStep, claim

    names = list(names)
    for name in names:
        _check_name(name)
    done: list[PurgeResult] = []
    steps: list[tuple[UnmountStep, tuple[str, ...]]] = []
    with node.store.transaction() as state:
        targets = sorted(state.cached) if purge_all else names
        for name in targets:
            holders = tuple(state.holders(name))
            problem = _purge_problem(state, name, holders, force=force, explicit=not purge_all)
            if problem is not None:
                done.append(problem)
                continue
            path = node.cached_path(name)
            if claim(node, state, name, "evict", str(path)):
                steps.append((UnmountStep(name, path, delete=True, lazy=bool(holders)), holders))
            else:
                done.append(PurgeResult(name, "busy"))
    for step, holders in steps:
        done.append(_purge_one(node, step, holders))
    return done


def _purge_problem(
    state: NodeState, name: str, holders: tuple[str, ...], *, force: bool, explicit: bool
) -> PurgeResult | None:
    """Why NAME is not purged (a result), None to purge it; DatasetError if it was asked for."""
    if name not in state.cached:
        if explicit:
            raise DatasetError(f"{name} has no cached copy on this node")
        return PurgeResult(name, "not cached")
    if holders and not force and not explicit:
        return PurgeResult(name, "kept", holders)
    if holders and not force:
        raise DatasetError(f"{name} is held by job(s) {', '.join(holders)}; use --force")
    return None


def _purge_one(node: Node, step: UnmountStep, holders: tuple[str, ...]) -> PurgeResult:
    """Unmount and delete one claimed copy; a held one is replaced by the slow image."""
    from scratch_stage.agent.mounts import UnmountStep, perform_unmount, release_claim

    name = step.name
    if holders:
        # Forced: detach the whole stack (open files keep working), then serve the slow image.
        step = UnmountStep(name, None, delete=False, lazy=True)
    try:
        perform_unmount(node, step)
        if holders:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(node.cached_path(name))
    except ScratchStageError:
        with node.store.transaction() as state:
            release_claim(state, name)
        raise
    with node.store.transaction() as state:
        state.cached.pop(name, None)
        state.counters.add(name, "evictions")
        release_claim(state, name)
    node.events.emit("evict", name, reason="purge", forced=bool(holders))
    if holders:
        _remount_slow(node, name)
    return PurgeResult(name, "purged", holders)


def _remount_slow(node: Node, name: str) -> None:
    from scratch_stage.agent.mounts import (
        claim,
        perform_mount,
        prepare_mount,
        record_attach,
        release_claim,
    )

    try:
        image = lookup_image(node.config.datadir, name, trust=node.trust)
        with node.store.transaction() as state:
            step = prepare_mount(node, state, image)
            if step is None or not claim(node, state, name, "mount", str(step.source)):
                return
        attach = None
        try:
            attach = perform_mount(node, step)
        finally:
            with node.store.transaction() as state:
                release_claim(state, name)
                record_attach(state, attach)
    except ScratchStageError as e:
        log.error(
            "%s: holders keep their open files, but the slow image cannot be mounted: %s", name, e
        )
