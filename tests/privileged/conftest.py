"""Privileged tier: real mksquashfs images, loop mounts and mount-over, as root.

Every test gets its own node tree under tmp_path (`node_env`). Its finalizer always, even
when the test fails, kills the processes the test spawned, lazily unmounts every mount
under the tree's mountdir and detaches every loop device backed by a file under the tree.
It never touches anything outside that tree: other sessions use loop devices concurrently.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also under --import-mode=importlib
    sys.path.insert(0, str(HERE))

from nodetree import CLI, REQUIRED_PROGRAMS, ImageStore, NodeEnv, own_mount_namespace  # noqa: E402


def missing_requirement() -> str | None:
    """Why this tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "privileged tests need root (loop mounts); run the suite as root"
    if not os.path.exists("/dev/loop-control"):
        return "privileged tests need loop devices (/dev/loop-control is missing)"
    for program in REQUIRED_PROGRAMS:
        if not os.access(program, os.X_OK):
            return f"privileged tests need {program} (apt install squashfs-tools util-linux)"
    if not CLI.exists():
        return f"console script {CLI} is not installed (pip install -e .)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A subdirectory conftest still sees every collected item: act on ours only.
    reason = missing_requirement()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.privileged)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    return ImageStore(tmp_path_factory.mktemp("images"))


@pytest.fixture
def node_env(tmp_path: Path, image_store: ImageStore) -> Iterator[NodeEnv]:
    """The test's node tree, its mounts in a mount namespace of the test's own (see
    nodetree.own_mount_namespace: no one else on the machine can pin them)."""
    with own_mount_namespace():
        node = NodeEnv(tmp_path / "node", image_store)
        try:
            yield node
        finally:
            left = node.finalize()
            if left:
                pytest.fail("privileged test left mounts behind: " + "; ".join(left))


@pytest.fixture
def textfile_dir() -> Iterator[Path]:
    """A node_exporter textfile directory other users can reach and read (as Debian's is):
    under a per-run directory in /tmp (pytest's own are private to root)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="scratch-stage-metrics-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "textfile").mkdir(mode=0o755)
        yield base / "textfile"
    finally:
        shutil.rmtree(base)
