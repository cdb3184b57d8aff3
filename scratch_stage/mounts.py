"""Mount stacks at <mountdir>/<name>: mount slow or cached images, mount over, unmount."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from scratch_stage.catalog import Image
from scratch_stage.errors import CommandError, NodeFault
from scratch_stage.mountinfo import Layer, read_stack
from scratch_stage.node import Node
from scratch_stage.state import NodeState

log = logging.getLogger(__name__)


def stack(node: Node, name: str) -> list[Layer]:
    """The layers mounted at NAME's mountpoint, bottom first."""
    return read_stack(node.root, str(node.mountpoint(name)))


def fresh_source(node: Node, state: NodeState, image: Image) -> Path:
    """The file a new job must read for IMAGE: its verified cached copy, else the image."""
    cached = state.cached.get(image.name)
    path = node.cached_path(image.name)
    if cached is not None and cached.fingerprint == image.fingerprint and path.exists():
        return path
    return image.path


def real_path(path: Path) -> str:
    """PATH as a loop device reports its backing file: datadir or cachedir may be symlinks."""
    return os.path.realpath(path)


def serves(layers: list[Layer], source: Path) -> bool:
    """True when the top layer is a live (not replaced) mount of SOURCE."""
    if not layers:
        return False
    top = layers[-1]
    return not top.deleted and top.backing_path == real_path(source)


def ensure_mounted(node: Node, state: NodeState, image: Image) -> str | None:
    """Make the mountpoint serve the fresh source of IMAGE; what was done, or None."""
    source = fresh_source(node, state, image)
    layers = stack(node, image.name)
    if serves(layers, source):
        return None
    current = {real_path(image.path), real_path(source)}  # a stale cached copy is not current
    stale = any(layer.deleted or layer.backing_path not in current for layer in layers)
    if stale and not state.holders(image.name):
        unmount_all(node, image.name)  # nobody reads the old version: start clean
        layers = []
    mount(node, source, node.mountpoint(image.name))
    cached = source != image.path
    kind = "cached" if cached else "slow"
    return f"mounted {kind} copy over {len(layers)} layer(s)" if layers else f"mounted {kind} copy"


def mount(node: Node, source: Path, target: Path) -> None:
    """Loop-mount SOURCE at TARGET (creating it); NodeFault if impossible."""
    try:
        os.makedirs(target, mode=0o755, exist_ok=True)
    except OSError as e:
        raise NodeFault(f"cannot create mountpoint {target}: {e.strerror}") from None
    from scratch_stage import runner  # lazy: the hot-path prolog runs no command

    config = node.config
    runner.run(
        runner.build_mount_argv(config.mount_command, source, target),
        timeout=config.command_timeout,
    )
    log.info("mounted %s at %s", source, target)


def unmount_top(node: Node, name: str) -> None:
    """Unmount the top layer at NAME's mountpoint, detaching it lazily if it is busy."""
    from scratch_stage import runner

    config = node.config
    target = node.mountpoint(name)
    try:
        runner.run(
            runner.build_umount_argv(config.umount_command, target), timeout=config.command_timeout
        )
    except CommandError as first:
        log.warning("unmount of %s failed (%s); detaching lazily", target, first)
        runner.run(
            runner.build_umount_argv(config.umount_command, target, lazy=True),
            timeout=config.command_timeout,
        )
    log.info("unmounted top layer at %s", target)


def unmount_all(node: Node, name: str) -> int:
    """Unmount every layer at NAME's mountpoint; how many were unmounted."""
    count = 0
    while stack(node, name):
        unmount_top(node, name)
        count += 1
    return count


def unmount_file(node: Node, name: str, path: Path) -> int:
    """Unmount from the top until no layer at NAME's mountpoint reads PATH; layers removed."""
    count = 0
    while any(layer.backing_path == real_path(path) for layer in stack(node, name)):
        unmount_top(node, name)
        count += 1
    return count


def is_mounted_anywhere(node: Node, name: str, path: Path) -> bool:
    """True when a layer at NAME's mountpoint reads PATH."""
    return any(layer.backing_path == real_path(path) for layer in stack(node, name))
