"""Heat: bytes/s read from each dataset's loop devices over a sliding window (pure).

/proc/diskstats counts sectors of 512 bytes whatever the device's logical block size
(https://www.kernel.org/doc/html/latest/admin-guide/iostats.html); the prototype this
field started from multiplied by hw_sector_size and over-counted 8x on 4 KiB loops.
"""

from __future__ import annotations

import os

from scratch_stage.core.records import field, record
from scratch_stage.host.catalog import SUFFIXES
from scratch_stage.host.mountinfo import DELETED_SUFFIX

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from os import PathLike
    from typing import Any, Callable

SECTOR_BYTES = 512


def parse_diskstats(text: str) -> dict[str, int]:
    """Sectors read (field 6) per device name; malformed lines are skipped."""
    sectors: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].isdigit():
            sectors[fields[2]] = int(fields[5])
    return sectors


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_loop_backings(root: str | PathLike[str]) -> dict[str, str]:
    """Backing file of every attached loop device, from ROOT/sys/block/loop*/loop/."""
    block = os.path.join(root, "sys/block")
    try:
        devices = sorted(d for d in os.listdir(block) if d.startswith("loop"))
    except OSError:
        return {}
    backings: dict[str, str] = {}
    for device in devices:
        try:
            backings[device] = _read_text(os.path.join(block, device, "loop/backing_file"))
        except OSError:
            continue
    return {device: backing.rstrip("\n") for device, backing in backings.items()}


def dataset_of_path(datadir: str, cachedir: str) -> Callable[[str], str | None]:
    """A function naming the dataset a backing file belongs to (slow image or cached copy)."""
    prefixes = (datadir.rstrip("/") + "/", cachedir.rstrip("/") + "/")

    def dataset_of(backing: str) -> str | None:
        path = backing[: -len(DELETED_SUFFIX)] if backing.endswith(DELETED_SUFFIX) else backing
        for prefix in prefixes:
            rest = path[len(prefix) :] if path.startswith(prefix) else None
            if rest is None or "/" in rest:
                continue
            for suffix in SUFFIXES:
                if rest.endswith(suffix):
                    return rest[: -len(suffix)]
        return None

    return dataset_of


@record(frozen=True)
class Attach:
    """A loop device scratch-stage attached and mounted: its backing file as the kernel
    reports it, when, and its sectors-read counter then (loop counters survive a detach,
    so the count since attach is the difference)."""

    loop: str
    backing: str
    at: float
    sectors: int
    diskseq: str = ""  # /sys/block/<loop>/diskseq: changes at every attach (Linux 5.15+)


def read_attach(root: str | PathLike[str], device: str, now: float) -> Attach | None:
    """DEVICE's (/dev/loopN) backing file and read counter from ROOT/sys; None if unreadable."""
    loop = device.rstrip("/").rpartition("/")[2]
    block = os.path.join(root, "sys/block", loop)
    try:
        backing = _read_text(os.path.join(block, "loop/backing_file")).rstrip("\n")
        fields = _read_text(os.path.join(block, "stat")).split()
    except OSError:
        return None
    if len(fields) < 3 or not fields[2].isdigit():
        return None
    try:
        diskseq = _read_text(os.path.join(block, "diskseq")).strip()
    except OSError:
        diskseq = ""
    return Attach(loop, backing, now, int(fields[2]), diskseq)  # field 3: sectors read


@record(frozen=True)
class HeatMemory:
    """Last counter per loop device, cumulative bytes samples per dataset, and the loop
    devices attached since the last sample (loop -> backing, attach time, counter then)."""

    counters: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    samples: Mapping[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    attached: Mapping[str, tuple[str, float, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "counters": {k: [b, s] for k, (b, s) in self.counters.items()},
            "samples": {n: [list(x) for x in s] for n, s in self.samples.items()},
            "attached": {k: [b, t, s] for k, (b, t, s) in self.attached.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> HeatMemory:
        if data is None:
            return cls()
        counters = {str(k): (str(b), int(s)) for k, (b, s) in data["counters"].items()}
        samples = {
            str(n): tuple((float(t), int(c)) for t, c in s) for n, s in data["samples"].items()
        }
        attached = {  # absent in files written before attach records
            str(k): (str(b), float(t), int(s)) for k, (b, t, s) in data.get("attached", {}).items()
        }
        return cls(counters, samples, attached)

    def with_attach(self, attach: Attach) -> HeatMemory:
        """This memory with ATTACH recorded (the next sample counts the device from it)."""
        attached = {**self.attached, attach.loop: (attach.backing, attach.at, attach.sectors)}
        return HeatMemory(self.counters, self.samples, attached)


def update_heat(
    memory: HeatMemory,
    sectors: Mapping[str, int],
    backings: Mapping[str, str],
    dataset_of: Callable[[str], str | None],
    *,
    now: float,
    period: float,
) -> tuple[HeatMemory, dict[str, float]]:
    """New memory after a sample at NOW, and each dataset's read rate (bytes/s) over PERIOD.

    A loop device seen for the first time counts from its attach record, if scratch-stage
    attached it (same backing file, attached before NOW): the bytes read since are spread
    evenly from the attach time to NOW, so the very first sample after reads has heat. One
    scratch-stage did not attach counts from this sample on. Every attach record is
    consumed by the sample (the memory returned has none).
    """
    read: dict[str, int] = {}
    since_attach: dict[str, list[tuple[float, int]]] = {}
    counters: dict[str, tuple[str, int]] = {}
    for loop, backing in backings.items():
        name = dataset_of(backing)
        if loop not in sectors or name is None:
            continue
        counters[loop] = (backing, sectors[loop])
        read.setdefault(name, 0)
        last = memory.counters.get(loop)
        if last is None or last[0] != backing:
            mark = memory.attached.get(loop)
            if mark is not None and mark[0] == backing and mark[1] <= now:
                count = sectors[loop] - mark[2]
                if count > 0:
                    since_attach.setdefault(name, []).append((mark[1], count * SECTOR_BYTES))
            continue  # a new or reused loop device: nothing more of its count is ours
        delta = sectors[loop] - last[1]
        if delta < 0:
            delta = sectors[loop]  # counter reset (the device was recreated)
        read[name] += delta * SECTOR_BYTES
    samples: dict[str, tuple[tuple[float, int], ...]] = {}
    rates: dict[str, float] = {}
    for name in sorted(set(memory.samples) | set(read)):
        # A sample from the future (the clock stepped back) would make any rate absurd.
        history = tuple(x for x in memory.samples.get(name, ()) if x[0] < now)
        total = (history[-1][1] if history else 0) + read.get(name, 0)
        for attached_at, amount in since_attach.get(name, ()):
            history = _spread(history, attached_at, now, amount)
            total += amount
        kept = _window((*history, (now, total)), now, period)
        rates[name] = _rate(kept)
        if name in read or rates[name] > 0:
            samples[name] = kept  # forget datasets no longer mounted once their heat is gone
    return HeatMemory(counters, samples), rates


def _spread(
    history: tuple[tuple[float, int], ...], start: float, end: float, amount: int
) -> tuple[tuple[float, int], ...]:
    """HISTORY (cumulative samples before END) with AMOUNT read evenly over START..END:
    a sample at START is added if none is at or before it."""
    if start >= end:
        return history
    rows = [
        (t, c + round(amount * (t - start) / (end - start)) if t > start else c) for t, c in history
    ]
    if not history or history[0][0] > start:
        rows.insert(0, (start, history[0][1] if history else 0))
    return tuple(rows)


def _window(
    samples: tuple[tuple[float, int], ...], now: float, period: float
) -> tuple[tuple[float, int], ...]:
    """Samples within PERIOD of NOW, plus the last one before it (the window's left edge)."""
    inside = [i for i, (t, _) in enumerate(samples) if t >= now - period]
    start = max(0, inside[0] - 1) if inside else len(samples) - 1
    return samples[start:]


def _rate(samples: tuple[tuple[float, int], ...]) -> float:
    if len(samples) < 2:
        return 0.0
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    span = max(t1 - t0, 1e-9)
    return (c1 - c0) / span
