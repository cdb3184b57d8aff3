"""Recovery after crashes: rebuild a lost state, reap copies whose process died."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from scratch_stage.catalog import Fingerprint, lookup_image
from scratch_stage.errors import ScratchStageError
from scratch_stage.mountinfo import read_all_stacks
from scratch_stage.node import CACHE_SUFFIX, Node
from scratch_stage.state import RECOVERED, CachedCopy, Hold, NodeState

log = logging.getLogger(__name__)


def process_start(root: Path, pid: int) -> str | None:
    """The start time of process PID (proc(5) stat field 22), None if it does not exist."""
    try:
        stat = (root / f"proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def rebuild_state(node: Node) -> NodeState:
    """A state from the mount table and cachedir: copies whose image still matches are kept."""
    state = NodeState()
    now = node.clock()
    for path in _cached_files(node):
        name = path.name[: -len(CACHE_SUFFIX)]
        copy = _recover_copy(node, name, path)
        if copy is not None:
            state.cached[name] = CachedCopy(copy, now)
    mounted = sorted(read_all_stacks(node.root, str(node.mountdir)))
    if mounted:
        state.jobs[RECOVERED] = Hold(tuple(mounted), "?", now)
        log.warning("datasets mounted at rebuild count as held until purged: %s", mounted)
    node.events.emit("recovered", cached=sorted(state.cached), mounted=mounted)
    return state


def _cached_files(node: Node) -> list[Path]:
    try:
        return sorted(p for p in node.config.cachedir.iterdir() if p.name.endswith(CACHE_SUFFIX))
    except OSError:
        return []


def _recover_copy(node: Node, name: str, path: Path) -> Fingerprint | None:
    """The image fingerprint PATH is a copy of: a copy keeps the image's size and mtime."""
    try:
        image = lookup_image(node.config.datadir, name)
        st = os.stat(path)
    except (ScratchStageError, OSError):
        log.warning("cached file %s has no usable image: not served", path)
        return None
    if (st.st_size, st.st_mtime_ns) == (image.size, image.fingerprint.mtime_ns):
        return image.fingerprint
    log.warning("cached file %s does not match its image: not served", path)
    return None


def reap_dead_copies(node: Node, state: NodeState) -> list[str]:
    """Drop copies in flight whose process is gone and remove stray partial files."""
    dead = [
        name for name, copy in state.staging.items()
        if process_start(node.root, copy.pid) != copy.pid_start
    ]  # fmt: skip
    for name in dead:
        del state.staging[name]
        log.warning("copy of %s by a dead process dropped", name)
        if name not in state.cached:
            # Killed between the rename and the commit: the file was never recorded or mounted.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(node.cached_path(name))
    _remove_stray_temp_files(node)
    live = {partial_name(name, c.pid) for name, c in state.staging.items()}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(node.partial_dir):
            if entry.name not in live:
                log.warning("removing leftover partial copy %s", entry.path)
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    return dead


def _remove_stray_temp_files(node: Node) -> None:
    """Temp files of state writes whose process died (kill -9 between write and rename)."""
    for path in node.config.statedir.glob(".*.tmp"):
        pid = path.name.rsplit(".", 2)[-2]
        if pid.isdigit() and process_start(node.root, int(pid)) is None:
            with contextlib.suppress(OSError):
                path.unlink()


def partial_name(name: str, pid: int) -> str:
    """The file name of a copy of NAME in flight by PID, inside cachedir/.partial/."""
    return f"{name}.{pid}.part"
