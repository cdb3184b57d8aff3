"""The public summary: what any user of the node may know, for a non-root `status`.

The node state and event log are private to root (job ids, users, refusal reasons). This
file, `<mountdir>/.status.json` (0644, next to the datasets jobs read), holds only what the
mountdir shows anyway plus the cache: per dataset its size, whether it is mounted and
whether a verified cached copy serves it, and the cache's use. Root's `status` and every
rebalance pass rewrite it (docs/security.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SUMMARY_FILE = ".status.json"
PUBLIC_FIELDS = ("name", "size", "state", "cached")


def summary_path(mountdir: Path) -> Path:
    return mountdir / SUMMARY_FILE


def public_summary(status: dict[str, Any], at: float) -> dict[str, Any]:
    """The parts of a full status any user may see (pure): no holders, jobs or reasons."""
    return {
        "at": at,
        "node": status["node"],
        "capacity_bytes": status["capacity_bytes"],
        "used_bytes": status["used_bytes"],
        "datasets": [{k: row[k] for k in PUBLIC_FIELDS} for row in status["datasets"]],
    }


def write_summary(mountdir: Path, summary: dict[str, Any]) -> None:
    """Replace the public summary (0644); OSError if it cannot be written."""
    from scratch_stage.host.state import write_atomically

    os.makedirs(mountdir, mode=0o755, exist_ok=True)
    write_atomically(summary_path(mountdir), json.dumps(summary).encode(), mode=0o644)


def read_summary(mountdir: Path) -> dict[str, Any] | None:
    """The public summary, or None if there is none (yet) or it is unreadable."""
    try:
        data = json.loads(summary_path(mountdir).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
