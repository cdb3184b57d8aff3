"""Cooperative staging with 4 real "nodes" on one machine (tests/privileged/coopnodes.py).

Shared-storage reads are counted on the shared filesystem's own loop device. The counter is
proven in the same test: the same nodes copying independently, one after another (pages
dropped behind each copy), read the image about N times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from coopnodes import Cluster, drop_pages, sha256_of

from scratch_stage.host import torrent

pytestmark = pytest.mark.skipif(torrent.load() is None, reason="libtorrent is not installed")

MIB = 1 << 20
IMAGE_MIB = 48
RUN = 240


def build_image(datadir: Path, name: str, mib: int, work: Path) -> Path:
    src = work / f"src-{name}"
    src.mkdir()
    with open(src / "random.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    image = datadir / f"{name}.sqfs"
    subprocess.run(
        ["/usr/bin/mksquashfs", str(src), str(image), "-noappend", "-noI", "-noD", "-noF",
         "-noX", "-quiet"],
        check=True, capture_output=True,
    )  # fmt: skip
    image.chmod(0o644)
    for path in src.iterdir():
        path.unlink()
    src.rmdir()
    drop_pages(image)
    return image


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path, 4, size_mib=IMAGE_MIB * 3 + 64)
    try:
        yield made
    finally:
        left = made.close()
        assert not left, left


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=RUN)
        results.append((proc.returncode, err))
    return results


def test_four_nodes_read_shared_storage_about_once(cluster: Cluster, tmp_path: Path) -> None:
    image = build_image(cluster.datadir, "img", IMAGE_MIB, tmp_path)
    size = image.stat().st_size
    want = sha256_of(image)
    drop_pages(image)

    # The counter, proven: independent copies, one after another, read the image 4 times.
    for node in cluster.nodes:
        node.configure(coop={"enabled": False})
    before = cluster.shared.bytes_read()
    for node in cluster.nodes:
        [(rc, err)] = finish([node.spawn_prestage("img")])
        assert rc == 0, err
        drop_pages(image)
    independent = cluster.shared.bytes_read() - before
    assert independent >= 3.5 * size, (independent, size)
    for node in cluster.nodes:
        node.cached("img").unlink()
        (node.root / "state" / "state.json").unlink()

    # Cooperative: all four at once; one reads datadir, the others copy from peers.
    for node in cluster.nodes:
        node.configure(coop={"enabled": True})
    drop_pages(image)
    before = cluster.shared.bytes_read()
    started = time.monotonic()
    results = finish([node.spawn_prestage("img") for node in cluster.nodes])
    elapsed = time.monotonic() - started
    shared = cluster.shared.bytes_read() - before
    assert all(rc == 0 for rc, _ in results), results
    events = {n.name: [e["event"] for e in n.events()] for n in cluster.nodes}
    assert shared <= 1.25 * size, f"{shared} bytes read for {size}: {events}"
    readers = [n.name for n in cluster.nodes if n.events("coop-lease")]
    fetched = [n.name for n in cluster.nodes if n.events("coop-fetched")]
    assert len(readers) == 1 and len(fetched) == 3, (readers, fetched)
    for node in cluster.nodes:
        assert sha256_of(node.cached("img")) == want
        assert node.mounted_backings(), f"{node.name} mounted nothing"
        assert node.cached("img").stat().st_mode & 0o077 == 0  # root-only, like every copy
    # The reader served its copy through the engine (the fetchers serve each other too).
    [reader] = [n for n in cluster.nodes if n.events("coop-lease")]
    assert sum(e["bytes"] for e in reader.events("coop-served")) > 0
    print(f"coop: {shared / size:.2f}x shared reads, {elapsed:.1f}s; independent "
          f"{independent / size:.2f}x")  # fmt: skip


def coop_dir(cluster: Cluster) -> Path:
    return cluster.datadir / ".scratch-stage-coop"


def waiting_peer(cluster: Cluster, name: str) -> None:
    """Register a fake peer that is still fetching, so the seeder keeps serving."""
    [entry] = [p for p in coop_dir(cluster).iterdir() if p.name.startswith(f"{name}.")]
    peers = entry / "peers"
    peers.mkdir(mode=0o700, exist_ok=True)
    fake = {"node": "waiting", "host": "127.0.0.99", "port": 9, "done": False, "time": 4e9}
    (peers / "waiting.json").write_text(json.dumps(fake))
    (peers / "waiting.json").chmod(0o600)


def test_corrupted_peer_is_detected_and_never_mounted_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = build_image(cluster.datadir, "img", 16, tmp_path)
    want = sha256_of(image)
    first, second, third = cluster.nodes[:3]
    # The first node stages and publishes the digest; it keeps serving for a fake peer.
    seed = first.spawn_prestage("img")
    entry_made = time.monotonic() + 60
    while not coop_dir(cluster).exists() or not list(coop_dir(cluster).iterdir()):
        assert time.monotonic() < entry_made and seed.poll() is None
        time.sleep(0.05)
    waiting_peer(cluster, "img")
    while (
        not any(e.get("event") == "coop-lease" for e in first.events())
        or not first.cached("img").exists()
    ):
        assert seed.poll() is None, seed.communicate()
        time.sleep(0.05)
    # Flip bytes in its cached copy while it serves it.
    with open(first.cached("img"), "r+b") as f:
        f.seek(5 * MIB)
        data = f.read(4096)
        f.seek(5 * MIB)
        f.write(bytes(b ^ 0xFF for b in data))
    for node in (second, third):
        node.configure(coop={"stall_seconds": 3})
    results = finish([second.spawn_prestage("img"), third.spawn_prestage("img")])
    assert all(rc == 0 for rc, _ in results), results
    for node in (second, third):
        assert sha256_of(node.cached("img")) == want  # the good bytes, from datadir at worst
        assert node.mounted_backings()
    fell_back = [n for n in (second, third) if n.events("coop-lease")]
    assert fell_back, "nobody noticed the corrupted peer"
    first.kill()


def test_peer_killed_mid_transfer_does_not_stop_the_others(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = build_image(cluster.datadir, "img", 32, tmp_path)
    want = sha256_of(image)
    first, *others = cluster.nodes
    first.configure(bandwidth="8MiB")  # slow enough to be killed halfway through serving
    seed = first.spawn_prestage("img")
    started = time.monotonic()
    while not (first.cached("img").exists() and first.events("stage-done")):
        assert seed.poll() is None and time.monotonic() - started < RUN, seed.communicate()
        time.sleep(0.05)
    for node in others:
        node.configure(coop={"stall_seconds": 3})
    procs = [node.spawn_prestage("img") for node in others]
    fetching = time.monotonic()
    while not any(n.events("coop-fetch") for n in others):
        assert time.monotonic() - fetching < 60
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(seed.pid, 9)  # mid-transfer: 32 MiB at 8 MiB/s takes 4 s
    seed.wait()
    results = finish(procs)
    assert all(rc == 0 for rc, _ in results), results
    for node in others:
        assert sha256_of(node.cached("img")) == want
        assert node.mounted_backings()


def test_without_the_engine_nodes_copy_one_at_a_time_with_one_warning(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = build_image(cluster.datadir, "img", 8, tmp_path)
    want = sha256_of(image)
    hidden = tmp_path / "no-libtorrent"
    hidden.mkdir()
    (hidden / "libtorrent.py").write_text("raise ImportError('hidden by the test')\n")
    procs = [n.spawn_prestage("img", PYTHONPATH=str(hidden)) for n in cluster.nodes]
    results = finish(procs)
    assert all(rc == 0 for rc, _ in results), results
    for node, (_, err) in zip(cluster.nodes, results):
        assert err.count("libtorrent is not installed") == 1, err
        assert sha256_of(node.cached("img")) == want
        assert node.mounted_backings()
        assert len(node.events("coop-lease")) == 1  # each read datadir, under the lease


ATTACKER = r"""
import json, sys, time
import libtorrent as lt
from scratch_stage.host import torrent
image, host, port, save = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
real = sys.argv[5] if len(sys.argv) > 5 else None
data = open(image, "rb").read()  # everything a user may know: the very bytes of the image
hasher = torrent.PieceHasher(len(data))
hasher.update(data)
pieces, _ = hasher.finish()
files = lt.file_storage()
files.add_file("img.sqfs", len(data))
creator = lt.create_torrent(files, hasher.length, flags=lt.create_torrent.v1_only)
for i, h in enumerate(pieces):
    creator.set_hash(i, h)
creator.set_priv(True)
guess = lt.bencode(creator.generate())  # the torrent, but without the root-only secret
if real:  # the control: root, who can read the published torrent
    import base64
    guess = base64.b64decode(json.load(open(real))["torrent"])
s = torrent.Session(lt, "127.0.0.99", 0)
s.add(guess, save + "/img.sqfs", seeding=False)
end = time.monotonic() + 8
while time.monotonic() < end:
    s.connect([(host, port)])
    time.sleep(0.5)
print(json.dumps({"done": s.progress()[0]}))
"""


def test_nobody_cannot_fetch_an_image_from_a_peer(cluster: Cluster, tmp_path: Path) -> None:
    image = build_image(cluster.datadir, "img", 8, tmp_path)
    first = cluster.nodes[0]
    first.configure(access={"img": ["root"]})  # a restricted dataset
    seed = first.spawn_prestage("img")
    while not coop_dir(cluster).exists() or not list(coop_dir(cluster).iterdir()):
        assert seed.poll() is None, seed.communicate()
        time.sleep(0.05)
    waiting_peer(cluster, "img")  # keeps the node serving
    [entry] = list(coop_dir(cluster).iterdir())
    mine = entry / "peers" / f"{first.name}.json"
    while not (
        first.events("stage-done") and mine.exists() and json.loads(mine.read_text())["done"]
    ):
        assert seed.poll() is None, seed.communicate()
        time.sleep(0.05)
    port = json.loads(mine.read_text())["port"]
    save = tmp_path / "attacker"
    save.mkdir()
    os.chown(save, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    # nobody has the image's bytes (a copy readable to it) and the peer's address and port.
    public = save / "copy.sqfs"
    public.write_bytes(image.read_bytes())
    os.chmod(public, 0o644)
    done = subprocess.run(
        ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", ATTACKER, public.name, first.host, str(port), "."],
        capture_output=True, text=True, timeout=120, cwd=save,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"done": 0}
    # The digest, the peers and the leases are root's only.
    meta = subprocess.run(
        ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "/bin/cat", str(entry / "meta.json")], capture_output=True, text=True,
    )  # fmt: skip
    assert meta.returncode != 0 and "Permission denied" in meta.stderr
    # The control: with the real torrent (root's), the same script gets the image.
    (save / "img.sqfs").unlink(missing_ok=True)
    control = subprocess.run(
        [sys.executable, "-c", ATTACKER, public.name, first.host, str(port), ".",
         str(entry / "meta.json")],
        capture_output=True, text=True, timeout=120, cwd=save,
    )  # fmt: skip
    assert control.returncode == 0, control.stderr
    assert json.loads(control.stdout.splitlines()[-1]) == {"done": image.stat().st_size}
    first.kill()
