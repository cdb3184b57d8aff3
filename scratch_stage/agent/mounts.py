"""Mount stacks at <mountdir>/<name>: decide under the lock, act outside it.

Every change to a stack follows the node-state protocol (docs/design.md): under the state
lock a process decides and records an `Intent` for the dataset (`claim`); outside the lock
it carries out the prepared step (`perform`), which runs mount/umount; under the lock again
it drops the intent (`finish`). While the intent stands, no other process acts on that
dataset; if the process dies, `reconcile` settles it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from scratch_stage.agent.node import Node
from scratch_stage.core.errors import CommandError, DatasetError, NodeFault
from scratch_stage.core.layout import ACCESS_DIR, restricted_mount
from scratch_stage.core.records import record
from scratch_stage.host import faults
from scratch_stage.host.catalog import Fingerprint, Image, opened_image
from scratch_stage.host.counters import Mark
from scratch_stage.host.heat import Attach, read_attach
from scratch_stage.host.logger import get_logger
from scratch_stage.host.mountinfo import Layer, read_stack
from scratch_stage.host.state import Intent, NodeState

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterator
    from os import PathLike

    from scratch_stage.host.state import IntentKind

log = get_logger(__name__)


def stack(node: Node, name: str) -> list[Layer]:
    """The layers mounted at NAME's mountpoint, bottom first."""
    return read_stack(node.root, str(node.mountpoint(name)))


def fresh_copy(node: Node, state: NodeState, image: Image) -> bool:
    """The one rule: NAME's cached copy is a verified copy of this very image version."""
    cached = state.cached.get(image.name)
    return (
        cached is not None
        and cached.fingerprint == image.fingerprint
        and image.name not in state.intents  # an eviction in progress serves nobody
        and os.path.exists(node.cached_path(image.name))
    )


def fresh_source(node: Node, state: NodeState, image: Image) -> str:
    """The file a new job must read for IMAGE: its verified cached copy, else the image."""
    return node.cached_path(image.name) if fresh_copy(node, state, image) else image.path


def real_path(path: str | PathLike[str]) -> str:
    """PATH as a loop device reports its backing file: datadir or cachedir may be symlinks.

    Only the directory is resolved (the administrator's); the file name is never followed:
    a user may swap it for a symlink at any moment, and resolving it then races (EINVAL).
    """
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(os.path.realpath(directory or "."), name)


def layers_reading(layers: list[Layer], path: str | PathLike[str]) -> list[Layer]:
    """The layers whose loop device reads PATH (the one definition of 'reads this file')."""
    wanted = real_path(path)
    return [layer for layer in layers if layer.backing_path == wanted]


def serves(layers: list[Layer], source: str) -> bool:
    """True when the top layer is a live (not replaced) mount of SOURCE."""
    return bool(layers) and not layers[-1].deleted and bool(layers_reading(layers[-1:], source))


# --- prepared steps: values decided under the lock, performed outside it ---


@record(frozen=True)
class MountStep:
    """Make NAME's stack serve SOURCE; first unmount the REPLACE stale layers nobody reads."""

    name: str
    source: str
    cached: bool
    replace: int
    below: int
    # What was checked: the image's fingerprint, and the cached copy's inode (0: unknown).
    fingerprint: Fingerprint | None = None
    inode: int = 0


@record(frozen=True)
class UnmountStep:
    """Remove layers of NAME: those reading PATH (an eviction), or all of them (PATH None).

    With DELETE, PATH (the cached copy) is deleted once no layer reads it; with LAZY, busy
    layers are detached (open files keep working).
    """

    name: str
    path: str | None
    delete: bool
    lazy: bool = False


def prepare_mount(node: Node, state: NodeState, image: Image) -> MountStep | None:
    """The step that makes IMAGE's mountpoint serve its fresh source, None if it does."""
    source = fresh_source(node, state, image)
    layers = stack(node, image.name)
    if serves(layers, source):
        return None
    current = {real_path(image.path), real_path(source)}  # a stale cached copy is not current
    stale = any(layer.deleted or layer.backing_path not in current for layer in layers)
    replace = len(layers) if stale and not state.holders(image.name) else 0
    cached = source != image.path
    inode = state.cached[image.name].inode if cached else 0
    return MountStep(
        image.name, source, cached, replace, len(layers) - replace, image.fingerprint, inode
    )


def claim(node: Node, state: NodeState, name: str, kind: IntentKind, source: str = "") -> bool:
    """Record this process's intent on NAME; False when another process has one."""
    from scratch_stage.agent.recovery import process_start

    current = state.intents.get(name)
    pid = os.getpid()
    if current is not None and current.pid != pid:
        return False
    start = process_start(node.root, pid) or "?"
    state.intents[name] = Intent(kind, pid, start, node.clock(), source)
    return True


def release_claim(state: NodeState, name: str) -> None:
    """Drop this process's intent on NAME (after the action, done or failed)."""
    current = state.intents.get(name)
    if current is not None and current.pid == os.getpid():
        del state.intents[name]


def describe(step: MountStep) -> str:
    """What a mount step did, for events and the CLI."""
    kind = "cached" if step.cached else "slow"
    return (
        f"mounted {kind} copy over {step.below} layer(s)" if step.below else f"mounted {kind} copy"
    )


def perform_mount(node: Node, step: MountStep) -> Attach | None:
    """Carry out STEP (outside the lock), mounting exactly the file that was checked; the
    loop device's attach record, for `record_attach` when the intent is dropped.

    DatasetError if the image or copy is no longer the one decided on (swapped, rewritten),
    CommandError or NodeFault if the mount fails.
    """
    with _opened_source(node, step) as fd:
        for _ in range(step.replace):
            unmount_top(node, step.name)  # nobody reads the old version: start clean
        return mount(node, fd, prepare_mountpoint(node, step.name))


def record_attach(state: NodeState, attach: Attach | None) -> None:
    """Remember when a loop device was attached: the next heat sample counts it from then,
    and so do the read counters (a mark of this attachment, docs/design.md §9)."""
    if attach is not None:
        state.heat = state.heat.with_attach(attach)
        state.counters.attached(attach.loop, Mark(attach.diskseq, attach.backing, attach.sectors))


def prepare_mountpoint(node: Node, name: str) -> str:
    """Create NAME's mountpoint; for a restricted dataset, behind a gate only its groups pass.

    Jobs always read <mountdir>/<name>. An open dataset is mounted there. A dataset with
    `access:` groups is mounted at <mountdir>/.access/<name>/mnt, where .access is 0711 and
    <name> is 0750 root:<first group> with a POSIX ACL entry for each further group (0700
    if none of its groups exists); <mountdir>/<name> is a symlink to it. Another user gets
    EACCES on the data, whoever holds it (docs/security.md). NodeFault if impossible.
    """
    target = node.mountpoint(name)
    link = os.path.join(node.mountdir, name)
    groups = node.config.access.get(name)
    try:
        if groups is None:
            if os.path.islink(link):
                os.unlink(link)  # restricted before, open now
            os.makedirs(target, mode=0o755, exist_ok=True)
            return target
        from scratch_stage.host.catalog import group_ids

        gids = sorted(group_ids(groups))
        gates = os.path.join(node.mountdir, ACCESS_DIR)
        os.makedirs(gates, mode=0o711, exist_ok=True)
        os.chmod(gates, 0o711)
        gate = os.path.join(gates, name)
        os.makedirs(gate, mode=0o700, exist_ok=True)
        os.chown(gate, os.geteuid(), gids[0] if gids else os.getegid())
        os.chmod(gate, 0o750 if gids else 0o700)
        set_group_acl(gate, gids[1:])
        os.makedirs(target, mode=0o755, exist_ok=True)
        _point_link(link, restricted_mount(name))
    except OSError as e:
        raise NodeFault(f"cannot prepare the mountpoint of {name}: {e.strerror or e}") from None
    return target


def _point_link(link: str, relative: str) -> None:
    """Make LINK a symlink to RELATIVE (atomically); an empty directory there is replaced."""
    if os.path.islink(link) and os.readlink(link) == relative:
        return
    if os.path.isdir(link) and not os.path.islink(link):
        os.rmdir(link)  # an unmounted dataset of the open layout; OSError if still mounted
    directory, name = os.path.split(link)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(relative, tmp)
    os.replace(tmp, link)


_ACL_XATTR = "system.posix_acl_access"


def acl_bytes(gids: list[int]) -> bytes:
    """A POSIX access ACL (xattr format, version 2): owner rwx, group r-x, each of GIDS r-x,
    others nothing (pure)."""
    import struct

    undefined = 0xFFFFFFFF
    entries = [(0x01, 7, undefined), (0x04, 5, undefined)]
    entries += [(0x08, 5, gid) for gid in sorted(set(gids))]
    entries += [(0x10, 5, undefined), (0x20, 0, undefined)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def set_group_acl(path: str, gids: list[int]) -> None:
    """Give GIDS read and search access to directory PATH (an ACL), or remove the ACL."""
    if gids:
        os.setxattr(path, _ACL_XATTR, acl_bytes(gids))
        return
    try:
        os.removexattr(path, _ACL_XATTR)
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise


@contextlib.contextmanager
def _opened_source(node: Node, step: MountStep) -> Iterator[int]:
    """A descriptor of STEP's source, checked to be the file decided on under the lock."""
    if not step.cached:
        with opened_image(node.config.datadir, step.name, trust=node.trust) as opened:
            if step.fingerprint is not None and opened.image.fingerprint != step.fingerprint:
                raise DatasetError(f"{step.name}: image changed since it was checked; not mounted")
            target = opened.image.target
            access = node.config.access
            if target is not None and target in access and step.name not in access:
                # Its mountpoint would be open to every user of the node.
                raise DatasetError(
                    f"{step.name}: a link to the restricted dataset {target} must be "
                    "restricted itself (access:); not mounted"
                )
            yield opened.fd
        return
    try:
        fd = os.open(step.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise DatasetError(f"{step.name}: cached copy cannot be opened: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        size = step.fingerprint.size if step.fingerprint else st.st_size
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_size != size
            or (step.inode and st.st_ino != step.inode)
        ):
            raise DatasetError(f"{step.name}: cached copy is not the recorded file; not mounted")
        yield fd
    finally:
        os.close(fd)


def perform_unmount(node: Node, step: UnmountStep) -> int:
    """Carry out STEP (outside the lock); the layers removed. CommandError if it fails."""
    count = 0
    if step.path is None:
        while stack(node, step.name):
            unmount_top(node, step.name, lazy=step.lazy)
            count += 1
    else:
        while layers_reading(stack(node, step.name), step.path):
            unmount_top(node, step.name, lazy=step.lazy)
            count += 1
    if step.delete and step.path is not None:
        faults.point("before-unlink")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(step.path)
        faults.point("after-unlink")
    return count


def mount(node: Node, fd: int, target: str) -> Attach | None:
    """Mount the squashfs open as FD at the existing TARGET, through a loop device
    attached to that very descriptor; NodeFault if impossible. The device's attach record
    is read once mounted (the mount's own superblock reads are not a job's)."""
    from scratch_stage.host import runner  # lazy: the hot-path prolog runs no command
    from scratch_stage.host.loopdev import attached

    config = node.config
    with attached(fd) as device:
        faults.point("before-mount")
        runner.run(
            runner.build_mount_argv(config.mount_command, device, target),
            timeout=config.command_timeout,
        )
        faults.point("after-mount")
        attach = read_attach(node.root, device, node.clock())
    log.info("mounted %s (%s) at %s", device, os.readlink(f"/proc/self/fd/{fd}"), target)
    return attach


def unmount_top(node: Node, name: str, *, lazy: bool = False) -> None:
    """Unmount the top layer at NAME's mountpoint, detaching it lazily if it is busy."""
    from scratch_stage.host import runner

    config = node.config
    target = node.mountpoint(name)
    faults.point("before-umount")
    try:
        runner.run(
            runner.build_umount_argv(config.umount_command, target, lazy=lazy),
            timeout=config.command_timeout,
        )
    except CommandError as first:
        if lazy:
            raise
        log.warning("unmount of %s failed (%s); detaching lazily", target, first)
        runner.run(
            runner.build_umount_argv(config.umount_command, target, lazy=True),
            timeout=config.command_timeout,
        )
    faults.point("after-umount")
    log.info("unmounted top layer at %s", target)
