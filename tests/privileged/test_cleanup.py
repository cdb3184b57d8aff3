"""The tier's own safety net: a failing test leaves no mount and no loop device behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nodetree import ImageStore, NodeEnv, clean_tree, loops_under, mounts_under, wait_for

HERE = Path(__file__).resolve().parent

FAILING_SUITE = """
import json
import os
from pathlib import Path

import pytest
from nodetree import loops_under, mounts_under

RECORD = Path(os.environ["CLEANUP_RECORD"])


def record(node, label):
    seen = {"root": str(node.root), "mounts": len(mounts_under(node.root)),
            "loops": len(loops_under(node.root))}
    (RECORD / label).write_text(json.dumps(seen))


def test_fails_with_busy_stacked_mounts(node_env):
    node_env.add_image("alpha")
    node_env.add_image("beta")
    assert node_env.prolog(1, comment="datasets:alpha,beta").returncode == 0
    assert node_env.cli("prestage", "alpha").returncode == 0
    busy = open(node_env.mountdir / "alpha" / "hello.txt")  # kept open by the traceback
    record(node_env, "body")
    raise RuntimeError(f"deliberate failure with {busy.name} open")


@pytest.fixture
def mounted_then_broken(node_env):
    node_env.add_image("alpha")
    assert node_env.prolog(1, comment="datasets:alpha").returncode == 0
    record(node_env, "fixture")
    raise RuntimeError("deliberate failure inside a fixture")


def test_fixture_fails(mounted_then_broken):
    pass
"""


def test_failing_tests_leave_nothing_behind(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(HERE / "conftest.py", suite)
    shutil.copy(HERE / "nodetree.py", suite)
    (suite / "test_failing.py").write_text(FAILING_SUITE)
    record = tmp_path / "record"
    record.mkdir()
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings"]
    argv += [str(suite), "--basetemp", str(tmp_path / "basetemp")]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, cwd=suite,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CLEANUP_RECORD": str(record)},
        )  # fmt: skip

        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 failed, 1 error in" in done.stdout, done.stdout
        assert "left mounts behind" not in done.stdout
        seen = {p.name: json.loads(p.read_text()) for p in record.iterdir()}
        assert seen["body"]["mounts"] == 3 and seen["body"]["loops"] == 3
        assert seen["fixture"]["mounts"] == 1
        roots = [Path(run["root"]) for run in seen.values()]
        assert [mounts_under(root) for root in roots] == [[], []]
        wait_for(lambda: all(loops_under(root) == {} for root in roots), timeout=10)
    finally:
        assert clean_tree(tmp_path) == []


def test_finalizer_cleans_up_after_an_exception(tmp_path: Path, image_store: ImageStore) -> None:
    node = NodeEnv(tmp_path / "direct", image_store)
    node.add_image("alpha")
    node.add_image("beta")
    busy = None
    try:
        with pytest.raises(RuntimeError, match="deliberate"):
            try:
                assert node.prolog(1, comment="datasets:alpha,beta").returncode == 0
                assert node.cli("prestage", "alpha").returncode == 0
                busy = open(node.mountdir / "alpha" / "blob.bin", "rb")  # noqa: SIM115
                raise RuntimeError("deliberate")
            finally:
                left = node.finalize()
        assert left == []
        assert mounts_under(node.root) == []
        assert busy is not None and len(busy.read()) > 0  # still readable, lazily detached
        busy.close()
        # The last close frees the loop devices (autoclear, set by `mount -o loop`/`losetup -d`).
        wait_for(lambda: loops_under(node.root) == {}, timeout=10)
    finally:
        if busy is not None:
            busy.close()
        assert clean_tree(tmp_path) == []
