"""Configuration: lookup, environment overrides, validation with every error at once."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from scratch_stage.errors import ConfigError
from scratch_stage.requests import is_valid_name
from scratch_stage.units import parse_capacity, parse_duration, parse_size

DEFAULT_PATH = Path("/etc/scratch-stage/config.yaml")
# Root-only runtime directory (tmpfs) for the parsed-configuration cache.
RUNDIR = Path("/run/scratch-stage")
ENV_PATH = "SCRATCH_STAGE_CONFIG"
ENV_PREFIX = "SCRATCH_STAGE_"
VERIFY_MODES = ("size", "sha256")


DEMAND_SOURCES = ("squeue", "pyslurm", "file", "none")


@dataclass(frozen=True)
class DemandConfig:
    """Where queued-job demand comes from: squeue, a published file, or nowhere."""

    source: str = "squeue"
    path: Path | None = None
    max_age: float = 300.0


@dataclass(frozen=True)
class Config:
    """The effective, validated configuration (DESIGN section 4)."""

    datadir: Path
    cachedir: Path
    mountdir: Path = Path("/datasets")
    statedir: Path = Path("/var/lib/scratch-stage")
    capacity: tuple[str, float] = ("percent", 80.0)
    period: float = 600.0
    interval: float = 60.0
    node: str = field(default_factory=lambda: os.uname().nodename.split(".")[0])
    mount_command: tuple[str, ...] = ("/usr/bin/mount",)
    umount_command: tuple[str, ...] = ("/usr/bin/umount",)
    mksquashfs_command: tuple[str, ...] = ("/usr/bin/mksquashfs",)
    command_timeout: float = 60.0
    lock_timeout: float = 30.0
    prolog_stage_budget: float = 0.0
    verify: str = "size"
    chunk_size: int = 8 * 1024 * 1024
    access: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    demand: DemandConfig = field(default_factory=DemandConfig)
    squeue_command: tuple[str, ...] = ("/usr/bin/squeue",)
    sinfo_command: tuple[str, ...] = ("/usr/bin/sinfo",)
    horizon: float = 3600.0
    hysteresis: float = 0.1
    value_function: str = ""
    idle_unmount: float = 3600.0
    bandwidth: int = 0
    node_features: bool = False
    scontrol_command: tuple[str, ...] = ("/usr/bin/scontrol",)
    source: str = "<defaults>"


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return Path(value)


def _positive(parse: Callable[[Any], float]) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        number = parse(value)
        if number <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        return number

    return check


def _command(value: Any) -> tuple[str, ...]:
    argv = shlex.split(value) if isinstance(value, str) else value
    if not isinstance(argv, list) and not isinstance(argv, tuple):
        raise ValueError(f"must be a command line or a list, got {value!r}")
    if not argv or not all(isinstance(a, str) for a in argv) or not argv[0].startswith("/"):
        raise ValueError(f"must start with an absolute program path, got {value!r}")
    return tuple(argv)


def _node(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"must be a node name, got {value!r}")
    return value


def _verify(value: Any) -> str:
    if value not in VERIFY_MODES:
        raise ValueError(f"must be one of {', '.join(VERIFY_MODES)}, got {value!r}")
    return str(value)


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


def _demand(value: Any) -> DemandConfig:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with source (squeue|pyslurm|file|none), path, max_age")
    unknown = sorted(set(value) - {"source", "path", "max_age"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}")
    source = value.get("source", "squeue")
    if source not in DEMAND_SOURCES:
        raise ValueError(f"source must be one of {', '.join(DEMAND_SOURCES)}, got {source!r}")
    path = _path(value["path"]) if value.get("path") is not None else None
    if source == "file" and path is None:
        raise ValueError("source file needs a path")
    max_age = _positive(parse_duration)(value.get("max_age", 300))
    return DemandConfig(source, path, max_age)


def _callable_name(value: Any) -> str:
    if not isinstance(value, str) or (value and value.count(":") != 1):
        raise ValueError(f"must be 'module:function', got {value!r}")
    return value


def _fraction(value: Any) -> float:
    number = float(value)
    if not 0 <= number <= 10:
        raise ValueError(f"must be between 0 and 10, got {value!r}")
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


def _nonnegative_duration(value: Any) -> float:
    return parse_duration(value)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "datadir": _path,
    "cachedir": _path,
    "mountdir": _path,
    "statedir": _path,
    "capacity": parse_capacity,
    "period": _positive(parse_duration),
    "interval": _positive(parse_duration),
    "node": _node,
    "mount_command": _command,
    "umount_command": _command,
    "mksquashfs_command": _command,
    "command_timeout": _positive(parse_duration),
    "lock_timeout": _nonnegative_duration,
    "prolog_stage_budget": _nonnegative_duration,
    "verify": _verify,
    "chunk_size": _chunk,
    "access": _access,
    "demand": _demand,
    "squeue_command": _command,
    "sinfo_command": _command,
    "horizon": _positive(parse_duration),
    "hysteresis": _fraction,
    "value_function": _callable_name,
    "idle_unmount": _nonnegative_duration,
    "bandwidth": parse_size,
    "node_features": _boolean,
    "scontrol_command": _command,
}
_REQUIRED = ("datadir", "cachedir")
# Keys whose environment override is read as YAML-free text (all but mappings).
_ENV_KEYS = tuple(k for k in _PARSERS if k not in ("access", "demand"))


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to read: --config, then $SCRATCH_STAGE_CONFIG, then the default."""
    if explicit:
        return Path(explicit)
    if environ.get(ENV_PATH):
        return Path(environ[ENV_PATH])
    return DEFAULT_PATH


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw mapping in PATH; ConfigError if unreadable or not a YAML mapping."""
    import yaml  # lazy: only a config load pays for it

    try:
        text = path.read_text(encoding="utf-8")
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


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """RAW with every SCRATCH_STAGE_<KEY> variable applied over it."""
    merged = dict(raw)
    for key in _ENV_KEYS:
        value = environ.get(ENV_PREFIX + key.upper())
        if value is not None:
            merged[key] = value
    return merged


def validate_config(raw: Mapping[str, Any], source: str) -> Config:
    """A Config from RAW; ConfigError naming every bad key at once."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key in raw:
        if key not in _PARSERS:
            errors.append(f"{key}: unknown key")
    for key in _REQUIRED:
        if raw.get(key) is None:
            errors.append(f"{key}: required")
    for key, parse in _PARSERS.items():
        if raw.get(key) is None:
            continue
        try:
            values[key] = parse(raw[key])
        except _SubkeyErrors as e:
            errors.extend(f"{key}.{problem}" for problem in e.problems)
        except (ValueError, TypeError) as e:
            errors.append(f"{key}: {e}")
    if errors:
        raise ConfigError(f"invalid configuration {source}: " + "; ".join(errors))
    return Config(**values, source=source)


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration; ConfigError on any problem."""
    env = os.environ if environ is None else environ
    path = find_config_path(explicit, env)
    raw = apply_env_overrides(read_config_cached(path), env)
    return validate_config(raw, str(path))


def read_config_cached(path: Path) -> dict[str, Any]:
    """The raw mapping in PATH, from a JSON cache in RUNDIR while the file is unchanged.

    Every prolog loads the configuration; the cache spares it the YAML parser's import.
    It is keyed by the file's identity and times, and used only when JSON represents the
    mapping exactly; anything odd falls back to parsing the file.
    """
    try:
        st = os.stat(path)
    except OSError:
        return read_config_file(path)  # raises the one-line error
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    cache = RUNDIR / ("config" + str(path).replace("%", "%25").replace("/", "%2F") + ".json")
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    raw = read_config_file(path)
    _write_cache(cache, key, raw)
    return raw


def _read_cache(cache: Path, key: str) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(cache.read_bytes())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("key") == key and isinstance(data.get("raw"), dict):
        return data["raw"]  # type: ignore[no-any-return]
    return None


def _write_cache(cache: Path, key: str, raw: dict[str, Any]) -> None:
    import json

    try:
        text = json.dumps({"key": key, "raw": raw})
        if json.loads(text)["raw"] != raw:
            return  # YAML gave something JSON cannot hold exactly (dates, int keys)
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, cache)
    except (OSError, TypeError, ValueError):
        return  # a cache is optional: not root, read-only /run, ...


def config_as_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain values, for `config show`."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.name == "source":
            continue
        value = getattr(config, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif f.name == "capacity":
            value = f"{value[1]:g}%" if value[0] == "percent" else int(value[1])
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, DemandConfig):
            path = None if value.path is None else str(value.path)
            value = {"source": value.source, "path": path, "max_age": value.max_age}
        elif isinstance(value, Mapping):
            value = {k: list(v) for k, v in value.items()}
        out[f.name] = value
    return out
