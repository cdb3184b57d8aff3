"""`scratch-stage simulate`: the click layer (imports only click until it runs)."""

from __future__ import annotations

from pathlib import Path

import click

from scratch_stage.core.cliparams import PathParam

POLICY_NAMES = ("ours", "none", "lru", "lfu-da", "gdsf", "scratch_manager", "aged-uses", "belady",
                "future-bytes")  # fmt: skip


def _duration(text: str) -> float:
    from scratch_stage.core.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.argument("trace", type=PathParam(exists=True, dir_okay=False))
@click.option(
    "--capacity", required=True, help="Cache per node: 2TB, 500GiB, or 5% of the trace's catalog."
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(POLICY_NAMES),
    help="Policy to replay (repeatable; default: all).",
)
@click.option("--interval", default="60", show_default=True, help="Rebalance interval.")
@click.option("--period", default="600", show_default=True, help="Heat window.")
@click.option(
    "--horizon",
    default="1h",
    show_default=True,
    help="Planner horizon (also the demand discount scale).",
)
@click.option("--bandwidth", default="1GB", show_default=True, help="Copy speed per second.")
@click.option(
    "--backfill-window",
    default="1h",
    show_default=True,
    help="How far ahead Slurm's start estimates and placements are known.",
)
@click.option(
    "--estimate-noise",
    default="0",
    show_default=True,
    help="Standard deviation of the start estimates' error.",
)
@click.option(
    "--tolerance",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0),
    help="Skip a pass whose heat and demand moved less than this share (0: exact).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the estimate noise.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Processes replaying nodes in parallel (same results).",
)
@click.option("--no-bound", is_flag=True, help="Skip the offline lower bound.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--plot",
    type=PathParam(dir_okay=False),
    help="Write a PNG of cumulative slow-storage bytes per policy (needs matplotlib).",
)
def simulate(
    trace: Path, capacity: str, policies: tuple[str, ...], interval: str, period: str,
    horizon: str, bandwidth: str, backfill_window: str, estimate_noise: str, tolerance: float,
    seed: int, workers: int, no_bound: bool, as_json: bool, plot: Path | None,
) -> int:  # fmt: skip
    """Replay TRACE through the real planner and baseline policies, against a lower bound."""
    from scratch_stage.simulate.report import run_simulation

    return run_simulation(
        trace, capacity=capacity, policies=policies or POLICY_NAMES, as_json=as_json, plot=plot,
        bound=not no_bound, workers=workers, interval=_duration(interval), period=_duration(period),
        horizon=_duration(horizon), bandwidth=bandwidth, backfill_window=_duration(backfill_window),
        estimate_noise=_duration(estimate_noise), tolerance=tolerance, seed=seed,
    )  # fmt: skip
