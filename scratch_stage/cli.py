"""The click front end: parse options, call one library function, format its result."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import click

from scratch_stage import __version__
from scratch_stage.core.errors import EXIT_BUG, EXIT_CONFIG, EXIT_ERROR, ScratchStageError
from scratch_stage.core.text import printable
from scratch_stage.core.units import format_size, parse_duration
from scratch_stage.host.config import DEFAULT_PATH as DEFAULT_CONFIG_PATH

log = logging.getLogger("scratch_stage")


class Context:
    """What every command needs: the config path and a lazily built Node."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._node: Any = None

    @property
    def node(self) -> Any:
        if self._node is None:
            from scratch_stage.agent.node import Node
            from scratch_stage.host.config import load_config

            self._node = Node(load_config(self.config_path))
        return self._node


pass_ctx = click.make_pass_decorator(Context)


def _emit_json(data: Any) -> None:
    # ensure_ascii: a control character in a name is written as a \u escape, never raw.
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True))


def _say(line: object) -> None:
    """Echo one line whose parts may come from datadir, escaped (scratch_stage.core.text)."""
    click.echo(printable(line))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", help="Configuration file.")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.version_option(__version__, prog_name="scratch-stage")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Node-local SSD as a read-only squashfs dataset cache, driven by Slurm."""
    from scratch_stage.host.logs import setup_cli_logging

    setup_cli_logging(verbose)
    ctx.obj = Context(config_path)


@cli.command()
@pass_ctx
def prolog(ctx: Context) -> None:
    """Slurm prolog: mount the job's datasets (reads the job from the environment)."""
    from scratch_stage.hookmain import hook_process

    hook_process("prolog", ctx.config_path, os.environ)  # the same process as the fast path


@cli.command()
@pass_ctx
def epilog(ctx: Context) -> None:
    """Slurm epilog: release the job's datasets (idempotent)."""
    from scratch_stage.hookmain import hook_process

    hook_process("epilog", ctx.config_path, os.environ)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> int:
    """Every dataset on this node and the cache budget."""
    if os.geteuid() != 0:
        return _public_status(ctx, as_json)
    from scratch_stage.agent.admin import status as get_status

    data = get_status(ctx.node)
    if as_json:
        _emit_json(data)
    else:
        click.echo(format_status(data))
    return 0


def _public_status(ctx: Context, as_json: bool) -> int:
    """`status` for a user who is not root: the public summary (no jobs, users, reasons)."""
    from scratch_stage.host.summary import read_summary, summary_path

    mountdir = ctx.node.mountdir
    data = read_summary(mountdir)
    if data is None:
        raise ScratchStageError(
            f"no public summary at {summary_path(mountdir)} yet (written by root's status and "
            "each rebalance); the full status needs root"
        )
    if as_json:
        _emit_json(data)
        return 0
    rows = [("NAME", "SIZE", "STATE", "CACHED")] + [
        (printable(d["name"]), format_size(d["size"]), d["state"], "yes" if d["cached"] else "no")
        for d in data.get("datasets", [])
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.get("at", 0)))
    used, capacity = data.get("used_bytes", 0), data.get("capacity_bytes", 0)
    click.echo(f"cache: {format_size(used)} of {format_size(capacity)} used (as of {when})")
    return 0


def _status_row(d: dict[str, Any]) -> tuple[str, ...]:
    value = d.get("value")
    return (
        printable(d["name"]),
        format_size(d["size"]),
        d["state"],
        "yes" if d["cached"] else "no",
        printable(",".join(d["holders"])) or "-",
        "yes" if d["pinned"] else "no",
        format_size(d.get("heat", 0.0)) + "/s",
        f"{d.get('demand', 0.0):.2f}",
        "-" if value is None else format_size(value),
    )


def format_status(data: dict[str, Any]) -> str:
    """The status table for a terminal."""
    header = ("NAME", "SIZE", "STATE", "CACHED", "HOLDERS", "PINNED", "HEAT", "DEMAND", "VALUE")
    rows = [header] + [_status_row(d) for d in data["datasets"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    used, capacity = data["used_bytes"], data["capacity_bytes"]
    share = 100 * used / capacity if capacity else 0.0
    lines.append(f"cache: {format_size(used)} of {format_size(capacity)} used ({share:.1f}%)")
    lines += [
        f"problem: {printable(f)}: {printable(why)}" for f, why in sorted(data["problems"].items())
    ]
    return "\n".join(lines)


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def info(ctx: Context, name: str, as_json: bool) -> int:
    """One dataset in detail: paths, mount stack, holders, pin, recent events."""
    from scratch_stage.agent.admin import info as get_info

    data = get_info(ctx.node, name)
    if as_json:
        _emit_json(data)
        return 0
    for key, value in data.items():
        if key == "events":
            click.echo("events:")
            for event in value:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.pop("ts", 0)))
                click.echo(f"  {when} {json.dumps(event, sort_keys=True)}")
        elif key == "mount_stack":
            click.echo("mount_stack (bottom first):" + ("" if value else " none"))
            for layer in value:
                _say(f"  {layer['source']} <- {layer['backing']}")
        else:
            _say(f"{key}: {value}")
    return 0


def _ttl(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@cli.command()
@click.argument("name")
@click.option("--ttl", metavar="DURATION", help="Expire the pin after this long (30m, 2h, 2d).")
@pass_ctx
def pin(ctx: Context, name: str, ttl: str | None) -> int:
    """Keep a dataset cached (optionally until a time)."""
    from scratch_stage.agent.admin import pin as do_pin

    seconds = _ttl(ttl)  # a bad --ttl is a usage error, whatever the configuration
    _say(do_pin(ctx.node, name, seconds))
    return 0


@cli.command()
@click.argument("name")
@pass_ctx
def unpin(ctx: Context, name: str) -> int:
    """Remove a dataset's pin."""
    from scratch_stage.agent.admin import unpin as do_unpin

    _say(do_unpin(ctx.node, name))
    return 0


@cli.command()
@click.argument("names", nargs=-1, required=True)
@pass_ctx
def prestage(ctx: Context, names: Sequence[str]) -> int:
    """Copy datasets into the cache now and mount them over; blocks until done."""
    from scratch_stage.agent.stager import stage
    from scratch_stage.host import interrupts

    interrupts.install()  # SIGTERM abandons the copy at the next chunk, cleanly
    for name in names:
        _say(stage(ctx.node, name, progress=_progress_reporter(name)))
    return 0


def _progress_reporter(name: str) -> Callable[[int, int], None]:
    """A progress bar on a terminal, a log line every 10% otherwise."""
    last = {"done": 0, "tenth": -1}
    bar: Any = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if sys.stderr.isatty():
            if bar is None:
                bar = click.progressbar(length=total, label=name, file=sys.stderr)
                bar.__enter__()
            bar.update(done - last["done"])
            last["done"] = done
            if done >= total:
                bar.__exit__(None, None, None)
            return
        tenth = 10 * done // max(total, 1)
        if tenth != last["tenth"]:
            last["tenth"] = tenth
            click.echo(printable(f"{name}: {10 * tenth}% of {format_size(total)}"), err=True)

    return report


@cli.command()
@click.argument("job_id")
@pass_ctx
def release(ctx: Context, job_id: str) -> int:
    """Drop a job's holds, as its epilog would (for a job whose epilog never ran)."""
    from scratch_stage.agent.admin import release as do_release

    _say(do_release(ctx.node, job_id))
    return 0


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "purge_all", is_flag=True, help="Every cached copy no job holds.")
@click.option("--force", is_flag=True, help="Also drop copies held by running jobs.")
@pass_ctx
def purge(ctx: Context, names: Sequence[str], purge_all: bool, force: bool) -> int:
    """Drop cached copies that no job holds."""
    from scratch_stage.agent.admin import purge as do_purge

    if bool(names) == purge_all:
        raise click.UsageError("name datasets to purge, or give --all")
    for line in do_purge(ctx.node, names, purge_all=purge_all, force=force):
        _say(line)
    return 0


@cli.command()
@click.option("--dry-run", is_flag=True, help="Plan only: change nothing.")
@click.option("--explain", is_flag=True, help="Say why for every dataset.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def rebalance(ctx: Context, dry_run: bool, explain: bool, as_json: bool) -> int:
    """One pass: measure heat, read demand, plan, evict, stage."""
    from scratch_stage.agent.rebalance import rebalance as run_pass

    if not dry_run:
        from scratch_stage.host import interrupts

        interrupts.install()
    progress = None if as_json or dry_run else _progress_reporter
    report = run_pass(ctx.node, dry_run=dry_run, progress=progress)
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(format_report(report.to_json(), explain=explain, dry_run=dry_run))
    return EXIT_ERROR if report.failed else 0


def format_report(data: dict[str, Any], *, explain: bool, dry_run: bool) -> str:
    """A rebalance report for a terminal (every line escaped: names come from datadir)."""
    return "\n".join(map(printable, _report_lines(data, explain=explain, dry_run=dry_run)))


def _report_lines(data: dict[str, Any], *, explain: bool, dry_run: bool) -> list[str]:
    if data["skipped"]:
        return [f"rebalance skipped: {data['skipped']}"]
    verb = "would" if dry_run else "will"
    lines = [
        f"plan ({data['method']}): {verb} evict {', '.join(data['evict']) or 'nothing'}; "
        f"{verb} stage {', '.join(data['stage']) or 'nothing'}; "
        f"{format_size(data['used_after_bytes'])} of {format_size(data['capacity_bytes'])} after"
    ]
    lines += [f"pin does not fit: {n}" for n in data["unfit_pins"]]
    if explain:
        for name, d in data["decisions"].items():
            lines.append(f"  {name}: {d['action']}: {d['reason']}")
    lines += [f"done: {line}" for line in data["done"]]
    lines += [f"failed: {line}" for line in data["failed"]]
    return lines


@cli.command()
@click.option(
    "--write", is_flag=True, help="Replace <metrics_dir>/scratch_stage.prom instead of printing."
)
@pass_ctx
def metrics(ctx: Context, write: bool) -> int:
    """This node's Prometheus metrics (node_exporter textfile format)."""
    from scratch_stage.agent.metrics import metrics_text, write_node_metrics

    if write:
        _say(f"wrote {write_node_metrics(ctx.node)}")
    else:
        click.echo(metrics_text(ctx.node), nl=False)
    return 0


@cli.command()
@pass_ctx
def daemon(ctx: Context) -> int:
    """Rebalance every `interval` seconds until SIGTERM (systemd Type=notify aware)."""
    from scratch_stage.agent.daemon import run_daemon
    from scratch_stage.agent.rebalance import rebalance as run_pass

    return run_daemon(ctx.node, run_pass)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--publish", metavar="PATH", help="Write the cluster's demand snapshot here.")
@click.option(
    "--publish-configured", is_flag=True,
    help="Write it where the nodes read it (demand.path; default in datadir).",
)  # fmt: skip
@pass_ctx
def demand(ctx: Context, as_json: bool, publish: str | None, publish_configured: bool) -> int:
    """Queued-job demand per dataset (this node's weight, and cluster-wide counts).

    A publisher asks slurmctld (squeue, or pyslurm when configured) whatever source this
    host's configuration names for reading.
    """
    from scratch_stage.slurm.demand import node_demand, summarize
    from scratch_stage.slurm.demand_sources import (
        check_publishable,
        demand_file,
        publish_snapshot,
        query_slurm,
        read_snapshot,
    )

    node = ctx.node
    now = node.clock()
    if publish and publish_configured:
        raise click.UsageError("give --publish PATH or --publish-configured, not both")
    if publish_configured:
        publish = str(demand_file(node.config))
    if publish:
        check_publishable(Path(publish))
    snapshot = query_slurm(node.config, now) if publish else read_snapshot(node.config, now)
    if snapshot is None:
        raise ScratchStageError("no demand available (see the warning above)")
    if publish:
        publish_snapshot(snapshot, Path(publish))
    here = node_demand(snapshot, node.config.node, now=now, horizon=node.config.horizon)
    counts = summarize(snapshot)
    if as_json:
        _emit_json({"node": node.config.node, "node_demand": here, "pending_jobs": counts})
        return 0
    for name in sorted(set(counts) | set(here)):
        _say(f"{name}: {counts.get(name, 0)} pending job(s), weight here {here.get(name, 0):.3f}")
    if publish:
        _say(f"published {len(snapshot.jobs)} pending job(s) to {publish}")
    return 0


@cli.command("catalog")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--publish", metavar="PATH", help="Write the list job_submit.lua reads.")
@pass_ctx
def catalog_command(ctx: Context, as_json: bool, publish: str | None) -> int:
    """The datasets in datadir (and the files that could not be used)."""
    from scratch_stage.host.catalog import scan_catalog

    config = ctx.node.config
    catalog = scan_catalog(config.datadir, trust=ctx.node.trust)
    if publish:
        from scratch_stage.agent.publish import publish_catalog

        count = publish_catalog(Path(publish), catalog, config.access)
        _say(f"published {count} dataset(s) to {publish}")
        return 0
    if as_json:
        images = {
            n: {"path": str(i.path), "size": i.size, "target": i.target}
            for n, i in catalog.images.items()
        }
        _emit_json({"datasets": images, "problems": dict(catalog.problems)})
        return 0
    for name, image in sorted(catalog.images.items()):
        alias = f"\t(link to {image.target})" if image.target else ""
        fields = (name, format_size(image.size), str(image.path))
        click.echo("\t".join(map(printable, fields)) + alias)
    for filename, why in sorted(catalog.problems.items()):
        click.echo(f"problem: {printable(filename)}: {printable(why)}", err=True)
    return 0


@cli.group()
def config() -> None:
    """Validate or print the effective configuration."""


@config.command("check")
@pass_ctx
def config_check(ctx: Context) -> int:
    """Validate the configuration and what it names on this node; exit 4 on any error.

    Every problem is one line on stderr, `error: ...` or `warning: ...`; the summary is
    the one line on stdout. Warnings alone exit 0.
    """
    from scratch_stage.agent.admin_config import check_config
    from scratch_stage.host.config import InvalidConfig, load_config

    try:
        config = load_config(ctx.config_path)
    except InvalidConfig as e:
        for problem in e.problems:
            click.echo(f"error: {printable(problem)}", err=True)
        click.echo(f"{e.source}: {len(e.problems)} error(s)")
        return EXIT_CONFIG
    findings = check_config(config)
    errors = [f.message for f in findings if f.error]
    warnings = [f.message for f in findings if not f.error]
    for finding in findings:
        click.echo(
            f"{'error' if finding.error else 'warning'}: {printable(finding.message)}", err=True
        )
    summary = [f"{len(errors)} error(s)"] if errors else ["ok"]
    summary += [f"{len(warnings)} warning(s)"] if warnings else []
    click.echo(f"{config.source}: " + ", ".join(summary))
    return EXIT_CONFIG if errors else 0


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def config_show(ctx: Context, as_json: bool) -> int:
    """Print the effective configuration (file, environment and defaults merged)."""
    import yaml

    from scratch_stage.host.config import config_as_dict

    data = config_as_dict(ctx.node.config)
    if as_json:
        _emit_json(data)
    else:
        click.echo(f"# effective configuration from {ctx.node.config.source}")
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0


@cli.command("install-site-files")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", metavar="PATH", help="Installation prefix: PATH/bin/scratch-stage.")
@click.option("--bin", "executable", metavar="PATH", help="The scratch-stage executable.")
@click.option(
    "--config", "config_file", metavar="PATH", default=str(DEFAULT_CONFIG_PATH),
    show_default=True, help="The configuration file the hooks and units read.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite files changed since they were written.")
def install_site_files_command(
    dest: Path, prefix: str | None, executable: str | None, config_file: str, force: bool
) -> int:
    """Write the Slurm wrappers, systemd units, job_submit.lua, SPANK source and example
    configuration under DEST, with the paths of this installation (or --prefix/--bin)."""
    from scratch_stage.agent.site_files import install_site_files

    if prefix and executable:
        raise click.UsageError("give --prefix or --bin, not both")
    if executable is None:
        executable = str(Path(prefix or sys.prefix) / "bin" / "scratch-stage")
    written = install_site_files(dest, executable=executable, config=config_file, force=force)
    for entry in written:
        _say(f"{entry.action} {entry.path} ({entry.mode:04o})")
    return 0


@cli.group()
def image() -> None:
    """Build dataset images."""


@image.command("build")
@click.argument("src", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
@click.option(
    "--compression", type=click.Choice(["fast", "balanced", "small", "lzo"]), default="balanced",
    show_default=True, help="fast=lz4, balanced=zstd, small=xz.",
)  # fmt: skip
@click.option("--replace", is_flag=True, help="Replace an existing image of that name.")
@pass_ctx
def image_build(ctx: Context, src: Path, name: str, compression: str, replace: bool) -> int:
    """Build datadir/NAME.sqfs from directory SRC, atomically."""
    from scratch_stage.agent.imagebuild import build_image

    path = build_image(ctx.node.config, src, name, compression=compression, replace=replace)
    _say(f"{name}: built {path} ({format_size(path.stat().st_size)})")
    return 0


def _register_simulate() -> None:
    from scratch_stage.simulate.command import simulate

    cli.add_command(simulate)


_register_simulate()


def run_cli(args: Sequence[str]) -> int:
    """Run the click group on ARGS; map every failure to its exit code (docs/design.md, 5)."""
    try:
        result = cli.main(list(args), prog_name="scratch-stage", standalone_mode=False)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        click.echo(f"scratch-stage: usage: {printable(e.format_message())}{hint}", err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"scratch-stage: error: {printable(e.format_message())}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.Abort:
        return EXIT_ERROR
    except ScratchStageError as e:
        click.echo(f"scratch-stage: error: {printable(e)}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("scratch-stage: interrupted", err=True)
        return EXIT_ERROR
    except Exception as e:
        log.debug("internal error", exc_info=True)
        click.echo(f"scratch-stage: internal error (a bug, please report): {e!r}", err=True)
        return EXIT_BUG
    return result if isinstance(result, int) else 0
