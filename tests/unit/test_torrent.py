"""The peer-transfer engine (host/torrent.py): piece hashes, torrents, a real transfer."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from scratch_stage.host import torrent

lt = torrent.load()
needs_engine = pytest.mark.skipif(lt is None, reason="libtorrent is not installed")


def test_piece_hasher_matches_hashlib_whatever_the_chunks() -> None:
    data = random.Random(1).randbytes(3 * torrent.PIECE_SIZE + 12345)
    hasher = torrent.PieceHasher(len(data))
    rng = random.Random(2)
    at = 0
    while at < len(data):
        step = rng.randint(1, 3 * 1024 * 1024)
        hasher.update(data[at : at + step])
        at += step
    pieces, whole = hasher.finish()
    size = torrent.PIECE_SIZE
    expected = [hashlib.sha1(data[i : i + size]).digest() for i in range(0, len(data), size)]
    assert pieces == expected and len(pieces) == 4
    assert whole == hashlib.sha256(data).hexdigest()


def test_piece_size_keeps_the_piece_count_bounded() -> None:
    assert torrent.piece_size(1 << 30) == torrent.PIECE_SIZE
    assert (150 << 40) // torrent.piece_size(150 << 40) <= 8192


def wait_for(sessions: list[torrent.Session], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if all(s.progress()[1] for s in sessions):
            return True
        time.sleep(0.05)
    return False


@needs_engine
def test_transfer_between_two_sessions_and_a_secret_info_hash(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(2 * torrent.PIECE_SIZE + 7)
    hasher = torrent.PieceHasher(len(data))
    hasher.update(data)
    pieces, _ = hasher.finish()
    one = torrent.make_torrent(lt, "img.sqfs", len(data), hasher.length, pieces)
    two = torrent.make_torrent(lt, "img.sqfs", len(data), hasher.length, pieces)
    assert torrent.info_hash(lt, one) != torrent.info_hash(lt, two)  # a fresh secret each
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "img.sqfs").write_bytes(data)
    (tmp_path / "get").mkdir()
    seed = torrent.Session(lt, "127.0.0.1", 0)
    get = torrent.Session(lt, "127.0.0.1", 0)
    try:
        seed.add(one, str(tmp_path / "seed" / "img.sqfs"), seeding=True)
        get.add(one, str(tmp_path / "get" / "copy.part"), seeding=False)
        get.connect([("127.0.0.1", seed.port)])
        assert wait_for([get], 30)
        get.flush()
    finally:
        seed.close()
        get.close()
    assert (tmp_path / "get" / "copy.part").read_bytes() == data


@needs_engine
def test_corrupted_seed_never_completes_a_download(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(2 * torrent.PIECE_SIZE)
    hasher = torrent.PieceHasher(len(data))
    hasher.update(data)
    pieces, _ = hasher.finish()
    meta = torrent.make_torrent(lt, "img.sqfs", len(data), hasher.length, pieces)
    bad = bytearray(data)
    bad[torrent.PIECE_SIZE + 100] ^= 0xFF
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "img.sqfs").write_bytes(bytes(bad))
    (tmp_path / "get").mkdir()
    seed = torrent.Session(lt, "127.0.0.1", 0)
    get = torrent.Session(lt, "127.0.0.1", 0)
    try:
        seed.add(meta, str(tmp_path / "seed" / "img.sqfs"), seeding=True)
        get.add(meta, str(tmp_path / "get" / "img.sqfs"), seeding=False)
        get.connect([("127.0.0.1", seed.port)])
        assert not wait_for([get], 5)
        done, complete, _ = get.progress()
        assert not complete and done <= torrent.PIECE_SIZE  # the good piece at most
    finally:
        seed.close()
        get.close()
    got = tmp_path / "get" / "img.sqfs"
    assert not got.exists() or os.path.getsize(got) <= len(data)


def torrent_of(data: bytes) -> tuple[bytes, int]:
    hasher = torrent.PieceHasher(len(data))
    hasher.update(data)
    pieces, _ = hasher.finish()
    return torrent.make_torrent(lt, "img.sqfs", len(data), hasher.length, pieces), hasher.length


def settle(session: torrent.Session, index: int, seconds: float = 30) -> tuple[bool, list[int]]:
    """(had, failed pieces) once piece INDEX is had or some piece failed."""
    end = time.monotonic() + seconds
    failed: list[int] = []
    while time.monotonic() < end:
        failed += session.failed()
        if failed or session.had(index):
            return session.had(index), failed
        time.sleep(0.02)
    return False, failed


@needs_engine
def test_layout_of_a_torrent_and_of_garbage() -> None:
    data = random.Random(5).randbytes(2 * torrent.PIECE_SIZE + 1)
    body, length = torrent_of(data)
    assert torrent.layout(lt, body) == (len(data), length, 3)
    with pytest.raises(ValueError, match="not a torrent"):
        torrent.layout(lt, b"d4:infod6:lengthi-1eee")
    with pytest.raises(ValueError, match="not a torrent"):
        torrent.layout(lt, b"")


@needs_engine
def test_fed_pieces_are_checked_kept_and_passed_on_before_the_file_is_complete(
    tmp_path: Path,
) -> None:
    data = random.Random(6).randbytes(3 * torrent.PIECE_SIZE + 99)
    body, length = torrent_of(data)
    reader = torrent.Session(lt, "127.0.0.1", 0)
    fetcher = torrent.Session(lt, "127.0.0.1", 0)
    try:
        reader.add(body, str(tmp_path / "reader.part"), seeding=False)
        fetcher.add(body, str(tmp_path / "fetcher.part"), seeding=False)
        bad = bytearray(data[length : 2 * length])
        bad[7] ^= 0xFF
        reader.feed(1, bytes(bad))  # a piece that is not what the hashes say
        assert settle(reader, 1) == (False, [1])
        reader.feed(0, data[:length])
        assert settle(reader, 0) == (True, [])
        # Only piece 0 is there: the fetcher gets it, and nothing else, from the reader.
        end = time.monotonic() + 30
        while fetcher.progress()[0] < length and time.monotonic() < end:
            fetcher.connect([("127.0.0.1", reader.port)])
            time.sleep(0.05)
        assert fetcher.progress()[:2] == (length, False)
        # The fetcher announces the piece it has (a HAVE message, on its way after the
        # fetcher's own count moved: under load it arrives a moment later).
        end = time.monotonic() + 30
        while reader.peer_pieces() < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert reader.peer_pieces() >= 1
        for index in (1, 2, 3):
            reader.feed(index, data[index * length : (index + 1) * length])
        assert settle(reader, 3) == (True, [])
        assert wait_for([reader, fetcher], 30)
        fetcher.flush()
        reader.flush()
    finally:
        reader.close()
        fetcher.close()
    assert (tmp_path / "fetcher.part").read_bytes() == data
    assert (tmp_path / "reader.part").read_bytes() == data
