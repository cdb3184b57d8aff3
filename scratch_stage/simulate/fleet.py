"""Fleet staging: N nodes want one image at the same moment (a many-node job's prolog).

A fluid model (docs/simulate.md, "Fleet staging"): rates are shared continuously, with no
per-request overhead. Shared storage delivers at most `shared_bandwidth` in total, split
evenly among its readers; a node receives at most `node_bandwidth` (its link or its SSD's
write rate, whichever is lower) and sends to peers at most `peer_bandwidth`. Three ways to
get the image onto every node:

- independent: every node copies from shared storage at once (scratch-stage without
  cooperation): N x size read, each node at min(node, shared / N).
- lease only: at most `readers` nodes read shared storage at a time, the others wait for
  a lease (cooperative staging whose peers serve nothing: the fallback).
- cooperative: the lease holders read disjoint parts of the image from shared storage
  once, and every node passes what it has on to the others (a swarm). All nodes then
  receive at one rate r = min(shared, node, holders x peer, N/(N-1) x peer): shared storage
  must deliver every byte, each node must receive it, every byte must leave the holder
  that read it, and N - 1 copies of each byte come from peers' upload. The last piece
  still has to spread after it leaves shared storage: its holders at most double per piece
  time, so ceil(log2 N) piece times are added.

Nothing here touches a node: it is arithmetic on the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scratch_stage.core.units import format_duration

MODES = ("independent", "lease only", "cooperative")
# Beyond these the arithmetic is meaningless (and a float overflows): refused.
LIMITS = {"nodes": 10**7, "size": 10**21, "readers": 10**7, "piece": 10**21}
LIMIT_TEXT = {"nodes": "10^7", "size": "10^21 bytes", "readers": "10^7", "piece": "10^21 bytes"}


class FleetError(ValueError):
    """Parameters the model cannot use (a size or rate that is not positive)."""


@dataclass(frozen=True)
class Fleet:
    """N nodes staging one SIZE-byte image at the same moment. Rates in bytes/s."""

    nodes: int
    size: int
    shared_bandwidth: float
    node_bandwidth: float
    peer_bandwidth: float
    readers: int = 1  # concurrent shared-storage readers of one image (the lease)
    piece: int = 16 * 1024**2  # transfer unit between peers

    def __post_init__(self) -> None:
        for name in ("nodes", "size", "readers", "piece"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FleetError(f"{name.replace('_', '-')} must be a positive integer: {value!r}")
            if value > LIMITS[name]:
                raise FleetError(f"{name} must be at most {LIMIT_TEXT[name]}: {value}")
        for name in ("shared_bandwidth", "node_bandwidth", "peer_bandwidth"):
            value = getattr(self, name)
            lowest = 0.0 if name == "peer_bandwidth" else math.ulp(0.0)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= lowest):
                rule = "zero or more" if name == "peer_bandwidth" else "more than zero"
                raise FleetError(f"{name.replace('_', '-')} must be {rule}: {value!r}")


@dataclass(frozen=True)
class Outcome:
    """One way of staging: shared-storage bytes read and the time until every node has
    its copy (and until the first one has), with what limited the rate."""

    mode: str
    shared_bytes: float
    seconds: float
    first_seconds: float
    limit: str

    def ratio(self, size: int) -> float:
        """Shared-storage bytes in image sizes."""
        return self.shared_bytes / size


def independent(f: Fleet) -> Outcome:
    """Every node reads the whole image from shared storage, all at the same time."""
    share = f.shared_bandwidth / f.nodes
    rate = min(f.node_bandwidth, share)
    seconds = f.size / rate
    limit = "shared storage" if share < f.node_bandwidth else "node link"
    return Outcome("independent", float(f.nodes * f.size), seconds, seconds, limit)


def lease_only(f: Fleet) -> Outcome:
    """At most `readers` nodes read shared storage at a time; the rest queue for the lease.

    Full waves of `readers` nodes, then a last smaller wave (each of its readers gets a
    larger share of shared storage)."""
    holders = min(f.readers, f.nodes)
    waves, rest = divmod(f.nodes, holders)

    def wave(readers: int) -> float:
        return f.size / min(f.node_bandwidth, f.shared_bandwidth / readers)

    seconds = waves * wave(holders) + (wave(rest) if rest else 0.0)
    limit = "shared storage" if f.shared_bandwidth / holders < f.node_bandwidth else "node link"
    if f.nodes > holders:
        limit += f" (lease of {holders})"
    return Outcome("lease only", float(f.nodes * f.size), seconds, wave(holders), limit)


def cooperative(f: Fleet) -> Outcome:
    """Lease holders read the image once; peers pass it on (see the module docstring).

    With one node there is nobody to share with: the same as independent. Without peer
    bandwidth every transfer from a peer fails and each node falls back to shared storage
    under the lease: the same as lease only."""
    if f.nodes == 1:
        alone = independent(f)
        return Outcome("cooperative", alone.shared_bytes, alone.seconds, alone.seconds,
                       alone.limit)  # fmt: skip
    if f.peer_bandwidth == 0:
        queued = lease_only(f)
        return Outcome("cooperative", queued.shared_bytes, queued.seconds,
                       queued.first_seconds, queued.limit + ", no peers")  # fmt: skip
    holders = min(f.readers, f.nodes)
    limits = {
        "shared storage": f.shared_bandwidth,
        "node link": f.node_bandwidth,
        "peer upload": min(holders, f.nodes / (f.nodes - 1)) * f.peer_bandwidth,
    }
    limit = min(limits, key=lambda k: limits[k])  # first of equals: the order above
    rate = limits[limit]
    piece = min(f.piece, f.size)
    hop = piece / min(f.peer_bandwidth, f.node_bandwidth)
    seconds = f.size / rate + math.ceil(math.log2(f.nodes)) * hop
    # The first complete copy: a holder's own read, at best, if it read the image alone.
    first = f.size / rate if holders > 1 else f.size / min(f.node_bandwidth, f.shared_bandwidth)
    return Outcome("cooperative", float(f.size), seconds, min(first, seconds), limit)


def outcomes(f: Fleet) -> tuple[Outcome, Outcome, Outcome]:
    """The three modes, in MODES order."""
    return independent(f), lease_only(f), cooperative(f)


def to_json(fleets: Sequence[Fleet]) -> list[dict[str, Any]]:
    return [
        {"fleet": asdict(f),
         "modes": {o.mode: {**asdict(o), "ratio": o.ratio(f.size)} for o in outcomes(f)}}
        for f in fleets
    ]  # fmt: skip


def decimal(n: float) -> str:
    """Bytes in decimal units, as storage bandwidth is quoted: '150 GB', '76.8 TB'."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _time(seconds: float) -> str:
    """'75s', '1.4s', '2h8m'."""
    return f"{seconds:.3g}s" if seconds < 100 else format_duration(round(seconds))


def format_fleets(fleets: Sequence[Fleet]) -> str:
    """One block per fleet: its parameters, then a row per mode."""
    blocks = []
    for f in fleets:
        head = (
            f"{f.nodes} node{'s' if f.nodes != 1 else ''}, image {decimal(f.size)}; "
            f"shared storage {decimal(f.shared_bandwidth)}/s, node "
            f"{decimal(f.node_bandwidth)}/s, peers {decimal(f.peer_bandwidth)}/s, "
            f"{f.readers} reader{'s' if f.readers != 1 else ''} per image, "
            f"pieces {decimal(f.piece)}"
        )
        rows = [f"{'mode':<13} {'shared read':>12} {'x image':>8} {'all cached':>11} "
                f"{'first':>8}  limited by"]  # fmt: skip
        for o in outcomes(f):
            rows.append(
                f"{o.mode:<13} {decimal(o.shared_bytes):>12} {o.ratio(f.size):>8.2f} "
                f"{_time(o.seconds):>11} {_time(o.first_seconds):>8}  {o.limit}"
            )
        blocks.append("\n".join([head, *rows]))
    return "\n\n".join(blocks)
