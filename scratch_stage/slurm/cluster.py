"""Which nodes cache which dataset, from Slurm's node features `ds_<name>` (pure parsers).

Each node's rebalance publishes its cached datasets as features (agent/features.py); a
login or controller node reads them back with `sinfo -h -N -o '%N|%b'` (node, active
features), one line per node and partition.
"""

from __future__ import annotations

from collections.abc import Mapping

DS_PREFIX = "ds_"
SINFO_FEATURES_FORMAT = "%N|%b"


def parse_sinfo_features(text: str) -> dict[str, tuple[str, ...]]:
    """Node -> active features from `sinfo -h -N -o '%N|%b'` (duplicate lines merged)."""
    nodes: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        name, sep, features = line.strip().partition("|")
        if not sep or not name:
            continue
        found = tuple(f for f in features.split(",") if f and f != "(null)")
        nodes[name] = tuple(dict.fromkeys((*nodes.get(name, ()), *found)))
    return nodes


def cached_on(features: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Dataset -> the nodes whose features say they cache it, sorted."""
    where: dict[str, list[str]] = {}
    for node in sorted(features):
        for feature in features[node]:
            if feature.startswith(DS_PREFIX) and len(feature) > len(DS_PREFIX):
                where.setdefault(feature[len(DS_PREFIX) :], []).append(node)
    return dict(sorted(where.items()))
