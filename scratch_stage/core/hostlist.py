"""Pure expansion of Slurm hostlist expressions: 'node[01-03,7],gpu1' -> five names."""

from __future__ import annotations

import re

_BRACKET_RE = re.compile(r"\[([^\[\]]*)\]")


def split_top_level(expr: str) -> list[str]:
    """Split EXPR at commas that are not inside brackets."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in expr:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _expand_range(spec: str) -> list[str]:
    values: list[str] = []
    for item in spec.split(","):
        low, sep, high = item.partition("-")
        if not sep:
            values.append(low)
            continue
        if not (low.isdigit() and high.isdigit()) or int(high) < int(low):
            raise ValueError(f"bad hostlist range {item!r}")
        if int(high) - int(low) > 100_000:
            raise ValueError(f"hostlist range too large: {item!r}")
        values.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return values


def expand_one(pattern: str) -> list[str]:
    """Expand one pattern with any number of bracket groups."""
    match = _BRACKET_RE.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [head + v + rest for v in _expand_range(match.group(1)) for rest in expand_one(tail)]


def expand_hostlist(expr: str) -> list[str]:
    """Every host name in a Slurm hostlist expression; ValueError if it is malformed."""
    if expr.strip() in ("", "(null)", "N/A"):
        return []
    return [host for part in split_top_level(expr) for host in expand_one(part)]
