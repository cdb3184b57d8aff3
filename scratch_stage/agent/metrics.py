"""The node's metrics: counters and gauges from the state, the status and the last pass,
rendered for node_exporter's textfile collector (docs/design.md §9, README "Operating it").

Only what any user of the node may know anyway goes into the file (0644): per dataset the
public summary's facts (size, mounted, cached) and counts; never job ids, users, pins or
refusal texts -- refusals are counted by a fixed reason.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from scratch_stage.agent.node import Node
from scratch_stage.agent.views import StatusView
from scratch_stage.core.errors import ConfigError
from scratch_stage.host.counters import DATASET_FIELDS, LAYERS, REFUSAL_REASONS, Counters
from scratch_stage.host.metrics import Family, render, write_metrics

log = logging.getLogger(__name__)

# counter field -> (metric name, help), for the per-dataset counters without a layer
_PER_DATASET = {
    "copies_started": ("copies_started_total", "Copies into the cache started."),
    "copies_finished": ("copies_finished_total", "Copies into the cache verified and kept."),
    "copies_failed": (
        "copies_failed_total",
        "Copies into the cache that failed (including no room; not interrupted ones).",
    ),
    "copied_bytes": ("copied_bytes_total", "Bytes of finished copies into the cache."),
    "copy_seconds": ("copy_seconds_total", "Seconds spent in finished copies."),
    "evictions": ("evictions_total", "Cached copies deleted (rebalance evictions, purges)."),
}
assert set(_PER_DATASET) | {f for f in DATASET_FIELDS if "_cached" in f or "_slow" in f} == set(
    DATASET_FIELDS
)


def families(node: Node) -> list[Family]:
    """Every metric of this node, from its status (settled state) and counters."""
    from scratch_stage.agent.admin import status

    counters = count_reads_now(node)
    view = status(node)
    return all_families(view, counters, node.config.interval)


def count_reads_now(node: Node) -> Counters:
    """Bring the read counters up to this moment (a diskstats sample, the heat untouched);
    the counters. Sampled under the lock, so a concurrent rebalance never counts twice."""
    from scratch_stage.host.counters import count_reads, layer_of_path, read_diskseqs
    from scratch_stage.host.heat import dataset_of_path, parse_diskstats, read_loop_backings

    datadir, cachedir = str(node.config.datadir), str(node.config.cachedir)
    with node.store.transaction() as state:
        try:
            with open(os.path.join(node.root, "proc/diskstats")) as f:
                sectors = parse_diskstats(f.read())
        except OSError as e:
            log.warning("reads not counted: %s", e)
            return state.counters
        backings = read_loop_backings(node.root)
        count_reads(
            state.counters, sectors, backings, read_diskseqs(str(node.root), list(backings)),
            dataset_of_path(datadir, cachedir), layer_of_path(datadir, cachedir),
        )  # fmt: skip
        return state.counters


def all_families(status: StatusView, counters: Counters, interval: float) -> list[Family]:
    """The metric families of a node's STATUS and COUNTERS (pure)."""
    rows = status.datasets
    names = sorted({r.name for r in rows} | set(counters.datasets))
    out = _counter_families(counters, names)
    size = Family("scratch_stage_dataset_size_bytes", "gauge", "Size of the dataset's image.")
    mounted = Family(
        "scratch_stage_dataset_mounted", "gauge", "1 if the dataset is mounted on this node."
    )
    cached = Family(
        "scratch_stage_dataset_cached", "gauge", "1 if a verified cached copy serves the dataset."
    )
    for row in rows:
        size.add(row.size, dataset=row.name)
        mounted.add(1 if row.state in ("mounted", "cached") else 0, dataset=row.name)
        cached.add(1 if row.cached else 0, dataset=row.name)
    out += [size, mounted, cached]
    capacity = Family("scratch_stage_cache_capacity_bytes", "gauge", "The cache budget (capacity).")
    capacity.add(status.capacity_bytes)
    used = Family(
        "scratch_stage_cache_used_bytes", "gauge",
        "Bytes of the cache budget used by cached copies, copies in flight and deleted copies "
        "still mounted.",
    )  # fmt: skip
    used.add(status.used_bytes)
    return [*out, capacity, used, *_rebalance_families(interval, counters)]


def _counter_families(counters: Counters, names: list[str]) -> list[Family]:
    reads = Family(
        "scratch_stage_read_bytes_total", "counter",
        "Bytes read through the node's loop devices, by the layer that served them "
        "(cached copy or slow image).",
    )  # fmt: skip
    starts = Family(
        "scratch_stage_job_starts_total", "counter",
        "Job starts (prolog) by the layer that served the dataset then.",
    )  # fmt: skip
    per = {k: Family("scratch_stage_" + m, "counter", h) for k, (m, h) in _PER_DATASET.items()}
    for name in names:
        for layer in LAYERS:
            reads.add(counters.get(name, f"read_{layer}_bytes"), dataset=name, layer=layer)
            starts.add(counters.get(name, f"jobs_{layer}"), dataset=name, layer=layer)
        for key, family in per.items():
            family.add(counters.get(name, key), dataset=name)
    refusals = Family(
        "scratch_stage_refusals_total", "counter",
        "Datasets a prolog refused, by reason (the job ran without them).",
    )  # fmt: skip
    for reason in REFUSAL_REASONS:
        refusals.add(counters.refusals.get(reason, 0), reason=reason)
    return [reads, starts, *per.values(), refusals]


def _rebalance_families(interval: float, counters: Counters) -> list[Family]:
    last = counters.rebalance
    passes = Family(
        "scratch_stage_rebalance_passes_total", "counter", "Rebalance passes run (not dry runs)."
    )
    passes.add(last.get("passes", 0))
    when = Family(
        "scratch_stage_last_rebalance_timestamp_seconds", "gauge",
        "When the last rebalance pass ended (Unix time; 0: never).",
    )  # fmt: skip
    when.add(last.get("time", 0))
    duration = Family(
        "scratch_stage_last_rebalance_duration_seconds", "gauge",
        "How long the last rebalance pass took.",
    )  # fmt: skip
    duration.add(last.get("duration", 0))
    success = Family(
        "scratch_stage_last_rebalance_success", "gauge",
        "1 if the last rebalance pass did all it planned, 0 if a step failed or it never ran.",
    )  # fmt: skip
    success.add(1 if last.get("outcome") == "ok" else 0)
    every = Family(
        "scratch_stage_rebalance_interval_seconds", "gauge",
        "The configured rebalance interval (for 'not run lately' alerts).",
    )  # fmt: skip
    every.add(interval)
    return [passes, when, duration, success, every]


def metrics_text(node: Node) -> str:
    return render(families(node))


def write_node_metrics(node: Node) -> Path:
    """Write `<metrics_dir>/scratch_stage.prom`; its path. ConfigError without metrics_dir."""
    directory = None if node.config.metrics_dir is None else Path(node.config.metrics_dir)
    if directory is None:
        raise ConfigError("metrics_dir is not configured: nowhere to write the metrics file")
    return write_metrics(directory, metrics_text(node))
