"""Slurm hostlist expressions."""

from __future__ import annotations

import pytest

from scratch_stage.core.hostlist import expand_hostlist


@pytest.mark.parametrize(
    ("expr", "hosts"),
    [
        ("localhost", ["localhost"]),
        ("node[01-03],gpu7", ["node01", "node02", "node03", "gpu7"]),
        ("n[1,3-4]x", ["n1x", "n3x", "n4x"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("", []),
        ("(null)", []),
        ("N/A", []),
    ],
)
def test_expand(expr: str, hosts: list[str]) -> None:
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize("expr", ["n[3-1]", "n[a-b]", "n[1-999999999]"])
def test_malformed_raises(expr: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(expr)
