"""`scratch-stage daemon`: the rebalance pass in a loop, until SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import Callable

from scratch_stage.errors import ScratchStageError
from scratch_stage.node import Node

log = logging.getLogger(__name__)


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
    """Run ONE_PASS every `interval` seconds; SIGTERM stops between or during passes."""
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            return
        stop.set()
        # Interrupt a copy in flight: SystemExit unwinds through the stager's cleanup.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sd_notify("READY=1")
    passes = 0
    try:
        while not stop.is_set():
            try:
                one_pass(node)
            except ScratchStageError as e:
                log.error("rebalance pass failed: %s", e)
            passes += 1
            sd_notify(f"STATUS=rebalance passes: {passes}")
            stop.wait(node.config.interval)
    except SystemExit:
        log.info("stopping after %d passes (SIGTERM)", passes)
    sd_notify("STOPPING=1")
    return 0
