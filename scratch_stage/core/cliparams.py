"""Click parameter types that behave the same on click 7.1 (RHEL 9's python3-click) and 8.

`click.Path(path_type=pathlib.Path)` is click 8 only: click 7 takes `path_type` as str or
bytes and would hand the command bytes. `PathParam` converts to `pathlib.Path` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class PathParam(click.Path):
    """`click.Path` whose value is a `pathlib.Path` (None stays None)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted: Any = super().convert(value, param, ctx)
        return None if converted is None else Path(converted)
