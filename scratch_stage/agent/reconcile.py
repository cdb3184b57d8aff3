"""Reconcile: settle the node state with what the kernel and the disk show.

Every process records an `Intent` before an irreversible step and drops it after; a copy
in flight is recorded in `staging`. A process may die anywhere (SIGKILL, a prolog timeout,
a power cut). `reconcile` is the one function that finishes or rolls back what dead
processes left (docs/design.md, "Node state protocol"): it is pure, the mount table and
the files are data. `settle` gathers that data and carries out the clean-ups, under the
state lock; it never runs an external command.
"""

from __future__ import annotations

import contextlib
import os

from scratch_stage.core.layout import dataset_of_cached, partial_name
from scratch_stage.core.records import field, record
from scratch_stage.host.logger import get_logger
from scratch_stage.host.state import NodeState

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Callable, Literal

    from scratch_stage.agent.node import Node

log = get_logger(__name__)

if TYPE_CHECKING:
    Alive = Callable[[int, str], bool]


@record(frozen=True)
class FileId:
    """A file's identity: inode and size."""

    inode: int
    size: int


@record(frozen=True)
class World:
    """What the kernel and the disk show: mounted datasets, cached files, partial files."""

    mounted: frozenset[str] = frozenset()
    cached_files: Mapping[str, FileId] = field(default_factory=dict)
    partials: frozenset[str] = frozenset()


@record(frozen=True)
class Cleanup:
    """A file to delete: a cached copy nobody may trust, or a dead copy's partial file."""

    where: Literal["cache", "partial"]
    filename: str


def reconcile(
    state: NodeState, world: World, alive: Alive, now: float
) -> tuple[list[Cleanup], list[str]]:
    """Settle STATE in place against WORLD; the files to delete and what was changed.

    - An intent of a dead process is dropped: whatever the mount stack shows is the truth,
      and holds were recorded before any mount, so no holder is lost.
    - A copy in flight of a dead process is dropped with its partial file.
    - A cached record whose file is missing, or is another file, is dropped (with the file).
    - A cached file nobody records and no live copy is about to record is deleted.
    - A partial file of no live copy is deleted.
    - A mounted dataset nobody holds gets an idle timer, so it is unmounted in time.
    Holds and pins are never touched.
    """
    notes: list[str] = []
    cleanups: list[Cleanup] = []
    for name, intent in sorted(state.intents.items()):
        if not alive(intent.pid, intent.pid_start):
            del state.intents[name]
            notes.append(f"{name}: {intent.kind} by dead process {intent.pid} settled")
    for name, copy in sorted(state.staging.items()):
        if not alive(copy.pid, copy.pid_start):
            del state.staging[name]
            notes.append(f"{name}: copy by dead process {copy.pid} dropped")
    live_partials = {partial_name(n, c.pid) for n, c in state.staging.items()}
    for filename in sorted(world.partials - live_partials):
        cleanups.append(Cleanup("partial", filename))
    for name, cached in sorted(state.cached.items()):
        if name in state.intents:
            continue  # a live process is evicting or mounting it: it finishes the record
        found = world.cached_files.get(name)
        if found is None:
            del state.cached[name]
            notes.append(f"{name}: cached copy is gone from disk; record dropped")
        elif found.size != cached.size or (cached.inode and found.inode != cached.inode):
            del state.cached[name]
            notes.append(f"{name}: cached file is not the recorded copy; record dropped")
    for name in sorted(world.cached_files):
        if name not in state.cached and name not in state.staging and name not in state.intents:
            cleanups.append(Cleanup("cache", name))
            notes.append(f"{name}: unrecorded cached file removed")
    held = {n for hold in state.jobs.values() for n in hold.datasets}
    for name in sorted(world.mounted - held - set(state.intents) - set(state.last_used)):
        state.last_used[name] = now
    return cleanups, notes


def needs_reconcile(node: Node, state: NodeState) -> bool:
    """Cheap test run on every load: a dead actor, or a cached record that lies."""
    from scratch_stage.agent.recovery import is_alive

    # Each process once: a pass may hold hundreds of intents, all its own.
    actors = {(i.pid, i.pid_start) for i in state.intents.values()}
    actors |= {(c.pid, c.pid_start) for c in state.staging.values()}
    if any(not is_alive(node.root, pid, start) for pid, start in actors):
        return True
    for name, cached in state.cached.items():
        if name in state.intents:
            continue
        try:
            st = os.stat(node.cached_path(name))
        except OSError:
            return True
        if st.st_size != cached.size or (cached.inode and st.st_ino != cached.inode):
            return True
    return False


def settle(node: Node, state: NodeState, *, full: bool = False) -> list[str]:
    """Reconcile STATE with this node (under the lock); FULL skips the cheap test."""
    if not full and not needs_reconcile(node, state):
        return []
    from scratch_stage.agent.recovery import is_alive, remove_stray_temp_files
    from scratch_stage.host.mountinfo import read_all_stacks

    world = World(
        mounted=frozenset(read_all_stacks(node.root, str(node.mountdir))),
        cached_files=_cached_files(node),
        partials=frozenset(_listdir(node.partial_dir)),
    )
    known: dict[tuple[int, str], bool] = {}

    def alive(pid: int, start: str) -> bool:
        if (pid, start) not in known:
            known[pid, start] = is_alive(node.root, pid, start)
        return known[pid, start]

    cleanups, notes = reconcile(state, world, alive, node.clock())
    for cleanup in cleanups:
        directory = node.config.cachedir if cleanup.where == "cache" else node.partial_dir
        filename = cleanup.filename
        if cleanup.where == "cache":
            filename = os.path.basename(node.cached_path(cleanup.filename))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, filename))
    remove_stray_temp_files(node)
    for note in notes:
        log.warning("reconcile: %s", note)
        node.events.emit("reconcile", note=note)
    return notes


def _listdir(path: str | os.PathLike[str]) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _cached_files(node: Node) -> dict[str, FileId]:
    files: dict[str, FileId] = {}
    for filename in _listdir(node.config.cachedir):
        name = dataset_of_cached(filename)
        if name is None:
            continue
        with contextlib.suppress(OSError):
            path = os.path.join(node.config.cachedir, filename)
            st = os.stat(path)
            if not os.path.isdir(path):
                files[name] = FileId(st.st_ino, st.st_size)
    return files
