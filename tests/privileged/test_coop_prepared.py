"""Cooperative staging behind a digest prepared ahead (`coop prepare`), with 4 real "nodes"
on one machine (tests/privileged/coopnodes.py): shared-storage reads counted on the shared
filesystem's own loop device."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from coopnodes import CLI, Cluster, CoopNode, drop_pages, sha256_of
from test_coop import build_image, finish

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
