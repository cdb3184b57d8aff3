"""The cluster view for a login or controller node: per dataset, where it is cached (the
`ds_<name>` node features), how many pending jobs want it (the published demand file or
squeue), and, with `prometheus_url`, its hit ratio and the bytes copied over a window."""

from __future__ import annotations

from typing import Any

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.host import runner
from scratch_stage.host.config import Config
from scratch_stage.slurm.cluster import SINFO_FEATURES_FORMAT, cached_on, parse_sinfo_features

HIT_RATIO = (
    'sum by (dataset) (increase(scratch_stage_read_bytes_total{{layer="cached"}}[{w}]))'
    " / sum by (dataset) (increase(scratch_stage_read_bytes_total[{w}]))"
)
CLUSTER_HIT_RATIO = (
    'sum(increase(scratch_stage_read_bytes_total{{layer="cached"}}[{w}]))'
    " / sum(increase(scratch_stage_read_bytes_total[{w}]))"
)
COPIED = "sum by (dataset) (increase(scratch_stage_copied_bytes_total[{w}]))"


def cluster_view(config: Config, now: float, window: float) -> dict[str, Any]:
    """The view as plain values; ScratchStageError when sinfo cannot be read."""
    text = runner.run([*config.sinfo_command, "-h", "-N", "-o", SINFO_FEATURES_FORMAT],
                      timeout=config.command_timeout)  # fmt: skip
    features = parse_sinfo_features(text)
    where = cached_on(features)
    pending, demand_error = _pending(config, now)
    figures, cluster_ratio, prom_error = _prometheus(config, window)
    names = sorted(set(where) | set(pending or {}) | set(figures) | _catalog(config))
    rows = [
        {
            "name": name,
            "cached_on": where.get(name, []),
            "pending_jobs": None if pending is None else pending.get(name, 0),
            "hit_ratio": figures.get(name, {}).get("hit_ratio"),
            "copied_bytes": figures.get(name, {}).get("copied_bytes"),
        }
        for name in names
    ]
    return {
        "nodes": len(features),
        "datasets": rows,
        "demand_error": demand_error,
        "prometheus_url": config.prometheus_url or None,
        "prometheus_error": prom_error,
        "window_seconds": window,
        "cluster_hit_ratio": cluster_ratio,
    }


def _pending(config: Config, now: float) -> tuple[dict[str, int] | None, str | None]:
    from scratch_stage.slurm.demand import summarize
    from scratch_stage.slurm.demand_sources import require_snapshot

    try:
        return summarize(require_snapshot(config, now)), None
    except ScratchStageError as e:
        return None, str(e)


def _prometheus(
    config: Config, window: float
) -> tuple[dict[str, dict[str, float]], float | None, str | None]:
    if not config.prometheus_url:
        return {}, None, None
    from scratch_stage.host.prometheus import instant_query

    w = f"{max(int(window), 1)}s"
    figures: dict[str, dict[str, float]] = {}
    try:
        timeout = config.command_timeout
        for labels, value in instant_query(config.prometheus_url, HIT_RATIO.format(w=w),
                                           timeout=timeout):  # fmt: skip
            figures.setdefault(labels.get("dataset", ""), {})["hit_ratio"] = value
        for labels, value in instant_query(config.prometheus_url, COPIED.format(w=w),
                                           timeout=timeout):  # fmt: skip
            figures.setdefault(labels.get("dataset", ""), {})["copied_bytes"] = value
        total = instant_query(config.prometheus_url, CLUSTER_HIT_RATIO.format(w=w),
                              timeout=timeout)  # fmt: skip
    except ScratchStageError as e:
        return {}, None, str(e)
    figures.pop("", None)
    return figures, (total[0][1] if total else None), None


def _catalog(config: Config) -> set[str]:
    """The datasets in datadir, when this host sees it (else none: the view goes on)."""
    from scratch_stage.host.catalog import scan_catalog

    try:
        return set(scan_catalog(config.datadir).images)
    except (OSError, ScratchStageError):
        return set()
