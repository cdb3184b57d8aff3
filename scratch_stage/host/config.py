"""Configuration: one declarative table of options, lookup, environment overrides,
validation with every error at once, and the cache of the last validated configuration.

The table is the `Config` record itself (core/records.py): each field carries an `Option`
in its metadata (parser, documentation, whether SCRATCH_STAGE_<KEY> may override it, how
`config show` prints it). Validation, environment overrides, `config show`, the README table and the
checks against the example file all iterate `records.fields(Config)`.
"""

from __future__ import annotations

import os

from scratch_stage.core.errors import ConfigError
from scratch_stage.core.records import MISSING, field, fields, record
from scratch_stage.core.requests import is_valid_name
from scratch_stage.core.units import Capacity, parse_duration, parse_size

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from os import PathLike
    from typing import Any, Callable, Literal

DEFAULT_PATH = "/etc/scratch-stage/config.yaml"
# The defaults of mountdir and statedir, read when a Config is built (tests move them).
DEFAULT_MOUNTDIR = "/datasets"
DEFAULT_STATEDIR = "/var/lib/scratch-stage"
# Root-only runtime directory (tmpfs) holding the last validated configuration.
RUNDIR = "/run/scratch-stage"
ENV_PATH = "SCRATCH_STAGE_CONFIG"
ENV_RUNDIR = "SCRATCH_STAGE_RUNDIR"  # another RUNDIR (tests); not a configuration key
ENV_PREFIX = "SCRATCH_STAGE_"

if TYPE_CHECKING:
    from os import PathLike

    Verify = Literal["size", "sha256"]
    DemandSource = Literal["squeue", "pyslurm", "file", "none"]
VERIFY_MODES: tuple[Verify, ...] = ("size", "sha256")  # Verify's values, in its order
DEMAND_SOURCES: tuple[DemandSource, ...] = ("squeue", "pyslurm", "file", "none")


@record(frozen=True)
class Option:
    """One row of the configuration table (the metadata of a Config field)."""

    parse: Callable[[Any], Any]  # YAML value or environment text -> value; ValueError if bad
    doc: str  # the README's "meaning" column (Markdown)
    env: bool  # SCRATCH_STAGE_<KEY> may override it
    show: Callable[[Any], Any]  # value -> plain data that `parse` accepts again
    default_doc: str | None  # the README's "default" column; None: the field's default


class InvalidConfig(ConfigError):
    """A configuration with problems, each 'key: problem' (one line all together)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"invalid configuration {source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


# --- parsers: plain data in, a value out, ValueError with the reason otherwise ---------


def _path(value: Any) -> str:
    """An absolute path, normalized as pathlib would (no `//`, `/./` or trailing `/`).

    Paths are plain strings: `pathlib` (with the `re`, `enum`, `fnmatch` and `urllib`
    it imports) would cost every prolog about 8 ms.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    root = "//" if value.startswith("//") and not value.startswith("///") else "/"
    return root + "/".join(part for part in value.split("/") if part not in ("", "."))


def _url(value: Any) -> str:
    if value is None or value == "":
        return ""
    if (
        not isinstance(value, str)
        or not value.startswith(("http://", "https://"))
        or any(c.isspace() for c in value)
    ):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


def _keep(value: Any) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise ValueError(f"must be a whole number from 1 to 1000, got {value!r}")
    number = int(str(value).strip())
    if not 1 <= number <= 1000:
        raise ValueError(f"must be a whole number from 1 to 1000, got {value!r}")
    return number


def _optional_path(value: Any) -> str | None:
    return None if value is None or value == "" else _path(value)


def _show_optional_path(value: str | None) -> str:
    return "" if value is None else str(value)


def _positive(parse: Callable[[Any], float]) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        number = parse(value)
        if number <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        return number

    return check


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        import shlex  # lazy: the cache holds commands as lists

        argv: Any = shlex.split(value)
    else:
        argv = value
    if not isinstance(argv, list) and not isinstance(argv, tuple):
        raise ValueError(f"must be a command line or a list, got {value!r}")
    if not argv or not all(isinstance(a, str) for a in argv) or not argv[0].startswith("/"):
        raise ValueError(f"must start with an absolute program path, got {value!r}")
    return tuple(argv)


def _node(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"must be a node name, got {value!r}")
    return value


def _verify(value: Any) -> Verify:
    for mode in VERIFY_MODES:
        if value == mode:
            return mode
    raise ValueError(f"must be one of {', '.join(VERIFY_MODES)}, got {value!r}")


def _capacity(value: Any) -> Capacity:
    return Capacity.parse(value)


def _chunk(value: Any) -> int:
    size = parse_size(value)
    if not 4096 <= size <= 1024**3:
        raise ValueError(f"must be between 4KiB and 1GiB, got {value!r}")
    return size


class _SubkeyErrors(ValueError):
    """Problems under several sub-keys of one key, each as 'subkey: problem'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _access(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of dataset name to a list of Unix groups")
    result: dict[str, tuple[str, ...]] = {}
    problems: list[str] = []
    for name, groups in value.items():
        if not isinstance(name, str) or not is_valid_name(name):
            problems.append(f"{name}: {name!r} is not a dataset name")
            continue
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            problems.append(f"{name}: must be a list of Unix group names")
            continue
        result[name] = tuple(groups)
    if problems:
        raise _SubkeyErrors(problems)
    return result


@record(frozen=True)
class TrustedOwners:
    """Who besides root may own (and group-write) the images root mounts."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


def _trusted_owners(value: Any) -> TrustedOwners:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with users and/or groups (lists of names)")
    unknown = sorted(set(value) - {"users", "groups"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}")
    lists = {}
    for key in ("users", "groups"):
        names = value.get(key) or []
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{key} must be a list of names")
        lists[key] = tuple(names)
    return TrustedOwners(lists["users"], lists["groups"])


def _show_trusted(value: TrustedOwners) -> dict[str, list[str]]:
    return {"users": list(value.users), "groups": list(value.groups)}


@record(frozen=True)
class DemandConfig:
    """Where queued-job demand comes from: squeue, pyslurm, a published file, or nowhere."""

    source: DemandSource = "file"
    path: str | None = None  # file: default <datadir>/.scratch-stage-demand.json
    max_age: float = 300.0


def _demand(value: Any) -> DemandConfig:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with source (squeue|pyslurm|file|none), path, max_age")
    unknown = sorted(set(value) - {"source", "path", "max_age"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}")
    requested = value.get("source", "file")
    source = next((s for s in DEMAND_SOURCES if s == requested), None)
    if source is None:
        raise ValueError(f"source must be one of {', '.join(DEMAND_SOURCES)}, got {requested!r}")
    try:
        path = _path(value["path"]) if value.get("path") is not None else None
    except ValueError as e:
        raise _SubkeyErrors([f"path: {e}"]) from None
    try:
        max_age = _positive(parse_duration)(value.get("max_age", 300))
    except ValueError as e:
        raise _SubkeyErrors([f"max_age: {e}"]) from None
    return DemandConfig(source, path, max_age)


@record(frozen=True)
class CoopConfig:
    """Cooperative staging (docs/design.md, "Cooperative staging"): off unless enabled."""

    enabled: bool = False
    dir: str | None = None  # default <datadir>/.scratch-stage-coop
    readers: int = 1  # nodes reading one image version from datadir at once
    lease_seconds: float = 60.0  # a reader lease not renewed for this long is stale
    host: str = ""  # address other nodes reach this node's engine at; empty: the node name
    port: int = 0  # the engine's listening port; 0: any free port
    stall_seconds: float = 30.0  # a peer transfer without progress this long falls back
    seed_seconds: float = 120.0  # at most this long serving peers after our copy


_COOP_KEYS = (
    "enabled", "dir", "readers", "lease_seconds", "host", "port", "stall_seconds",
    "seed_seconds",
)  # fmt: skip


def _coop(value: Any) -> CoopConfig:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping with {', '.join(_COOP_KEYS)}")
    unknown = sorted(set(value) - set(_COOP_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}")
    defaults = CoopConfig()
    parsers: dict[str, Callable[[Any], Any]] = {
        "enabled": _boolean,
        "dir": lambda v: _path(v) if v is not None else None,
        "readers": _count(1, 64),
        "lease_seconds": _DURATION,
        "host": _host,
        "port": _count(0, 65535),
        "stall_seconds": _DURATION,
        "seed_seconds": parse_duration,
    }
    parsed: dict[str, Any] = {}
    problems = []
    for key, parse in parsers.items():
        if key not in value:
            parsed[key] = getattr(defaults, key)
            continue
        try:
            parsed[key] = parse(value[key])
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if problems:
        raise _SubkeyErrors(problems)
    return CoopConfig(**parsed)


def _count(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if type(value) is str and value.strip().isdigit():
            value = int(value)
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, got {value!r}")
        return value

    return check


def _host(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or any(c.isspace() for c in value) or len(value) > 253:
        raise ValueError(f"must be a host name or address, got {value!r}")
    return value


def _show_coop(value: CoopConfig) -> dict[str, Any]:
    return {key: getattr(value, key) for key in _COOP_KEYS}


def _callable_name(value: Any) -> str:
    if not isinstance(value, str) or (value and value.count(":") != 1):
        raise ValueError(f"must be 'module:function', got {value!r}")
    problem = simulator_only(value)
    if problem:
        raise ValueError(problem)
    return value


# The simulator's policies (the offline references, the queue oracle that knows submitted
# jobs' true reads) are replays' yardsticks: none of them may value datasets on a node.
SIMULATOR_PACKAGE = "scratch_stage.simulate"


def simulator_only(spec: str) -> str | None:
    """Why SPEC ('module:function') cannot be a node's valuation, or None."""
    module = spec.partition(":")[0].strip()
    if module == SIMULATOR_PACKAGE or module.startswith(SIMULATOR_PACKAGE + "."):
        return f"{spec!r} is in the simulator, whose policies only run in replays"
    return None


def _fraction(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 <= number <= 10:
        raise ValueError(f"must be a number between 0 and 10, got {value!r}")
    return number


def _boolean(value: Any) -> bool:
    # YAML gives a bool; an environment override gives text.
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


# --- how `config show` (and the cache) prints a value: plain data its parser accepts ---


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):  # a Path given to Config() directly (tests)
        return os.fspath(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _show_capacity(value: Capacity) -> Any:
    return value.show()


def _show_access(value: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    return {name: list(groups) for name, groups in value.items()}


def _show_demand(value: DemandConfig) -> dict[str, Any]:
    path = None if value.path is None else str(value.path)
    return {"source": value.source, "path": path, "max_age": value.max_age}


def _default_doc(shown: Any) -> str:
    """The README's default column for a default as `config show` prints it."""
    if isinstance(shown, bool):
        return f"`{str(shown).lower()}`"
    if isinstance(shown, float) and shown.is_integer():
        return f"`{int(shown)}`"
    if isinstance(shown, list):
        return f"`{' '.join(shown)}`"
    return f"`{shown}`"


def _meta(
    doc: str,
    parse: Callable[[Any], Any],
    *,
    env: bool = True,
    show: Callable[[Any], Any] = _plain,
    default_doc: str | None = None,
) -> dict[str, Option]:
    """A Config field's metadata: its row of the table (`field(..., metadata=_meta(...))`)."""
    return {"option": Option(parse, doc, env, show, default_doc)}


def _short_hostname() -> str:
    return os.uname().nodename.split(".")[0]


_DURATION = _positive(parse_duration)


@record(frozen=True)
class Config:
    """The effective, validated configuration; each field is one option (see module doc)."""

    datadir: str = field(
        metadata=_meta("slow shared directory of images `<name>.sqfs` / `.squashfs`", _path)
    )
    cachedir: str = field(
        metadata=_meta("fast node-local cache (copies in flight in `.partial/`)", _path)
    )
    mountdir: str = field(
        default_factory=lambda: DEFAULT_MOUNTDIR,
        metadata=_meta("jobs read `<mountdir>/<name>`", _path, default_doc="`/datasets`"),
    )
    statedir: str = field(
        default_factory=lambda: DEFAULT_STATEDIR,
        metadata=_meta(
            "`state.json`, `state.lock`, `events.log`", _path,
            default_doc="`/var/lib/scratch-stage`",
        ),
    )  # fmt: skip
    capacity: Capacity = field(
        default=Capacity(80.0, percent=True),
        metadata=_meta(
            "cache budget: `500GB`, `2TiB` or `80%` of the cachedir filesystem (a bare "
            "number is bytes)", _capacity, show=_show_capacity,
        ),
    )  # fmt: skip
    period: float = field(
        default=600.0, metadata=_meta("heat window, seconds (rebalance)", _DURATION)
    )
    interval: float = field(
        default=60.0, metadata=_meta("daemon rebalance interval, seconds", _DURATION)
    )
    node: str = field(
        default_factory=_short_hostname,
        metadata=_meta("this node's Slurm NodeName", _node, default_doc="short hostname"),
    )
    mount_command: tuple[str, ...] = field(
        default=("/usr/bin/mount",),
        metadata=_meta("absolute command line that mounts an image", _command),
    )
    umount_command: tuple[str, ...] = field(
        default=("/usr/bin/umount",),
        metadata=_meta("absolute command line that unmounts", _command),
    )
    mksquashfs_command: tuple[str, ...] = field(
        default=("/usr/bin/mksquashfs",),
        metadata=_meta("absolute command line of `mksquashfs` (`image build`)", _command),
    )
    command_timeout: float = field(
        default=60.0, metadata=_meta("seconds an external command may take", _DURATION)
    )
    lock_timeout: float = field(
        default=30.0,
        metadata=_meta("seconds to wait for the state lock (then exit 5)", parse_duration),
    )
    prolog_stage_budget: float = field(
        default=0.0,
        metadata=_meta(
            "seconds the prolog may wait for a cached copy before using the slow mount "
            "(counts against the job's time limit)", parse_duration,
        ),
    )  # fmt: skip
    verify: Verify = field(
        default="size",
        metadata=_meta(
            "check of a copy before it is mounted: `size` (and squashfs header) or `sha256` "
            "(re-read from disk)", _verify,
        ),
    )  # fmt: skip
    chunk_size: int = field(
        default=8 * 1024 * 1024, metadata=_meta("copy chunk", _chunk, default_doc="`8MiB`")
    )
    access: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict,
        metadata=_meta(
            "`{dataset: [unix groups]}`: only members may have it mounted", _access,
            env=False, show=_show_access, default_doc="open to anyone who can read the image",
        ),
    )  # fmt: skip
    trusted_owners: TrustedOwners = field(
        default=TrustedOwners(),
        metadata=_meta(
            "`{users: [...], groups: [...]}` who besides root may own (users) or group-write "
            "(groups) the images root mounts (docs/security.md)", _trusted_owners,
            env=False, show=_show_trusted, default_doc="root only",
        ),
    )  # fmt: skip
    demand: DemandConfig = field(
        default=DemandConfig(),
        metadata=_meta(
            "`{source: file\\|squeue\\|pyslurm\\|none, path: ..., max_age: 300}`: `file` reads "
            "what one publisher writes (`demand --publish-configured`, path default "
            "`<datadir>/.scratch-stage-demand.json`, owned by a trusted owner); `squeue`/"
            "`pyslurm` ask slurmctld from every node (pyslurm only when it matches Slurm's "
            "major.minor, else squeue)", _demand,
            env=False, show=_show_demand, default_doc="`file`",
        ),
    )  # fmt: skip
    coop: CoopConfig = field(
        default=CoopConfig(),
        metadata=_meta(
            "`{enabled: false, dir: ..., readers: 1, lease_seconds: 60, host: ..., port: 0, "
            "stall_seconds: 30, seed_seconds: 120}`: cooperative staging -- at most `readers` "
            "nodes read one image from datadir at once, the others copy it from them "
            "(BitTorrent through libtorrent, optional); `dir` default "
            "`<datadir>/.scratch-stage-coop`, owned by a trusted owner", _coop,
            env=False, show=_show_coop, default_doc="off",
        ),
    )  # fmt: skip
    squeue_command: tuple[str, ...] = field(
        default=("/usr/bin/squeue",), metadata=_meta("absolute path of Slurm's `squeue`", _command)
    )
    sinfo_command: tuple[str, ...] = field(
        default=("/usr/bin/sinfo",), metadata=_meta("absolute path of Slurm's `sinfo`", _command)
    )
    scontrol_command: tuple[str, ...] = field(
        default=("/usr/bin/scontrol",),
        metadata=_meta("absolute path of Slurm's `scontrol` (`node_features`)", _command),
    )
    horizon: float = field(
        default=3600.0,
        metadata=_meta(
            "seconds of heat a copy must pay for; scale of the demand's soonness discount",
            _DURATION,
        ),
    )
    hysteresis: float = field(
        default=0.1,
        metadata=_meta(
            "extra value of a cached copy, as a share of its size (no oscillation)", _fraction
        ),
    )
    read_rate: int = field(
        default=1_000_000_000,
        metadata=_meta(
            "prior read rate of a queued job (bytes/s, `1GB`): a job's expected reads are at"
            " most its time limit x this (`docs/planner.md`)",
            _positive(parse_size),
            default_doc="`1GB`",
        ),
    )
    copy_rate: int = field(
        default=1_000_000_000,
        metadata=_meta(
            "assumed speed of a copy (bytes/s, `1GB`) until this node has measured its own"
            " (the counters): only reads after a copy lands count (`docs/planner.md`)",
            _positive(parse_size),
            default_doc="`1GB`",
        ),
    )
    value_function: str = field(
        default="",
        metadata=_meta(
            "your own valuation, `module:function` (`docs/planner.md`)", _callable_name,
            default_doc="built-in",
        ),
    )  # fmt: skip
    idle_unmount: float = field(
        default=3600.0,
        metadata=_meta(
            "unmount a slow mount nobody held or read for this long (0: never)", parse_duration
        ),
    )
    bandwidth: int = field(
        default=0, metadata=_meta("staging bandwidth cap in bytes/s (`500MB`); 0: none", parse_size)
    )
    node_features: bool = field(
        default=False,
        metadata=_meta("publish cached datasets as Slurm node features `ds_<name>`", _boolean),
    )
    metrics_dir: str | None = field(
        default=None,
        metadata=_meta(
            "node_exporter's textfile directory: each rebalance writes `scratch_stage.prom` "
            "there (Debian: `/var/lib/prometheus/node-exporter`); empty: none",
            _optional_path, show=_show_optional_path, default_doc="none",
        ),
    )  # fmt: skip
    prometheus_url: str = field(
        default="",
        metadata=_meta(
            "Prometheus server `scratch-stage cluster` asks for hit ratios and bytes copied "
            "(`http://prometheus:9090`); empty: none", _url, default_doc="none",
        ),
    )  # fmt: skip
    event_log_max_size: int = field(
        default=64 * 1024 * 1024,
        metadata=_meta(
            "rotate `events.log` before it grows past this size (`100MB`); 0: never",
            parse_size, default_doc="`64MiB`",
        ),
    )  # fmt: skip
    event_log_keep: int = field(
        default=5,
        metadata=_meta("rotated event logs kept (`events.log.1` newest ... `.N`)", _keep),
    )
    source: str = "<defaults>"  # where it was read: not an option


OPTIONS: dict[str, Option] = {
    f.name: f.metadata["option"] for f in fields(Config) if "option" in f.metadata
}
REQUIRED = tuple(
    f.name
    for f in fields(Config)
    if f.name in OPTIONS and f.default is MISSING and f.default_factory is MISSING
)


# --- lookup, overrides, validation -------------------------------------------------------


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> str:
    """The config file to read: --config, then $SCRATCH_STAGE_CONFIG, then the default."""
    if explicit:
        return explicit
    if environ.get(ENV_PATH):
        return environ[ENV_PATH]
    return os.fspath(DEFAULT_PATH)


def read_config_file(path: str | PathLike[str]) -> dict[str, Any]:
    """The raw mapping in PATH; ConfigError if unreadable or not a YAML mapping."""
    import yaml  # lazy: only a load that misses the cache pays for it

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read configuration {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration {path} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError(f"configuration {path}{where}: YAML {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration {path}: top level must be a mapping of keys")
    return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The SCRATCH_STAGE_<KEY> variables of ENVIRON for keys that allow them, by key."""
    found = {}
    for key, option in OPTIONS.items():
        value = environ.get(ENV_PREFIX + key.upper())
        if option.env and value is not None:
            found[key] = value
    return found


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """RAW with every SCRATCH_STAGE_<KEY> variable applied over it."""
    return {**raw, **env_overrides(environ)}


def validate_config(raw: Mapping[str, Any], source: str) -> Config:
    """A Config from RAW; InvalidConfig naming every bad key at once."""
    errors: list[str] = [
        f"{key}: unknown key{_did_you_mean(key)}" for key in raw if key not in OPTIONS
    ]
    errors += [f"{key}: required" for key in REQUIRED if raw.get(key) is None]
    values: dict[str, Any] = {}
    for key, option in OPTIONS.items():
        if raw.get(key) is None:
            continue
        try:
            values[key] = option.parse(raw[key])
        except _SubkeyErrors as e:
            errors.extend(f"{key}.{problem}" for problem in e.problems)
        except ValueError as e:
            errors.append(f"{key}: {e}")
        except TypeError:  # a parser meeting a type it does not expect: say what was given
            errors.append(f"{key}: not a valid value: {raw[key]!r} ({option.doc})")
    if errors:
        raise InvalidConfig(source, errors)
    return Config(**values, source=source)


def _did_you_mean(key: object) -> str:
    """' (did you mean capacity?)' for a misspelt KEY, '' when nothing is close."""
    import difflib  # lazy: only an invalid configuration pays for it

    close = difflib.get_close_matches(str(key), list(OPTIONS), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def config_as_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain values (`config show`); validate_config accepts it again."""
    return {key: option.show(getattr(config, key)) for key, option in OPTIONS.items()}


def markdown_table() -> str:
    """The README's table of configuration keys, generated from the options."""
    lines = ["| key | meaning | default | env override |", "|---|---|---|---|"]
    for f in fields(Config):
        option = OPTIONS.get(f.name)
        if option is None:
            continue
        if option.default_doc is not None:
            default = option.default_doc
        elif f.default is MISSING:
            default = "required" if f.default_factory is MISSING else "computed"
        else:
            default = _default_doc(option.show(f.default))
        env = "yes" if option.env else "no"
        lines.append(f"| `{f.name}` | {option.doc} | {default} | {env} |")
    return "\n".join(lines)


# --- loading, with the cache of the last validated configuration -----------------------


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration; ConfigError on any problem."""
    return _load(explicit, os.environ if environ is None else environ, False)[0]


def load_hook_config(
    explicit: str | None, environ: Mapping[str, str]
) -> tuple[Config, ConfigError | None]:
    """The configuration for a prolog or epilog, and why the file itself was not used.

    A file that cannot be loaded (a bad push) does not drain the node: the last
    configuration that validated for the same file and environment overrides is used
    instead, and the problem returned for the caller to log. With none, ConfigError.
    """
    return _load(explicit, environ, True)


def _load(
    explicit: str | None, environ: Mapping[str, str], keep_known_good: bool
) -> tuple[Config, ConfigError | None]:
    from scratch_stage.host.configcache import ConfigCache, file_identity

    path = find_config_path(explicit, environ)
    overrides = env_overrides(environ)
    cache = ConfigCache(environ.get(ENV_RUNDIR) or os.fspath(RUNDIR), path, overrides)
    identity = file_identity(path)  # before reading: a change while reading only misses
    entry = cache.read()
    if entry is not None and identity is not None and entry.identity == identity:
        try:
            return validate_config(entry.config, str(path)), None
        except ConfigError:
            entry = None  # written by another version: parse the file
    try:
        raw = {**read_config_file(path), **overrides}
        config = validate_config(raw, str(path))
    except ConfigError as e:
        if keep_known_good and entry is not None:
            try:
                return validate_config(entry.config, str(path)), e
            except ConfigError:
                pass
        raise
    if identity is not None:
        cache.write(identity, config_as_dict(config))
    return config, None
