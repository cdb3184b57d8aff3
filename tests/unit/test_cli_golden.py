"""The CLI's output, command by command, against recorded files: the layout stays deliberate.

Each case runs `scratch-stage ARGS` through `cli.run_cli` against the deterministic node
tree of `cli_tree` (fixed clock, TZ=UTC, 100 columns) and compares exit code, stdout and
stderr with tests/data/golden/CASE.txt. After an intended change, regenerate with
`SCRATCH_STAGE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_cli_golden.py` and review
the diff like code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.cli_tree import CliTree, open_tree

GOLDEN = Path(__file__).parent.parent / "data" / "golden"
NOBODY = 65534
# Read at import: the autouse fixture of tests/conftest.py clears SCRATCH_STAGE_* variables.
UPDATE = os.environ.get("SCRATCH_STAGE_UPDATE_GOLDEN") == "1"

FLEET_JSON = ["simulate-fleet", "--nodes", "3", "--readers", "2", "--size", "1GB",
              "--shared-bandwidth", "1GB/s", "--node-bandwidth", "1GB/s",
              "--peer-bandwidth", "500MB/s", "--json"]  # fmt: skip
CASES: dict[str, tuple[list[str], int | None]] = {
    "help": (["--help"], None),
    "no-command": ([], None),
    "mistyped-command": (["stauts"], None),
    "status": (["status"], None),
    "status-json": (["status", "--json"], None),
    "status-public": (["status"], NOBODY),
    "status-public-json": (["status", "--json"], NOBODY),
    "info-cached-and-held": (["info", "alpha"], None),
    "info-pinned": (["info", "beta"], None),
    "info-failed-copies": (["info", "gamma"], None),
    "info-json": (["info", "alpha", "--json"], None),
    "info-public": (["info", "alpha"], NOBODY),
    "info-unknown": (["info", "nosuch"], None),
    "catalog": (["catalog"], None),
    "catalog-json": (["catalog", "--json"], None),
    "catalog-public": (["catalog"], NOBODY),
    "pin-ttl": (["pin", "gamma", "--ttl", "2d"], None),
    "pin-forever": (["pin", "gamma"], None),
    "pin-bad-ttl": (["pin", "gamma", "--ttl", "soon"], None),
    "unpin": (["unpin", "beta"], None),
    "unpin-not-pinned": (["unpin", "gamma"], None),
    "purge-held": (["purge", "alpha"], None),
    "purge-nothing": (["purge"], None),
    "release": (["release", "4242"], None),
    "release-unknown": (["release", "77"], None),
    "rebalance-explain": (["rebalance", "--dry-run", "--explain"], None),
    "demand-none": (["demand"], None),
    "config-check": (["config", "check"], None),
    "config-no-command": (["config"], None),
    "image-no-command": (["image"], None),
    "coop-no-command": (["coop"], None),
    "coop-prepare-public": (["coop", "prepare", "alpha"], NOBODY),
    "install-site-files": (
        ["install-site-files", "<root>/site", "--bin", "/usr/bin/scratch-stage"],
        None,
    ),
    "metrics": (["metrics"], None),
    # the view itself needs Slurm: tests/e2e (test_cluster_view_...) and test_cluster_view.py
    "cluster-bad-window": (["cluster", "--window", "soon"], None),
    "metrics-write-unconfigured": (["metrics", "--write"], None),
    "simulate-fleet": (["simulate-fleet", "--nodes", "4", "--nodes", "512"], None),
    "simulate-fleet-json": (FLEET_JSON, None),
    "simulate-fleet-no-peers": (
        ["simulate-fleet", "--nodes", "8", "--size", "2GiB", "--peer-bandwidth", "0"],
        NOBODY,
    ),
    "simulate-fleet-bad-size": (["simulate-fleet", "--size", "lots"], None),
    "simulate-fleet-zero-bandwidth": (["simulate-fleet", "--shared-bandwidth", "0GB/s"], None),
    "simulate-fleet-too-many-nodes": (["simulate-fleet", "--nodes", "99999999"], None),
    "install-site-files-both": (
        ["install-site-files", "<root>/site", "--bin", "/x", "--prefix", "/y"],
        None,
    ),
}


@pytest.fixture
def cli_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliTree]:
    yield from open_tree(tmp_path, capsys, monkeypatch)


def render(args: list[str], code: int, out: str, err: str) -> str:
    return f"$ scratch-stage {' '.join(args)}\n[exit {code}]\n--- stdout\n{out}--- stderr\n{err}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_output_matches_the_recording(cli_tree: CliTree, case: str) -> None:
    args, euid = CASES[case]
    code, out, err = cli_tree.run(*args, euid=euid)
    got = render(args, code, out, err)
    path = GOLDEN / f"{case}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"no recording {path}: run with SCRATCH_STAGE_UPDATE_GOLDEN=1"
    assert got == path.read_text()


def test_every_recording_has_a_case() -> None:
    recorded = {p.stem for p in GOLDEN.glob("*.txt")}
    assert recorded == set(CASES)


def test_every_command_has_a_case() -> None:
    from scratch_stage.cli import cli

    covered = {args[0] for args, _ in CASES.values() if args and not args[0].startswith("-")}
    # Run by Slurm, systemd, or long-running: their output is tested in their own tiers.
    elsewhere = {"prolog", "epilog", "daemon", "prestage", "simulate"}
    assert set(cli.commands) - elsewhere - covered == set()
