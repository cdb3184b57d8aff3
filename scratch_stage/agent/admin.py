"""Administrator operations: status, info, pin, unpin, purge (the CLI only formats them)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from scratch_stage.agent.mounts import fresh_copy, stack
from scratch_stage.agent.node import Node
from scratch_stage.core.errors import DatasetError, ScratchStageError
from scratch_stage.core.requests import is_valid_name, shorten
from scratch_stage.host.catalog import Catalog, Image, lookup_image, scan_catalog
from scratch_stage.host.logger import get_logger
from scratch_stage.host.mountinfo import Layer, read_all_stacks
from scratch_stage.host.state import NodeState, Pin
from scratch_stage.policy.report import read_last_report

if TYPE_CHECKING:
    from scratch_stage.agent.mounts import UnmountStep

log = get_logger(__name__)


def dataset_state(node: Node, state: NodeState, image: Image | None, layers: list[Layer]) -> str:
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


def status(node: Node) -> dict[str, Any]:
    """Every dataset known to this node and the cache budget, as plain values."""
    from scratch_stage.agent.space import used_bytes

    catalog = scan_catalog(node.config.datadir, trust=node.trust)
    state = settled_state(node)
    stacks = read_all_stacks(node.root, str(node.mountdir))
    names = sorted(set(catalog.images) | set(state.cached) | set(state.pins) | set(stacks))
    now = node.clock()
    figures = read_last_report(node.config.statedir).get("decisions", {})
    rows = [_row(node, n, catalog, state, stacks.get(n, []), now) for n in names]
    for row in rows:
        last = figures.get(row["name"], {})
        row.update(
            heat=last.get("heat", 0.0), demand=last.get("demand", 0.0), value=last.get("value")
        )
    data = {
        "node": node.config.node,
        "capacity_bytes": node.capacity_bytes(),
        "used_bytes": used_bytes(node, state),
        "datasets": rows,
        "problems": dict(catalog.problems),
    }
    publish_summary(node, data)
    return data


def publish_summary(node: Node, data: dict[str, Any] | None = None) -> None:
    """Rewrite the public summary a non-root `status` reads (from DATA, or a fresh status)."""
    from scratch_stage.host.summary import public_summary, write_summary

    if data is None:
        data = status(node)  # writes it
        return
    try:
        write_summary(node.mountdir, public_summary(data, node.clock()))
    except OSError as e:
        log.warning("cannot write the public summary: %s", e)


def _row(
    node: Node, name: str, catalog: Catalog, state: NodeState, layers: list[Layer], now: float
) -> dict[str, Any]:
    image = catalog.images.get(name)
    cached = state.cached.get(name)
    pin = state.pins.get(name)
    failure = state.failures.get(name)
    return {
        "name": name,
        "size": image.size if image else (cached.size if cached else 0),
        "state": dataset_state(node, state, image, layers),
        "cached": image is not None and fresh_copy(node, state, image),
        "retry_at": failure.retry_at if failure and failure.retry_at > now else None,
        "failures": failure.count if failure else 0,
        "holders": state.holders(name),
        "pinned": pin is not None and pin.active(now),
        "pin_expires": pin.expires if pin else None,
        "layers": len(layers),
        "in_datadir": image is not None,
    }


def info(node: Node, name: str, events: int = 10) -> dict[str, Any]:
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
    return {
        "name": name,
        "state": dataset_state(node, state, image, layers),
        "image": str(image.path) if image else None,
        "fingerprint": image.fingerprint.to_json() if image else None,
        "cached_path": str(node.cached_path(name)) if cached else None,
        "cached_fingerprint": cached.fingerprint.to_json() if cached else None,
        "mountpoint": str(node.mountpoint(name)),
        "mount_stack": [{"source": la.source, "backing": la.backing} for la in layers],
        "holders": state.holders(name),
        "pinned": pin is not None and pin.active(node.clock()),
        "pin_expires": pin.expires if pin else None,
        "staging_pid": state.staging[name].pid if name in state.staging else None,
        "intent": _intent_text(state, name),
        "failure": _failure_text(state, name),
        "events": node.events.tail(events, name),
    }


def _intent_text(state: NodeState, name: str) -> str | None:
    intent = state.intents.get(name)
    return None if intent is None else f"{intent.kind} by pid {intent.pid}"


def _failure_text(state: NodeState, name: str) -> str | None:
    failure = state.failures.get(name)
    if failure is None:
        return None
    return f"{failure.count} failed copies, next try after {failure.retry_at:.0f}: {failure.reason}"


def _check_name(name: str) -> None:
    if not is_valid_name(name):
        raise DatasetError(f"not a dataset name: {shorten(name)}")


def pin(node: Node, name: str, ttl: float | None) -> str:
    """Pin NAME (until now+TTL if given); the image must exist."""
    _check_name(name)
    lookup_image(node.config.datadir, name, trust=node.trust)
    now = node.clock()
    expires = now + ttl if ttl is not None else None
    with node.store.transaction() as state:
        state.pins[name] = Pin(now, expires)
    node.events.emit("pin", name, expires=expires)
    return f"{name}: pinned" + (f" for {ttl:g}s" if ttl is not None else "")


def unpin(node: Node, name: str) -> str:
    """Remove NAME's pin; an error if it had none."""
    _check_name(name)
    with node.store.transaction() as state:
        if state.pins.pop(name, None) is None:
            raise DatasetError(f"{name} is not pinned")
    node.events.emit("unpin", name)
    return f"{name}: unpinned"


def release(node: Node, job_id: str) -> str:
    """Remove JOB_ID's holds (a job id, or 'recovered' after a state rebuild)."""
    with node.store.transaction() as state:
        hold = state.jobs.pop(job_id, None)
        if hold is None:
            raise DatasetError(f"job {shorten(job_id)} holds nothing on this node")
        for name in hold.datasets:
            state.last_used[name] = node.clock()
    for name in hold.datasets:
        node.events.emit("release", name, job=job_id)
    return f"job {job_id}: released {', '.join(hold.datasets)}"


def purge(node: Node, names: Iterable[str], *, purge_all: bool, force: bool) -> list[str]:
    """Drop cached copies (of all if PURGE_ALL); held ones only with FORCE. What was done.

    Decided and claimed under the lock, unmounted and deleted outside it (docs/design.md).
    """
    from scratch_stage.agent.mounts import UnmountStep, claim

    names = list(names)
    for name in names:
        _check_name(name)
    done: list[str] = []
    steps: list[tuple[UnmountStep, list[str]]] = []
    with node.store.transaction() as state:
        targets = sorted(state.cached) if purge_all else names
        for name in targets:
            holders = state.holders(name)
            problem = _purge_problem(state, name, holders, force=force, explicit=not purge_all)
            if problem is not None:
                done.append(problem)
                continue
            path = node.cached_path(name)
            if claim(node, state, name, "evict", str(path)):
                steps.append((UnmountStep(name, path, delete=True, lazy=bool(holders)), holders))
            else:
                done.append(f"{name}: busy (another scratch-stage process acts on it); try again")
    for step, holders in steps:
        done.append(_purge_one(node, step, holders))
    return done


def _purge_problem(
    state: NodeState, name: str, holders: list[str], *, force: bool, explicit: bool
) -> str | None:
    """Why NAME is not purged (a line for the report), None to purge it; DatasetError if asked."""
    if name not in state.cached:
        if explicit:
            raise DatasetError(f"{name} has no cached copy on this node")
        return f"{name}: not cached"
    if holders and not force and not explicit:
        return f"{name}: kept, held by job(s) {', '.join(holders)}"
    if holders and not force:
        raise DatasetError(f"{name} is held by job(s) {', '.join(holders)}; use --force")
    return None


def _purge_one(node: Node, step: UnmountStep, holders: list[str]) -> str:
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
    return f"{name}: purged" + (f" (held by {', '.join(holders)})" if holders else "")


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
