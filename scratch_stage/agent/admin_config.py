"""`config check`: the mistakes a valid-looking configuration can still hold on this node.

Errors make the check fail (a push pipeline stops there); warnings are printed only.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from scratch_stage.core.units import format_size
from scratch_stage.host.config import Config

if TYPE_CHECKING:
    from scratch_stage.host.catalog import Trust

MIB = 1024**2
_Say = Callable[[str], None]


@dataclass(frozen=True)
class Finding:
    """One problem: an error (the check fails) or a warning; MESSAGE is one line."""

    error: bool
    message: str


def check_config(config: Config) -> list[Finding]:
    """Every problem CONFIG has on this node (empty when all is well)."""
    found: list[Finding] = []

    def error(message: str) -> None:
        found.append(Finding(True, message))

    def warning(message: str) -> None:
        found.append(Finding(False, message))

    _check_capacity(config, error, warning)
    _check_directories(config, error, warning)
    _check_commands(config, error, warning)
    if config.metrics_dir is not None:
        _check_metrics_dir(config.metrics_dir, warning)
    _check_demand(config, warning)
    if config.coop.enabled:
        _check_coop(config, warning)
    problem = value_function_problem(config.value_function)
    if problem:
        error(f"value_function: {problem}")
    for name, groups in config.access.items():
        for group in missing_groups(groups):
            error(f"access.{name}: Unix group {group!r} does not exist")
    for group in missing_groups(config.trusted_owners.groups):
        error(f"trusted_owners.groups: Unix group {group!r} does not exist")
    for user in missing_users(config.trusted_owners.users):
        error(f"trusted_owners.users: user {user!r} does not exist")
    return found


# slurmctld RPCs a node's demand costs per pass, counted with `sdiag` on the 22.05 test
# cluster: `squeue -t PD` and `sinfo` together make 4 (REQUEST_JOB_INFO 1,
# REQUEST_NODE_INFO 1, REQUEST_PARTITION_INFO 2), `squeue -t R` (running jobs' time
# limits) 2 more (REQUEST_JOB_INFO 1, REQUEST_PARTITION_INFO 1). pyslurm loads jobs and
# partitions (2).
DEMAND_RPCS = {"squeue": 6, "pyslurm": 2, "file": 0, "none": 0}
# `scontrol show node -o NODE` makes 2 (node and partition info); with node_features only
# when the cached set changed or REFRESH passed (agent/features.py), plus an update.
FEATURE_RPCS = 2
PUBLISHER_INTERVAL = 30  # scratch-stage-demand.timer


def demand_rpcs_per_minute(config: Config, nodes: int) -> float:
    """slurmctld RPCs per minute that NODES nodes' demand reading costs with CONFIG."""
    return DEMAND_RPCS[config.demand.source] * nodes * 60 / config.interval


def demand_note(config: Config) -> str:
    """One line: which demand source is active and what it costs slurmctld."""
    from scratch_stage.slurm.demand_sources import demand_file

    source = config.demand.source
    if source == "none":
        return "demand: none (queued jobs never prefetch)"
    if source == "file":
        return (
            f"demand: file {demand_file(config)} (one publisher asks slurmctld: "
            f"{DEMAND_RPCS['squeue']} RPCs per {PUBLISHER_INTERVAL}s for the whole cluster; "
            "the nodes ask nothing)"
        )
    per_node = demand_rpcs_per_minute(config, 1)
    return (
        f"demand: {source} on every node: about {DEMAND_RPCS[source]} slurmctld RPCs per "
        f"node per pass (every {config.interval:g}s): {per_node:g}/min per node, "
        f"{demand_rpcs_per_minute(config, 100):,.0f}/min at 100 nodes, "
        f"{demand_rpcs_per_minute(config, 1000):,.0f}/min at 1,000; a published file "
        "(`demand: {source: file}`, scratch-stage-demand.timer on one host) costs "
        f"{DEMAND_RPCS['squeue']} per {PUBLISHER_INTERVAL}s in all"
    )


def _check_demand(config: Config, warning: _Say) -> None:
    """The published demand file as this node would read it now."""
    if config.demand.source != "file":
        return
    import time

    from scratch_stage.slurm.demand import load_demand_file
    from scratch_stage.slurm.demand_sources import demand_file

    path = demand_file(config)
    if not path.exists():
        warning(
            f"demand: {path} does not exist (yet): enable scratch-stage-demand.timer on one "
            "host; until then queued jobs prefetch nothing"
        )
        return
    try:
        load_demand_file(path, now=time.time(), max_age=config.demand.max_age)
    except ValueError as e:
        warning(f"demand: {e}")


def _check_coop(config: Config, warning: _Say) -> None:
    """Cooperative staging as this node would find it: its directory and its engine."""
    from scratch_stage.host import torrent
    from scratch_stage.host.lease import COOP_DIRNAME

    path = config.coop.dir or os.path.join(config.datadir, COOP_DIRNAME)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        warning(
            f"coop.dir: {path} does not exist: the first node creates it (0700); create it "
            "yourself, owned by root, where users may create files in datadir"
        )
    except OSError as e:
        warning(f"coop.dir: {path}: {e.strerror}; cooperative staging will be off")
    else:
        trust = _trust(config)
        problem = "not a directory" if not stat.S_ISDIR(st.st_mode) else trust.file_problem(st)
        if problem:
            warning(f"coop.dir: {path}: {problem}; not used (nodes copy independently)")
    if torrent.load() is None:
        warning(
            "coop: libtorrent is not installed (python3-libtorrent, or the `coop` extra): "
            f"nodes copy from datadir, {config.coop.readers} at a time, no peers"
        )


def _trust(config: Config) -> Trust:
    """The nodes' rule for whose files root trusts (as `Node.trust` builds it)."""
    import grp
    import pwd

    from scratch_stage.host.catalog import Trust

    uids, gids = set(Trust().trusted_uids), {0}
    for user in config.trusted_owners.users:
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(user).pw_uid)
    for group in config.trusted_owners.groups:
        with contextlib.suppress(KeyError):
            gids.add(grp.getgrnam(group).gr_gid)
    return Trust(frozenset(uids), frozenset(gids))


def _check_capacity(config: Config, error: _Say, warning: _Say) -> None:
    capacity = config.capacity
    if not capacity.percent and capacity.amount == 0:
        error("capacity: 0 leaves no room for any cached copy")
    elif capacity.unitless and capacity.amount < MIB:
        n = int(capacity.amount)
        error(
            f"capacity: {n} has no unit, so it means {n} bytes; write {n}% for a share of "
            f"the cachedir filesystem, or a size such as {n}GB"
        )
    if capacity.percent:
        return
    try:
        st = os.statvfs(config.cachedir)
    except OSError:
        return  # a missing cachedir is reported on its own
    size = st.f_blocks * st.f_frsize
    if capacity.amount > size:
        warning(
            f"capacity: {format_size(capacity.amount)} is more than the whole cachedir "
            f"filesystem ({format_size(size)})"
        )


def _check_directories(config: Config, error: _Say, warning: _Say) -> None:
    stats: dict[str, os.stat_result] = {}
    for key in ("datadir", "cachedir"):
        path = getattr(config, key)
        try:
            stats[key] = os.stat(path)
        except OSError as e:
            error(f"{key}: {path} cannot be used: {e.strerror}")
            continue
        if not stat.S_ISDIR(stats[key].st_mode):
            error(f"{key}: {path} is not a directory")
            del stats[key]
    if "datadir" in stats:
        mode = stat.S_IMODE(stats["datadir"].st_mode)
        if mode & 0o022:
            warning(
                f"datadir: {config.datadir} is writable by group or others (mode {mode:04o}): "
                "whoever can write there chooses what every job reads"
            )
    same = {s.st_dev for s in stats.values()}
    if len(stats) == 2 and len(same) == 1:
        warning(
            f"cachedir: {config.cachedir} is on the same filesystem as datadir: "
            "a cached copy reads no faster than the image"
        )
    _check_statedir(config, error, warning)


def _check_statedir(config: Config, error: _Say, warning: _Say) -> None:
    path = config.statedir
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # created on first use
    except OSError as e:
        error(f"statedir: {path} cannot be used: {e.strerror}")
        return
    if not stat.S_ISDIR(st.st_mode):
        error(f"statedir: {path} is not a directory")
        return
    if not os.access(path, os.W_OK):
        error(f"statedir: {path} is not writable")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o066:
        warning(
            f"statedir: {path} is readable or writable by group or others (mode {mode:04o}); "
            "make it 0700 or 0711"
        )
    if st.st_uid != 0:
        warning(f"statedir: {path} is owned by uid {st.st_uid}, not root")


def _check_metrics_dir(path: str | os.PathLike[str], warning: _Say) -> None:
    """A metrics_dir the rebalance would refuse is a warning: the node works without it."""
    from scratch_stage.host.metrics import MetricsError, check_metrics_dir

    try:
        check_metrics_dir(path)
    except MetricsError as e:
        warning(f"metrics_dir: {e}; no metrics file will be written")


def _check_commands(config: Config, error: _Say, warning: _Say) -> None:
    needed = ["mount_command", "umount_command"]
    if config.demand.source in ("squeue", "pyslurm"):
        needed += ["squeue_command", "sinfo_command"]
    if config.node_features or config.demand.source == "pyslurm":
        needed.append("scontrol_command")
    for key in needed:
        program = getattr(config, key)[0]
        if not os.access(program, os.X_OK):
            error(f"{key}: {program} is not an executable program")
    program = config.mksquashfs_command[0]
    if not os.access(program, os.X_OK):
        warning(f"mksquashfs_command: {program} is not an executable program (image build)")


def value_function_problem(spec: str) -> str | None:
    """Why the valuation 'module:function' SPEC cannot be used, or None ('' is built in)."""
    if not spec:
        return None
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        return f"module {module_name!r} cannot be imported: {type(e).__name__}: {e}"
    if not hasattr(module, attr):
        return f"module {module_name!r} has no {attr!r}"
    if not callable(getattr(module, attr)):
        return f"{spec!r} is not callable"
    return None


def missing_groups(groups: tuple[str, ...]) -> list[str]:
    """The names in GROUPS that are no Unix group on this node."""
    import grp

    return _missing(groups, grp.getgrnam)


def missing_users(users: tuple[str, ...]) -> list[str]:
    """The names in USERS that are no user on this node."""
    import pwd

    return _missing(users, pwd.getpwnam)


def _missing(names: tuple[str, ...], lookup: Callable[[str], object]) -> list[str]:
    missing = []
    for name in names:
        try:
            lookup(name)
        except KeyError:
            missing.append(name)
    return missing
