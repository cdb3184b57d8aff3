"""Cooperative staging behind a digest prepared ahead (`coop prepare`), with 4 real "nodes"
on one machine (tests/privileged/coopnodes.py): shared-storage reads counted on the shared
filesystem's own loop device."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from coopnodes import CLI, Cluster, CoopNode, drop_pages, sha256_of
from test_coop import RUN, build_image, finish

from scratch_stage.host import torrent

pytestmark = pytest.mark.skipif(torrent.load() is None, reason="libtorrent is not installed")

NOBODY = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path, 4, size_mib=160)
    try:
        yield made
    finally:
        left = made.close()
        assert not left, left


def cli(
    node: CoopNode, *args: str, user: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(user or []), str(CLI), *args], env=node.environ(), capture_output=True, text=True,
        timeout=120, cwd="/",
    )  # fmt: skip


def entries(cluster: Cluster) -> list[Path]:
    coop = cluster.datadir / ".scratch-stage-coop"
    return sorted(coop.iterdir()) if coop.exists() else []


def test_a_prepared_digest_is_read_once_and_used_by_every_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = build_image(cluster.datadir, "img", 32, tmp_path)
    size, want = image.stat().st_size, sha256_of(image)
    drop_pages(image)
    first = cluster.nodes[0]
    before = cluster.shared.bytes_read()
    done = cli(first, "coop", "prepare", "img")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("img: digest published (")
    assert cluster.shared.bytes_read() - before >= size  # one real read of the image
    [entry] = entries(cluster)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["sha256"] == want and meta["size"] == size
    again = cli(first, "coop", "prepare", "img")
    assert again.stdout == "img: digest of this version already published\n"

    drop_pages(image)
    before = cluster.shared.bytes_read()
    results = finish([node.spawn_prestage("img") for node in cluster.nodes])
    assert all(rc == 0 for rc, _ in results), results
    shared = cluster.shared.bytes_read() - before
    assert shared <= 1.25 * size, (shared, size)
    readers = [n.name for n in cluster.nodes if n.events("coop-lease")]
    fetched = [n.name for n in cluster.nodes if n.events("coop-fetched")]
    assert len(readers) == 1 and len(fetched) == 3, (readers, fetched)
    assert json.loads((entry / "meta.json").read_text()) == meta  # never replaced
    for node in cluster.nodes:
        assert sha256_of(node.cached("img")) == want
        assert node.mounted_backings(), f"{node.name} mounted nothing"


def test_nobody_cannot_prepare_nor_plant_a_digest(cluster: Cluster, tmp_path: Path) -> None:
    image = build_image(cluster.datadir, "img", 8, tmp_path)
    want = sha256_of(image)
    first, second = cluster.nodes[:2]
    os.chmod(tmp_path, 0o755)  # nobody may reach the config and datadir (not the state)
    tried = cli(first, "coop", "prepare", "img", user=NOBODY)
    assert tried.returncode == 1
    assert tried.stderr == "scratch-stage: error: coop prepare: only root publishes digests\n"
    assert entries(cluster) == []
    # root prepares; nobody cannot write into the coordination directory, nor replace it.
    assert cli(first, "coop", "prepare", "img").returncode == 0
    [entry] = entries(cluster)
    for target in (entry / "meta.json", entry / "forged.json", entry.parent / "x"):
        write = subprocess.run(
            [*NOBODY, "/bin/sh", "-c", 'echo {} > "$1"', "sh", str(target)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert write.returncode != 0 and "Permission denied" in write.stderr, target
    # A digest planted by a user (here: placed by root, owned by nobody) is never trusted:
    # with the real one gone, a node stages as if none was published.
    forged = {**json.loads((entry / "meta.json").read_text()), "sha256": "0" * 64}
    (entry / "meta.json").unlink()
    (entry / "meta.json").write_text(json.dumps(forged))
    os.chown(entry / "meta.json", 65534, 65534)
    [(rc, err)] = finish([second.spawn_prestage("img")])
    assert rc == 0, err
    assert sha256_of(second.cached("img")) == want and second.mounted_backings()


def wait_for_event(node: CoopNode, kind: str, proc: subprocess.Popen[str]) -> None:
    end = time.monotonic() + RUN
    while not node.events(kind):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no {kind} event"
        time.sleep(0.05)


def stage_behind_reader(
    cluster: Cluster, image: Path, reader: CoopNode, others: list[CoopNode], **environ: str
) -> tuple[int, list[tuple[str, list[str], str]]]:
    """READER stages IMAGE first (its lease taken; ENVIRON added to its environment), then
    OTHERS; the shared bytes read, and what each node did and said (to see why)."""
    drop_pages(image)
    before = cluster.shared.bytes_read()
    first = reader.spawn_prestage(image.stem, **environ)
    wait_for_event(reader, "coop-lease", first)
    results = finish([first, *[node.spawn_prestage(image.stem) for node in others]])
    assert all(rc == 0 for rc, _ in results), results
    said = [
        (node.name, [e["event"] for e in node.events()], err)
        for node, (_, err) in zip([reader, *others], results)
    ]
    return cluster.shared.bytes_read() - before, said


def test_peers_get_pieces_while_the_reader_still_reads_datadir(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = build_image(cluster.datadir, "img", 32, tmp_path)
    size, want = image.stat().st_size, sha256_of(image)
    reader, *others = cluster.nodes
    assert cli(reader, "coop", "prepare", "img").returncode == 0
    # The reader's copy is throttled (the staging bandwidth cap: 32 MiB at 4 MiB/s is 8 s),
    # so a transfer that waited for its whole copy could not start before it ends.
    reader.configure(bandwidth="4MiB")
    shared, said = stage_behind_reader(cluster, image, reader, others)
    assert shared <= 1.25 * size, (shared, size, said)
    [lease] = reader.events("coop-lease")
    assert lease["pipelined"] is True
    [read] = reader.events("coop-read")
    # While it read datadir, its peers already had pieces (their HAVE messages).
    assert read["peer_pieces"] > 0, read
    assert all(node.events("coop-fetched") for node in others)
    # A fetcher's first progress came before the reader had read everything.
    early = [e for n in others for e in n.events("stage-progress") if e["ts"] < read["ts"]]
    assert early, [n.events("stage-progress") for n in others]
    for node in cluster.nodes:
        assert sha256_of(node.cached("img")) == want
        assert node.mounted_backings(), f"{node.name} mounted nothing"


def test_fetchers_wait_for_a_reader_that_pauses_before_it_serves(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The reader's last pieces reach its peers only once it serves its checked copy. A
    reader slow to get there (its disk, its load: here a pause longer than the fetchers'
    `stall_seconds` after its last read, its lease still held) is waited for: the stall is
    counted from when its lease was last seen held, so nobody falls back to datadir."""
    image = build_image(cluster.datadir, "img", 32, tmp_path)
    size, want = image.stat().st_size, sha256_of(image)
    reader, *others = cluster.nodes
    assert cli(reader, "coop", "prepare", "img").returncode == 0
    reader.configure(bandwidth="4MiB")  # its peers are still behind when it ends its read
    pause = {"SCRATCH_STAGE_FAULT_DELAY": "after-coop-read=8"}  # stall_seconds is 5
    shared, said = stage_behind_reader(cluster, image, reader, others, **pause)
    assert [e for n in others for e in n.events("coop-stalled")] == [], said
    assert shared <= 1.25 * size, (shared, size, said)
    [read] = reader.events("coop-read")
    served = [e for n in others for e in n.events("coop-fetched") if e["ts"] > read["ts"] + 8]
    assert served, said  # some fetcher did wait for the reader's pause to end
    for node in cluster.nodes:
        assert sha256_of(node.cached("img")) == want
        assert node.mounted_backings(), f"{node.name} mounted nothing"


def forge(entry: Path, image: Path, how: str, tmp_path: Path) -> None:
    """Replace ENTRY's digest (root's own file, as a careless or hostile root would) with one
    of other bytes of the same size ("stale"), or with right pieces but a wrong sha256."""
    meta = json.loads((entry / "meta.json").read_text())
    if how == "stale":
        other = tmp_path / "other.bin"
        data = bytearray(image.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte differs: one piece's hash
        other.write_bytes(bytes(data))
        lt = torrent.load()
        hasher = torrent.PieceHasher(len(data))
        hasher.update(bytes(data))
        pieces, digest = hasher.finish()
        body = torrent.make_torrent(lt, "img.sqfs", len(data), hasher.length, pieces)
        meta.update(sha256=digest, torrent=base64.b64encode(body).decode())
    else:
        meta["sha256"] = "0" * 64
    (entry / "meta.json").unlink()
    (entry / "meta.json").write_text(json.dumps(meta))
    (entry / "meta.json").chmod(0o600)


@pytest.mark.parametrize("how", ["stale", "wrong-sha256"])
def test_a_digest_that_does_not_match_the_image_never_gives_a_wrong_copy(
    cluster: Cluster, tmp_path: Path, how: str
) -> None:
    image = build_image(cluster.datadir, "img", 16, tmp_path)
    want = sha256_of(image)
    assert cli(cluster.nodes[0], "coop", "prepare", "img").returncode == 0
    [entry] = entries(cluster)
    forge(entry, image, how, tmp_path)
    results = finish([node.spawn_prestage("img") for node in cluster.nodes])
    assert all(rc == 0 for rc, _ in results), results
    refused = [e for n in cluster.nodes for e in n.events("coop-digest-refused")]
    assert refused, "nobody noticed the digest does not match"
    assert (entry / "meta.refused").exists()
    for node in cluster.nodes:
        assert sha256_of(node.cached("img")) == want  # the image's bytes, whatever the digest
        assert node.mounted_backings(), f"{node.name} mounted nothing"
        assert not node.events("coop-served"), f"{node.name} served a copy under a bad digest"


def test_a_digest_left_by_peers_now_gone_is_read_at_once(cluster: Cluster, tmp_path: Path) -> None:
    image = build_image(cluster.datadir, "img", 8, tmp_path)
    want = sha256_of(image)
    first = cluster.nodes[0]
    assert cli(first, "coop", "prepare", "img").returncode == 0
    [entry] = entries(cluster)
    # Two nodes that had the copy once and died: registered as done, not heard from since.
    peers = entry / "peers"
    peers.mkdir(mode=0o700, exist_ok=True)
    for i, name in enumerate(("dead1", "dead2")):
        gone = {"node": name, "host": f"127.0.0.{90 + i}", "port": 9, "done": True,
                "time": time.time() - 3600}  # fmt: skip
        (peers / f"{name}.json").write_text(json.dumps(gone))
        (peers / f"{name}.json").chmod(0o600)
    first.configure(coop={"stall_seconds": 300})  # were they waited for, the test would hang
    [(rc, err)] = finish([first.spawn_prestage("img")])
    assert rc == 0, err
    assert not first.events("coop-fetch")  # no transfer tried from the dead
    [lease] = first.events("coop-lease")
    assert lease["pipelined"] is True
    assert sha256_of(first.cached("img")) == want and first.mounted_backings()


def test_a_fetch_that_follows_a_slow_reader_does_not_stall(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = build_image(cluster.datadir, "img", 12, tmp_path)
    size, want = image.stat().st_size, sha256_of(image)
    reader, *others = cluster.nodes[:3]
    assert cli(reader, "coop", "prepare", "img").returncode == 0
    # A piece (4 MiB) every 8 s from the reader, and fetchers that would give up after 4 s
    # without progress: they must keep following the reader, not fall back to datadir.
    # (4 s, not less: when the reader turns seeder, fetchers reconnect to it.)
    reader.configure(bandwidth="512KiB")
    for node in others:
        node.configure(coop={"stall_seconds": 4})
    shared, said = stage_behind_reader(cluster, image, reader, others)
    assert not [e for n in others for e in n.events("coop-stalled")], said
    assert all(n.events("coop-fetched") for n in others), said
    assert shared <= 1.25 * size, (shared, size, said)
    for node in (reader, *others):
        assert sha256_of(node.cached("img")) == want and node.mounted_backings()
