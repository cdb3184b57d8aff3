"""The node state: versioned JSON, atomically replaced under a file lock.

The protocol (who may change which entry, intents, reconcile) is in docs/design.md,
"Node state protocol".
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time

from scratch_stage.core.errors import NodeFault
from scratch_stage.core.records import field, record
from scratch_stage.host import faults
from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.counters import Counters
from scratch_stage.host.heat import HeatMemory
from scratch_stage.host.logger import get_logger

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterator
    from os import PathLike
    from typing import Any, Callable, Literal

log = get_logger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
# Holder id given to datasets found mounted when the state had to be rebuilt: the jobs
# that held them are unknown, so they count as held until an administrator purges them.
RECOVERED = "recovered"
# A state file beyond this is not ours: set aside and rebuilt, never parsed.
MAX_STATE_BYTES = 64 * 1024 * 1024


@record(frozen=True)
class Hold:
    """A running job's claim on datasets of this node."""

    datasets: tuple[str, ...]
    user: str
    since: float


@record(frozen=True)
class Pin:
    """An administrator's order to keep a dataset cached, until EXPIRES if set."""

    since: float
    expires: float | None = None

    def active(self, now: float) -> bool:
        return self.expires is None or now < self.expires


@record(frozen=True)
class CachedCopy:
    """A verified copy in cachedir of the image version FINGERPRINT."""

    fingerprint: Fingerprint
    cached_at: float
    # The cached file's own inode, so a file replaced behind our back is not trusted
    # (0: unknown, from an older state file; only its size is checked then).
    inode: int = 0

    @property
    def size(self) -> int:
        return self.fingerprint.size


if TYPE_CHECKING:
    IntentKind = Literal["mount", "unmount", "evict"]


@record(frozen=True)
class Intent:
    """An irreversible action on one dataset's mount stack or cached copy, about to happen.

    Recorded (durably, under the lock) before the action and dropped after it, by the
    process PID (with its start time, against pid reuse). While it stands nobody else acts
    on the dataset; if the process dies, `reconcile` settles the dataset from what the
    kernel and the disk show. mount: make the stack serve SOURCE (unmounting stale layers
    first if nobody holds them); unmount: remove every layer; evict: remove the layers
    reading the cached copy, then delete it (with FORCE, every layer, for `purge --force`).
    """

    kind: IntentKind
    pid: int
    pid_start: str
    since: float
    source: str = ""
    force: bool = False


@record(frozen=True)
class Failure:
    """Failed copies of a dataset in a row: no new copy before RETRY_AT (wall clock)."""

    count: int
    retry_at: float
    reason: str


@record(frozen=True)
class Copy:
    """A copy in flight: its process (pid and start time, against pid reuse) and its bytes."""

    pid: int
    pid_start: str
    fingerprint: Fingerprint
    started: float

    @property
    def size(self) -> int:
        return self.fingerprint.size


@record
class NodeState:
    """Everything scratch-stage knows about this node, keyed by job id or dataset name."""

    jobs: dict[str, Hold] = field(default_factory=dict)
    pins: dict[str, Pin] = field(default_factory=dict)
    cached: dict[str, CachedCopy] = field(default_factory=dict)
    staging: dict[str, Copy] = field(default_factory=dict)
    # Added within version 1: absent in older files, read as empty.
    heat: HeatMemory = field(default_factory=HeatMemory)
    last_used: dict[str, float] = field(default_factory=dict)
    intents: dict[str, Intent] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)

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
            "cached": {
                n: [c.fingerprint.to_json(), c.cached_at, c.inode] for n, c in self.cached.items()
            },
            "staging": {
                n: [c.pid, c.pid_start, c.fingerprint.to_json(), c.started]
                for n, c in self.staging.items()
            },
            "heat": self.heat.to_json(),
            "last_used": dict(self.last_used),
            "intents": {
                n: [i.kind, i.pid, i.pid_start, i.since, i.source, i.force]
                for n, i in self.intents.items()
            },
            "failures": {n: [f.count, f.retry_at, f.reason] for n, f in self.failures.items()},
            "counters": self.counters.to_json(),
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
                cached={n: _cached(v) for n, v in data["cached"].items()},
                staging={n: Copy(int(p), str(ps), Fingerprint.from_json(f), float(t))
                         for n, (p, ps, f, t) in data["staging"].items()},
                heat=HeatMemory.from_json(data.get("heat")),
                last_used={str(n): float(t) for n, t in data.get("last_used", {}).items()},
                intents={n: _intent(v) for n, v in data.get("intents", {}).items()},
                failures={n: Failure(int(c), float(r), str(w))
                          for n, (c, r, w) in data.get("failures", {}).items()},
                counters=Counters.from_json(data.get("counters")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise ValueError(f"malformed state: {e}") from None


def _cached(value: Any) -> CachedCopy:
    fingerprint, cached_at, *rest = value
    inode = int(rest[0]) if rest else 0
    return CachedCopy(Fingerprint.from_json(fingerprint), float(cached_at), inode)


def _intent(value: Any) -> Intent:
    kind, pid, pid_start, since, source, force = value
    if kind not in ("mount", "unmount", "evict"):
        raise ValueError(f"unknown intent {kind!r}")
    return Intent(kind, int(pid), str(pid_start), float(since), str(source), bool(force))


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError(f"bad dataset list {value!r}")
    return tuple(value)


class UnknownVersion(NodeFault):
    """state.json was written by another version: never overwrite it blindly."""


def write_all(fd: int, data: bytes) -> None:
    """Write all of DATA to FD (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomically(path: str | PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace PATH by DATA: temp file, full write, fsync, rename, fsync the directory.

    On any failure (ENOSPC included) the old PATH is left untouched and the temp file removed.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, temp_name(name, os.getpid()))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)  # an old temp file of a dead process may have another mode
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def temp_name(name: str, pid: int) -> str:
    """The temp file that `write_atomically` uses for NAME in process PID."""
    return f".{name}.{pid}.tmp"


def temp_owner(filename: str) -> int | None:
    """The pid in a `temp_name`, or None if FILENAME is not one."""
    if not (filename.startswith(".") and filename.endswith(".tmp")):
        return None
    pid = filename[: -len(".tmp")].rpartition(".")[2]
    return int(pid) if pid.isascii() and pid.isdigit() else None


class StateStore:
    """state.json in STATEDIR, private to root, changed only under the lock.

    REBUILD makes a state from the mount table and cachedir when the file is missing or
    unparseable; SETTLE (reconcile) runs on every state loaded under the lock.
    """

    def __init__(
        self,
        statedir: str | PathLike[str],
        *,
        lock_timeout: float,
        rebuild: Callable[[], NodeState],
        settle: Callable[[NodeState], object] | None = None,
    ) -> None:
        self.statedir = os.fspath(statedir)
        self.path = os.path.join(self.statedir, STATE_FILE)
        self.lock_timeout = lock_timeout
        self.rebuild = rebuild
        self.settle = settle
        self.lock_waited = 0.0  # seconds spent waiting for the lock, summed (benchmarks)

    def read(self) -> NodeState:
        """The current state without the lock; rebuilds under the lock if it is unreadable."""
        try:
            return self._parse(_read_bytes(self.path))
        except (OSError, ValueError):
            with self.transaction() as state:
                return state

    @contextlib.contextmanager
    def transaction(self) -> Iterator[NodeState]:
        """Lock, load (and settle), yield the state to change in place, write it if changed.

        Decide and record here; never run an external command inside (docs/design.md).
        """
        with self._lock():
            state, raw = self._load()
            if self.settle is not None:
                self.settle(state)
            yield state
            encoded = json.dumps(state.to_json(), sort_keys=True).encode()
            if encoded != raw:
                self._write(encoded)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        from scratch_stage.host.locks import flocked

        self.ensure_statedir()
        with flocked(os.path.join(self.statedir, LOCK_FILE), self.lock_timeout) as waited:
            self.lock_waited += waited
            yield

    def ensure_statedir(self) -> None:
        """Create STATEDIR 0700, or make an existing one private; NodeFault if unsafe."""
        ensure_private_dir(self.statedir, "statedir")

    def _parse(self, raw: bytes) -> NodeState:
        if len(raw) > MAX_STATE_BYTES:
            raise ValueError(f"{len(raw)} bytes, more than any state this version writes")
        try:
            data = json.loads(raw)
        except Exception as e:  # RecursionError, OverflowError, MemoryError, ValueError...
            raise ValueError(f"not JSON: {type(e).__name__}: {str(e)[:100]}") from None
        return NodeState.from_json(data)

    def _load(self) -> tuple[NodeState, bytes | None]:
        try:
            raw = _read_bytes(self.path)
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
        aside = f"{self.path}.corrupt-{int(time.time())}-{os.getpid()}"
        with contextlib.suppress(OSError):
            os.replace(self.path, aside)
        log.error(
            "NODE STATE CORRUPT: %s (%s); rebuilt from the mount table and cachedir, "
            "old file kept as %s",
            self.path, problem, aside,
        )  # fmt: skip
        return self.rebuild()

    def _write(self, encoded: bytes) -> None:
        faults.point("before-state-write")
        try:
            write_atomically(self.path, encoded)
        except OSError as e:
            why = "no space left" if e.errno == errno.ENOSPC else e.strerror
            raise NodeFault(f"cannot write {self.path} ({why}); the old state is kept") from None
        faults.point("after-state-write")


def not_own_directory(st: os.stat_result) -> str:
    """Why ST is not a directory of this process's user ("" when it is one)."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to uid {os.geteuid()}"
    return ""


def ensure_private_dir(path: str | PathLike[str], what: str) -> None:
    """PATH exists as a directory of this user, mode 0700; loosened modes are tightened.

    NodeFault when it is not a directory or belongs to another user: then another local
    user could read the node's records or hold its locks (docs/security.md).
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise NodeFault(f"{what} {path} unusable: {e.strerror}") from None
    problem = not_own_directory(st)
    if problem:
        raise NodeFault(f"{what} {path} {problem}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning(
            "%s %s had mode %o: made 0700 and its lock files replaced (other users could "
            "hold them)", what, path, stat.S_IMODE(st.st_mode),
        )  # fmt: skip
        try:
            os.chmod(path, 0o700)
            _replace_locks(path)
        except OSError as e:
            raise NodeFault(f"cannot make {what} {path} private: {e.strerror}") from None


def _replace_locks(statedir: str | PathLike[str]) -> None:
    """Unlink the lock files, so descriptors other users opened earlier lock nothing of ours.

    Each is taken first (for up to 2 s) so that a scratch-stage process inside it finishes;
    one held longer is another user's and is unlinked anyway.
    """
    from scratch_stage.core.errors import LockTimeout
    from scratch_stage.host.locks import flocked

    for entry in os.scandir(statedir):
        if not entry.name.endswith(".lock"):
            continue
        try:
            with flocked(entry.path, 2.0):
                os.unlink(entry.path)
        except LockTimeout:
            log.warning("lock %s held by another process: replaced", entry.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
