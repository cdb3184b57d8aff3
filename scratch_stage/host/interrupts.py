"""SIGTERM and SIGINT as a flag: an action in progress is never cut halfway.

A command that acts (prolog, epilog, prestage, purge, rebalance, daemon) calls `install()`;
the signal then only sets a flag, and the code checks it between steps (`check()`) and at
every chunk of a copy, where stopping leaves nothing half-done (docs/design.md).
"""

from __future__ import annotations

import signal
from types import FrameType

from scratch_stage.core.errors import Interrupted

_received: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def install() -> None:
    """Turn SIGTERM and SIGINT into the flag for this process."""
    signal.signal(signal.SIGTERM, _note)
    signal.signal(signal.SIGINT, _note)


def requested() -> int | None:
    """The first stop signal received, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Interrupted if a stop signal arrived: call it only where stopping is clean."""
    if _received:
        raise Interrupted(f"stopped by signal {_received[0]}", _received[0])


def reset() -> None:
    """Forget received signals (tests)."""
    _received.clear()
