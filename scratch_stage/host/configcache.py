"""The last validated configuration, kept in a root-only runtime directory (RUNDIR).

Every prolog loads the configuration; the cache spares it the YAML parser, and it is the
known-good configuration a prolog or epilog keeps running on when a bad file is pushed.
One file per configuration path and set of environment overrides holds the file's identity
(device, inode, size, times) and the validated configuration in `config show` form, which
is validated again when read. A cache is used only when its directory and file are owned
by root (or by this process's user), writable by nobody else, and not symlinks: anyone who
could plant one could otherwise choose a root process's mounts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
import zlib

from scratch_stage.core.records import record
from scratch_stage.host.logger import get_logger

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

log = get_logger(__name__)

FORMAT = 1


@record(frozen=True)
class Entry:
    """One cached configuration: the file identity it was validated for, and its values."""

    identity: str
    config: dict[str, Any]
    validated: float


def file_identity(path: str | PathLike[str]) -> str | None:
    """What changes whenever PATH's content may have changed; None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def untrusted(st: os.stat_result, *, directory: bool) -> str | None:
    """Why a cache file or directory with status ST must not be used, or None."""
    kind = stat.S_ISDIR if directory else stat.S_ISREG
    if stat.S_ISLNK(st.st_mode) or not kind(st.st_mode):
        return "a symlink or not a " + ("directory" if directory else "regular file")
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class ConfigCache:
    """The cache entry for configuration PATH with environment OVERRIDES, in RUNDIR."""

    def __init__(
        self, rundir: str | PathLike[str], path: str | PathLike[str], overrides: dict[str, str]
    ) -> None:
        self.rundir = os.fspath(rundir)
        self.key = {"path": os.fspath(path), "overrides": overrides}
        digest = zlib.crc32(json.dumps(self.key, sort_keys=True).encode())
        self.name = f"config-{digest:08x}.json"
        self.file = os.path.join(self.rundir, self.name)

    def _trusted_dir(self) -> bool:
        try:
            problem = untrusted(os.lstat(self.rundir), directory=True)
        except OSError:
            return False
        if problem:
            log.warning("not using the configuration cache %s: %s", self.rundir, problem)
        return problem is None

    def read(self) -> Entry | None:
        """The entry for this path and overrides, if a trustworthy one exists."""
        if not self._trusted_dir():
            return None
        try:
            fd = os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symlink where the cache file belongs
                log.warning("not using the configuration cache %s: a symlink", self.file)
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                problem = untrusted(os.fstat(f.fileno()), directory=False)
                if problem:
                    log.warning("not using the configuration cache %s: %s", self.file, problem)
                    return None
                data = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return None
        if not (
            isinstance(data, dict)
            and data.get("format") == FORMAT
            and data.get("key") == self.key
            and isinstance(data.get("identity"), str)
            and isinstance(data.get("config"), dict)
            and isinstance(data.get("validated"), (int, float))
        ):
            return None
        return Entry(data["identity"], data["config"], float(data["validated"]))

    def write(self, identity: str, config: dict[str, Any]) -> None:
        """Record CONFIG as validated for the file with IDENTITY; quietly nothing if impossible.

        A cache is optional: not root, a read-only or missing /run, an untrusted directory.
        """
        with contextlib.suppress(OSError):  # it exists (checked next), or cannot be made
            os.mkdir(self.rundir, 0o700)
        if not self._trusted_dir():
            return
        record = {
            "format": FORMAT, "key": self.key, "identity": identity, "config": config,
            "validated": time.time(),
        }  # fmt: skip
        tmp = os.path.join(self.rundir, f".{self.name}.{os.getpid()}")
        with contextlib.suppress(OSError):  # left by a crashed process of the same pid
            os.unlink(tmp)
        try:
            text = json.dumps(record)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.file)
        except (OSError, TypeError, ValueError):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
