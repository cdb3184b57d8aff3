"""`scratch-stage simulate`: the click layer (imports only click until it runs)."""

from __future__ import annotations

from pathlib import Path

import click

from scratch_stage.core.cliparams import PathParam

POLICY_NAMES = ("ours", "none", "lru", "lfu-da", "gdsf", "scratch_manager", "aged-uses", "belady",
                "future-bytes", "queue-oracle", "queue-oracle-blind", "mip-schedule")  # fmt: skip
# Replayed without --policy: all but those asked for by name (`policies.ON_REQUEST`).
DEFAULT_NAMES = POLICY_NAMES[:-2]


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
    help="Policy to replay (repeatable; default: all but queue-oracle-blind and mip-schedule).",
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
    "--shared-bandwidth",
    default=None,
    help="Shared storage's total bandwidth: report when the nodes' copies together want more.",
)
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
    horizon: str, bandwidth: str, shared_bandwidth: str | None, backfill_window: str,
    estimate_noise: str, tolerance: float, seed: int, workers: int, no_bound: bool,
    as_json: bool, plot: Path | None,
) -> int:  # fmt: skip
    """Replay TRACE through the real planner and baseline policies, against a lower bound."""
    from scratch_stage.simulate.report import run_simulation

    return run_simulation(
        trace, capacity=capacity, policies=policies or DEFAULT_NAMES, as_json=as_json, plot=plot,
        bound=not no_bound, workers=workers, interval=_duration(interval), period=_duration(period),
        horizon=_duration(horizon), bandwidth=bandwidth, shared_bandwidth=shared_bandwidth,
        backfill_window=_duration(backfill_window),
        estimate_noise=_duration(estimate_noise), tolerance=tolerance, seed=seed,
    )  # fmt: skip


def _bytes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A size ('150GB') or a rate ('10GB/s', '10GB'), in bytes; only --peer-bandwidth may
    be zero (no peers)."""
    from scratch_stage.core.units import parse_size

    if value is None:
        return None
    try:
        amount = parse_size(value[:-2] if value.endswith("/s") else value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if amount == 0 and param.name != "peer_bandwidth":
        raise click.BadParameter(f"must be more than zero: {value!r}")
    if amount > 10**21:
        raise click.BadParameter(f"must be at most 10^21 bytes: {value!r}")
    return amount


@click.command("simulate-fleet")
@click.option(
    "--nodes",
    "node_counts",
    multiple=True,
    type=click.IntRange(1, 10**7),
    help="Nodes staging the image at once (repeatable; default 512).",
)
@click.option("--size", default="150GB", show_default=True, callback=_bytes, help="Image size.")
@click.option(
    "--shared-bandwidth",
    default="10GB/s",
    show_default=True,
    callback=_bytes,
    help="Shared storage's total read bandwidth, split among its readers.",
)
@click.option(
    "--node-bandwidth",
    default="2GB/s",
    show_default=True,
    callback=_bytes,
    help="What one node can receive: its link or SSD write rate, the lower.",
)
@click.option(
    "--peer-bandwidth",
    default=None,
    callback=_bytes,
    help="What one node can send to peers (default: --node-bandwidth; 0: no peers).",
)
@click.option(
    "--readers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 10**7),
    help="Concurrent shared-storage readers of one image (the lease).",
)
@click.option(
    "--piece", default="16MiB", show_default=True, callback=_bytes,
    help="Transfer unit between peers.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def simulate_fleet(
    node_counts: tuple[int, ...], size: int, shared_bandwidth: int, node_bandwidth: int,
    peer_bandwidth: int | None, readers: int, piece: int, as_json: bool,
) -> int:  # fmt: skip
    """Many nodes staging one image at once: independent vs cooperative.

    A fluid model (docs/simulate.md, "Fleet staging"): shared storage's bandwidth is split
    among its readers, each node receives at most --node-bandwidth and sends at most
    --peer-bandwidth. Modes: independent (every node reads shared storage at once), lease
    only (at most --readers at a time, no peers), cooperative (lease holders read the image
    once, peers pass it on). Nothing is read or written: any user may run it."""
    import json

    from scratch_stage.simulate.fleet import Fleet, FleetError, format_fleets, to_json

    peers = node_bandwidth if peer_bandwidth is None else peer_bandwidth
    try:
        fleets = [
            Fleet(
                nodes=n,
                size=size,
                shared_bandwidth=float(shared_bandwidth),
                node_bandwidth=float(node_bandwidth),
                peer_bandwidth=float(peers),
                readers=readers,
                piece=piece,
            )
            for n in dict.fromkeys(node_counts or (512,))
        ]
    except FleetError as e:
        raise click.UsageError(str(e)) from None
    click.echo(json.dumps(to_json(fleets), indent=2) if as_json else format_fleets(fleets))
    return 0
