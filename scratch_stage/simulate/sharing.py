"""Shared storage seen by the whole replayed cluster: the copies of every node, together.

The replay runs each node on its own (in parallel, `run._each_node`), each copy at the
configured per-node bandwidth. This post-pass does not feed back into it: it takes every
node's copies as they happened (`node.CopySpan`) and says what they asked of shared
storage, and what cooperative staging would have read instead (docs/simulate.md,
"Shared storage across nodes").

- concurrent copies, of all images and of one image: how many nodes read shared storage
  at once;
- with `shared_bandwidth`: the time during which the copies together wanted more than
  shared storage delivers, and by how much at worst (the replay's copy times assume they
  never do);
- cooperative: a copy reads shared storage only if no other node holds the image or is
  copying it when the copy starts (one reader per image; peers fast enough to serve the
  rest; a holder serves until its copy is evicted). Its shared bytes are what such a
  fleet would read for the same copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scratch_stage.simulate.node import CopySpan


@dataclass(frozen=True)
class SharedLoad:
    """What one policy's copies asked of shared storage, over every node."""

    copies: int
    copied_bytes: float
    cooperative_copies: int
    cooperative_bytes: float
    peak_copies: int
    peak_same_image: int
    peak_cooperative_readers: int
    oversubscribed_seconds: float
    peak_demand_ratio: float

    def to_json(self) -> dict[str, float]:
        return {
            "copies": self.copies,
            "copied_bytes": self.copied_bytes,
            "cooperative_copies": self.cooperative_copies,
            "cooperative_bytes": self.cooperative_bytes,
            "peak_copies": self.peak_copies,
            "peak_same_image": self.peak_same_image,
            "peak_cooperative_readers": self.peak_cooperative_readers,
            "oversubscribed_seconds": self.oversubscribed_seconds,
            "peak_demand_ratio": self.peak_demand_ratio,
        }


def shared_load(
    spans: Iterable[CopySpan],
    sizes: Mapping[str, int],
    bandwidth: float,
    shared_bandwidth: float | None = None,
) -> SharedLoad:
    """SPANS: every node's copies (BANDWIDTH each, as replayed); SHARED_BANDWIDTH: what
    shared storage delivers in total (None: not checked)."""
    spans = sorted(spans, key=lambda s: (s.start, s.node, s.name))
    # Cooperative: in start order, a copy reads shared storage unless another node's copy
    # of the image started no later and is still there (in flight or cached).
    alive: dict[str, list[CopySpan]] = {}
    readers: list[CopySpan] = []
    for s in spans:
        others = [o for o in alive.get(s.name, []) if o.left > s.start and o.node != s.node]
        if not others:
            readers.append(s)
        alive[s.name] = [*others, s]
    peak, peak_ratio, over = _concurrency([(s.start, s.landed) for s in spans],
                                          bandwidth, shared_bandwidth)  # fmt: skip
    same = 0
    by_image: dict[str, list[tuple[float, float]]] = {}
    for s in spans:
        by_image.setdefault(s.name, []).append((s.start, s.landed))
    for intervals in by_image.values():
        same = max(same, _concurrency(intervals, bandwidth, None)[0])
    coop_peak = _concurrency([(s.start, s.landed) for s in readers], bandwidth, None)[0]
    return SharedLoad(
        copies=len(spans),
        copied_bytes=float(sum(sizes[s.name] for s in spans)),
        cooperative_copies=len(readers),
        cooperative_bytes=float(sum(sizes[s.name] for s in readers)),
        peak_copies=peak,
        peak_same_image=same,
        peak_cooperative_readers=coop_peak,
        oversubscribed_seconds=over,
        peak_demand_ratio=peak_ratio,
    )


def _concurrency(
    intervals: list[tuple[float, float]], bandwidth: float, shared: float | None
) -> tuple[int, float, float]:
    """Most intervals open at once; the highest demand (count x BANDWIDTH) over SHARED,
    and the seconds during which it exceeds SHARED (0 without SHARED)."""
    events = sorted([(a, 1) for a, b in intervals if b > a] + [(b, -1) for a, b in intervals
                                                               if b > a])  # fmt: skip
    count = peak = 0
    over = 0.0
    last = -math.inf
    for t, step in events:  # ends sort before starts at the same instant (-1 < 1)
        if shared is not None and count * bandwidth > shared:
            over += t - last
        count += step
        last = t
        peak = max(peak, count)
    ratio = peak * bandwidth / shared if shared else 0.0
    return peak, ratio, over


SHARED_COLUMNS = ("policy", "copies", "copied TB", "coop copies", "coop TB", "coop share",
                  "peak copies", "peak same image", "peak coop readers")  # fmt: skip


def format_shared(loads: Mapping[str, SharedLoad], bandwidth: float, shared: float | None) -> str:
    """The cluster-wide table: a row per policy (what its copies asked of shared storage)."""
    columns = list(SHARED_COLUMNS)
    if shared is not None:
        columns += ["over shared h", "peak demand x"]
    rows = [columns]
    for name, load in loads.items():
        share = f"{load.cooperative_bytes / load.copied_bytes:.1%}" if load.copied_bytes else "-"
        row = [name, str(load.copies), f"{load.copied_bytes / 1e12:.2f}",
               str(load.cooperative_copies), f"{load.cooperative_bytes / 1e12:.2f}", share,
               str(load.peak_copies), str(load.peak_same_image),
               str(load.peak_cooperative_readers)]  # fmt: skip
        if shared is not None:
            row += [f"{load.oversubscribed_seconds / 3600:.1f}", f"{load.peak_demand_ratio:.2f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]  # fmt: skip
    head = [
        f"Shared storage, all nodes together: copies at {bandwidth / 1e9:g} GB/s each as "
        "replayed" + (f", shared storage {shared / 1e9:g} GB/s" if shared is not None else ""),
        "(coop: a copy reads shared storage only if no other node holds or copies the image)",
    ]
    return "\n".join([*head, *lines])
