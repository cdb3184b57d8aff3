"""The node state: versioned JSON, atomically replaced under a file lock (DESIGN section 7)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scratch_stage.catalog import Fingerprint
from scratch_stage.errors import NodeFault
from scratch_stage.heat import HeatMemory

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
# Holder id given to datasets found mounted when the state had to be rebuilt: the jobs
# that held them are unknown, so they count as held until an administrator purges them.
RECOVERED = "recovered"


@dataclass(frozen=True)
class Hold:
    """A running job's claim on datasets of this node."""

    datasets: tuple[str, ...]
    user: str
    since: float


@dataclass(frozen=True)
class Pin:
    """An administrator's order to keep a dataset cached, until EXPIRES if set."""

    since: float
    expires: float | None = None

    def active(self, now: float) -> bool:
        return self.expires is None or now < self.expires


@dataclass(frozen=True)
class CachedCopy:
    """A verified copy in cachedir of the image version FINGERPRINT."""

    fingerprint: Fingerprint
    cached_at: float

    @property
    def size(self) -> int:
        return self.fingerprint.size


@dataclass(frozen=True)
class Copy:
    """A copy in flight: its process (pid and start time, against pid reuse) and its bytes."""

    pid: int
    pid_start: str
    fingerprint: Fingerprint
    started: float

    @property
    def size(self) -> int:
        return self.fingerprint.size


@dataclass
class NodeState:
    """Everything scratch-stage knows about this node, keyed by job id or dataset name."""

    jobs: dict[str, Hold] = field(default_factory=dict)
    pins: dict[str, Pin] = field(default_factory=dict)
    cached: dict[str, CachedCopy] = field(default_factory=dict)
    staging: dict[str, Copy] = field(default_factory=dict)
    # Added within version 1: absent in older files, read as empty.
    heat: HeatMemory = field(default_factory=HeatMemory)
    last_used: dict[str, float] = field(default_factory=dict)

    def holders(self, name: str) -> list[str]:
        """Job ids holding NAME, sorted."""
        return sorted(job for job, hold in self.jobs.items() if name in hold.datasets)

    def reserved_bytes(self) -> int:
        """Cached copies plus copies in flight (a re-copy of a stale copy counts both)."""
        return sum(c.size for c in self.cached.values()) + sum(
            c.size for c in self.staging.values()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "jobs": {j: [list(h.datasets), h.user, h.since] for j, h in self.jobs.items()},
            "pins": {n: [p.since, p.expires] for n, p in self.pins.items()},
            "cached": {n: [c.fingerprint.to_json(), c.cached_at] for n, c in self.cached.items()},
            "staging": {
                n: [c.pid, c.pid_start, c.fingerprint.to_json(), c.started]
                for n, c in self.staging.items()
            },
            "heat": self.heat.to_json(),
            "last_used": dict(self.last_used),
        }

    @classmethod
    def from_json(cls, data: Any) -> NodeState:
        """The state in DATA; UnknownVersion for another version, ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError("state is not a JSON object")
        version = data.get("version")
        if type(version) is not int:
            raise ValueError(f"state.json has no integer version: {version!r}")
        if version != STATE_VERSION:
            raise UnknownVersion(f"state.json has version {version!r}")
        try:
            return cls(
                jobs={str(j): Hold(_names(d), str(u), float(s))
                      for j, (d, u, s) in data["jobs"].items()},
                pins={n: Pin(float(s), None if e is None else float(e))
                      for n, (s, e) in data["pins"].items()},
                cached={n: CachedCopy(Fingerprint.from_json(f), float(t))
                        for n, (f, t) in data["cached"].items()},
                staging={n: Copy(int(p), str(ps), Fingerprint.from_json(f), float(t))
                         for n, (p, ps, f, t) in data["staging"].items()},
                heat=HeatMemory.from_json(data.get("heat")),
                last_used={str(n): float(t) for n, t in data.get("last_used", {}).items()},
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed state: {e}") from None


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError(f"bad dataset list {value!r}")
    return tuple(value)


class UnknownVersion(NodeFault):
    """state.json was written by another version: never overwrite it blindly."""


def write_atomically(path: Path, data: bytes) -> None:
    """Replace PATH by DATA: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """state.json in STATEDIR; REBUILD makes a state from the mount table and cachedir."""

    def __init__(
        self, statedir: Path, *, lock_timeout: float, rebuild: Callable[[], NodeState]
    ) -> None:
        self.statedir = statedir
        self.path = statedir / STATE_FILE
        self.lock_timeout = lock_timeout
        self.rebuild = rebuild

    def read(self) -> NodeState:
        """The current state without the lock; rebuilds under the lock if it is unreadable."""
        try:
            return self._parse(self.path.read_bytes())
        except (OSError, ValueError):
            with self.transaction() as state:
                return state

    @contextlib.contextmanager
    def transaction(self) -> Iterator[NodeState]:
        """Lock, load, yield the state to change in place, write it back if changed."""
        with self._lock():
            state, raw = self._load()
            yield state
            encoded = json.dumps(state.to_json(), sort_keys=True).encode()
            if encoded != raw:
                self._write(encoded)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        from scratch_stage.locks import flocked

        self.ensure_statedir()
        with flocked(self.statedir / LOCK_FILE, self.lock_timeout):
            yield

    def ensure_statedir(self) -> None:
        try:
            self.statedir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as e:
            raise NodeFault(f"statedir {self.statedir} unusable: {e.strerror}") from None

    def _parse(self, raw: bytes) -> NodeState:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON: {e}") from None
        return NodeState.from_json(data)

    def _load(self) -> tuple[NodeState, bytes | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            state = self.rebuild()
            log.info("no %s yet: started from the mount table and cachedir", self.path)
            return state, None
        except OSError as e:
            raise NodeFault(f"cannot read {self.path}: {e.strerror}") from None
        try:
            return self._parse(raw), raw
        except UnknownVersion:
            raise
        except ValueError as e:
            return self._recover(e), None

    def _recover(self, problem: ValueError) -> NodeState:
        aside = self.path.with_name(f"{STATE_FILE}.corrupt-{int(time.time())}-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.replace(self.path, aside)
        log.error(
            "NODE STATE CORRUPT: %s (%s); rebuilt from the mount table and cachedir, "
            "old file kept as %s",
            self.path, problem, aside,
        )  # fmt: skip
        return self.rebuild()

    def _write(self, encoded: bytes) -> None:
        try:
            write_atomically(self.path, encoded)
        except OSError as e:
            raise NodeFault(f"cannot write {self.path}: {e.strerror}") from None
