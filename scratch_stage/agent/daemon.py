"""`scratch-stage daemon`: the rebalance pass in a loop, until SIGTERM."""

from __future__ import annotations

import os
import socket
import time
from typing import Callable

from scratch_stage.agent.node import Node
from scratch_stage.core.errors import Interrupted, ScratchStageError
from scratch_stage.host.logger import get_logger

log = get_logger(__name__)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) MESSAGE if it is listening; silently nothing otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as e:
        log.debug("sd_notify failed: %s", e)


def run_daemon(node: Node, one_pass: Callable[[Node], object]) -> int:
    """Run ONE_PASS every `interval` seconds; SIGTERM stops between steps of a pass.

    The signal only sets a flag (`interrupts`): a pass stops at its next clean point (the
    copy in flight is abandoned at its next chunk, no unmount is cut halfway).
    """
    from scratch_stage.host import interrupts

    interrupts.install()
    sd_notify("READY=1")
    passes = 0
    while interrupts.requested() is None:
        try:
            one_pass(node)
        except Interrupted:
            break
        except ScratchStageError as e:
            log.error("rebalance pass failed: %s", e)
        except OSError as e:  # a filesystem problem this pass; the next one may succeed
            log.error("rebalance pass failed: %s", e)
        passes += 1
        sd_notify(f"STATUS=rebalance passes: {passes}")
        _sleep(node.config.interval, interrupts.requested)
    log.info("stopping after %d passes (signal %s)", passes, interrupts.requested())
    sd_notify("STOPPING=1")
    return 0


def _sleep(seconds: float, stop: Callable[[], object]) -> None:
    """Sleep SECONDS in short steps, returning early once STOP() is true."""
    deadline = time.monotonic() + seconds
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))
