"""Data-aware scheduling hint: a node's cached datasets published as Slurm node features.

After a rebalance, the node's features become its own non-scratch-stage features plus
`ds_<name>` for every cached dataset, so `sbatch --prefer=ds_imagenet` lands where the
data is warm. Features set by `scontrol update` are lost on `scontrol reconfigure` and a
slurmctld restart until the next publication: when the cached set changes, or every
REFRESH seconds (not every pass: 1 000 nodes would ask slurmctld 1 000 times a minute).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from scratch_stage.agent.node import Node
from scratch_stage.host import runner
from scratch_stage.host.logger import get_logger
from scratch_stage.slurm.cluster import DS_PREFIX

log = get_logger(__name__)

PREFIX = DS_PREFIX
# What was published last (statedir/features.json) and how long it is trusted to stand.
LAST_FILE = "features.json"
REFRESH = 600.0


def parse_node_features(text: str) -> tuple[list[str], list[str]]:
    """(available, active) features from `scontrol show node -o NODE`."""
    found: dict[str, list[str]] = {"AvailableFeatures": [], "ActiveFeatures": []}
    for field in text.split():
        key, _, value = field.partition("=")
        if key in found and value not in ("", "(null)"):
            found[key] = [f for f in value.split(",") if f]
    return found["AvailableFeatures"], found["ActiveFeatures"]


def with_datasets(features: Iterable[str], cached: Iterable[str]) -> list[str]:
    """FEATURES without our old ones, plus ds_<name> for each cached dataset."""
    own = [f for f in features if not f.startswith(PREFIX)]
    return own + [PREFIX + name for name in sorted(cached)]


def build_update_argv(
    scontrol: Sequence[str], node: str, available: list[str], active: list[str]
) -> list[str]:
    """argv setting both feature lists at once (Slurm requires both together)."""
    return [
        *scontrol, "update", f"nodename={node}",
        f"availablefeatures={','.join(available)}", f"activefeatures={','.join(active)}",
    ]  # fmt: skip


def due(last: tuple[list[str], float] | None, names: list[str], now: float) -> bool:
    """Whether scontrol must be asked: the cached set changed since LAST, or REFRESH passed."""
    if last is None:
        return True
    published, at = last
    return published != names or not 0 <= now - at < REFRESH


def _read_last(path: Path) -> tuple[list[str], float] | None:
    try:
        data = json.loads(path.read_bytes())
        names, at = data["datasets"], float(data["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names, at


def publish_features(node: Node, cached: Iterable[str]) -> tuple[str, ...] | None:
    """Make NODE's features list CACHED; the dataset features now published, or None when
    nothing changed (or slurmctld was not asked: not due).

    Rate-limited: slurmctld is asked (`scontrol show node`, then `update` if needed) only
    when the cached set differs from the one published last, or REFRESH seconds after
    that (a `scontrol reconfigure` or slurmctld restart drops features set by update).
    """
    from scratch_stage.host.state import write_atomically

    config = node.config
    names = sorted(cached)
    now = node.clock()
    last_path = Path(config.statedir) / LAST_FILE
    if not due(_read_last(last_path), names, now):
        return None
    changed = _publish(node, names)
    record = {"datasets": names, "at": now}
    write_atomically(last_path, json.dumps(record).encode())
    return changed


def _publish(node: Node, names: list[str]) -> tuple[str, ...] | None:
    config = node.config
    shown = runner.run(
        [*config.scontrol_command, "show", "node", "-o", config.node],
        timeout=config.command_timeout,
    )
    available, active = parse_node_features(shown)
    new_available, new_active = with_datasets(available, names), with_datasets(active, names)
    if (new_available, new_active) == (available, active):
        return None
    runner.run(
        build_update_argv(config.scontrol_command, config.node, new_available, new_active),
        timeout=config.command_timeout,
    )
    return tuple(PREFIX + n for n in sorted(names))
