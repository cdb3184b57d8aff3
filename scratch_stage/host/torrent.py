"""The peer-transfer engine: BitTorrent through libtorrent (optional, like pyslurm).

scratch-stage writes no transfer protocol: libtorrent moves the pieces, checks each one
against the piece hashes of the image version's digest (`host/lease.py`'s meta) before it
is written or served, re-requests a piece that fails from another peer, and bans a peer
that sends bad pieces. What is here only builds the torrent from piece hashes computed
while the first node copied the image, and runs one session per staging process.

Who may download: a torrent's info dictionary carries a random secret (`x-scratch-stage`),
so its info-hash -- which a BitTorrent peer must present in its handshake -- is known only
to whoever can read the meta file (root, in a root-only directory). Every connection
starts with the protocol-encryption handshake (forced; Diffie-Hellman, the info-hash sent
only obfuscated), so the hash is not sent in the clear; the pieces then go in plaintext.
DHT, local peer discovery, UPnP/NAT-PMP and peer exchange are off, and the torrent is
private: peers come only from the registry (`Entry.peers`). A user on any node who does not
know the info-hash gets nothing (tests/privileged/test_coop.py tries).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
import warnings
from typing import TYPE_CHECKING, Any

from scratch_stage.core.errors import StagingError

if TYPE_CHECKING:
    from collections.abc import Iterable

PIECE_SIZE = 4 * 1024 * 1024
_SECRET_KEY = b"x-scratch-stage"


def load() -> Any | None:
    """The libtorrent module, or None when it is not installed."""
    try:
        import libtorrent
    except ImportError:
        return None
    return libtorrent


def piece_size(size: int) -> int:
    """The piece length for an image of SIZE bytes: 4 MiB, larger so there are <= 8192."""
    length = PIECE_SIZE
    while size > length * 8192:
        length *= 2
    return length


class PieceHasher:
    """SHA-1 piece hashes and the whole file's SHA-256, fed the bytes in order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.length = piece_size(size)
        self.pieces: list[bytes] = []
        self.whole = hashlib.sha256()
        self._piece = hashlib.sha1()
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        self.whole.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.length - self._filled)
            self._piece.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.length:
                self.pieces.append(self._piece.digest())
                self._piece = hashlib.sha1()
                self._filled = 0

    def hexdigest(self) -> str:
        """The whole file's sha256 (the pieces are finished too)."""
        return self.finish()[1]

    def finish(self) -> tuple[list[bytes], str]:
        """(piece hashes, sha256 hex) of everything fed."""
        if self._filled:
            self.pieces.append(self._piece.digest())
            self._filled = 0
        return self.pieces, self.whole.hexdigest()


def make_torrent(lt: Any, filename: str, size: int, length: int, pieces: list[bytes]) -> bytes:
    """A private v1 torrent of one file FILENAME from its piece hashes, with a fresh secret."""
    files = lt.file_storage()
    files.add_file(filename, size)
    with warnings.catch_warnings():  # libtorrent 2.1 deprecates this form; 2.0 has no other
        warnings.simplefilter("ignore", DeprecationWarning)
        creator = lt.create_torrent(files, length, flags=lt.create_torrent.v1_only)
    if creator.num_pieces() != len(pieces):
        raise StagingError(f"{filename}: {len(pieces)} piece hashes for {creator.num_pieces()}")
    for index, digest in enumerate(pieces):
        creator.set_hash(index, digest)
    creator.set_priv(True)
    entry = creator.generate()
    entry[b"info"][_SECRET_KEY] = secrets.token_hex(32).encode()
    return bytes(lt.bencode(entry))


def layout(lt: Any, torrent: bytes) -> tuple[int, int, int]:
    """(file size, piece length, number of pieces) of TORRENT; ValueError if it is not one."""
    try:
        info = lt.torrent_info(lt.bdecode(torrent))
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"not a torrent: {e}") from None
    return int(info.total_size()), int(info.piece_length()), int(info.num_pieces())


def info_hash(lt: Any, torrent: bytes) -> str:
    return str(lt.torrent_info(lt.bdecode(torrent)).info_hash())


def _settings(lt: Any, host: str, port: int, rate: int) -> dict[str, Any]:
    return {
        # The staging bandwidth cap (`bandwidth`) holds for peer copies too; 0: none.
        "upload_rate_limit": rate,
        "download_rate_limit": rate,
        "listen_interfaces": f"{host}:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        # Every connection starts with the protocol-encryption handshake (forced), which
        # hides the info-hash; the pieces themselves then go in plaintext (they are checked
        # against their hashes anyway), which saves the RC4 pass over every byte.
        "in_enc_policy": int(lt.enc_policy.forced),
        "out_enc_policy": int(lt.enc_policy.forced),
        "allowed_enc_level": int(lt.enc_level.plaintext),
        "prefer_rc4": False,
        # Peers on one host (tests) or one subnet: no per-IP connection limit.
        "allow_multiple_connections_per_ip": True,
        "alert_mask": int(
            lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
        ),
        "user_agent": "scratch-stage",
        "peer_fingerprint": "-SS0100-",
    }


class Session:
    """One libtorrent session serving and fetching one image version."""

    def __init__(self, lt: Any, host: str, port: int, rate: int = 0) -> None:
        self.lt = lt
        self.session = lt.session(_settings(lt, host, port, rate))
        self.handle: Any = None
        deadline = time.monotonic() + 5
        while self.session.listen_port() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.port = int(self.session.listen_port())
        if self.port == 0:
            self.close()
            raise StagingError(f"peer engine could not listen on {host}:{port}")

    def add(self, torrent: bytes, path: str, *, seeding: bool) -> None:
        """Serve the file at PATH (SEEDING: complete and verified) or fetch into it.

        The torrent's one file is renamed to PATH's name, so every node keeps its own names.
        """
        lt = self.lt
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(lt.bdecode(torrent))
        params.save_path = os.path.dirname(path)
        params.renamed_files = {0: os.path.basename(path)}
        if seeding:
            params.flags |= lt.torrent_flags.seed_mode
        self.handle = self.session.add_torrent(params)

    def feed(self, index: int, data: bytes) -> None:
        """Give the engine piece INDEX as read from datadir (the torrent added not seeding).

        libtorrent's `add_piece` writes it as if a peer had sent it: asynchronously, then
        checks it against the piece hash, after which the node has it and announces it to
        its peers; a piece that fails is not kept (a `hash_failed_alert`, see `failed`).
        """
        self.handle.add_piece(index, data, 0)

    def had(self, index: int) -> bool:
        """Whether piece INDEX is written and passed its hash check."""
        return bool(self.handle.have_piece(index))

    def failed(self) -> list[int]:
        """The pieces whose hash check failed since the last call (from the alerts)."""
        bad = []
        for alert in self.session.pop_alerts():
            if isinstance(alert, self.lt.hash_failed_alert) and alert.handle == self.handle:
                bad.append(int(alert.piece_index))
        return bad

    def peer_pieces(self) -> int:
        """How many pieces the connected peers have, summed over pieces (their HAVEs)."""
        return sum(int(n) for n in self.handle.piece_availability())

    def connect(self, peers: Iterable[tuple[str, int]]) -> None:
        for host, port in peers:
            try:
                self.handle.connect_peer((host, port))
            except (RuntimeError, OSError):
                continue

    def progress(self) -> tuple[int, bool, int]:
        """(bytes verified, complete, peers connected)."""
        status = self.handle.status()
        done = bool(status.is_seeding or status.is_finished)
        return int(status.total_wanted_done), done, int(status.num_peers)

    def uploaded(self) -> int:
        return 0 if self.handle is None else int(self.handle.status().all_time_upload)

    def flush(self, timeout: float = 60.0) -> bool:
        """Write everything downloaded to disk and close the files; False if not confirmed.

        libtorrent reports a piece as had once its hash passed, which may be before its
        blocks left the engine's store buffer for the file; `flush_cache` is asynchronous
        and confirmed by a `cache_flushed_alert` for this torrent, which this waits for (at
        most TIMEOUT seconds), so a caller reading the file afterwards sees every piece.
        """
        if self.handle is None:
            return True
        lt = self.lt
        self.session.pop_alerts()  # a full alert queue drops new alerts: make room first
        self.handle.flush_cache()
        deadline = time.monotonic() + timeout
        flushed = False
        while not flushed and time.monotonic() < deadline:
            self.session.wait_for_alert(200)
            flushed = any(
                isinstance(alert, lt.cache_flushed_alert) and alert.handle == self.handle
                for alert in self.session.pop_alerts()
            )
        self.handle.pause()
        return flushed

    def remove(self) -> None:
        """Stop serving or fetching the torrent (the session keeps listening)."""
        if self.handle is not None:
            with contextlib.suppress(RuntimeError):
                self.session.remove_torrent(self.handle)
            self.handle = None

    def close(self) -> None:
        self.remove()
        # The session's threads stop when the last reference goes.
        self.session.pause()
        del self.session
