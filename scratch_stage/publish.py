"""`catalog --publish`: the dataset list job_submit.lua checks submissions against.

A plain text file, because Lua has no JSON parser: a header line, then one line per
dataset, `name<TAB>groups`, where groups is `*` (anyone) or a comma-separated list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from scratch_stage.catalog import Catalog
from scratch_stage.state import write_atomically

HEADER = "# scratch-stage catalog v1"


def format_catalog(catalog: Catalog, access: Mapping[str, tuple[str, ...]]) -> str:
    """The published text for CATALOG with the configured group restrictions."""
    lines = [HEADER]
    for name in sorted(catalog.images):
        groups = access.get(name)
        lines.append(f"{name}\t{','.join(groups) if groups is not None else '*'}")
    return "\n".join(lines) + "\n"


def publish_catalog(path: Path, catalog: Catalog, access: Mapping[str, tuple[str, ...]]) -> int:
    """Write the catalog to PATH atomically; how many datasets it lists."""
    write_atomically(path, format_catalog(catalog, access).encode())
    return len(catalog.images)
