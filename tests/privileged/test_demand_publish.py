"""`demand --publish` as an unprivileged user: it cannot forge the cluster's demand file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodetree import ADMIN_PATH, CLI, ImageStore, NodeEnv

from scratch_stage.slurm.demand import PendingJob, Snapshot

NOBODY = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_tree() -> Iterator[Path]:
    """A root-owned tree nobody can read (pytest's tmp_path is 0700), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ss-demand-publish."))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root)


def test_nobody_cannot_overwrite_the_published_demand(open_tree: Path) -> None:
    shared = open_tree / "shared"
    shared.mkdir(mode=0o755)
    published = shared / "demand.json"
    job = PendingJob("7", ("debug",), 1, 1, None, (), ("coco",))
    snapshot = Snapshot((job,), {"debug": ("n1",)}, time.time())
    published.write_text(json.dumps(snapshot.to_json()))
    published.chmod(0o644)
    config = open_tree / "config.yaml"
    settings = {
        "datadir": str(open_tree), "cachedir": str(open_tree), "node": "n1",
        "statedir": str(open_tree / "state"), "mountdir": str(open_tree / "mnt"),
        "demand": {"source": "file", "path": str(published)},
    }  # fmt: skip
    config.write_text(json.dumps(settings))
    config.chmod(0o644)
    environ = {"PATH": ADMIN_PATH, "SCRATCH_STAGE_CONFIG": str(config)}
    before = published.read_bytes()

    # Reading the demand is anyone's right; overwriting the file the nodes read is not.
    shown = subprocess.run(
        [*NOBODY, str(CLI), "demand", "--json"], env=environ, capture_output=True, text=True,
        timeout=60, cwd="/",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["pending_jobs"] == {"coco": 1}

    forged = subprocess.run(
        [*NOBODY, str(CLI), "demand", "--publish", str(published)], env=environ,
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert forged.returncode == 1, forged
    assert forged.stderr == (
        f"scratch-stage: error: cannot publish the demand to {published}: Permission denied\n"
    )
    assert published.read_bytes() == before
    assert sorted(os.listdir(shared)) == ["demand.json"]  # no temp file left behind


@pytest.fixture
def open_node(open_tree: Path, image_store: ImageStore) -> Iterator[NodeEnv]:
    node = NodeEnv(open_tree / "node", image_store)
    try:
        node.root.chmod(0o755)
        yield node
    finally:
        assert node.finalize() == []


def test_a_demand_file_a_user_wrote_steers_nothing(open_node: NodeEnv) -> None:
    """The default demand file lies in datadir; in a sticky datadir anyone may create it."""
    node_env = open_node
    node_env.datadir.chmod(0o1777)
    node_env.configure(node="n1", demand={"source": "file"})  # default path: datadir
    node_env.add_image("alpha")
    published = node_env.datadir / ".scratch-stage-demand.json"
    job = PendingJob("7", ("debug",), 1, 1, time.time() + 60, ("n1",), ("alpha",))
    forged = json.dumps(Snapshot((job,), {"debug": ("n1",)}, time.time()).to_json())
    done = subprocess.run(
        [*NOBODY, "/bin/sh", "-c", f"cat > {published}"], input=forged, text=True,
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and published.stat().st_uid == 65534, done.stderr

    ignored = node_env.cli("rebalance", "--dry-run", "--json")
    assert ignored.returncode == 0, ignored.stderr
    assert "ignored: owned by uid 65534, not a trusted owner" in ignored.stderr
    assert json.loads(ignored.stdout)["decisions"]["alpha"]["demand"] == 0
    check = node_env.cli("config", "check")
    assert f"warning: demand: demand file {published} ignored: owned by uid 65534" in check.stdout

    # The same snapshot published by root counts.
    published.unlink()
    published.write_text(forged)
    published.chmod(0o644)
    trusted = node_env.cli("rebalance", "--dry-run", "--json")
    assert trusted.returncode == 0 and "ignored" not in trusted.stderr, trusted.stderr
    assert json.loads(trusted.stdout)["decisions"]["alpha"]["demand"] > 0
