"""Where this node's demand comes from: squeue and sinfo, pyslurm, the published file, none.

One interface for the rebalance and the `demand` command: `read_snapshot` gives the
cluster's pending jobs (or None, with one log line why), `read_demand` this node's weight
per dataset, `publish_snapshot` writes the file the `file` source reads. Slurm's clients
run through RUN (`runner.run`; tests pass a recorder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.host import runner
from scratch_stage.host.catalog import Trust
from scratch_stage.host.config import Config
from scratch_stage.host.logger import get_logger
from scratch_stage.slurm.demand import (
    RUNNING_FORMAT,
    SINFO_FORMAT,
    SQUEUE_FORMAT,
    Snapshot,
    history_per_job,
    load_demand_file,
    node_demand,
    snapshot_from_cli,
    squeue_marker,
)

log = get_logger(__name__)

# Next to the images, where the publisher and every node already look (hidden: no image).
DEMAND_FILE = ".scratch-stage-demand.json"


class Run(Protocol):
    """Runs an external command: its stdout, or a ScratchStageError (see `runner.run`)."""

    def __call__(self, argv: Sequence[str], *, timeout: float) -> str: ...


def read_demand(
    config: Config,
    now: float,
    run: Run = runner.run,
    trust: Trust | None = None,
    *,
    sizes: Mapping[str, int],
    datasets: Mapping[str, Sequence[float]] | None = None,
) -> Mapping[str, float]:
    """This node's demand in expected bytes per dataset from the configured source (empty,
    logged, when unavailable); SIZES: the catalog, DATASETS: the counters' rows (history)."""
    snapshot = read_snapshot(config, now, run, trust)
    return demand_here(config, snapshot, now, sizes, datasets)[0]


def demand_here(
    config: Config,
    snapshot: Snapshot | None,
    now: float,
    sizes: Mapping[str, int],
    datasets: Mapping[str, Sequence[float]] | None = None,
    copy_seconds: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """SNAPSHOT's demand on this node in expected bytes (`node_demand`: the history of
    bytes read per job from the counters' rows DATASETS, the prior rate `read_rate`), and
    its prospect (the same without the wait's discount); COPY_SECONDS: how long each
    uncached dataset's copy would take (only reads after it lands count in the demand)."""
    if snapshot is None:
        return {}, {}
    history = history_per_job(datasets or {})

    def of(discount: bool, copy: Mapping[str, float] | None) -> dict[str, float]:
        return node_demand(
            snapshot, config.node, now=now, horizon=config.horizon, sizes=sizes,
            history=history, read_rate=config.read_rate, discount=discount,
            copy_seconds=copy,
        )  # fmt: skip

    return of(True, copy_seconds), of(False, None)


def read_snapshot(
    config: Config, now: float, run: Run = runner.run, trust: Trust | None = None
) -> Snapshot | None:
    """The cluster's pending jobs from the configured source; None when there are none to have.

    `none` gives None; the others what `require_snapshot` gives, or None with one warning
    why (a missing, stale or malformed file; squeue or sinfo failing).
    """
    if config.demand.source == "none":
        return None
    try:
        return require_snapshot(config, now, run, trust)
    except NoDemand as e:
        log.warning("no demand this pass: %s", e)
        return None


class NoDemand(ScratchStageError):
    """The configured source has no demand to give; the message says why, in one line."""


def require_snapshot(
    config: Config, now: float, run: Run = runner.run, trust: Trust | None = None
) -> Snapshot:
    """The cluster's pending jobs from the configured source; NoDemand (why) when none.

    `file` reads the published snapshot (NoDemand when missing, stale, malformed or not
    owned by a TRUSTed owner: `load_demand_file`);
    `squeue` and `pyslurm` ask slurmctld (`require_query`); `none` has none.
    """
    source = config.demand.source
    if source == "none":
        raise NoDemand("no demand to show: the configuration sets demand: {source: none}")
    if source == "file":
        try:
            return load_demand_file(
                demand_file(config), now=now, max_age=config.demand.max_age, trust=trust
            )
        except ValueError as e:
            raise NoDemand(str(e)) from None
    return require_query(config, now, run)


def demand_file(config: Config) -> Path:
    """The published demand: `demand.path`, by default DEMAND_FILE in the shared datadir."""
    return Path(config.demand.path or os.path.join(config.datadir, DEMAND_FILE))


def query_slurm(config: Config, now: float, run: Run = runner.run) -> Snapshot | None:
    """The pending jobs asked of slurmctld, or None with one warning why."""
    try:
        return require_query(config, now, run)
    except NoDemand as e:
        log.warning("no demand this pass: %s", e)
        return None


def require_query(config: Config, now: float, run: Run = runner.run) -> Snapshot:
    """The pending jobs asked of slurmctld: pyslurm when configured and usable, else squeue;
    NoDemand (one line why) when squeue or sinfo fails.

    What the publisher runs, whatever source its own nodes read.
    """
    if config.demand.source == "pyslurm":
        snapshot = _pyslurm_snapshot(config, now, run)
        if snapshot is not None:
            return snapshot
    marker = squeue_marker()
    try:
        squeue = run([*config.squeue_command, "-h", "-t", "PD", "-o", marker + SQUEUE_FORMAT],
                     timeout=config.command_timeout)  # fmt: skip
        sinfo = run([*config.sinfo_command, "-h", "-o", SINFO_FORMAT],
                    timeout=config.command_timeout)  # fmt: skip
        running = run([*config.squeue_command, "-h", "-t", "R", "-o", RUNNING_FORMAT],
                      timeout=config.command_timeout)  # fmt: skip
    except ScratchStageError as e:
        raise NoDemand(f"Slurm's queue cannot be read: {e}") from None
    return snapshot_from_cli(squeue, sinfo, now, marker, running)


def check_publishable(path: Path) -> None:
    """A one-line ScratchStageError unless PATH's directory takes a new file (before the
    publisher asks slurmctld anything)."""
    import errno
    import os

    if not path.parent.is_dir():
        code = errno.ENOENT
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        code = errno.EACCES
    else:
        return
    raise ScratchStageError(f"cannot publish the demand to {path}: {os.strerror(code)}")


def publish_snapshot(snapshot: Snapshot, path: Path) -> None:
    """Write SNAPSHOT where nodes with `demand: {source: file}` read it, atomically.

    ScratchStageError (one line) when PATH cannot be written.
    """
    from scratch_stage.host.state import write_atomically

    try:
        write_atomically(path, json.dumps(snapshot.to_json()).encode())
    except OSError as e:
        raise ScratchStageError(f"cannot publish the demand to {path}: {e.strerror or e}") from None


def _pyslurm_snapshot(config: Config, now: float, run: Run) -> Snapshot | None:
    """The snapshot through pyslurm, or None (with one log line why) to use the CLI."""
    from scratch_stage.slurm.pyslurm_source import snapshot_from_pyslurm, usable_pyslurm

    try:
        version = run([*config.scontrol_command, "--version"], timeout=config.command_timeout)
    except ScratchStageError as e:
        version = f"unknown ({e})"
    pyslurm, why = usable_pyslurm(version, run, config.command_timeout)
    if pyslurm is None:
        log.info("demand through squeue, not pyslurm: %s", why)
        return None
    try:
        return snapshot_from_pyslurm(pyslurm, now)
    except Exception as e:  # a pyslurm call failing is no reason to lose the pass
        log.warning("demand through squeue, pyslurm failed: %s", e)
        return None
