"""The click front end: parse options, call one library function, format its result.

This is the only module that turns results into text: the library returns typed values
(`agent/views.py`, `policy/report.py`, `host/summary.py`), formatted here for a terminal
and written as JSON for `--json`. Every line that carries a name from datadir, the state or
the event log is escaped (scratch_stage.core.text).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from scratch_stage import __version__
from scratch_stage.core.cliparams import PathParam
from scratch_stage.core.errors import EXIT_BUG, EXIT_CONFIG, EXIT_ERROR, ScratchStageError
from scratch_stage.core.text import printable
from scratch_stage.core.units import (
    format_duration,
    format_jobs,
    format_rate,
    format_signed_size,
    format_size,
    parse_duration,
)
from scratch_stage.host.config import DEFAULT_PATH as DEFAULT_CONFIG_PATH

if TYPE_CHECKING:
    from scratch_stage.agent.node import Node
    from scratch_stage.agent.stager import Progress, Staged
    from scratch_stage.agent.views import InfoView, Prepared, StatusView
    from scratch_stage.host.catalog import Fingerprint
    from scratch_stage.host.summary import PublicSummary
    from scratch_stage.policy.report import DoneRecord, FailedRecord, PassReport

log = logging.getLogger("scratch_stage")

# The sections of `--help`, in order; a command not listed here shows under "Other".
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Look", ("status", "info", "catalog", "demand", "metrics", "cluster")),
    ("Act on this node's cache", ("pin", "unpin", "prestage", "purge", "release", "rebalance")),
    ("Set up", ("config", "image", "coop", "install-site-files")),
    ("Run by Slurm and systemd", ("prolog", "epilog", "daemon")),
    ("Offline tools", ("simulate", "simulate-fleet")),
)
HELP_EPILOG = """\b
Configuration: --config PATH, else $SCRATCH_STAGE_CONFIG, else
/etc/scratch-stage/config.yaml; keys can be overridden as SCRATCH_STAGE_<KEY>.

\b
Examples:
  scratch-stage status                   what is cached, mounted and held here
  scratch-stage info imagenet            one dataset in detail
  scratch-stage pin imagenet --ttl 2d    keep it cached for two days
  scratch-stage rebalance --dry-run --explain
  scratch-stage config check             validate before pushing a configuration

\b
Exit codes: 0 ok, 1 error, 2 usage, 3 internal bug, 4 configuration,
5 lock timeout. Every error is one line on stderr.
"""
LEGEND = (
    "HEAT: bytes/s read over the last heat window. DEMAND: bytes queued jobs are expected to read",
    "here (later starts count less). VALUE: slow reads a cached copy saves over the horizon,",
    "after paying for the copy (negative: not worth one); from the last rebalance.",
)


class Context:
    """What every command needs: the config path and a lazily built Node.

    ROOT and CLOCK are passed to the Node (tests give a node tree and a fixed clock);
    EUID decides whether the caller sees root's view or the public summary.
    """

    def __init__(
        self,
        config_path: str | None,
        *,
        root: Path | None = None,
        clock: Callable[[], float] | None = None,
        euid: int | None = None,
    ) -> None:
        self.config_path = config_path
        self.root = root
        self.clock = clock
        self.euid = os.geteuid() if euid is None else euid
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        if self._node is None:
            from scratch_stage.agent.node import Node
            from scratch_stage.host.config import load_config

            config = load_config(self.config_path)
            extra: dict[str, Any] = {}
            if self.root is not None:
                extra["root"] = self.root
            if self.clock is not None:
                extra["clock"] = self.clock
            self._node = Node(config, **extra)
        return self._node

    @property
    def is_root(self) -> bool:
        return self.euid == 0

    def now(self) -> float:
        return self.clock() if self.clock is not None else time.time()


pass_ctx = click.make_pass_decorator(Context)


def _emit_json(data: Any) -> None:
    # ensure_ascii: a control character in a name is written as a \u escape, never raw.
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True))


def _say(line: object) -> None:
    """Echo one line whose parts may come from datadir, escaped (scratch_stage.core.text)."""
    click.echo(printable(line))


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; cells are escaped."""
    shown = [[printable(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in shown]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


class SectionedGroup(click.Group):
    """A group whose `--help` lists its commands by section, with their full summaries."""

    sections: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = {
            name: cmd
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        }
        placed: set[str] = set()
        groups: list[tuple[str, list[str]]] = []
        for title, names in self.sections or (("Commands", tuple(commands)),):
            present = [n for n in names if n in commands]
            placed.update(present)
            if present:
                groups.append((title, present))
        rest = [n for n in commands if n not in placed]
        if rest:
            groups.append(("Other commands", rest))
        for title, shown in groups:
            rows = [(n, commands[n].get_short_help_str(limit=200)) for n in shown]
            with formatter.section(title):
                formatter.write_dl(rows)


class Sections(SectionedGroup):
    sections = SECTIONS


@click.group(
    cls=Sections,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=HELP_EPILOG,
    invoke_without_command=True,
)
@click.option(
    "--config", "config_path", metavar="PATH",
    help="Configuration file (default: $SCRATCH_STAGE_CONFIG, else "
    "/etc/scratch-stage/config.yaml).",
)  # fmt: skip
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.version_option(__version__, prog_name="scratch-stage")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Node-local SSD as a read-only squashfs dataset cache, driven by Slurm."""
    from scratch_stage.host.logs import setup_cli_logging

    setup_cli_logging(verbose)
    injected = ctx.obj if isinstance(ctx.obj, dict) else {}  # run_cli(..., root=, clock=)
    ctx.obj = Context(config_path, **injected)
    _needs_a_command(ctx)


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
    """Every dataset on this node, its state, holders and value, and the cache budget."""
    if not ctx.is_root:
        summary = _public_summary(ctx)
        if as_json:
            _emit_json(summary.to_json())
        else:
            click.echo(format_public_status(summary))
        return 0
    from scratch_stage.agent.admin import status as get_status

    view = get_status(ctx.node)
    if as_json:
        _emit_json(view.to_json())
    else:
        click.echo(format_status(view))
    return 0


def _public_summary(ctx: Context) -> PublicSummary:
    """For a user who is not root: the public summary (no jobs, users, reasons)."""
    from scratch_stage.host.summary import read_summary, summary_path

    mountdir = ctx.node.mountdir
    summary = read_summary(mountdir)
    if summary is None:
        raise ScratchStageError(
            f"no public summary at {summary_path(mountdir)} yet (written by root's status and "
            "each rebalance); the full view needs root"
        )
    return summary


def format_public_status(summary: PublicSummary) -> str:
    """The public summary as a table, for a user who is not root."""
    rows = [("NAME", "SIZE", "STATE", "CACHED")] + [
        (r.name, format_size(r.size), r.state, _yes(r.cached)) for r in summary.datasets
    ]
    lines = _table(rows)
    lines.append(
        f"cache: {format_size(summary.used_bytes)} of {format_size(summary.capacity_bytes)} "
        f"used (as of {_when(summary.at)})"
    )
    return "\n".join(lines)


def format_status(view: StatusView) -> str:
    """The status table for a terminal."""
    header = ("NAME", "SIZE", "STATE", "CACHED", "HOLDERS", "PINNED", "HEAT", "DEMAND", "VALUE")
    rows = [header] + [
        (
            d.name, format_size(d.size), d.state, _yes(d.cached), ",".join(d.holders) or "-",
            _yes(d.pinned), format_rate(d.heat), format_size(max(d.demand, 0.0)),
            "-" if d.value is None else format_signed_size(d.value),
        )
        for d in view.datasets
    ]  # fmt: skip
    lines = _table(rows)
    used, capacity = view.used_bytes, view.capacity_bytes
    share = 100 * used / capacity if capacity else 0.0
    lines.append(f"cache: {format_size(used)} of {format_size(capacity)} used ({share:.1f}%)")
    lines += [
        f"problem: {printable(f)}: {printable(why)}" for f, why in sorted(view.problems.items())
    ]
    if view.datasets:
        lines += LEGEND
    return "\n".join(lines)


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def info(ctx: Context, name: str, as_json: bool) -> int:
    """One dataset in detail: image, cached copy, mount stack, holders, pin, recent events."""
    if not ctx.is_root:
        return _public_info(ctx, name, as_json)
    from scratch_stage.agent.admin import info as get_info

    view = get_info(ctx.node, name)
    if as_json:
        _emit_json(view.to_json())
    else:
        click.echo(format_info(view, now=ctx.node.clock()))
    return 0


def _public_info(ctx: Context, name: str, as_json: bool) -> int:
    """`info` for a user who is not root: the dataset's row of the public summary."""
    summary = _public_summary(ctx)
    row = next((r for r in summary.datasets if r.name == name), None)
    if row is None:
        raise ScratchStageError(
            f"{name} is not in the public summary of this node (the full view needs root)"
        )
    if as_json:
        _emit_json({"name": row.name, "size": row.size, "state": row.state, "cached": row.cached})
        return 0
    lines = [
        ("name", row.name), ("size", format_size(row.size)), ("state", row.state),
        ("cached", _yes(row.cached)), ("as of", _when(summary.at)),
    ]  # fmt: skip
    click.echo("\n".join(_fields(lines)))
    return 0


def _fields(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """'label:  value' lines, the values aligned; escaped."""
    width = max(len(label) for label, _ in pairs) + 1
    return [f"{label + ':':<{width}} {printable(value)}" for label, value in pairs]


def _fingerprint(f: Fingerprint | None) -> str:
    if f is None:
        return "-"
    return (
        f"size {f.size} B, mtime {_when(f.mtime_ns / 1e9)}, inode {f.inode}, "
        f"ctime {_when(f.ctime_ns / 1e9) if f.ctime_ns >= 0 else 'unknown'}"
    )


def _until(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    left = ts - now
    if left <= 0:
        return f"{_when(ts)} (past)"
    step = 60 if left >= 3600 else 1  # minutes are enough an hour or more ahead
    return f"{_when(ts)} (in {format_duration(max(step, round(left / step) * step))})"


def format_info(view: InfoView, *, now: float) -> str:
    """One dataset for a terminal: labelled fields, the mount stack, the recent events."""
    failure = view.failure
    pairs = [
        ("name", view.name),
        ("state", view.state),
        ("image", view.image or "- (not in datadir)"),
        ("image fingerprint", _fingerprint(view.fingerprint)),
        ("cached copy", view.cached_path or "-"),
        ("copy fingerprint", _fingerprint(view.cached_fingerprint)),
        ("mountpoint", view.mountpoint),
        ("holders", ", ".join(view.holders) or "-"),
        ("pinned", _yes(view.pinned)),
        ("pin expires", _until(view.pin_expires, now) if view.pinned else "-"),
        ("copying", "-" if view.staging_pid is None else f"by pid {view.staging_pid}"),
        ("in progress", "-" if view.intent is None
         else f"{view.intent.kind} by pid {view.intent.pid}"),
        ("failed copies", "-" if failure is None
         else f"{failure.count}, next try {_until(failure.retry_at, now)}: {failure.reason}"),
    ]  # fmt: skip
    lines = _fields(pairs)
    lines.append("mount stack (bottom first):" + ("" if view.mount_stack else " -"))
    lines += [f"  {printable(m.source)} <- {printable(m.backing or '?')}" for m in view.mount_stack]
    lines.append("recent events:" + ("" if view.events else " -"))
    for event in view.events:
        details = " ".join(
            f"{k}={_detail(k, v)}"
            for k, v in sorted(event.details.items())
            if k not in _EVENT_SHOWN_ELSEWHERE
        )
        lines.append(printable(f"  {_when(event.at)} {event.kind} {details}".rstrip()))
    return "\n".join(lines)


_EVENT_TIMES = ("expires", "retry_at")  # event fields that hold an epoch time
# The RFC 3339 time and the node name are for log shipping: `info` shows the time already.
_EVENT_SHOWN_ELSEWHERE = ("time", "node")


def _detail(key: str, value: object) -> str:
    if key in _EVENT_TIMES and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _when(value).replace(" ", "T")
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value)


def _ttl(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--ttl'") from None


@cli.command()
@click.argument("name")
@click.option("--ttl", metavar="DURATION", help="Expire the pin after this long (30m, 2h, 2d).")
@pass_ctx
def pin(ctx: Context, name: str, ttl: str | None) -> int:
    """Keep a dataset cached (optionally until a time)."""
    from scratch_stage.agent.admin import pin as do_pin

    seconds = _ttl(ttl)  # a bad --ttl is a usage error, whatever the configuration
    done = do_pin(ctx.node, name, seconds)
    if done.ttl is None or done.expires is None:
        _say(f"{done.name}: pinned until unpinned")
    else:
        _say(f"{done.name}: pinned for {format_duration(done.ttl)} (until {_when(done.expires)})")
    return 0


@cli.command()
@click.argument("name")
@pass_ctx
def unpin(ctx: Context, name: str) -> int:
    """Remove a dataset's pin."""
    from scratch_stage.agent.admin import unpin as do_unpin

    do_unpin(ctx.node, name)
    _say(f"{name}: unpinned")
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
        _say(format_staged(stage(ctx.node, name, progress=_progress_reporter(name))))
    return 0


def format_staged(staged: Staged) -> str:
    """One line for a `stage` outcome."""
    from scratch_stage.agent.mounts import describe

    if staged.mount is None:
        what = "copied, already mounted" if staged.copied else "already cached and mounted"
    else:
        what = ("copied, " if staged.copied else "") + describe(staged.mount)
    return f"{staged.name}: {what}"


def _progress_reporter(name: str) -> Progress:
    """A progress bar on a terminal, a log line every 10% otherwise; both with the
    throughput and the time left."""
    if sys.stderr.isatty():
        return _ProgressBar(name)
    return ProgressLines(name, lambda line: click.echo(printable(line), err=True))


class ProgressLines:
    """A line at every tenth of a copy: share, size, throughput, time left (CLOCK: monotonic)."""

    def __init__(
        self, name: str, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name, self.say, self.clock = name, say, clock
        self.started = clock()
        self.tenth = -1

    def __call__(self, done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth == self.tenth:
            return
        self.tenth = tenth
        line = f"{self.name}: {10 * tenth}% of {format_size(total)}"
        speed = _speed(done, total, self.clock() - self.started)
        self.say(line + (f", {speed}" if speed else ""))


def _speed(done: int, total: int, elapsed: float) -> str:
    """'120.0 MiB/s, 3s left' once something was copied, else ''."""
    if done <= 0 or elapsed <= 0:
        return ""
    rate = done / elapsed
    left = (
        "done" if done >= total else f"{format_duration(max(1, round((total - done) / rate)))} left"
    )
    return f"{format_rate(rate)}, {left}"


class _ProgressBar:
    """click's progress bar (with its ETA) and the throughput beside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: Any = None
        self.done = 0
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(
                length=total, label=printable(self.name), file=sys.stderr,
                item_show_func=lambda item: item,
            )  # fmt: skip
            self.bar.__enter__()
        elapsed = time.monotonic() - self.started
        rate = format_rate(done / elapsed) if elapsed > 0 else ""
        self.bar.update(done - self.done, rate)
        self.done = done
        if done >= total:
            self.bar.__exit__(None, None, None)


@cli.command()
@click.argument("job_id")
@pass_ctx
def release(ctx: Context, job_id: str) -> int:
    """Drop a job's holds, as its epilog would (for a job whose epilog never ran)."""
    from scratch_stage.agent.admin import release as do_release

    done = do_release(ctx.node, job_id)
    _say(f"job {done.job_id}: released {', '.join(done.datasets)}")
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
    for done in do_purge(ctx.node, names, purge_all=purge_all, force=force):
        held = ", ".join(done.holders)
        if done.outcome == "purged":
            _say(f"{done.name}: purged" + (f" (held by {held})" if held else ""))
        elif done.outcome == "kept":
            _say(f"{done.name}: kept, held by job(s) {held}")
        elif done.outcome == "busy":
            _say(f"{done.name}: busy (another scratch-stage process acts on it); try again")
        else:
            _say(f"{done.name}: not cached")
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
        click.echo(format_report(report, explain=explain, dry_run=dry_run))
    return EXIT_ERROR if report.failed else 0


def format_report(report: PassReport, *, explain: bool, dry_run: bool) -> str:
    """A rebalance report for a terminal (every line escaped: names come from datadir)."""
    return "\n".join(map(printable, _report_lines(report, explain=explain, dry_run=dry_run)))


def _report_lines(report: PassReport, *, explain: bool, dry_run: bool) -> list[str]:
    if report.skipped:
        return [f"rebalance skipped: {report.skipped}"]
    verb = "would" if dry_run else "will"
    the_plan = report.plan
    lines = [
        f"plan ({the_plan.method}): {verb} evict {', '.join(the_plan.evict) or 'nothing'}; "
        f"{verb} stage {', '.join(the_plan.stage) or 'nothing'}; "
        f"{format_size(the_plan.used_after)} of {format_size(report.capacity)} after"
    ]
    lines += [f"pin does not fit: {n}" for n in the_plan.unfit_pins]
    if explain:
        for name, d in sorted(the_plan.decisions.items()):
            lines.append(f"  {name}: {d.action}: {d.reason}")
    lines += [f"done: {format_done(d)}" for d in report.done]
    lines += [f"failed: {format_failed(f)}" for f in report.failed]
    return lines


def format_done(done: DoneRecord) -> str:
    """One thing a pass did, for people."""
    name, detail = done.dataset or "", done.detail
    if done.action == "copied":
        return f"copied {name}" + (f", {detail}" if detail else "")
    if done.action == "already-cached":
        return f"{name} already cached" + (f", {detail}" if detail else " and mounted")
    if done.action == "features":
        return f"features: {detail}"
    return f"{done.action} {name}" + (f" ({detail})" if detail else "")


def format_failed(failed: FailedRecord) -> str:
    """One failed step of a pass, for people."""
    what = failed.step if failed.step != "features" else "node features"
    return (
        f"{what} {failed.dataset}: {failed.error}" if failed.dataset else f"{what}: {failed.error}"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--window", default="1h", show_default=True, metavar="DURATION",
    help="Span of the hit ratio and bytes copied (with prometheus_url).",
)  # fmt: skip
@pass_ctx
def cluster(ctx: Context, as_json: bool, window: str) -> int:
    """Where each dataset is cached, who waits for it, and how well the caches serve."""
    from scratch_stage.agent.cluster import cluster_view

    try:
        seconds = parse_duration(window)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--window") from None
    node = ctx.node
    data = cluster_view(node.config, node.clock(), seconds)
    if as_json:
        _emit_json(data)
    else:
        click.echo(format_cluster(data, window))
    for key in ("demand_error", "prometheus_error"):
        if data[key]:
            log.warning("%s", data[key])
    return 0


def format_cluster(data: dict[str, Any], window: str) -> str:
    """The cluster view as a table (dataset names escaped)."""
    header = ("DATASET", "CACHED ON", "PENDING JOBS", f"HIT RATIO ({window})", f"COPIED ({window})")
    rows = [header]
    for d in data["datasets"]:
        ratio, copied = d["hit_ratio"], d["copied_bytes"]
        rows.append((
            printable(d["name"]),
            f"{len(d['cached_on'])}: {','.join(d['cached_on'])}" if d["cached_on"] else "-",
            "?" if d["pending_jobs"] is None else str(d["pending_jobs"]),
            "-" if ratio is None else f"{100 * ratio:.1f}%",
            "-" if copied is None else format_size(int(copied)),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    footer = f"{data['nodes']} node(s)"
    if data["cluster_hit_ratio"] is not None:
        footer += f"; cluster hit ratio {100 * data['cluster_hit_ratio']:.1f}% over {window}"
    elif not data["prometheus_url"]:
        footer += "; no prometheus_url configured: no hit ratios"
    return "\n".join([*lines, footer])


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
    """Queued-job demand per dataset (cluster-wide jobs; this node's jobs and bytes).

    On this node: the expected jobs and the expected bytes the planner weighs, with each
    dataset's bytes per job and whence (this node's history, or the prior: one pass).

    With --json also `peers`: for each dataset a pending job planned onto this node
    reads, the other nodes backfill planned jobs reading it onto.

    A publisher asks slurmctld (squeue, or pyslurm when configured) whatever source this
    host's configuration names for reading.
    """
    from scratch_stage.slurm.demand import node_demand, summarize
    from scratch_stage.slurm.demand_sources import (
        check_publishable,
        demand_file,
        publish_snapshot,
        require_query,
        require_snapshot,
    )

    node = ctx.node
    now = node.clock()
    if publish and publish_configured:
        raise click.UsageError("give --publish PATH or --publish-configured, not both")
    if publish_configured:
        publish = str(demand_file(node.config))
    if publish:
        check_publishable(Path(publish))
    # NoDemand: one line why there is none
    if publish:
        snapshot = require_query(node.config, now)
    else:
        snapshot = require_snapshot(node.config, now, trust=node.trust)
    if publish:
        publish_snapshot(snapshot, Path(publish))
    here = node_demand(snapshot, node.config.node, now=now, horizon=node.config.horizon)
    counts = summarize(snapshot)
    from scratch_stage.agent.rebalance import expected_bytes

    expected = expected_bytes(node, snapshot, now, with_state=ctx.is_root)
    if as_json:
        peers = {
            name: list(snapshot.peers_of(node.config.node, name))
            for name, planned in snapshot.peers().items()
            if node.config.node in planned
        }
        _emit_json(
            {"node": node.config.node, "node_demand": here, "pending_jobs": counts, "peers": peers,
             **expected.to_json()}
        )  # fmt: skip
        return 0
    rows = [("DATASET", "PENDING JOBS", f"DEMAND ON {node.config.node}", "EXPECTED BYTES",
             "PER JOB")] + [
        (name, str(counts.get(name, 0)), format_jobs(here.get(name, 0.0)),
         format_size(expected.demand.get(name, 0.0)), expected.per_job_text(name))
        for name in sorted(set(counts) | set(here))
    ]  # fmt: skip
    if len(rows) > 1:
        click.echo("\n".join(_table(rows)))
        if not expected.history:
            _say("(per job: the prior; this node's history of reads per job is root's to read)")
    else:
        _say("no pending job asks for a dataset")
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

    if not ctx.is_root:
        if publish:
            raise ScratchStageError("catalog --publish needs root")
        summary = _public_summary(ctx)
        if as_json:
            _emit_json({"datasets": {r.name: {"size": r.size} for r in summary.datasets}})
            return 0
        public = [("NAME", "SIZE")] + [(r.name, format_size(r.size)) for r in summary.datasets]
        click.echo("\n".join(_table(public)))
        return 0
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
    rows = [("NAME", "SIZE", "IMAGE")] + [
        (name, format_size(image.size),
         str(image.path) + (f" (link to {image.target})" if image.target else ""))
        for name, image in sorted(catalog.images.items())
    ]  # fmt: skip
    click.echo("\n".join(_table(rows)))
    for filename, why in sorted(catalog.problems.items()):
        click.echo(f"problem: {printable(filename)}: {printable(why)}", err=True)
    return 0


@cli.group(invoke_without_command=True)
@click.pass_context
def config(ctx: click.Context) -> None:
    """Validate or print the effective configuration."""
    _needs_a_command(ctx)


def _needs_a_command(ctx: click.Context) -> None:
    """A group called without a command: one usage line naming its commands."""
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:
        group = ctx.command
        assert isinstance(group, click.Group)
        if ctx.parent is None:
            raise click.UsageError("give a command", ctx)
        names = ", ".join(group.list_commands(ctx))
        raise click.UsageError(f"'{ctx.command_path}' needs a command: {names}", ctx)


@config.command("check")
@pass_ctx
def config_check(ctx: Context) -> int:
    """Validate the configuration and what it names on this node; exit 4 on any error.

    The check's report goes to stdout: one line per problem, `error: KEY: ...` or
    `warning: KEY: ...`, then the active demand source and its cost to slurmctld, then one
    summary line. Errors exit 4 (a configuration problem,
    missing directories included); warnings alone exit 0.
    """
    from scratch_stage.agent.admin_config import check_config, demand_note
    from scratch_stage.core.errors import ConfigError
    from scratch_stage.host.config import InvalidConfig, find_config_path, load_config

    try:
        config = load_config(ctx.config_path)
    except InvalidConfig as e:
        for problem in e.problems:
            click.echo(f"error: {printable(problem)}")
        click.echo(f"{printable(e.source)}: {len(e.problems)} error(s)")
        return EXIT_CONFIG
    except ConfigError as e:
        click.echo(f"error: {printable(e)}")
        source = find_config_path(ctx.config_path, os.environ)
        click.echo(f"{printable(source)}: 1 error(s)")
        return EXIT_CONFIG
    findings = check_config(config)
    errors = [f.message for f in findings if f.error]
    warnings = [f.message for f in findings if not f.error]
    for finding in findings:
        click.echo(f"{'error' if finding.error else 'warning'}: {printable(finding.message)}")
    click.echo(demand_note(config))
    summary = [f"{len(errors)} error(s)"] if errors else ["ok"]
    summary += [f"{len(warnings)} warning(s)"] if warnings else []
    click.echo(f"{printable(config.source)}: " + ", ".join(summary))
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
@click.argument("dest", type=PathParam(file_okay=False))
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


@cli.group(invoke_without_command=True)
@click.pass_context
def image(ctx: click.Context) -> None:
    """Build dataset images."""
    _needs_a_command(ctx)


@image.command("build")
@click.argument("src", type=PathParam(file_okay=False))
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
    if ctx.node.config.coop.enabled and ctx.is_root:
        from scratch_stage.agent.coop import prepare
        from scratch_stage.core.errors import StagingError

        # The image was just written here: its pages are most likely still cached.
        try:
            _say(format_prepared(prepare(ctx.node, name)))
        except StagingError as e:
            _say(f"{name}: no cooperative-staging digest: {e}")
    return 0


@cli.group(invoke_without_command=True)
@click.pass_context
def coop(ctx: click.Context) -> None:
    """Cooperative staging: publish image digests ahead of the copies."""
    _needs_a_command(ctx)


@coop.command("prepare")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def coop_prepare(ctx: Context, names: Sequence[str], as_json: bool) -> int:
    """Read each image once and publish its digest (root), so that the first node's copy
    from datadir is passed on to the other nodes while it is read."""
    from scratch_stage.agent.coop import prepare
    from scratch_stage.host import interrupts

    if not ctx.is_root:
        raise ScratchStageError("coop prepare: only root publishes digests")
    interrupts.install()
    done = [prepare(ctx.node, name) for name in names]
    if as_json:
        _emit_json([p.to_json() for p in done])
    else:
        for prepared in done:
            _say(format_prepared(prepared))
    return 0


def format_prepared(prepared: Prepared) -> str:
    if not prepared.published:
        return f"{prepared.name}: digest of this version already published"
    return (f"{prepared.name}: digest published ({format_size(prepared.read)} read in "
            f"{prepared.seconds:.1f} s)")  # fmt: skip


def _register_simulate() -> None:
    from scratch_stage.simulate.command import simulate, simulate_fleet

    cli.add_command(simulate)
    cli.add_command(simulate_fleet)


_register_simulate()


def run_cli(
    args: Sequence[str],
    *,
    root: Path | None = None,
    clock: Callable[[], float] | None = None,
    euid: int | None = None,
) -> int:
    """Run the click group on ARGS; map every failure to its exit code (docs/design.md).

    ROOT, CLOCK and EUID replace the real ones (tests: a node tree, a fixed clock, a user).
    """
    inject: dict[str, Any] = {"root": root, "clock": clock, "euid": euid}
    inject = {k: v for k, v in inject.items() if v is not None}
    try:
        result = cli.main(list(args), prog_name="scratch-stage", standalone_mode=False, obj=inject)
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
