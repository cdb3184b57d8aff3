"""What the cache really occupies on disk, and what is free (for capacity checks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from scratch_stage.host.mountinfo import DELETED_SUFFIX

if TYPE_CHECKING:
    from scratch_stage.agent.node import Node
    from scratch_stage.host.state import NodeState

_SECTOR = 512
# Room left on the cache filesystem beyond a copy, for state, logs and metadata.
FREE_MARGIN = 64 * 1024 * 1024


def used_bytes(node: Node, state: NodeState) -> int:
    """Cached copies and copies in flight as recorded, plus copies deleted while mounted.

    A cached copy replaced or purged while a job still reads it is unlinked but keeps its
    blocks until its loop device goes away: it counts until then.
    """
    return state.reserved_bytes() + retired_bytes(node)


def retired_bytes(node: Node) -> int:
    """Bytes of deleted cachedir files that loop devices still hold open."""
    prefix = os.path.realpath(node.config.cachedir).rstrip("/") + "/"
    total = 0
    block = Path(node.root) / "sys/block"
    try:
        loops = [e for e in os.listdir(block) if e.startswith("loop")]
    except OSError:
        return 0
    for loop in loops:
        try:
            backing = (block / loop / "loop/backing_file").read_text().rstrip("\n")
            if backing.startswith(prefix) and backing.endswith(DELETED_SUFFIX):
                total += int((block / loop / "size").read_text()) * _SECTOR
        except (OSError, ValueError):
            continue
    return total


def free_bytes(node: Node) -> int:
    """Bytes root may still write on the cache filesystem."""
    st = os.statvfs(node.config.cachedir)
    return st.f_bfree * st.f_frsize
