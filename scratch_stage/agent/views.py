"""What the administrator commands return: typed values the CLI formats and `--json` writes.

Nothing here formats text for people (cli.py does); `to_json` gives the plain values
`--json` prints, with the field names the README documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from scratch_stage.core.units import format_size
from scratch_stage.host.catalog import Fingerprint

DatasetState = Literal["cold", "mounted", "staging", "cached"]
DATASET_STATES: tuple[DatasetState, ...] = ("cold", "mounted", "staging", "cached")


@dataclass(frozen=True)
class DatasetRow:
    """One dataset in `status`: what it is, who holds it, and the last pass's figures.

    HEAT is bytes/s read over the last heat window; DEMAND the queued jobs expected to
    read it (a job starting later counts less); VALUE the slow-storage bytes a cached
    copy saves over the horizon after paying for the copy (negative: not worth one),
    None when the last pass did not value it.
    """

    name: str
    size: int
    state: DatasetState
    cached: bool
    holders: tuple[str, ...] = ()
    pinned: bool = False
    pin_expires: float | None = None
    retry_at: float | None = None
    failures: int = 0
    layers: int = 0
    in_datadir: bool = True
    heat: float = 0.0
    demand: float = 0.0
    value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "size": self.size, "state": self.state, "cached": self.cached,
            "holders": list(self.holders), "pinned": self.pinned,
            "pin_expires": self.pin_expires, "retry_at": self.retry_at,
            "failures": self.failures, "layers": self.layers, "in_datadir": self.in_datadir,
            "heat": self.heat, "demand": self.demand, "value": self.value,
        }  # fmt: skip


@dataclass(frozen=True)
class StatusView:
    """`status`: every dataset known to the node, the cache budget, unusable datadir files."""

    node: str
    capacity_bytes: int
    used_bytes: int
    datasets: tuple[DatasetRow, ...]
    problems: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "capacity_bytes": self.capacity_bytes,
            "used_bytes": self.used_bytes,
            "datasets": [row.to_json() for row in self.datasets],
            "problems": dict(sorted(self.problems.items())),
        }


@dataclass(frozen=True)
class MountLayer:
    """One mount of a dataset's stack: the loop device and the file behind it."""

    source: str
    backing: str | None


@dataclass(frozen=True)
class IntentView:
    """A process acting on the dataset's mounts (an intent in the node state)."""

    kind: str
    pid: int


@dataclass(frozen=True)
class FailureView:
    """Failed copies of the dataset and when the next is allowed."""

    count: int
    retry_at: float
    reason: str


@dataclass(frozen=True)
class EventView:
    """One event of the log: when, its kind, and the rest of its fields."""

    at: float
    kind: str
    details: Mapping[str, Any]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> EventView:
        at = record.get("ts", 0.0)
        rest = {k: v for k, v in record.items() if k not in ("ts", "event", "dataset")}
        return cls(
            float(at) if isinstance(at, (int, float)) else 0.0, str(record.get("event", "?")), rest
        )

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.at, "event": self.kind, **self.details}


@dataclass(frozen=True)
class InfoView:
    """`info NAME`: the dataset's image and copy, its mounts, holders, pin and events."""

    name: str
    state: DatasetState
    mountpoint: str
    image: str | None = None
    fingerprint: Fingerprint | None = None
    cached_path: str | None = None
    cached_fingerprint: Fingerprint | None = None
    mount_stack: tuple[MountLayer, ...] = ()
    holders: tuple[str, ...] = ()
    pinned: bool = False
    pin_expires: float | None = None
    staging_pid: int | None = None
    intent: IntentView | None = None
    failure: FailureView | None = None
    events: tuple[EventView, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def fingerprint(f: Fingerprint | None) -> dict[str, int] | None:
            if f is None:
                return None
            return {
                "size": f.size,
                "mtime_ns": f.mtime_ns,
                "inode": f.inode,
                "ctime_ns": f.ctime_ns,
            }

        return {
            "name": self.name, "state": self.state, "image": self.image,
            "fingerprint": fingerprint(self.fingerprint), "cached_path": self.cached_path,
            "cached_fingerprint": fingerprint(self.cached_fingerprint),
            "mountpoint": self.mountpoint,
            "mount_stack": [{"source": m.source, "backing": m.backing} for m in self.mount_stack],
            "holders": list(self.holders), "pinned": self.pinned,
            "pin_expires": self.pin_expires, "staging_pid": self.staging_pid,
            "intent": None if self.intent is None
            else {"kind": self.intent.kind, "pid": self.intent.pid},
            "failure": None if self.failure is None
            else {"count": self.failure.count, "retry_at": self.failure.retry_at,
                  "reason": self.failure.reason},
            "events": [e.to_json() for e in self.events],
        }  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """`coop prepare`: the digest of image NAME's current version in coordination entry KEY.

    PUBLISHED is False when one was there already (nothing read); READ is the bytes read
    from datadir to make it, in SECONDS.
    """

    name: str
    key: str
    published: bool
    read: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "entry": self.key, "published": self.published,
                "read_bytes": self.read, "seconds": round(self.seconds, 3)}  # fmt: skip


@dataclass(frozen=True)
class PinResult:
    """A pin just set: NAME, until EXPIRES (epoch seconds) or for good, TTL as asked."""

    name: str
    ttl: float | None
    expires: float | None


@dataclass(frozen=True)
class ReleaseResult:
    """The holds a `release` dropped."""

    job_id: str
    datasets: tuple[str, ...]


PurgeOutcome = Literal["purged", "not cached", "kept", "busy"]


@dataclass(frozen=True)
class PurgeResult:
    """What `purge` did with one dataset; HOLDERS: the jobs that held it."""

    name: str
    outcome: PurgeOutcome
    holders: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpectedBytes:
    """This node's demand in expected bytes, as the rebalance's planner gets it, and how
    each dataset's bytes per job were found (`demand` command; docs/design.md section 8)."""

    demand: Mapping[str, float]  # the planner's demand: only reads after a copy lands
    prospect: Mapping[str, float]  # the same without the wait's discount
    sizes: Mapping[str, int]
    per_job: Mapping[str, float]  # the history: bytes read per job start here
    history: bool  # the node's counters could be read (root)
    read_rate: float
    unplaced_scale: Mapping[str, float] = field(default_factory=dict)  # capped datasets

    def basis(self, name: str) -> tuple[float, str]:
        """Bytes a job of NAME is expected to read before its time limit's cap, and whence."""
        if name in self.per_job:
            return self.per_job[name], "history"
        return float(self.sizes.get(name, 0)), "prior" if name in self.sizes else "not in datadir"

    def per_job_text(self, name: str) -> str:
        amount, basis = self.basis(name)
        if basis == "not in datadir":
            return basis
        size = self.sizes[name]
        passes = amount / size if size else 0.0
        text = f"{format_size(amount)}, {passes:.2f} passes ({basis})"
        if name in self.unplaced_scale:
            text += f"; unplaced jobs x{self.unplaced_scale[name]:.2g} (cap)"
        return text

    def to_json(self) -> dict[str, Any]:
        names = sorted(set(self.demand) | set(self.prospect))
        per_job = {}
        for name in names:
            amount, basis = self.basis(name)
            size = self.sizes.get(name, 0)
            per_job[name] = {"bytes": amount, "passes": amount / size if size else 0.0,
                             "basis": basis}  # fmt: skip
        return {
            "node_demand_bytes": dict(self.demand),
            "node_prospect_bytes": dict(self.prospect),
            "per_job": per_job,
            "history": self.history,
            "read_rate": self.read_rate,
            "unplaced_scale": dict(self.unplaced_scale),
        }
