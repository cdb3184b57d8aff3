"""Cluster-wide coordination files on shared storage: reader leases, peers, image digests.

Several nodes that want the same image at about the same time share one directory on the
shared filesystem (`coop.dir`, default `<datadir>/.scratch-stage-coop`), one entry per image
version (`entry_key`), with no coordination server:

- **Reader leases** limit how many nodes read one image version from shared storage at
  once (`coop.readers`). Slot `i` is a series of files `lease-<i>.<generation>`, each created
  with `link(2)` of a private temporary file: a name that already exists cannot be created
  twice, on a local filesystem, NFS (the link's result is double-checked by the temporary
  file's link count, the classic NFS recipe) and Lustre alike -- no `flock`. The highest
  generation of a slot is its holder, live while its mtime is younger than
  `coop.lease_seconds`; the holder renews by touching it (and notices a takeover: its token
  gone or a higher generation) and releases it by setting its mtime to 0. A holder that
  died stops renewing, and the slot is taken over by creating the next generation: two
  takers racing for a stale slot both link the same next name, and exactly one wins; the
  winner checks that it is the highest generation (else a newer holder exists: it backs
  off) and removes the older ones. Generations only grow, so a name is never reused
  while anyone could still act on it.
- **Peers**: `peers/<node>.json`, the address where a node's engine serves this version.
- **Digest**: `meta.json`, the image's sha256, size and piece hashes (a .torrent), written
  once per image version by the first node that read it or ahead by `coop prepare`,
  published with `link(2)` (the first writer wins) and never changed; `meta.refused` when a
  node's read of datadir did not match it.

Whoever can write this directory can block staging (fake leases) or steer it (fake peers
and digests), so it must be owned by a trusted owner and writable by nobody else, and every
file in it is read only if the same trust rule as for an image accepts it (`Trust`). A
directory that fails the rule is not used: the node stages independently, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import time

from scratch_stage.core.records import record
from scratch_stage.host.catalog import Fingerprint, Trust
from scratch_stage.host.state import write_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COOP_DIRNAME = ".scratch-stage-coop"
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_FILE = 16 * 1024 * 1024  # a meta file's torrent: about 20 bytes per piece


class CoopUnavailable(Exception):
    """The coordination directory cannot be used (one line, for the warning)."""


def entry_key(name: str, fingerprint: Fingerprint) -> str:
    """The directory name of one image version: its name and a hash of its fingerprint."""
    parts = [fingerprint.size, fingerprint.mtime_ns, fingerprint.inode, fingerprint.ctime_ns]
    digest = hashlib.sha256(json.dumps([name, *parts]).encode()).hexdigest()[:16]
    return f"{name}.{digest}"


def _dir_problem(st: os.stat_result, trust: Trust) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    return trust.file_problem(st)


def _ensure_dir(path: str, trust: Trust) -> None:
    """PATH exists as a directory only trusted owners can write; CoopUnavailable otherwise."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise CoopUnavailable(f"cannot create {path}: {e.strerror}") from None
    try:
        st = os.lstat(path)
    except OSError as e:
        raise CoopUnavailable(f"{path}: {e.strerror}") from None
    problem = _dir_problem(st, trust)
    if problem:
        raise CoopUnavailable(f"{path}: {problem}; not used")


def read_trusted(path: str, trust: Trust) -> bytes | None:
    """PATH's bytes if it is a regular file the trust rule accepts; None if it is missing.

    CoopUnavailable if it is there but not trusted (another user's file).
    """
    try:
        fd = os.open(path, _OPEN)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CoopUnavailable(f"{path}: a symlink; not used") from None
        raise CoopUnavailable(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CoopUnavailable(f"{path}: not a regular file; not used")
        problem = trust.file_problem(st, fd)
        if problem:
            raise CoopUnavailable(f"{path}: {problem}; not used")
        if st.st_size > _MAX_FILE:
            raise CoopUnavailable(f"{path}: {st.st_size} bytes, too large; not used")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_private(directory: str, prefix: str, data: bytes) -> str:
    """A new file in DIRECTORY with DATA (0600, fsync'd); its path."""
    path = os.path.join(directory, f"{prefix}.tmp-{secrets.token_hex(8)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def link_exclusive(source: str, target: str) -> bool:
    """Create TARGET as a hard link to SOURCE; False if TARGET exists already.

    On NFS a link whose reply was lost is retried by the client and reports EEXIST although
    it succeeded: SOURCE's link count (2) says whether the link is ours.
    """
    try:
        os.link(source, target, follow_symlinks=False)
        return True
    except FileExistsError:
        pass
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.EIO):
            raise
    try:
        return os.lstat(source).st_nlink == 2
    except OSError:
        return False


@record(frozen=True)
class Lease:
    """A held reader lease: slot, generation, file, and the token written in it."""

    slot: int
    generation: int
    path: str
    token: str


@record(frozen=True)
class Peer:
    """A node's engine serving one image version: its node name, address and port."""

    node: str
    host: str
    port: int
    done: bool
    time: float


class Entry:
    """One image version's coordination directory."""

    def __init__(self, path: str, trust: Trust, ttl: float) -> None:
        self.path = path
        self.trust = trust
        self.ttl = ttl

    # --- reader leases ---

    def _generations(self, slot: int) -> list[int]:
        prefix = f"lease-{slot}."
        found = []
        for filename in os.listdir(self.path):
            if filename.startswith(prefix) and filename[len(prefix) :].isdigit():
                found.append(int(filename[len(prefix) :]))
        return sorted(found)

    def _lease_path(self, slot: int, generation: int) -> str:
        return os.path.join(self.path, f"lease-{slot}.{generation}")

    def _expired(self, path: str, now: float) -> bool:
        """Whether the lease file at PATH is stale (or gone, or not ours to trust)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        if not stat.S_ISREG(st.st_mode) or self.trust.file_problem(st) is not None:
            # Not written by scratch-stage: it holds nothing, and is never taken over
            # (the next generation is created beside it).
            return True
        return st.st_mtime + self.ttl <= now

    def try_acquire(self, readers: int, node: str, now: float | None = None) -> Lease | None:
        """A reader lease in one of READERS slots, or None if every slot is held."""
        now = time.time() if now is None else now
        token = f"{node}:{os.getpid()}:{secrets.token_hex(8)}"
        body = json.dumps({"node": node, "pid": os.getpid(), "token": token}).encode()
        tmp = _write_private(self.path, "lease", body)
        try:
            for slot in range(readers):
                generations = self._generations(slot)
                top = generations[-1] if generations else -1
                if top >= 0 and not self._expired(self._lease_path(slot, top), now):
                    continue
                target = self._lease_path(slot, top + 1)
                if not link_exclusive(tmp, target):
                    continue
                if max(self._generations(slot)) != top + 1:
                    # A file we saw went because a newer holder cleaned it up: it wins.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(target)
                    continue
                for old in generations:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._lease_path(slot, old))
                return Lease(slot, top + 1, target, token)
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def holds(self, lease: Lease) -> bool:
        """Whether LEASE is ours and live (not expired, not released, not taken over)."""
        return self._owns(lease) and not self._expired(lease.path, time.time())

    def _owns(self, lease: Lease) -> bool:
        """Whether LEASE's file has our token and no newer generation exists."""
        try:
            data = read_trusted(lease.path, self.trust)
        except CoopUnavailable:
            return False
        if data is None or _token(data) != lease.token:
            return False
        return max(self._generations(lease.slot), default=-1) == lease.generation

    def renew(self, lease: Lease) -> bool:
        """Extend LEASE by another ttl; False if it was lost (expired and taken over)."""
        if not self._owns(lease):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.utime(lease.path)
        return self._owns(lease)

    def release(self, lease: Lease) -> None:
        """Give LEASE back: its file, if still ours, is marked expired (mtime 0).

        It stays as the slot's top generation, so generations only grow and the next
        taker's `link` of top + 1 is the one exclusive step; that taker removes it.
        """
        if self._owns(lease):
            with contextlib.suppress(FileNotFoundError):
                os.utime(lease.path, (0, 0))

    def holders(self, now: float | None = None) -> int:
        """How many slots are held by a live lease now (any number of slots)."""
        now = time.time() if now is None else now
        slots: dict[int, int] = {}
        for filename in os.listdir(self.path):
            head, _, generation = filename.partition(".")
            if head.startswith("lease-") and head[6:].isdigit() and generation.isdigit():
                slot = int(head[6:])
                slots[slot] = max(slots.get(slot, -1), int(generation))
        return sum(
            1 for slot, gen in slots.items() if not self._expired(self._lease_path(slot, gen), now)
        )

    # --- peers ---

    def register_peer(self, peer: Peer) -> None:
        """Publish (or update) this node's engine address for this image version."""
        directory = os.path.join(self.path, "peers")
        _ensure_dir(directory, self.trust)
        body = json.dumps(
            {"node": peer.node, "host": peer.host, "port": peer.port, "done": peer.done,
             "time": peer.time}
        ).encode()  # fmt: skip
        tmp = _write_private(directory, peer.node, body)
        os.replace(tmp, os.path.join(directory, f"{peer.node}.json"))

    def unregister_peer(self, node: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, "peers", f"{node}.json"))

    def peers(self) -> list[Peer]:
        """Every registered peer whose file is trusted and well-formed."""
        directory = os.path.join(self.path, "peers")
        try:
            filenames = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        found = []
        for filename in filenames:
            if not filename.endswith(".json"):
                continue
            try:
                data = read_trusted(os.path.join(directory, filename), self.trust)
                peer = _peer(json.loads(data)) if data is not None else None
            except (CoopUnavailable, ValueError, TypeError, KeyError):
                continue
            if peer is not None:
                found.append(peer)
        return found

    # --- the image version's digest ---

    def read_meta(self) -> dict[str, Any] | None:
        """The published digest of this version, None if none yet (or not trusted)."""
        try:
            data = read_trusted(os.path.join(self.path, "meta.json"), self.trust)
            meta = json.loads(data) if data is not None else None
        except (CoopUnavailable, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def publish_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Publish META unless another node did first; the meta now published."""
        tmp = _write_private(self.path, "meta", json.dumps(meta, sort_keys=True).encode())
        try:
            link_exclusive(tmp, os.path.join(self.path, "meta.json"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return self.read_meta() or meta

    def refuse_meta(self, reason: str) -> None:
        """Mark the published digest refused: a node's read of datadir did not match it.

        The digest never changes (the first writer wins), so the mark stays for this version:
        every node then copies from datadir on its own, and serves nobody.
        """
        body = json.dumps({"reason": reason, "time": time.time()}).encode()
        tmp = _write_private(self.path, "refused", body)
        try:
            link_exclusive(tmp, os.path.join(self.path, "meta.refused"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def meta_refused(self) -> bool:
        """Whether a node found the published digest wrong (a trusted mark, see refuse_meta)."""
        try:
            return read_trusted(os.path.join(self.path, "meta.refused"), self.trust) is not None
        except CoopUnavailable:
            return False


def _token(data: bytes) -> str | None:
    try:
        value = json.loads(data).get("token")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _peer(data: object) -> Peer | None:
    if not isinstance(data, dict):
        return None
    node, host, port = data.get("node"), data.get("host"), data.get("port")
    if not (isinstance(node, str) and isinstance(host, str) and type(port) is int):
        return None
    if not 0 < port < 65536:
        return None
    when = data.get("time", 0.0)
    return Peer(node, host, port, bool(data.get("done")), float(when) if when else 0.0)


def open_entry(directory: str, key: str, trust: Trust, ttl: float) -> Entry:
    """The coordination entry KEY under DIRECTORY, created if needed (both checked).

    CoopUnavailable if DIRECTORY or the entry is not a directory only trusted owners write.
    """
    _ensure_dir(directory, trust)
    path = os.path.join(directory, key)
    _ensure_dir(path, trust)
    return Entry(path, trust, ttl)
