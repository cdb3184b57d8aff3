"""Recovery after crashes: rebuild a lost state, reap copies whose process died."""

from __future__ import annotations

import contextlib
import os

from scratch_stage.agent.node import Node
from scratch_stage.core.errors import ScratchStageError
from scratch_stage.core.layout import dataset_of_cached
from scratch_stage.host.catalog import Fingerprint, lookup_image
from scratch_stage.host.logger import get_logger
from scratch_stage.host.mountinfo import read_all_stacks
from scratch_stage.host.state import RECOVERED, CachedCopy, Hold, NodeState, temp_owner

log = get_logger(__name__)


def process_start(root: str | os.PathLike[str], pid: int) -> str | None:
    """The start time of process PID (proc(5) stat field 22), None if it does not exist."""
    try:
        with open(os.path.join(root, f"proc/{pid}/stat")) as f:
            stat = f.read()
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
        name = dataset_of_cached(os.path.basename(path))
        copy = _recover_copy(node, name, path) if name else None
        if name and copy is not None:
            state.cached[name] = CachedCopy(copy, now, os.stat(path).st_ino)
    mounted = sorted(read_all_stacks(node.root, str(node.mountdir)))
    if mounted:
        state.jobs[RECOVERED] = Hold(tuple(mounted), "?", now)
        log.warning("datasets mounted at rebuild count as held until purged: %s", mounted)
    node.events.emit("recovered", cached=sorted(state.cached), mounted=mounted)
    return state


def _cached_files(node: Node) -> list[str]:
    cachedir = node.config.cachedir
    try:
        names = os.listdir(cachedir)
    except OSError:
        return []
    return sorted(os.path.join(cachedir, n) for n in names if dataset_of_cached(n))


def _recover_copy(node: Node, name: str, path: str) -> Fingerprint | None:
    """The image fingerprint PATH is a copy of: a copy keeps the image's size and mtime."""
    try:
        image = lookup_image(node.config.datadir, name, trust=node.trust)
        st = os.stat(path)
    except (ScratchStageError, OSError):
        log.warning("cached file %s has no usable image: not served", path)
        return None
    if (st.st_size, st.st_mtime_ns) == (image.size, image.fingerprint.mtime_ns):
        return image.fingerprint
    log.warning("cached file %s does not match its image: not served", path)
    return None


def is_alive(root: str | os.PathLike[str], pid: int, pid_start: str) -> bool:
    """True while process PID is the process that started at PID_START (not a reused pid)."""
    return process_start(root, pid) == pid_start


def remove_stray_temp_files(node: Node) -> None:
    """Temp files of state writes whose process died (kill -9 between write and rename)."""
    try:
        entries = os.listdir(node.config.statedir)
    except OSError:
        return
    for filename in entries:
        pid = temp_owner(filename)
        if pid is not None and process_start(node.root, pid) is None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(node.config.statedir, filename))
