"""`python -m scratch_stage.simulate generate|convert-swf`: make traces for `simulate`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from scratch_stage.core.cliparams import PathParam
from scratch_stage.simulate.trace import Trace, TraceError, write_trace
from scratch_stage.simulate.workload import (
    PRESETS,
    WorkloadSpec,
    convert_swf,
    generate,
    load_sizes,
)


def _write(trace: Trace, output: Path | None) -> None:
    if output is None:
        write_trace(trace, sys.stdout)
        return
    with output.open("w", encoding="utf-8") as f:
        write_trace(trace, f)
    click.echo(f"{output}: {len(trace.jobs)} jobs, {len(trace.datasets)} datasets", err=True)


@click.group()
def main() -> None:
    """Make job traces for `scratch-stage simulate`."""


@main.command("generate")
@click.option(
    "--sizes",
    "sizes_path",
    required=True,
    type=PathParam(),
    help="CSV name,size_bytes (e.g. dataset-sizes.csv).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KNOB=VALUE",
    help="A WorkloadSpec knob, e.g. --set jobs=5000 --set zipf=1.2 (repeatable).",
)
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    help="Start from a harder workload's knobs (docs/simulate.md); --set overrides them.",
)
@click.option("-o", "--output", type=PathParam(dir_okay=False))
def generate_command(
    sizes_path: Path, overrides: tuple[str, ...], preset: str | None, output: Path | None
) -> None:
    """A synthetic trace, reproducible from its knobs (seed included)."""
    spec = WorkloadSpec()
    if preset:
        spec = dataclasses.replace(spec, **PRESETS[preset])  # type: ignore[arg-type]
    for item in overrides:
        key, _, value = item.partition("=")
        fields = {f.name: f for f in dataclasses.fields(WorkloadSpec)}
        if key not in fields:
            raise click.BadParameter(f"unknown knob {key!r}; known: {', '.join(fields)}")
        kind = type(getattr(spec, key))
        spec = dataclasses.replace(spec, **{key: kind(value)})
    try:
        trace = generate(spec, load_sizes(sizes_path))
    except TraceError as e:
        raise click.ClickException(str(e)) from None
    _write(trace, output)


@main.command("convert-swf")
@click.argument("swf", type=PathParam(exists=True, dir_okay=False))
@click.option("--sizes", "sizes_path", required=True, type=PathParam())
@click.option("--nodes", default=64, show_default=True)
@click.option("--cores-per-node", default=32, show_default=True)
@click.option("--passes", default=1.0, show_default=True, help="Passes over the dataset per job.")
@click.option("-o", "--output", type=PathParam(dir_okay=False))
def convert_command(
    swf: Path, sizes_path: Path, nodes: int, cores_per_node: int, passes: float,
    output: Path | None,
) -> None:  # fmt: skip
    """A trace from a Parallel Workloads Archive SWF file (executable number -> dataset)."""
    with swf.open(encoding="utf-8", errors="replace") as f:
        trace = convert_swf(f, load_sizes(sizes_path), nodes=nodes,
                            cores_per_node=cores_per_node, passes=passes)  # fmt: skip
    _write(trace, output)


if __name__ == "__main__":
    main()
