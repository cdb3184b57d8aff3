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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY_FILE = ".status.json"
PUBLIC_FIELDS = ("name", "size", "state", "cached")


@dataclass(frozen=True)
class PublicRow:
    """What any user may know of one dataset: its name, size, state and whether cached."""

    name: str
    size: int
    state: str
    cached: bool


@dataclass(frozen=True)
class PublicSummary:
    """The public summary: the node's datasets and cache use, as of AT (epoch seconds)."""

    at: float
    node: str
    capacity_bytes: int
    used_bytes: int
    datasets: tuple[PublicRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "node": self.node,
            "capacity_bytes": self.capacity_bytes,
            "used_bytes": self.used_bytes,
            "datasets": [
                {"name": r.name, "size": r.size, "state": r.state, "cached": r.cached}
                for r in self.datasets
            ],
        }

    @classmethod
    def from_json(cls, data: object) -> PublicSummary:
        """The summary in DATA; ValueError if any field is missing or of the wrong type."""
        if not isinstance(data, dict) or not isinstance(data.get("datasets"), list):
            raise ValueError("not a public summary")
        rows = []
        for row in data["datasets"]:
            if not isinstance(row, dict):
                raise ValueError("not a dataset row")
            rows.append(
                PublicRow(
                    _typed(row, "name", str),
                    _typed(row, "size", int),
                    _typed(row, "state", str),
                    _typed(row, "cached", bool),
                )
            )
        at = data.get("at")
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            raise ValueError("bad 'at'")
        return cls(
            float(at),
            _typed(data, "node", str),
            _typed(data, "capacity_bytes", int),
            _typed(data, "used_bytes", int),
            tuple(rows),
        )


def _typed(data: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"bad {key!r}")
    return value


def summary_path(mountdir: str | os.PathLike[str]) -> Path:
    return Path(mountdir) / SUMMARY_FILE


def write_summary(mountdir: str | os.PathLike[str], summary: PublicSummary) -> None:
    """Replace the public summary (0644); OSError if it cannot be written."""
    from scratch_stage.host.state import write_atomically

    os.makedirs(mountdir, mode=0o755, exist_ok=True)
    write_atomically(summary_path(mountdir), json.dumps(summary.to_json()).encode(), mode=0o644)


def read_summary(mountdir: str | os.PathLike[str]) -> PublicSummary | None:
    """The public summary, or None if there is none (yet) or it is unreadable or malformed."""
    try:
        return PublicSummary.from_json(json.loads(summary_path(mountdir).read_bytes()))
    except (OSError, ValueError):
        return None
