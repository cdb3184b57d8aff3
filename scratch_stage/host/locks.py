"""flock(2) on a lock file, with a timeout and a short backoff.

The same lock as the `filelock` library takes on Unix (flock on the lock file), written
out because this one runs at every job start: `import filelock` cost 18 ms there (it pulls
in secrets, hmac and _hashlib), and its fixed 50 ms polling serialised concurrent prologs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from scratch_stage.core.errors import LockTimeout, NodeFault

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterator
    from os import PathLike

_FIRST_WAIT = 0.001
_MAX_WAIT = 0.02


_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def flocked(path: str | PathLike[str], timeout: float) -> Iterator[float]:
    """Hold an exclusive flock on PATH, giving the seconds waited; LockTimeout after TIMEOUT.

    The lock file is private (0600, in the private statedir): no other user can hold it.
    """
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError as e:
        raise NodeFault(f"cannot open lock {path}: {e.strerror}") from None
    try:
        started = time.monotonic()
        _acquire(fd, path, timeout)
        yield time.monotonic() - started
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def try_flock(path: str | PathLike[str]) -> int | None:
    """The descriptor holding an exclusive flock on PATH, or None if another process has it."""
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError as e:
        raise NodeFault(f"cannot open lock {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _acquire(fd: int, path: str | PathLike[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wait = _FIRST_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(f"node state lock {path} busy for {timeout:g}s") from None
            time.sleep(wait)
            wait = min(wait * 2, _MAX_WAIT)
