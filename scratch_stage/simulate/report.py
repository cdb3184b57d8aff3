"""What `scratch-stage simulate` does once its options are parsed: run, print, plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.core.units import parse_capacity, parse_size
from scratch_stage.simulate import offline
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.metrics import Report, format_table
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.sharing import format_shared, shared_load
from scratch_stage.simulate.targets import attainability, format_attainability
from scratch_stage.simulate.trace import Trace, read_trace


class SimulateUsageError(ScratchStageError):
    """A simulate option cannot be used (bad size, missing plotting library)."""

    exit_code = 2


def capacity_bytes(text: str, trace: Trace) -> int:
    """Bytes for '2TB' or '5%' (of the trace's catalog)."""
    try:
        kind, amount = parse_capacity(text)
    except ValueError as e:
        raise SimulateUsageError(f"--capacity: {e}") from None
    return int(trace.catalog_bytes() * amount / 100) if kind == "percent" else int(amount)


def run_simulation(
    path: Path, *, capacity: str, policies: Sequence[str], as_json: bool, plot: Path | None,
    bound: bool, bandwidth: str, workers: int = 1, shared_bandwidth: str | None = None,
    **knobs: Any,
) -> int:  # fmt: skip
    """Replay the trace at PATH, print the table (or JSON), write the plot; exit code."""
    if "mip-schedule" in policies and not offline.available():
        raise SimulateUsageError(f"--policy mip-schedule: {offline.NEEDS}")
    trace = read_trace(path)
    speed = _rate("--bandwidth", bandwidth)
    shared = None if shared_bandwidth is None else _rate("--shared-bandwidth", shared_bandwidth)
    config = SimConfig(capacity=capacity_bytes(capacity, trace), bandwidth=speed, **knobs)
    report = simulate(trace, config, list(dict.fromkeys(policies)), bound=bound, workers=workers)
    loads = {name: shared_load(r.spans, trace.datasets, speed, shared)
             for name, r in report.results.items()}  # fmt: skip
    if as_json:
        data = report.to_json()
        for entry in data["policies"]:
            entry["shared_storage"] = loads[entry["policy"]].to_json()
        data["targets"] = [a.to_json() for a in attainability(report)]
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(format_table(report))
        targets = format_attainability(report)
        if targets:
            click.echo(targets)
        click.echo("")
        click.echo(format_shared(loads, speed, shared))
    if plot is not None:
        write_plot(report, plot)
    return 0


def _rate(option: str, text: str) -> float:
    """Bytes/s from '1GB' or '1GB/s'; more than zero."""
    try:
        speed = float(parse_size(text[:-2] if text.endswith("/s") else text))
    except ValueError as e:
        raise SimulateUsageError(f"{option}: {e}") from None
    if speed <= 0:
        raise SimulateUsageError(f"{option}: must be more than zero: {text!r}")
    return speed


def write_plot(report: Report, path: Path) -> None:
    """A PNG of cumulative slow-storage bytes over time, one line per policy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SimulateUsageError(
            "--plot needs matplotlib: pip install 'scratch-stage[plot]'"
        ) from None
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, result in report.results.items():
        times, totals = result.cumulative()
        ax.plot([t / 86400 for t in times], [b / 1e12 for b in totals], label=name)
    if report.bound is not None:
        ax.axhline(report.bound.lower / 1e12, linestyle=":", color="k", label="lower bound")
    ax.set_xlabel("days")
    ax.set_ylabel("slow-storage bytes read (TB, cumulative)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
