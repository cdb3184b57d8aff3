"""The event log: statedir/events.log, one JSON object per line, appended atomically."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from scratch_stage.host.logger import get_logger

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, Callable

log = get_logger(__name__)

EVENTS_FILE = "events.log"
KINDS = frozenset(
    ["request", "mount", "unmount", "stage-start", "stage-progress", "stage-done",
     "stage-failed", "evict", "refused", "release", "pin", "unpin", "recovered", "reconcile"]
)  # fmt: skip
# Bounds one line so that O_APPEND writes stay single and a hostile comment cannot bloat it.
_MAX_FIELD = 200


class EventLog:
    """Appends events to STATEDIR/events.log; a failure to log never fails the caller."""

    def __init__(self, statedir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = statedir / EVENTS_FILE
        self.clock = clock

    def emit(self, kind: str, dataset: str | None = None, **fields: Any) -> None:
        """Append one event of KIND (one of KINDS) with FIELDS."""
        assert kind in KINDS, kind
        record: dict[str, Any] = {"ts": round(self.clock(), 3), "event": kind}
        if dataset is not None:
            record["dataset"] = dataset
        for key, value in fields.items():
            if isinstance(value, str) and len(value) > _MAX_FIELD:
                value = value[:_MAX_FIELD] + "..."
            record[key] = value
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode()
        try:
            # Private: job ids, users and refusal reasons are not for other users.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, 0o600)
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("cannot append to event log %s: %s", self.path, e.strerror)

    def tail(self, limit: int, dataset: str | None = None) -> list[dict[str, Any]]:
        """The last LIMIT events, only those of DATASET if given."""
        from collections import deque  # lazy: not for the prolog

        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return list(deque(_matching(f, dataset), maxlen=limit))
        except OSError:
            return []


def _matching(lines: Iterable[str], dataset: str | None) -> Iterable[dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (dataset is None or record.get("dataset") == dataset):
            yield record
