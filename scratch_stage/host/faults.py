"""The fault-injection seam: a test kills the process right before or after a side effect.

Every irreversible step (mount, umount, unlink or rename in the cache, state write) calls
`point("before-<step>")` and `point("after-<step>")`. With SCRATCH_STAGE_FAULT=<point>
(or <point>@N for its N-th occurrence in this process) the process SIGKILLs itself there,
so the crash tests can check what `reconcile` makes of every interrupted action
(docs/design.md, "Node state protocol"). With SCRATCH_STAGE_FAULT_DELAY=<point>=<seconds>
it sleeps there instead: a slow disk or a loaded node, for the timing races (a cooperative
reader's pause between its last piece read and serving its copy: `after-coop-read`).
Unset, a point costs two dictionary lookups.
"""

from __future__ import annotations

import os

ENV = "SCRATCH_STAGE_FAULT"
DELAY_ENV = "SCRATCH_STAGE_FAULT_DELAY"
POINTS = frozenset(
    f"{when}-{step}"
    for when in ("before", "after")
    for step in ("mount", "umount", "unlink", "rename", "state-write")
) | {"after-coop-read"}
_seen: dict[str, int] = {}


def point(name: str) -> None:
    """SIGKILL this process if SCRATCH_STAGE_FAULT names NAME (at this occurrence); sleep
    if SCRATCH_STAGE_FAULT_DELAY does."""
    delay = os.environ.get(DELAY_ENV)
    if delay:
        wanted, _, seconds = delay.partition("=")
        if wanted == name:
            import time

            time.sleep(float(seconds))
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, nth = spec.partition("@")
    if wanted != name:
        return
    _seen[name] = count = _seen.get(name, 0) + 1
    if count == (int(nth) if nth.isdigit() else 1):
        import signal  # lazy: `signal` imports `enum`, a cost for every prolog

        os.kill(os.getpid(), signal.SIGKILL)
