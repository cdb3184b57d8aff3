"""Reader leases, the peer registry and the digest file on shared storage (host/lease.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from scratch_stage.host.catalog import Fingerprint, Trust
from scratch_stage.host.lease import (
    CoopUnavailable,
    Entry,
    Peer,
    entry_key,
    link_exclusive,
    open_entry,
    read_trusted,
)

TTL = 60.0


def entry(tmp_path: Path) -> Entry:
    return open_entry(str(tmp_path / "coop"), "img.0123", Trust(), TTL)


def test_one_reader_by_default_then_the_next_after_release(tmp_path: Path) -> None:
    e = entry(tmp_path)
    first = e.try_acquire(1, "n1")
    assert first is not None and e.holds(first)
    assert e.try_acquire(1, "n2") is None
    assert e.holders() == 1
    e.release(first)
    assert not e.holds(first)
    second = e.try_acquire(1, "n2")
    assert second is not None and second.token != first.token


def test_readers_limit_counts_slots(tmp_path: Path) -> None:
    e = entry(tmp_path)
    leases = [e.try_acquire(2, f"n{i}") for i in range(3)]
    assert [lease is not None for lease in leases] == [True, True, False]
    assert {lease.slot for lease in leases if lease} == {0, 1}
    assert e.holders() == 2


def test_stale_lease_is_taken_over_by_the_next_generation(tmp_path: Path) -> None:
    e = entry(tmp_path)
    dead = e.try_acquire(1, "dead")
    assert dead is not None
    assert e.try_acquire(1, "n2", now=time.time() + TTL / 2) is None  # still live
    taker = e.try_acquire(1, "n2", now=time.time() + TTL + 1)
    assert taker is not None and taker.generation == dead.generation + 1
    assert not os.path.exists(dead.path)  # the old generation is cleaned up
    assert not e.renew(dead)  # the dead holder, come back, notices it lost the lease
    assert e.holds(taker)
    e.release(dead)  # a lost lease's release removes nothing of the new holder
    assert e.holds(taker)


def test_renewal_keeps_a_lease_live(tmp_path: Path) -> None:
    e = entry(tmp_path)
    lease = e.try_acquire(1, "n1")
    assert lease is not None
    old = time.time() - TTL - 5
    os.utime(lease.path, (old, old))
    assert e.holders() == 0  # it looks stale now
    assert e.renew(lease)
    assert e.holders() == 1
    assert e.try_acquire(1, "n2") is None


def test_two_takers_of_a_stale_slot_one_wins(tmp_path: Path) -> None:
    e = entry(tmp_path)
    e.try_acquire(1, "dead")
    later = time.time() + TTL + 1
    # Both saw generation 0 stale; both try to create generation 1: link(2) lets one in.
    tmp_a = tmp_path / "a"
    tmp_b = tmp_path / "b"
    tmp_a.write_text("a")
    tmp_b.write_text("b")
    target = os.path.join(e.path, "lease-0.1")
    assert link_exclusive(str(tmp_a), target)
    assert not link_exclusive(str(tmp_b), target)
    assert Path(target).read_text() == "a"
    # Through the API: the slot's top is now live, so the late taker gets nothing.
    assert e.try_acquire(1, "late", now=later - TTL) is None


def test_a_foreign_lease_file_holds_nothing(tmp_path: Path) -> None:
    e = open_entry(str(tmp_path / "coop"), "img.1", Trust(frozenset({0, os.geteuid()})), TTL)
    fake = Path(e.path, "lease-0.0")
    fake.write_text("{}")
    os.chmod(fake, 0o666)  # writable by others: not trusted, so not a holder
    assert e.holders() == 0
    lease = e.try_acquire(1, "n1")
    assert lease is not None and lease.generation == 1


def test_untrusted_directory_is_refused(tmp_path: Path) -> None:
    coop = tmp_path / "coop"
    coop.mkdir(mode=0o777)
    os.chmod(coop, 0o777)
    with pytest.raises(CoopUnavailable, match="writable by any user"):
        open_entry(str(coop), "img.1", Trust(), TTL)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(CoopUnavailable, match="not a directory"):
        open_entry(str(link), "img.1", Trust(), TTL)


def test_read_trusted_refuses_symlinks_and_open_files(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(CoopUnavailable, match="symlink"):
        read_trusted(str(tmp_path / "link"), Trust())
    os.chmod(tmp_path / "real", 0o646)
    with pytest.raises(CoopUnavailable, match="writable by any user"):
        read_trusted(str(tmp_path / "real"), Trust())
    assert read_trusted(str(tmp_path / "missing"), Trust()) is None


def test_peers_registry_round_trip_and_bad_entries_skipped(tmp_path: Path) -> None:
    e = entry(tmp_path)
    e.register_peer(Peer("n1", "127.0.0.2", 6881, False, 1.0))
    e.register_peer(Peer("n2", "127.0.0.3", 6882, True, 2.0))
    Path(e.path, "peers", "bad.json").write_text(json.dumps({"node": "x", "port": 99999}))
    Path(e.path, "peers", "junk.json").write_text("not json")
    assert [(p.node, p.port, p.done) for p in e.peers()] == [
        ("n1", 6881, False),
        ("n2", 6882, True),
    ]
    e.unregister_peer("n1")
    assert [p.node for p in e.peers()] == ["n2"]


def test_meta_first_writer_wins(tmp_path: Path) -> None:
    e = entry(tmp_path)
    assert e.read_meta() is None
    assert e.publish_meta({"sha256": "a"})["sha256"] == "a"
    assert e.publish_meta({"sha256": "b"})["sha256"] == "a"
    assert stat_mode(Path(e.path, "meta.json")) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_entry_key_changes_with_the_version() -> None:
    a = entry_key("img", Fingerprint(10, 1, 2, 3))
    assert a == entry_key("img", Fingerprint(10, 1, 2, 3))
    assert a != entry_key("img", Fingerprint(10, 1, 2, 4))
    assert a.startswith("img.")


def test_a_refused_digest_is_marked_once_and_only_a_trusted_mark_counts(tmp_path: Path) -> None:
    e = entry(tmp_path)
    assert not e.meta_refused()
    e.refuse_meta("a piece fails its hash")
    e.refuse_meta("another reason")  # the first mark stays
    assert e.meta_refused()
    mark = Path(e.path) / "meta.refused"
    assert json.loads(mark.read_text())["reason"] == "a piece fails its hash"
    assert mark.stat().st_mode & 0o777 == 0o600
    other = open_entry(str(tmp_path / "coop"), "img.4567", Trust(), TTL)
    planted = Path(other.path) / "meta.refused"
    planted.write_text("{}")
    os.chmod(planted, 0o666)  # writable by others: not ours to trust
    assert not other.meta_refused()
