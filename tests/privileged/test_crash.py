"""Crashes: kill -9 and SIGTERM mid-copy, a corrupt state.json (docs/design.md).

The copies use a 300 MB image of random data, copied in 4 KiB chunks and hashed, so that
a copy lasts long enough (a few seconds here) to be interrupted in the middle.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from nodetree import BIG_SIZE, NodeEnv, hello_of, loops_under, one_line, wait_for

MIB = 1024 * 1024


@pytest.fixture
def big_node(node_env: NodeEnv) -> NodeEnv:
    node_env.add_image("big", "big")
    node_env.configure(chunk_size="4KiB", verify="sha256")
    assert node_env.prolog(11, comment="datasets:big").returncode == 0
    return node_env


def partial_files(node: NodeEnv) -> list[Path]:
    try:
        return sorted((node.cachedir / ".partial").iterdir())
    except FileNotFoundError:
        return []


def copy_under_way(node: NodeEnv) -> Path | None:
    """The partial copy once it holds a few MiB (the copy is then surely mid-way)."""
    files = partial_files(node)
    if files and files[0].stat().st_size >= 4 * MIB:
        return files[0]
    return None


def assert_nothing_mounted_from_partial(node: NodeEnv) -> None:
    assert loops_under(node.cachedir / ".partial") == {}
    assert all(".partial" not in str(b) for b in node.backings("big"))


def test_kill_9_mid_copy_then_purge_all_cleans_up(big_node: NodeEnv) -> None:
    copier = big_node.spawn(["prestage", "big"])
    partial = wait_for(lambda: copy_under_way(big_node))
    assert_nothing_mounted_from_partial(big_node)
    assert big_node.state()["staging"]["big"][0] == copier.pid

    copier.send_signal(signal.SIGKILL)
    copier.wait()

    assert partial.exists() and partial.stat().st_size < BIG_SIZE, "copy was not mid-way"
    assert_nothing_mounted_from_partial(big_node)
    done = big_node.cli("purge", "--all")
    assert done.returncode == 0, done.stderr
    assert partial_files(big_node) == []
    assert big_node.state()["staging"] == {}
    assert not (big_node.cachedir / "big.sqfs").exists()
    assert big_node.backings("big") == [str(big_node.datadir / "big.sqfs")]
    again = big_node.cli("prestage", "big")
    assert again.returncode == 0, again.stderr
    assert big_node.backings("big")[-1] == str(big_node.cachedir / "big.sqfs")
    assert filecmp.cmp(big_node.cachedir / "big.sqfs", big_node.datadir / "big.sqfs", False)
    assert big_node.holders() == {"big": ["11"]}


def test_kill_9_mid_copy_then_prestage_again_succeeds(big_node: NodeEnv) -> None:
    copier = big_node.spawn(["prestage", "big"])
    partial = wait_for(lambda: copy_under_way(big_node))
    copier.send_signal(signal.SIGKILL)
    copier.wait()
    assert partial.exists()

    done = big_node.cli("prestage", "big")

    assert done.returncode == 0, done.stderr
    assert not partial.exists() and partial_files(big_node) == []
    assert big_node.state()["staging"] == {}
    assert big_node.backings("big")[-1] == str(big_node.cachedir / "big.sqfs")
    assert [e["event"] for e in big_node.events() if e["event"].startswith("stage-")].count(
        "stage-done"
    ) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_copy_exits_nonzero_and_removes_partial(
    big_node: NodeEnv, signum: signal.Signals
) -> None:
    copier = big_node.spawn(["prestage", "big"])
    wait_for(lambda: copy_under_way(big_node))

    copier.send_signal(signum)
    _, stderr = copier.communicate(timeout=60)

    assert copier.returncode != 0
    assert "Traceback" not in stderr
    assert partial_files(big_node) == []
    assert big_node.state()["staging"] == {}
    assert not (big_node.cachedir / "big.sqfs").exists()
    assert big_node.backings("big") == [str(big_node.datadir / "big.sqfs")]
    assert [e["dataset"] for e in big_node.events("stage-failed")] == ["big"]


def test_prolog_during_copy_in_flight_falls_back_to_slow_mount(big_node: NodeEnv) -> None:
    copier = big_node.spawn(["prestage", "big"])
    wait_for(lambda: copy_under_way(big_node))
    big_node.configure(prolog_stage_budget="0.5s")

    started = time.monotonic()
    done = big_node.prolog(12, comment="datasets:big")
    elapsed = time.monotonic() - started

    assert done.returncode == 0, done.stderr
    assert copier.poll() is None, "the copy ended before the prolog: nothing was tested"
    assert elapsed < 10
    assert big_node.backings("big") == [str(big_node.datadir / "big.sqfs")]
    assert_nothing_mounted_from_partial(big_node)
    assert len(partial_files(big_node)) == 1  # never two copies of one image at once
    assert copier.wait(timeout=120) == 0
    assert len(big_node.events("stage-start")) == 1
    assert big_node.holders() == {"big": ["11", "12"]}


def _break_state(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(300))
    elif how == "wrong-shape":
        path.write_text(json.dumps({"version": 1, "jobs": [1, 2, 3]}))
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "wrong-shape", "missing"])
def test_corrupt_state_is_rebuilt_from_mounts_and_cache(node_env: NodeEnv, how: str) -> None:
    node_env.add_image("alpha")
    node_env.add_image("beta")
    node_env.add_image("gamma")
    node_env.prolog(11, comment="datasets:alpha")
    node_env.prolog(12, comment="datasets:beta")
    assert node_env.cli("prestage", "alpha").returncode == 0
    node_env.epilog(12)
    state_file = node_env.statedir / "state.json"
    recoveries = len(node_env.events("recovered"))
    _break_state(state_file, how)
    broken = state_file.read_bytes() if state_file.exists() else b""

    done = node_env.cli("status", "--json")

    assert done.returncode == 0, done.stderr
    rows = {d["name"]: d for d in json.loads(done.stdout)["datasets"]}
    assert rows["alpha"]["holders"] == ["recovered"] == rows["beta"]["holders"]
    assert rows["gamma"]["holders"] == []
    assert rows["alpha"]["cached"] is True
    assert rows["alpha"]["state"] == "cached"
    kept = list(node_env.statedir.glob("state.json.corrupt-*"))
    if how == "missing":
        assert kept == []
    else:
        assert len(kept) == 1 and kept[0].read_bytes() == broken
        assert "NODE STATE CORRUPT" in done.stderr.splitlines()[0]
    assert node_env.state()["jobs"]["recovered"][0] == ["alpha", "beta"]
    assert len(node_env.events("recovered")) == recoveries + 1
    # The node keeps working: a new job is served, the cached copy still mounted on top.
    assert node_env.prolog(13, comment="datasets:alpha,gamma").returncode == 0
    assert node_env.backings("alpha")[-1] == str(node_env.cachedir / "alpha.sqfs")
    assert (node_env.mountdir / "gamma" / "hello.txt").read_text() == hello_of("gamma")
    assert node_env.epilog(11).returncode == 0


def test_state_of_unknown_version_is_never_overwritten(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.prolog(11, comment="datasets:alpha")
    state_file = node_env.statedir / "state.json"
    future = json.dumps({"version": 99, "whatever": "a newer scratch-stage wrote"}).encode()
    state_file.write_bytes(future)

    status = node_env.cli("status")
    prolog = node_env.prolog(12, comment="datasets:alpha")

    assert status.returncode == 1
    assert "version 99" in one_line(status.stderr)
    assert prolog.returncode != 0
    assert "version 99" in one_line(prolog.stderr)
    assert state_file.read_bytes() == future


def test_kill_9_of_prologs_at_random_moments_never_corrupts_state(node_env: NodeEnv) -> None:
    names = [f"k{i}" for i in range(4)]
    for name in names:
        node_env.add_image(name, "alpha")
    rng = random.Random(7)
    for job_id in range(1, 25):
        proc = node_env.spawn(["prolog"], node_env.job_environ(job_id, spank=rng.choice(names)))
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    done = node_env.cli("status", "--json")

    assert done.returncode == 0, done.stderr
    assert "CORRUPT" not in done.stderr
    assert list(node_env.statedir.glob("state.json.corrupt-*")) == []
    assert all(len(node_env.stack(name)) <= 1 for name in names)
    # The node still serves every dataset, each from one mount.
    assert node_env.prolog(100, spank=",".join(names)).returncode == 0
    assert all(len(node_env.stack(name)) == 1 for name in names)
    assert all("100" in node_env.holders()[name] for name in names)
