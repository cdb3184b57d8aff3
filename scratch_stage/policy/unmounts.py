"""What a rebalance pass takes down or puts back, as a value (docs/design.md, "Rebalance").

`decide_unmounts` is pure like `planner.plan`: from the state, the plan, the mount stacks
and the catalog it says which cached copies to evict, which stacks nobody holds to unmount
(image removed or replaced, or idle past `idle_unmount`), and which held datasets lost
their mount and need it back. `agent/rebalance.py` claims each as an intent and acts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scratch_stage.host.mountinfo import Layer
from scratch_stage.host.state import NodeState
from scratch_stage.policy.planner import Plan


@dataclass(frozen=True)
class Unmount:
    """Take NAME down: EVICT unmounts its cached copy and deletes it; otherwise the whole
    stack nobody holds is unmounted. REASON is for the event log and the report."""

    name: str
    evict: bool
    reason: str


@dataclass(frozen=True)
class UnmountPlan:
    unmounts: tuple[Unmount, ...] = ()
    remounts: tuple[str, ...] = ()  # held, in the catalog, and not mounted at all
    idle_since_now: tuple[str, ...] = ()  # unheld stacks first seen: their idle timer starts

    @property
    def empty(self) -> bool:
        return not self.unmounts and not self.remounts


def decide_unmounts(
    state: NodeState,
    the_plan: Plan,
    stacks: Mapping[str, Sequence[Layer]],
    images: Mapping[str, object],
    cached_backing: Mapping[str, str],
    *,
    idle_unmount: float,
    now: float,
) -> UnmountPlan:
    """Evictions, idle or stale unmounts and remounts for this pass.

    STACKS: dataset -> its mount layers (bottom first); IMAGES: the datasets in datadir
    (values unused); CACHED_BACKING: dataset -> the cached copy's path as a loop device
    reports it. A dataset a job holds, or that another process acts on (an intent), is
    never taken down; a dataset is taken down at most once per pass.
    """
    held = {name for hold in state.jobs.values() for name in hold.datasets}
    busy = set(state.intents)
    unmounts: list[Unmount] = []
    for name in the_plan.evict:
        if name in held or name in busy or name not in state.cached:
            continue
        unmounts.append(Unmount(name, True, the_plan.decisions[name].reason))
        busy.add(name)
    first_seen: list[str] = []
    for name, layers in sorted(stacks.items()):
        if name in held or name in busy or not layers:
            continue
        if name not in state.last_used:
            first_seen.append(name)
        why = _idle_reason(
            state, name, layers, name in images, cached_backing.get(name),
            idle_unmount=idle_unmount, last_used=state.last_used.get(name, now), now=now,
        )  # fmt: skip
        if why is not None:
            unmounts.append(Unmount(name, False, why))
            busy.add(name)
    remounts = tuple(
        name
        for name in sorted(held)
        if name in images and not stacks.get(name) and name not in busy
    )
    return UnmountPlan(tuple(unmounts), remounts, tuple(first_seen))


def _idle_reason(
    state: NodeState,
    name: str,
    layers: Sequence[Layer],
    in_catalog: bool,
    cached_backing: str | None,
    *,
    idle_unmount: float,
    last_used: float,
    now: float,
) -> str | None:
    if not in_catalog:
        return "image removed from datadir"
    if any(layer.deleted for layer in layers):
        return "image replaced in datadir"
    serves_cached = cached_backing is not None and any(
        layer.backing_path == cached_backing for layer in layers
    )
    if serves_cached and name in state.cached:
        return None  # cached copies stay mounted; eviction decides about them
    if idle_unmount > 0 and now - last_used >= idle_unmount:
        return f"idle for {now - last_used:.0f}s"
    return None
