"""Counters kept in the node state: what the node served, copied, evicted and refused.

They live in state.json (`counters`) and are changed only inside the state transactions
that already record the events they count, so they survive restarts and cost the prolog
no extra write (docs/design.md, "Metrics"). Bytes read are sampled from each loop
device's diskstats by the rebalance and attributed to the layer the device reads (the
slow image in datadir or the cached copy in cachedir). A loop device is known by its name
and its attach identity (the kernel's `diskseq`, which changes at every attach, and its
backing file): the kernel does not reset a device's counters when it is detached and
attached again, so counts are taken only as differences against a mark of the same
attachment -- one recorded when scratch-stage attached the device (`mounts.record_attach`,
from the heat's `Attach` record), or the previous sample.

Plain classes and dicts only: the prolog imports this module.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Callable

SECTOR_BYTES = 512

# Per dataset, every counter starts at 0 (names as in the metrics, without the prefix).
DATASET_FIELDS = (
    "read_cached_bytes",  # bytes read through loop devices of the cached copy
    "read_slow_bytes",  # bytes read through loop devices of the slow image
    "jobs_cached",  # job starts served by the cached copy (prolog)
    "jobs_slow",  # job starts served by the slow image (prolog)
    "copies_started",
    "copies_finished",
    "copies_failed",  # failed copies, including one refused before it started (no room)
    "copied_bytes",  # bytes of finished copies
    "copy_seconds",  # seconds spent in finished copies
    "evictions",  # cached copies deleted (rebalance eviction, purge)
)
# Why a prolog refused a dataset: a fixed set, so a user cannot mint new series.
REFUSAL_REASONS = ("invalid_name", "unavailable", "forbidden", "mount_failed", "busy")
LAYERS = ("cached", "slow")


class Mark:
    """One loop device as last counted: its attach identity and its sectors read then."""

    __slots__ = ("backing", "diskseq", "sectors")

    def __init__(self, diskseq: str, backing: str, sectors: int) -> None:
        self.diskseq = diskseq
        self.backing = backing
        self.sectors = sectors

    def same_attachment(self, diskseq: str, backing: str) -> bool:
        """True when the device is still the attachment this mark was taken of."""
        return self.backing == backing and (self.diskseq == diskseq or not diskseq)

    def to_json(self) -> list[Any]:
        return [self.diskseq, self.backing, self.sectors]

    @classmethod
    def from_json(cls, value: Any) -> Mark:
        diskseq, backing, sectors = value
        return cls(str(diskseq), str(backing), int(sectors))


_INDEX = {name: i for i, name in enumerate(DATASET_FIELDS)}
_NUMBERS = (int, float)


class Counters:
    """The node's counters (all monotonic but `rebalance`, the last pass's record).

    Per dataset one row of numbers in DATASET_FIELDS order (`fields` in the JSON names
    them): every prolog parses and writes these, so they are kept compact.
    """

    __slots__ = ("datasets", "devices", "rebalance", "refusals")

    def __init__(
        self,
        datasets: dict[str, list[float]] | None = None,
        refusals: dict[str, int] | None = None,
        devices: dict[str, Mark] | None = None,
        rebalance: dict[str, Any] | None = None,
    ) -> None:
        self.datasets: dict[str, list[float]] = datasets if datasets is not None else {}
        self.refusals: dict[str, int] = refusals if refusals is not None else {}
        self.devices: dict[str, Mark] = devices if devices is not None else {}
        # {"time": wall clock at the end, "duration": seconds, "outcome": ..., "passes": n}
        self.rebalance: dict[str, Any] = rebalance if rebalance is not None else {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counters) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Counters({self.to_json()!r})"

    def add(self, name: str, counter: str, amount: float = 1) -> None:
        """Add AMOUNT to dataset NAME's COUNTER (one of DATASET_FIELDS)."""
        row = self.datasets.get(name)
        if row is None:
            row = self.datasets[name] = [0 for _ in DATASET_FIELDS]
        row[_INDEX[counter]] += amount

    def get(self, name: str, counter: str) -> float:
        row = self.datasets.get(name)
        return row[_INDEX[counter]] if row is not None else 0

    def values(self, name: str) -> dict[str, float]:
        """Dataset NAME's counters by name (zeros included)."""
        row: list[float] = self.datasets.get(name) or [0 for _ in DATASET_FIELDS]
        return dict(zip(DATASET_FIELDS, row))

    def copy_rate(self) -> float | None:
        """Bytes/s of this node's finished copies, all datasets together; None if none."""
        done, seconds = _INDEX["copied_bytes"], _INDEX["copy_seconds"]
        copied = sum(row[done] for row in self.datasets.values())
        took = sum(row[seconds] for row in self.datasets.values())
        return copied / took if copied > 0 and took > 0 else None

    def forget(self, names: set[str]) -> None:
        """Drop the counters of datasets NAMES (gone from datadir and from the cache)."""
        for name in names:
            self.datasets.pop(name, None)

    def refused(self, reason: str) -> None:
        assert reason in REFUSAL_REASONS, reason
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def attached(self, device: str, mark: Mark) -> None:
        """Record DEVICE as attached now by scratch-stage: its reads count from MARK on."""
        self.devices[device] = mark

    def record_rebalance(self, *, end: float, duration: float, outcome: str) -> None:
        passes = int(self.rebalance.get("passes", 0)) + 1
        self.rebalance = {
            "time": end, "duration": round(duration, 3), "outcome": outcome, "passes": passes
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": list(DATASET_FIELDS),
            "datasets": {n: list(v) for n, v in self.datasets.items()},
            "refusals": dict(self.refusals),
            "devices": {d: m.to_json() for d, m in self.devices.items()},
            "rebalance": dict(self.rebalance),
        }

    @classmethod
    def from_json(cls, data: Any) -> Counters:
        """DATA as written by to_json (absent in older state files: empty); ValueError if bad.

        Rows of other `fields` (another version's) are mapped by name; unknown ones dropped.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("counters is not an object")
        fields = data.get("fields", DATASET_FIELDS)
        width = len(DATASET_FIELDS)
        datasets: dict[str, list[float]] = {}
        same = list(fields) == list(DATASET_FIELDS)
        for name, row in data.get("datasets", {}).items():
            if (
                type(row) is not list
                or len(row) != len(fields)
                or not all(type(v) in _NUMBERS for v in row)
            ):
                raise ValueError(f"counters of {name!r} are not {len(fields)} numbers")
            if same:
                datasets[str(name)] = row
            else:
                mapped: list[float] = [0 for _ in range(width)]
                for field_name, value in zip(fields, row):
                    if field_name in _INDEX:
                        mapped[_INDEX[field_name]] = value
                datasets[str(name)] = mapped
        refusals = {str(k): int(v) for k, v in data.get("refusals", {}).items()}
        devices = {str(d): Mark.from_json(m) for d, m in data.get("devices", {}).items()}
        rebalance = dict(data.get("rebalance", {}))
        return cls(datasets, refusals, devices, rebalance)


def layer_of_path(datadir: str, cachedir: str) -> Callable[[str], str | None]:
    """A function naming the layer ('cached' or 'slow') a loop device's backing file is."""
    slow, cached = datadir.rstrip("/") + "/", cachedir.rstrip("/") + "/"

    def layer_of(backing: str) -> str | None:
        if backing.startswith(cached):
            return "cached"
        if backing.startswith(slow):
            return "slow"
        return None

    return layer_of


def count_reads(
    counters: Counters,
    sectors: Mapping[str, int],
    backings: Mapping[str, str],
    diskseqs: Mapping[str, str],
    dataset_of: Callable[[str], str | None],
    layer_of: Callable[[str], str | None],
) -> dict[str, dict[str, int]]:
    """Add the bytes read since the last mark of each attachment to COUNTERS; what was added.

    A device seen for the first time, or attached again since its mark (another diskseq or
    backing file), is marked without counting: its count so far belongs to an earlier
    attachment. Marks of devices no longer attached are dropped.
    """
    added: dict[str, dict[str, int]] = {}
    devices: dict[str, Mark] = {}
    for device, backing in backings.items():
        name, layer = dataset_of(backing), layer_of(backing)
        if device not in sectors or name is None or layer is None:
            continue
        now, seq = sectors[device], diskseqs.get(device, "")
        mark = counters.devices.get(device)
        if mark is not None and mark.same_attachment(seq, backing) and now >= mark.sectors:
            delta = (now - mark.sectors) * SECTOR_BYTES
            if delta:
                counters.add(name, f"read_{layer}_bytes", delta)
                added.setdefault(name, {}).setdefault(layer, 0)
                added[name][layer] += delta
        devices[device] = Mark(seq, backing, now)
    counters.devices = devices
    return added


def read_diskseqs(root: str, devices: list[str]) -> dict[str, str]:
    """Each device's /sys/block/<dev>/diskseq (Linux 5.15+; absent: not in the result)."""
    seqs: dict[str, str] = {}
    for device in devices:
        seq = read_small(os.path.join(root, "sys/block", device, "diskseq"))
        if seq:
            seqs[device] = seq
    return seqs


def read_small(path: str) -> str:
    """The stripped text of a small sysfs file, '' if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("ascii", "replace").strip()
    except OSError:
        return ""
