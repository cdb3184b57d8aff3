"""Cooperative staging: one image onto many nodes, read from shared storage about once.

`coop_copy` replaces the stager's plain copy when `coop.enabled` (docs/design.md,
"Cooperative staging"). For one image version, every node that wants it meets in the
coordination entry on shared storage (`host/lease.py`):

1. If the version's digest (`meta.json`) is published and peers are registered, fetch the
   image from them with the engine (`host/torrent.py`, each piece checked against its hash).
   A transfer that makes no progress for `stall_seconds` is abandoned.
2. Otherwise (or after a failed transfer), take a reader lease and copy from datadir like an
   independent node, hashing pieces as the bytes go by (no extra read of shared storage);
   the first node to finish publishes the digest. Without a lease, wait and look again.
3. Every copy, however made, is verified before the stager mounts it: size, squashfs
   header, and the sha256 of the copy on disk against the published digest (a mismatch is
   a failed copy, with the stager's backoff).
4. After the copy is mounted, the node serves it to the peers still fetching it (`linger`),
   at most `seed_seconds`.

Without libtorrent every node copies from datadir, still at most `readers` at once.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratch_stage.agent.node import Node
from scratch_stage.agent.views import Prepared
from scratch_stage.core.errors import StagingError
from scratch_stage.host import faults, interrupts, torrent
from scratch_stage.host.catalog import (
    Fingerprint,
    Image,
    check_squashfs_header,
    lookup_image,
    read_header,
)
from scratch_stage.host.lease import (
    COOP_DIRNAME,
    CoopUnavailable,
    Entry,
    Lease,
    Peer,
    entry_key,
    open_entry,
)
from scratch_stage.host.logger import get_logger

log = get_logger(__name__)

_POLL = 0.2
_HEARTBEAT = 2.0
_PEER_ALIVE = 5 * _HEARTBEAT  # a registration older than this is a node gone
_STATS_TICK = 1.2  # libtorrent updates a torrent's transfer counters every second
_AHEAD = 8  # pieces handed to the engine and not yet written and checked, at most
_ENGINE_SECONDS = 60.0  # no piece written and checked for this long: the engine is stuck
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def coop_dir(node: Node) -> str:
    return node.config.coop.dir or os.path.join(node.config.datadir, COOP_DIRNAME)


class Seeder:
    """This node's engine serving its verified copy to the peers still fetching it."""

    def __init__(self, node: Node, entry: Entry, session: torrent.Session, host: str) -> None:
        self.node = node
        self.entry = entry
        self.session = session
        self.host = host

    def linger(self, seconds: float) -> int:
        """Serve until no registered peer is still fetching, at most SECONDS; bytes served."""
        me = self.node.config.node
        stale = max(self.node.config.coop.stall_seconds, 3 * _HEARTBEAT)
        end = time.monotonic() + seconds
        beat = 0.0
        try:
            while time.monotonic() < end:
                interrupts.check()
                now = time.time()
                if time.monotonic() - beat >= _HEARTBEAT:
                    beat = time.monotonic()
                    self.entry.register_peer(Peer(me, self.host, self.session.port, True, now))
                peers = [p for p in self.entry.peers() if p.node != me]
                waiting = [p for p in peers if not p.done and now - p.time < stale]
                if not waiting:
                    break
                self.session.connect((p.host, p.port) for p in waiting)
                time.sleep(_POLL)
        finally:
            # libtorrent adds bytes sent to its counters once a second: read them after
            # the next tick, or the last second's pieces (often all of them) are missed.
            served = self.session.uploaded()
            settle = time.monotonic() + _STATS_TICK
            while time.monotonic() < settle:
                time.sleep(_POLL)
                served = max(served, self.session.uploaded())
            self.close()
        return served

    def close(self) -> None:
        self.entry.unregister_peer(self.node.config.node)
        self.session.close()


def coop_copy(
    node: Node, image: Image, partial: Path, final: Path, *,
    deadline: float | None, progress: Any,
) -> Seeder | None:  # fmt: skip
    """Make FINAL a verified copy of IMAGE (through PARTIAL); the seeder to linger, if any."""
    from scratch_stage.agent.stager import copy_image

    cfg = node.config.coop
    try:
        entry = open_entry(
            coop_dir(node), entry_key(image.name, image.fingerprint), node.trust,
            cfg.lease_seconds,
        )  # fmt: skip
    except CoopUnavailable as e:
        _warn_once("dir", "cooperative staging off: %s; copying from datadir independently", e)
        copy_image(image, partial, final, node=node, deadline=deadline, progress=progress)
        return None
    lt = torrent.load()
    if lt is None:
        _warn_once(
            "engine", "cooperative staging: libtorrent is not installed; copying from "
            "datadir, %d node(s) at a time", cfg.readers,
        )  # fmt: skip
    host = cfg.host or node.config.node
    session = None
    if lt is not None:
        try:
            session = torrent.Session(lt, host, cfg.port, node.config.bandwidth)
        except StagingError as e:
            _warn_once("listen", "cooperative staging: %s; copying from datadir", e)
    try:
        made = _make_copy(node, entry, session, host, image, partial, final, deadline, progress)
    except BaseException:
        if session is not None:
            entry.unregister_peer(node.config.node)
            session.close()
        raise
    try:
        meta = entry.read_meta() if session is not None and made.serve else None
        if session is None or meta is None:
            if session is not None:
                entry.unregister_peer(node.config.node)
                session.close()
            return None
        seeder = Seeder(node, entry, session, host)
        try:
            session.add(_torrent_of(meta), str(final), seeding=True)
            entry.register_peer(Peer(node.config.node, host, session.port, True, time.time()))
        except BaseException:
            seeder.close()
            raise
        return seeder
    finally:
        # A reader keeps its lease until it serves as a done peer: a node looking in between
        # would see the digest, no lease held and no peer with the image, and read datadir.
        if made.lease is not None:
            entry.release(made.lease)


@dataclass(frozen=True)
class _Made:
    """How the copy was made: SERVE it to peers (it matches the digest); LEASE still held."""

    serve: bool
    lease: Lease | None = None


def _make_copy(
    node: Node, entry: Entry, session: torrent.Session | None, host: str, image: Image,
    partial: Path, final: Path, deadline: float | None, progress: Any,
) -> _Made:  # fmt: skip
    cfg = node.config.coop
    me = node.config.node
    tried_peers = False
    waited = False
    beat = 0.0
    while True:
        interrupts.check()
        now = time.monotonic()
        if session is not None and now - beat >= _HEARTBEAT:
            # Wanting it: whoever has the copy keeps serving while we are registered.
            beat = now
            entry.register_peer(Peer(me, host, session.port, False, time.time()))
        if deadline is not None and now >= deadline:
            raise StagingError(f"{image.name}: staging budget ran out waiting for a reader lease")
        meta = entry.read_meta()
        refused = meta is not None and entry.meta_refused()
        if meta is not None and session is not None and not tried_peers and not refused:
            peers = live_peers(entry, me)
            reading = entry.holders() > 0
            if any(p.done for p in peers) or (reading and peers):
                if _fetch(
                    node, entry, session, host, image, meta, partial, final, deadline, progress
                ):  # fmt: skip
                    return _Made(serve=True)
                tried_peers = True  # the next fallback is datadir, under the lease
                continue
            if reading:  # its reader registers as a peer in a moment
                time.sleep(_POLL)
                continue
            # Else a digest prepared ahead (or left by peers now gone): read datadir now,
            # passing each piece on as it is read.
        lease = entry.try_acquire(cfg.readers, me)
        if lease is None:
            if not waited:
                waited = True
                log.info("%s: waiting for a reader lease or a peer's copy", image.name)
            time.sleep(_POLL)
            continue
        if meta is None and session is not None and entry.read_meta():
            # Published between our look and the lease (by the reader before us): fetch it.
            entry.release(lease)
            continue
        try:
            register = None if session is None else _registrar(entry, me, host, session.port)
            if meta is not None and session is not None and not refused:
                assert register is not None
                if _pipelined_copy(
                    node, entry, lease, session, image, meta, partial, final, deadline,
                    progress, register,
                ):  # fmt: skip
                    return _Made(serve=True, lease=lease)
                refused = True
            if refused:
                _copy_alone(node, entry, lease, image, partial, final, deadline, progress)
                entry.release(lease)
                return _Made(serve=False)
            _copy_under_lease(
                node, entry, lease, image, partial, final, deadline, progress, register
            )  # fmt: skip
            return _Made(serve=True, lease=lease)
        except BaseException:
            entry.release(lease)
            raise


def live_peers(entry: Entry, me: str, now: float | None = None) -> list[Peer]:
    """The other nodes registered for this version and heard from lately (every node
    renews its registration every heartbeat; a peer that died is skipped at once)."""
    now = time.time() if now is None else now
    return [p for p in entry.peers() if p.node != me and now - p.time < _PEER_ALIVE]


def _registrar(entry: Entry, me: str, host: str, port: int) -> Any:
    """Renews this node's registration as a peer still fetching (its engine at HOST:PORT)."""

    def register() -> None:
        entry.register_peer(Peer(me, host, port, False, time.time()))

    return register


def _renewing(
    node: Node, entry: Entry, lease: Lease, image: Image, progress: Any,
    register: Any = None,
) -> Any:  # fmt: skip
    """A progress callback that renews LEASE every third of its time (and calls REGISTER,
    this node's peer registration, every heartbeat), then PROGRESS."""
    every = node.config.coop.lease_seconds / 3
    renewed = [time.monotonic(), time.monotonic()]

    def renewing(done: int, total: int) -> None:
        now = time.monotonic()
        if now - renewed[0] >= every:
            renewed[0] = now
            if not entry.renew(lease):
                log.warning("%s: reader lease lost (renewed too late)", image.name)
        if register is not None and now - renewed[1] >= _HEARTBEAT:
            renewed[1] = now
            register()
        if progress is not None:
            progress(done, total)

    return renewing


def _copy_under_lease(
    node: Node, entry: Entry, lease: Lease, image: Image, partial: Path, final: Path,
    deadline: float | None, progress: Any, register: Any = None,
) -> None:  # fmt: skip
    """Copy IMAGE from datadir holding LEASE (renewed as the copy goes), hashing its pieces."""
    from scratch_stage.agent.stager import copy_image

    node.events.emit("coop-lease", image.name, slot=f"{lease.slot}.{lease.generation}")
    renewing = _renewing(node, entry, lease, image, progress, register)

    hasher = torrent.PieceHasher(image.size)
    copy_image(
        image, partial, final, node=node, deadline=deadline, progress=renewing, hasher=hasher,
        before_rename=lambda digest: _publish(entry, image, hasher, digest, final),
    )  # fmt: skip


def _copy_alone(
    node: Node, entry: Entry, lease: Lease, image: Image, partial: Path, final: Path,
    deadline: float | None, progress: Any,
) -> None:  # fmt: skip
    """The version's digest is refused: copy IMAGE from datadir like an independent node
    (verified against what it read), still holding LEASE; nobody is served this copy."""
    from scratch_stage.agent.stager import copy_image

    node.events.emit("coop-lease", image.name, slot=f"{lease.slot}.{lease.generation}")
    renewing = _renewing(node, entry, lease, image, progress)
    copy_image(image, partial, final, node=node, deadline=deadline, progress=renewing)


def _pipelined_copy(
    node: Node, entry: Entry, lease: Lease, session: torrent.Session, image: Image,
    meta: dict[str, Any], partial: Path, final: Path, deadline: float | None, progress: Any,
    register: Any,
) -> bool:  # fmt: skip
    """Copy IMAGE from datadir under LEASE, handing each piece to the engine as it is read,
    so that peers fetch it (and pass it on) while shared storage is still being read.

    The engine writes PARTIAL and checks every piece against META's hashes before it keeps
    or serves it; the whole file's sha256 is computed from the bytes read and must be
    META's. False, with nothing kept or served, if what was read does not match META (a
    stale or forged digest): the caller copies on its own.
    """
    from scratch_stage.agent.stager import _fsync_dir

    body = _torrent_of(meta)
    try:
        size, length, count = torrent.layout(session.lt, body)
    except ValueError as e:
        return _refuse(node, entry, image, f"digest's torrent unusable: {e}")
    if size != image.size or meta.get("size") != image.size or -(-size // length) != count:
        return _refuse(node, entry, image, f"digest is of {size} bytes, image {image.size}")
    node.events.emit(
        "coop-lease", image.name, slot=f"{lease.slot}.{lease.generation}", pipelined=True
    )  # fmt: skip
    renewing = _renewing(node, entry, lease, image, progress, register)
    os.makedirs(partial.parent, mode=0o700, exist_ok=True)
    # Root-only from the first byte: the engine writes into the file we created.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    kept = False
    started = time.monotonic()
    try:
        session.add(body, str(partial), seeding=False)
        register()  # peers may fetch from this node from now on
        whole = hashlib.sha256()
        pending: collections.deque[int] = collections.deque()
        buffer = bytearray()
        index = shared = 0
        for data, done in read_datadir(node, image, deadline):
            whole.update(data)
            buffer += data
            while len(buffer) >= length or (done == image.size and buffer):
                session.feed(index, bytes(buffer[:length]))
                del buffer[:length]
                pending.append(index)
                index += 1
            if not _settle(session, pending, _AHEAD, image, deadline):
                return _refuse(node, entry, image, "a piece read from datadir fails its hash")
            if done < image.size:  # (a complete torrent no longer counts its peers')
                shared = max(shared, session.peer_pieces())
            renewing(done, image.size)
        if not _settle(session, pending, 0, image, deadline):
            return _refuse(node, entry, image, "a piece read from datadir fails its hash")
        if whole.hexdigest() != meta.get("sha256"):
            return _refuse(node, entry, image, "sha256 of what was read differs from the digest")
        node.events.emit(
            "coop-read", image.name, bytes=image.size,
            seconds=round(time.monotonic() - started, 3), peer_pieces=shared,
        )  # fmt: skip
        flushed = session.flush()
        session.remove()  # until it serves its copy (`coop_copy`), its peers wait for it
        faults.point("after-coop-read")
        if not flushed:
            raise StagingError(f"{image.name}: the peer engine did not confirm its writes")
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        on_disk = os.stat(partial).st_size
        problem = check_squashfs_header(read_header(partial), on_disk)
        if on_disk != image.size or problem:
            raise StagingError(f"{image.name}: copy is bad: {problem or f'{on_disk} bytes'}")
        os.utime(partial, ns=(image.fingerprint.mtime_ns, image.fingerprint.mtime_ns))
        os.replace(partial, final)
        _fsync_dir(final.parent)
        kept = True
        return True
    finally:
        if not kept:
            session.remove()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)


def read_datadir(node: Node, image: Image, deadline: float | None) -> Iterator[tuple[bytes, int]]:
    """IMAGE's bytes from datadir, chunk by chunk, with the bytes read so far: its version
    checked before and after, its pages dropped behind the read, the staging bandwidth
    cap applied between chunks (after the caller has used each one)."""
    from scratch_stage.agent.stager import _drop_read_pages, _throttle

    fd = os.open(image.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if Fingerprint.of(os.fstat(fd)) != image.fingerprint:
            raise StagingError(f"{image.name}: image changed since it was checked; not read")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        started = time.monotonic()
        done = dropped = 0
        chunk = node.config.chunk_size
        while done < image.size:
            interrupts.check()
            if deadline is not None and time.monotonic() >= deadline:
                raise StagingError(f"{image.name}: staging budget ran out")
            data = os.pread(fd, min(chunk, image.size - done), done)
            if not data:
                raise StagingError(f"{image.name}: image shrank while it was read")
            done += len(data)
            dropped = _drop_read_pages(fd, dropped, done)
            yield data, done
            _throttle(node.config.bandwidth, done, started)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if Fingerprint.of(os.fstat(fd)) != image.fingerprint:
            raise StagingError(f"{image.name}: image changed while it was read; not used")
    finally:
        os.close(fd)


def _settle(
    session: torrent.Session, pending: collections.deque[int], ahead: int, image: Image,
    deadline: float | None,
) -> bool:  # fmt: skip
    """Wait until at most AHEAD of the PENDING pieces are still being written and checked
    (pieces kept are taken off); False as soon as one failed its hash check."""
    last = time.monotonic()
    while True:
        if session.failed():
            return False
        while pending and session.had(pending[0]):
            pending.popleft()
            last = time.monotonic()
        if len(pending) <= ahead:
            return True
        interrupts.check()
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise StagingError(f"{image.name}: staging budget ran out")
        if now - last >= _ENGINE_SECONDS:
            raise StagingError(f"{image.name}: the peer engine stopped writing pieces")
        time.sleep(0.005)


def _refuse(node: Node, entry: Entry, image: Image, reason: str) -> bool:
    """The digest does not match what this node read: say so, mark it; False."""
    log.warning(
        "%s: the published digest does not match the image (%s); copying from datadir "
        "alone, serving nobody (remove %s to publish a new one)", image.name, reason,
        os.path.join(entry.path, "meta.json"),
    )  # fmt: skip
    node.events.emit("coop-digest-refused", image.name, reason=reason)
    entry.refuse_meta(reason)
    return False


def _publish(entry: Entry, image: Image, hasher: torrent.PieceHasher, digest: str,
             final: Path) -> None:  # fmt: skip
    """Publish this version's digest, or check the copy against the one already published."""
    meta = entry.read_meta()
    if meta is None:
        meta = entry.publish_meta(meta_of(image, hasher, final.name))
    if meta.get("sha256") != digest or meta.get("size") != image.size:
        raise StagingError(f"{image.name}: copy's sha256 differs from the published digest")


def meta_of(image: Image, hasher: torrent.PieceHasher, filename: str) -> dict[str, Any]:
    """The digest of IMAGE's version from HASHER (fed all its bytes): size, sha256,
    fingerprint and the torrent (with a fresh secret; empty without libtorrent)."""
    lt = torrent.load()
    pieces, digest = hasher.finish()
    body = b""
    if lt is not None:
        body = torrent.make_torrent(lt, filename, image.size, hasher.length, pieces)
    return {
        "name": image.name, "size": image.size, "sha256": digest,
        "fingerprint": image.fingerprint.to_json(),
        "torrent": base64.b64encode(body).decode(),
    }  # fmt: skip


def prepare(node: Node, name: str) -> Prepared:
    """Publish the digest of NAME's current version before any node needs it.

    One read of the image from datadir (pages dropped behind it, the staging bandwidth
    cap applied), none if the version's digest is there already. StagingError if the
    image changes while it is read, or without libtorrent (the digest would serve no peer).
    """
    image = lookup_image(node.config.datadir, name, trust=node.trust)
    lt = torrent.load()
    if lt is None:
        raise StagingError("coop prepare: libtorrent is not installed; no peer could use a digest")
    key = entry_key(image.name, image.fingerprint)
    try:
        entry = open_entry(coop_dir(node), key, node.trust, node.config.coop.lease_seconds)
    except CoopUnavailable as e:
        raise StagingError(f"coop prepare: {e}") from None
    if entry.read_meta() is not None:
        return Prepared(image.name, key, published=False)
    started = time.monotonic()
    hasher = torrent.PieceHasher(image.size)
    for data, _ in read_datadir(node, image, None):
        hasher.update(data)
    published = entry.publish_meta(meta_of(image, hasher, f"{image.name}.sqfs"))
    ours = published.get("sha256") == hasher.hexdigest()
    seconds = time.monotonic() - started
    node.events.emit(
        "coop-prepared", image.name, bytes=image.size, seconds=round(seconds, 3),
        published=ours,
    )  # fmt: skip
    return Prepared(image.name, key, published=ours, read=image.size, seconds=seconds)


def _torrent_of(meta: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(str(meta.get("torrent", "")), validate=True)
    except ValueError:
        return b""


def _fetch(
    node: Node, entry: Entry, session: torrent.Session, host: str, image: Image,
    meta: dict[str, Any], partial: Path, final: Path, deadline: float | None, progress: Any,
) -> bool:  # fmt: skip
    """Fetch IMAGE from peers into PARTIAL, verify it, move it to FINAL; False on failure.

    Pieces come as soon as any peer has them: from a reader of datadir while it reads
    (`_pipelined_copy`), or from other fetchers. No progress for `stall_seconds`, counted
    from the last piece and from the last time a reader was seen holding a live lease, or
    the digest refused by its reader, abandons the transfer.
    """
    from scratch_stage.agent.stager import _fsync_dir

    body = _torrent_of(meta)
    if not body or meta.get("size") != image.size:
        return False
    cfg = node.config.coop
    me = node.config.node
    os.makedirs(partial.parent, mode=0o700, exist_ok=True)
    # Root-only from the first byte: the engine writes into the file we created.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    started = time.monotonic()
    node.events.emit("coop-fetch", image.name, peers=len(entry.peers()))
    ok = False
    try:
        session.add(body, str(partial), seeding=False)
        best, best_at, beat, looked = -1, time.monotonic(), 0.0, 0.0
        # The stall clock runs from the last progress and the last time a reader was seen
        # holding a live lease, looked at every `watch` while no piece comes.
        held_at, held_look, watch = 0.0, 0.0, min(_HEARTBEAT, cfg.stall_seconds / 4)
        while True:
            interrupts.check()
            now = time.monotonic()
            done, complete, connected = session.progress()
            if now - beat >= _HEARTBEAT:
                beat = now
                entry.register_peer(Peer(me, host, session.port, False, time.time()))
                if entry.meta_refused():
                    log.warning("%s: the digest was refused; fetch abandoned", image.name)
                    return False
            if now - looked >= _HEARTBEAT or (connected == 0 and now - looked >= _POLL):
                # Until a peer answers (its engine may add the torrent a moment after the
                # digest is out), try every poll; then look for new peers now and then.
                looked = now
                session.connect((p.host, p.port) for p in entry.peers() if p.node != me)
            if complete:
                break
            if done > best:
                best, best_at = done, now
                if progress is not None and done > 0:
                    progress(done, image.size)
            # A reader of datadir holding a live lease is progress too: its next piece comes
            # at the shared-storage rate, however slow (a dead reader's lease expires). Its
            # last pieces may come only when it serves its copy, after the lease: the stall
            # is counted from when it was last seen held, not from the last piece.
            quiet = now - max(best_at, held_at)
            if quiet >= watch and now - held_look >= watch:
                held_look = now
                if entry.holders() > 0:
                    held_at, quiet = now, 0.0
            if quiet >= cfg.stall_seconds:
                log.warning(
                    "%s: peer transfer stalled at %d of %d bytes; falling back to datadir",
                    image.name, max(best, 0), image.size,
                )  # fmt: skip
                node.events.emit("coop-stalled", image.name, done=max(best, 0))
                return False
            if deadline is not None and now >= deadline:
                raise StagingError(f"{image.name}: staging budget ran out fetching from peers")
            time.sleep(_POLL)
        flushed = session.flush()
        session.remove()
        checking = time.monotonic()
        problem = _check_copy(image, partial, str(meta.get("sha256")))
        checked = time.monotonic() - checking
        if problem and not flushed:
            problem += " (the engine did not confirm its writes)"
        if problem:
            log.warning("%s: copy from peers refused: %s", image.name, problem)
            node.events.emit("coop-bad-copy", image.name, reason=problem)
            return False
        os.utime(partial, ns=(image.fingerprint.mtime_ns, image.fingerprint.mtime_ns))
        os.replace(partial, final)
        _fsync_dir(final.parent)
        ok = True
        node.events.emit(
            "coop-fetched", image.name, bytes=image.size,
            seconds=round(time.monotonic() - started, 3), check_seconds=round(checked, 3),
        )  # fmt: skip
        return True
    finally:
        session.remove()
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            # A partial file left behind: fetch again from scratch next time.
            entry.register_peer(Peer(me, host, session.port, False, 0.0))


def _check_copy(image: Image, path: Path, sha256: str) -> str | None:
    """Why the fetched copy at PATH is not IMAGE (size, header, sha256), or None."""
    from scratch_stage.agent.stager import _sha256_uncached

    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    size = os.stat(path).st_size
    if size != image.size:
        return f"{size} bytes, image {image.size}"
    problem = check_squashfs_header(read_header(path), size)
    if problem:
        return problem
    if _sha256_uncached(path) != sha256:
        return "sha256 differs from the published digest"
    return None
