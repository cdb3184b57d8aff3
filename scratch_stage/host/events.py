"""The event log: statedir/events.log, one JSON object per line, appended atomically."""

from __future__ import annotations

import json
import os
import time

from scratch_stage.host.logger import get_logger

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable
    from os import PathLike
    from typing import Any, Callable

log = get_logger(__name__)

EVENTS_FILE = "events.log"
ROTATE_LOCK = "events.lock"
KINDS = frozenset(
    ["request", "mount", "unmount", "stage-start", "stage-progress", "stage-done",
     "stage-failed", "evict", "refused", "release", "pin", "unpin", "recovered", "reconcile",
     "coop-lease", "coop-fetch", "coop-fetched", "coop-stalled", "coop-bad-copy",
     "coop-served", "coop-prepared", "coop-read", "coop-digest-refused"]
)  # fmt: skip
# Bounds one line so that O_APPEND writes stay single and a hostile comment cannot bloat it.
_MAX_FIELD = 200


class EventLog:
    """Appends events to STATEDIR/events.log; a failure to log never fails the caller.

    Every event carries NODE and its time twice: `ts` (Unix epoch) and `time` (RFC 3339,
    UTC). When an append would take the file past MAX_SIZE bytes (0: never), the file is
    rotated first: events.log.1 ... .KEEP shift up, the oldest is dropped, events.log
    starts anew. Writers never take a lock to append (one O_APPEND write per line); a
    rotation is serialized by a flock on STATEDIR/events.lock, and a writer that had the
    old file open appends to it after its rename: no line is lost or split.
    """

    def __init__(
        self,
        statedir: str | PathLike[str],
        clock: Callable[[], float] = time.time,
        *,
        node: str = "",
        max_size: int = 0,
        keep: int = 5,
    ) -> None:
        self.path = os.path.join(statedir, EVENTS_FILE)
        self.clock = clock
        self.node = node
        self.max_size = max_size
        self.keep = keep

    def emit(self, kind: str, dataset: str | None = None, **fields: Any) -> None:
        """Append one event of KIND (one of KINDS) with FIELDS."""
        assert kind in KINDS, kind
        now = self.clock()
        record: dict[str, Any] = {"ts": round(now, 3), "time": rfc3339(now), "event": kind}
        if self.node:
            record["node"] = self.node
        if dataset is not None:
            record["dataset"] = dataset
        for key, value in fields.items():
            if isinstance(value, str) and len(value) > _MAX_FIELD:
                value = value[:_MAX_FIELD] + "..."
            record[key] = value
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode()
        try:
            fd = self._open()
            try:
                st = os.fstat(fd)
                if 0 < self.max_size < st.st_size + len(line) and st.st_size:
                    os.close(fd)
                    fd = -1
                    try:
                        self._rotate(st.st_ino)
                    except OSError as e:  # not rotated, but the event is not lost
                        log.warning("cannot rotate event log %s: %s", self.path, e.strerror)
                    fd = self._open()
                os.write(fd, line)
            finally:
                if fd >= 0:
                    os.close(fd)
        except OSError as e:
            log.warning("cannot append to event log %s: %s", self.path, e.strerror)

    def _open(self) -> int:
        # Private: job ids, users and refusal reasons are not for other users.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        return fd

    def _rotate(self, inode: int) -> None:
        """Rotate the file whose inode is INODE, unless another writer just did."""
        import contextlib
        import fcntl

        lock_path = os.path.join(os.path.dirname(self.path), ROTATE_LOCK)
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.lstat(self.path).st_ino != inode:
                    return  # rotated meanwhile: append to the new file
            except FileNotFoundError:
                return
            oldest = rotated_path(self.path, self.keep)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(oldest)
            for i in range(self.keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(rotated_path(self.path, i), rotated_path(self.path, i + 1))
            os.rename(self.path, rotated_path(self.path, 1))
        finally:
            os.close(lock)  # releases the flock

    def tail(self, limit: int, dataset: str | None = None) -> list[dict[str, Any]]:
        """The last LIMIT events, only those of DATASET if given."""
        from collections import deque  # lazy: not for the prolog

        found: deque[dict[str, Any]] = deque(maxlen=limit)
        for path in (rotated_path(self.path, 1), self.path):  # the newest rotated file too
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    found.extend(_matching(f, dataset))
            except OSError:
                continue
        return list(found)


def rotated_path(path: str | PathLike[str], number: int) -> str:
    """events.log.NUMBER."""
    return f"{os.fspath(path)}.{number}"


def rfc3339(epoch: float) -> str:
    """EPOCH as an RFC 3339 UTC timestamp with milliseconds: 2026-12-06T00:20:01.123Z."""
    millis = round(epoch * 1000)
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def _matching(lines: Iterable[str], dataset: str | None) -> Iterable[dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (dataset is None or record.get("dataset") == dataset):
            yield record
