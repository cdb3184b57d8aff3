"""Staging: copy an image into the cache, verify it, then mount it over the slow one."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Protocol

from scratch_stage.agent.node import Node
from scratch_stage.agent.recovery import process_start
from scratch_stage.core.errors import Interrupted, NoRoomYet, StagingError
from scratch_stage.core.layout import partial_name
from scratch_stage.host import faults, interrupts
from scratch_stage.host.catalog import (
    Fingerprint,
    Image,
    check_squashfs_header,
    lookup_image,
    read_header,
)
from scratch_stage.host.logger import get_logger
from scratch_stage.host.state import CachedCopy, Copy, Failure, NodeState

if TYPE_CHECKING:
    from scratch_stage.agent.coop import Seeder
    from scratch_stage.agent.mounts import MountStep

log = get_logger(__name__)

Progress = Callable[[int, int], None]
# Dirty pages are written back and dropped every window, so a copy never floods the cache.
# Each window's writeback starts as soon as it is written and is waited for one window
# later, so reading the next window overlaps writing this one (bench/staging_throughput.py:
# 16 MiB pipelined ~1.35x faster than 64 MiB with a blocking fdatasync per window).
_WRITEBACK_WINDOW = 16 * 1024 * 1024
# sync_file_range(2) flags: start writeback / wait until the range is on disk.
_SYNC_START = 2  # SYNC_FILE_RANGE_WRITE
_SYNC_WAIT = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER
_POLL_SECONDS = 0.2
_BACKOFF_FIRST = 60.0
_BACKOFF_MAX = 86400.0


@dataclass(frozen=True)
class Staged:
    """What `stage` did: COPIED (False: a fresh copy was there already) and the MOUNT it made
    (None: the copy already served the mountpoint, or another process acts on the stack)."""

    name: str
    copied: bool
    mount: MountStep | None = None


def stage(
    node: Node, name: str, *, deadline: float | None = None, progress: Progress | None = None
) -> Staged:
    """Make NAME cached and mounted over; what was done. StagingError if it cannot be.

    DEADLINE is on the monotonic clock. A copy waits for another process's copy of the same
    image (reaping it if that process died) and is interrupted cleanly by SIGTERM.
    """
    image = lookup_image(node.config.datadir, name, trust=node.trust)
    while True:
        try:
            status = _reserve(node, image)
        except NoRoomYet:
            raise  # nothing failed: no backoff, the next pass retries
        except StagingError as e:
            _record_failure(node, name, str(e))
            raise
        if status == "reserved":
            break
        if status == "cached":
            return _commit(node, image, copied=False)
        _wait_for_other_copy(node, name, deadline)
    partial = Path(node.partial_dir) / partial_name(name, os.getpid())
    started = time.monotonic()
    progress = _with_progress_events(node, name, progress)
    final = Path(node.cached_path(name))
    seeder = None
    try:
        if node.config.coop.enabled:
            from scratch_stage.agent.coop import coop_copy

            seeder = coop_copy(node, image, partial, final, deadline=deadline, progress=progress)
        else:
            copy_image(image, partial, final, node=node, deadline=deadline, progress=progress)
    except BaseException as e:
        _abandon(node, name, partial, e)
        raise
    elapsed = time.monotonic() - started
    node.events.emit("stage-done", name, bytes=image.size, seconds=round(elapsed, 3))
    try:
        staged = _commit(node, image, copied=True, seconds=elapsed)
    except BaseException:
        if seeder is not None:
            seeder.close()
        raise
    if seeder is not None:
        _serve_peers(node, name, seeder, deadline)
    return staged


def _serve_peers(node: Node, name: str, seeder: Seeder, deadline: float | None) -> None:
    """Serve the new copy to the peers still fetching it (never a failure of the stage)."""
    seconds = node.config.coop.seed_seconds
    if deadline is not None:  # a prolog waiting for its copy does not wait for others too
        seconds = min(seconds, max(deadline - time.monotonic(), 0.0))
    try:
        served = seeder.linger(seconds)
    except Exception as e:  # an engine error after our copy is mounted costs only peers
        log.warning("%s: serving peers stopped: %s", name, e)
        return
    if served:
        node.events.emit("coop-served", name, bytes=served)


def _with_progress_events(node: Node, name: str, progress: Progress | None) -> Progress:
    """PROGRESS, plus a stage-progress event at each quarter of the copy."""
    quarters = [0]

    def report(done: int, total: int) -> None:
        quarter = 4 * done // max(total, 1)
        if 0 < quarter < 4 and quarter > quarters[0]:
            quarters[0] = quarter
            node.events.emit("stage-progress", name, done=done, total=total)
        if progress is not None:
            progress(done, total)

    return report


Reservation = Literal["cached", "busy", "reserved"]


def _reserve(node: Node, image: Image) -> Reservation:
    """Whether IMAGE is cached, being copied by another process, or now ours to copy."""
    from scratch_stage.agent.mounts import fresh_copy

    with node.store.transaction() as state:
        if fresh_copy(node, state, image):
            return "cached"
        if image.name in state.staging or image.name in state.intents:
            return "busy"
        _check_fits(node, state, image)
        pid = os.getpid()
        start = process_start(node.root, pid) or "?"
        state.staging[image.name] = Copy(pid, start, image.fingerprint, node.clock())
        state.counters.add(image.name, "copies_started")
    node.events.emit("stage-start", image.name, bytes=image.size, pid=os.getpid())
    return "reserved"


def _check_fits(node: Node, state: NodeState, image: Image) -> None:
    """StagingError unless IMAGE fits the budget and the filesystem's real free space."""
    from scratch_stage.agent.space import FREE_MARGIN, free_bytes, retired_bytes

    capacity = node.capacity_bytes()
    # A stale copy still on disk (or deleted but mounted) occupies it during the copy.
    reserved, retired = state.reserved_bytes(), retired_bytes(node)
    used = reserved + retired
    if used + image.size > capacity and reserved + image.size <= capacity:
        raise NoRoomYet(
            f"{image.name} ({image.size} bytes) does not fit yet: {used} of {capacity} bytes "
            f"used or in flight, {retired} of them by deleted copies still mounted (by a job, "
            "or in another mount namespace) until those end; retried by the next pass"
        )
    if used + image.size > capacity:
        raise StagingError(
            f"{image.name} ({image.size} bytes) does not fit: {used} of {capacity} bytes "
            "used or in flight; purge something first"
        )
    free = free_bytes(node) - sum(c.size for c in state.staging.values())
    if image.size + FREE_MARGIN > free:
        raise StagingError(
            f"{image.name} ({image.size} bytes) does not fit on the cache filesystem: "
            f"{max(free, 0)} bytes free (capacity is larger than the disk?)"
        )


def _wait_for_other_copy(node: Node, name: str, deadline: float | None) -> None:
    """Sleep until no other copy of NAME is in flight; StagingError at DEADLINE.

    A copier that died is noticed here (pid and start time) and reaped under the lock.
    """
    from scratch_stage.agent.recovery import is_alive

    log.info("waiting for the copy of %s already in flight", name)
    while True:
        state = node.store.read()
        actor = state.staging.get(name) or state.intents.get(name)
        if actor is None:
            return
        if not is_alive(node.root, actor.pid, actor.pid_start):
            with node.store.transaction():
                pass  # loading under the lock reconciles: the dead copier is reaped
            continue
        interrupts.check()
        if deadline is not None and time.monotonic() >= deadline:
            raise StagingError(f"{name}: copy by another process still in flight at the deadline")
        time.sleep(_POLL_SECONDS)


def _abandon(node: Node, name: str, partial: Path, error: BaseException) -> None:
    with contextlib.suppress(OSError):
        os.unlink(partial)
    interrupted = isinstance(error, (Interrupted, KeyboardInterrupt, SystemExit))
    reason = str(error) or type(error).__name__
    with node.store.transaction() as state:
        copy = state.staging.get(name)
        if copy is not None and copy.pid == os.getpid():
            del state.staging[name]
        if not interrupted:
            state.failures[name] = next_failure(state.failures.get(name), reason, node.clock())
            state.counters.add(name, "copies_failed")
    node.events.emit("stage-failed", name, reason=reason)


def _record_failure(node: Node, name: str, reason: str) -> None:
    with node.store.transaction() as state:
        state.failures[name] = next_failure(state.failures.get(name), reason, node.clock())
        state.counters.add(name, "copies_failed")
    node.events.emit("stage-failed", name, reason=reason)


def next_failure(previous: Failure | None, reason: str, now: float) -> Failure:
    """The backoff after one more failed copy: 1 min, doubling, at most 1 day."""
    count = (previous.count if previous else 0) + 1
    delay = min(_BACKOFF_FIRST * 2 ** (count - 1), _BACKOFF_MAX)
    return Failure(count, now + delay, reason[:200])


def _commit(node: Node, image: Image, *, copied: bool, seconds: float = 0.0) -> Staged:
    """Record the verified copy, then mount it over (outside the lock); what was done."""
    from scratch_stage.agent.mounts import (
        claim,
        describe,
        perform_mount,
        prepare_mount,
        record_attach,
        release_claim,
    )

    with node.store.transaction() as state:
        if copied:
            state.staging.pop(image.name, None)
            inode = os.stat(node.cached_path(image.name)).st_ino
            state.cached[image.name] = CachedCopy(image.fingerprint, node.clock(), inode)
            state.failures.pop(image.name, None)
            state.counters.add(image.name, "copies_finished")
            state.counters.add(image.name, "copied_bytes", image.size)
            state.counters.add(image.name, "copy_seconds", round(seconds, 3))
        step = prepare_mount(node, state, image)
        if step is not None and not claim(node, state, image.name, "mount", str(step.source)):
            step = None  # another process is acting on the stack; the next pass mounts it
    if step is not None:
        attach = None
        try:
            attach = perform_mount(node, step)
        finally:
            with node.store.transaction() as state:
                release_claim(state, image.name)
                record_attach(state, attach)
                if not state.holders(image.name):
                    state.last_used.setdefault(image.name, node.clock())
        node.events.emit("mount", image.name, detail=describe(step))
    return Staged(image.name, copied, step)


class Hasher(Protocol):
    """What `copy_image` feeds the bytes it reads: hashlib's sha256, or the coop PieceHasher."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def copy_image(
    image: Image, partial: Path, final: Path, *, node: Node,
    deadline: float | None = None, progress: Progress | None = None,
    hasher: Hasher | None = None, before_rename: Callable[[str], None] | None = None,
) -> None:  # fmt: skip
    """Copy IMAGE to PARTIAL, verify it, move it to FINAL; PARTIAL removed on any failure.

    HASHER (default: a sha256 with `verify: sha256`) is fed every byte read from the image,
    and the copy on disk is re-read and must have the same sha256; BEFORE_RENAME is given
    that sha256 when the copy is verified (it may refuse it with StagingError).
    """
    os.makedirs(partial.parent, mode=0o700, exist_ok=True)
    if hasher is None and node.config.verify == "sha256":
        hasher = hashlib.sha256()
    try:
        digest = _copy_bytes(image, partial, node, deadline, progress, hasher)
        _verify(image, partial, digest)
        if before_rename is not None and digest is not None:
            before_rename(digest)
        os.utime(partial, ns=(image.fingerprint.mtime_ns, image.fingerprint.mtime_ns))
        faults.point("before-rename")
        os.replace(partial, final)
        _fsync_dir(final.parent)
        faults.point("after-rename")
    except OSError as e:
        raise StagingError(f"copy of {image.name} failed: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _copy_bytes(
    image: Image, partial: Path, node: Node, deadline: float | None, progress: Progress | None,
    hasher: Hasher | None,
) -> str | None:  # fmt: skip
    """Copy chunk by chunk, dropping pages as it goes; the sha256 of what was read if asked."""
    chunk = node.config.chunk_size
    with _open_pair(Path(image.path), partial) as (src, dst):
        if Fingerprint.of(os.fstat(src)) != image.fingerprint:
            raise StagingError(f"{image.name}: image changed since it was checked; not copied")
        os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        done = flushed = 0
        in_flight: tuple[int, int] | None = None  # the window being written back
        started = time.monotonic()
        while done < image.size:
            interrupts.check()  # a stop request abandons the copy here, cleanly
            if deadline is not None and time.monotonic() >= deadline:
                raise StagingError(f"{image.name}: staging budget ran out")
            n = _copy_chunk(src, dst, done, min(chunk, image.size - done), hasher)
            if n == 0:
                raise StagingError(f"{image.name}: image shrank while copying")
            done += n
            if done - flushed >= _WRITEBACK_WINDOW or done == image.size:
                _sync_range(dst, flushed, done, _SYNC_START)
                if in_flight:
                    _drop_pages(src, dst, *in_flight)
                in_flight, flushed = (flushed, done), done
            if progress:
                progress(done, image.size)
            _throttle(node.config.bandwidth, done, started)
        if in_flight:
            _drop_pages(src, dst, *in_flight)
    return hasher.hexdigest() if hasher else None


def _throttle(bandwidth: int, done: int, started: float) -> None:
    """Sleep so that DONE bytes since STARTED stay within BANDWIDTH bytes/s (0: no cap)."""
    if bandwidth > 0:
        ahead = done / bandwidth - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


def _copy_chunk(src: int, dst: int, offset: int, length: int, hasher: Hasher | None) -> int:
    if hasher is None:
        # In-kernel copy: no user-space buffer on the hot path.
        return os.sendfile(dst, src, offset, length)
    data = os.pread(src, length, offset)
    hasher.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]
    return len(data)


def _drop_pages(src: int, dst: int, start: int, end: int) -> None:
    """Write back and evict the copied range of both files from the page cache."""
    if not _sync_range(dst, start, end, _SYNC_WAIT):
        os.fdatasync(dst)
    os.posix_fadvise(dst, start, end - start, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(src, start, end - start, os.POSIX_FADV_DONTNEED)


def _sync_range(fd: int, start: int, end: int, flags: int) -> bool:
    """sync_file_range(2) on FD; False when it is unavailable or failed (fall back to fsync).

    It only schedules or waits for the writeback of data pages: durability still comes from
    the fsync before the copy is verified and renamed.
    """
    call = _sync_file_range()
    return call is not None and call(fd, start, end - start, flags) == 0


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux only; not wrapped by the os module), or None."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


@contextlib.contextmanager
def _open_pair(src_path: Path, dst_path: Path) -> Iterator[tuple[int, int]]:
    src = os.open(src_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        # Root-only: a restricted dataset's copy must not be readable by other users.
        dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            yield src, dst
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _verify(image: Image, partial: Path, digest: str | None) -> None:
    """The copy has the image's size and header (and hash), and the image did not change."""
    if Fingerprint.of(os.stat(image.path)) != image.fingerprint:
        raise StagingError(f"{image.name}: image changed while copying; copy discarded")
    size = os.stat(partial).st_size
    if size != image.size:
        raise StagingError(f"{image.name}: copy has {size} bytes, image {image.size}")
    problem = check_squashfs_header(read_header(partial), size)
    if problem:
        raise StagingError(f"{image.name}: copy is bad: {problem}")
    if digest is not None and _sha256_uncached(partial) != digest:
        raise StagingError(f"{image.name}: copy's sha256 differs from the image's")


def _sha256_uncached(path: Path) -> str:
    """sha256 of PATH as stored on disk (its pages are dropped first)."""
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        done = dropped = 0
        while data := os.read(fd, 1 << 20):
            hasher.update(data)
            done += len(data)
            dropped = _drop_read_pages(fd, dropped, done)  # the re-read must not flood the cache
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return hasher.hexdigest()


def _drop_read_pages(fd: int, dropped: int, done: int) -> int:
    """Drop FD's pages from DROPPED to DONE once a writeback window was read; the new mark."""
    if done - dropped >= _WRITEBACK_WINDOW:
        os.posix_fadvise(fd, dropped, done - dropped, os.POSIX_FADV_DONTNEED)
        return done
    return dropped


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
