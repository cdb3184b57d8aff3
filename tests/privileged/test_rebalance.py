"""Rebalance end to end: real heat from /proc/diskstats, mount-over while reading, eviction."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from nodetree import NodeEnv, blob_of, loops_under, wait_for

IMAGE_BYTES = 400_000  # each test image is ~260 kB: the capacity holds one, not two


def drop_caches() -> None:
    """Make the next reads hit the loop devices (counted in /proc/diskstats)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_all(directory: Path) -> None:
    for path in sorted(directory.iterdir()):
        path.read_bytes()


def rebalance(node: NodeEnv, *args: str) -> dict:  # type: ignore[type-arg]
    done = node.cli("rebalance", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def mounted_idle(node: NodeEnv, *names: str) -> None:
    """Mount NAMES through a job's prolog, then end the job: mounted, nobody holds them."""
    assert node.prolog(1, comment="datasets:" + ",".join(names)).returncode == 0
    assert node.epilog(1).returncode == 0


def setup(node: NodeEnv) -> None:
    node.configure(capacity=IMAGE_BYTES, period=2, demand={"source": "none"})
    node.add_image("a")
    node.add_image("b")
    mounted_idle(node, "a", "b")


def test_heat_caches_the_read_dataset_live_then_follows_the_heat(node_env: NodeEnv) -> None:
    setup(node_env)
    assert rebalance(node_env)["stage"] == []  # first sample: no history, no heat
    drop_caches()
    read_all(node_env.mountdir / "a")

    dry = node_env.cli("rebalance", "--dry-run", "--explain")
    assert dry.returncode == 0, dry.stderr
    assert "would stage a" in dry.stdout
    assert "a: stage: selected" in dry.stdout
    assert "b: none: not worth a copy" in dry.stdout
    assert not (node_env.cachedir / "a.sqfs").exists()  # a dry run changes nothing

    reader = open(node_env.mountdir / "a" / "blob.bin", "rb")  # noqa: SIM115 - spans the pass
    head = reader.read(100_000)
    report = rebalance(node_env)
    assert report["stage"] == ["a"] and report["failed"] == []
    top = node_env.backings("a")[-1]
    assert top == str(node_env.cachedir / "a.sqfs")  # mounted over the slow image
    assert head + reader.read() == blob_of("a")  # the open file read on, unharmed
    reader.close()
    assert hashlib.sha256((node_env.mountdir / "a/blob.bin").read_bytes()).digest() == (
        hashlib.sha256(blob_of("a")).digest()
    )  # a new open reads the cached copy, same bytes

    rebalance(node_env)  # a sample after the reads: a's heat leaves the window from here
    time.sleep(2.5)
    drop_caches()
    read_all(node_env.mountdir / "b")
    report = rebalance(node_env)
    assert report["evict"] == ["a"] and report["stage"] == ["b"], report
    assert not (node_env.cachedir / "a.sqfs").exists()
    assert node_env.backings("b")[-1] == str(node_env.cachedir / "b.sqfs")
    assert str(node_env.cachedir / "a.sqfs") not in node_env.backings("a")
    assert [e["dataset"] for e in node_env.events("evict")] == ["a"]
    status = {d["name"]: d for d in node_env.status()["datasets"]}
    assert status["b"]["state"] == "cached" and status["a"]["state"] == "mounted", report
    assert status["b"]["heat"] > 0

    # Planning again on the result proposes nothing.
    again = rebalance(node_env, "--dry-run")
    assert again["evict"] == [] and again["stage"] == []


def explained_line(text: str, name: str) -> str:
    """The line `rebalance --explain` gives NAME."""
    return next(x for x in text.splitlines() if x.strip().startswith(f"{name}: "))


def test_the_first_pass_after_reads_sees_their_heat_and_a_dry_run_the_same(
    node_env: NodeEnv,
) -> None:
    node_env.configure(capacity=IMAGE_BYTES, period=600, demand={"source": "none"})
    node_env.add_image("a")
    node_env.add_image("b")
    mounted_idle(node_env, "a", "b")  # the prolog attaches both loop devices, records it
    heat = node_env.state()["heat"]
    assert heat["samples"] == {} and heat["counters"] == {}  # no rebalance sample yet
    assert sorted(b for b, _, _ in heat["attached"].values()) == [
        str(node_env.datadir / "a.sqfs"), str(node_env.datadir / "b.sqfs"),
    ]  # fmt: skip
    drop_caches()
    for _ in range(3):
        read_all(node_env.mountdir / "b")
        drop_caches()

    state_before = (node_env.statedir / "state.json").read_bytes()
    stacks_before = node_env.snapshot()
    heats = []
    for _ in range(2):  # a dry run keeps no sample: it shows the same heat every time
        dry = node_env.cli("rebalance", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        data = json.loads(dry.stdout)
        assert data["stage"] == ["b"], data
        heats.append(data["decisions"]["b"]["heat"])
        assert data["decisions"]["a"]["heat"] == 0.0
    explained = node_env.cli("rebalance", "--dry-run", "--explain").stdout
    assert "would stage b" in explained, explained
    assert re.search(r"heat [0-9.]+ (B|KiB|MiB|GiB)/s", explained_line(explained, "b"))
    assert "heat 0 B/s" in explained_line(explained, "a")
    assert heats[0] > 0 and heats[1] > 0
    assert heats[1] == pytest.approx(heats[0], rel=0.5)  # only the elapsed time moves it
    assert (node_env.statedir / "state.json").read_bytes() == state_before  # nothing written
    assert node_env.snapshot() == stacks_before
    assert not (node_env.cachedir / "b.sqfs").exists()

    report = rebalance(node_env, "--explain")  # the first real pass: no earlier sample
    assert report["stage"] == ["b"] and report["failed"] == [], report
    assert report["decisions"]["b"]["heat"] > 0
    assert node_env.backings("b")[-1] == str(node_env.cachedir / "b.sqfs")
    heat = node_env.state()["heat"]
    # The cached copy's own loop device was recorded when the stager mounted it over; the
    # pass's sample consumed the two prolog records.
    assert [b for b, _, _ in heat["attached"].values()] == [str(node_env.cachedir / "b.sqfs")]


def test_a_pinned_dataset_survives_a_hotter_one(node_env: NodeEnv) -> None:
    setup(node_env)
    assert node_env.cli("pin", "a").returncode == 0
    report = rebalance(node_env)
    assert report["stage"] == ["a"]  # a pin is staged even without heat
    drop_caches()
    read_all(node_env.mountdir / "b")
    report = rebalance(node_env, "--explain")
    assert report["evict"] == [] and report["stage"] == []
    assert report["decisions"]["a"]["reason"] == "pinned"
    assert (node_env.cachedir / "a.sqfs").exists()


def test_second_rebalance_says_so_and_exits_0(node_env: NodeEnv) -> None:
    node_env.configure(demand={"source": "none"})
    node_env.add_image("big", "big")
    assert node_env.cli("pin", "big").returncode == 0
    first = node_env.spawn(["rebalance"])
    wait_for(lambda: any((node_env.cachedir / ".partial").glob("*")), timeout=60)
    second = node_env.cli("rebalance")
    assert second.returncode == 0
    assert "another rebalance is running" in second.stdout
    first.wait(timeout=120)
    assert first.returncode == 0


def test_kill_9_mid_copy_then_the_next_pass_recovers(node_env: NodeEnv) -> None:
    node_env.configure(demand={"source": "none"}, capacity="400MB")
    node_env.add_image("big", "big")
    assert node_env.cli("pin", "big").returncode == 0
    victim = node_env.spawn(["rebalance"])
    wait_for(lambda: any((node_env.cachedir / ".partial").glob("*")), timeout=60)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert all(
        str(node_env.cachedir / ".partial") not in (b or "") for b in node_env.backings("big")
    )
    state = node_env.state()
    assert list(state["staging"]) == ["big"]  # the reservation still counts: capacity holds
    report = rebalance(node_env)
    assert report["stage"] == ["big"] and report["failed"] == [], report
    assert list((node_env.cachedir / ".partial").iterdir()) == []
    assert node_env.state()["staging"] == {}
    assert node_env.backings("big")[-1] == str(node_env.cachedir / "big.sqfs")


def test_removed_and_replaced_images_are_unmounted_when_idle(node_env: NodeEnv) -> None:
    node_env.configure(demand={"source": "none"})
    node_env.add_image("a")
    node_env.add_image("b")
    mounted_idle(node_env, "a", "b")
    (node_env.datadir / "a.sqfs").unlink()
    node_env.replace_image("b", "b2")
    report = rebalance(node_env)
    assert node_env.stack("a") == [] and node_env.stack("b") == []
    assert sorted((d["action"], d["dataset"], d["detail"]) for d in report["done"]) == [
        ("unmounted", "a", "image removed from datadir"),
        ("unmounted", "b", "image replaced in datadir"),
    ]


def test_daemon_notifies_systemd_and_stops_cleanly_mid_copy(node_env: NodeEnv) -> None:
    import socket

    node_env.configure(demand={"source": "none"}, interval=1)
    node_env.add_image("big", "big")
    assert node_env.cli("pin", "big").returncode == 0
    notify = node_env.root / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(60)
        daemon = node_env.spawn(
            ["daemon"], {**node_env.admin_environ(), "NOTIFY_SOCKET": str(notify)}
        )
        assert listener.recv(4096) == b"READY=1"
        wait_for(lambda: any((node_env.cachedir / ".partial").glob("*")), timeout=60)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
        messages = []
        with contextlib.suppress(OSError):
            listener.settimeout(1)
            while True:
                messages.append(listener.recv(4096))
    assert b"STOPPING=1" in messages
    assert list((node_env.cachedir / ".partial").iterdir()) == []
    assert node_env.state()["staging"] == {}
    assert not (node_env.cachedir / "big.sqfs").exists()
    assert [e["event"] for e in node_env.events()][-1] == "stage-failed"


def deleted_copies(node: NodeEnv) -> list[str]:
    """Backing files of loop devices still attached to deleted cached copies."""
    return [b for b in loops_under(node.cachedir).values() if b.endswith(" (deleted)")]


def test_a_copy_a_user_namespace_holds_defers_the_next_copy_without_backoff(
    node_env: NodeEnv,
) -> None:
    # Any user can copy the node's mounts into a namespace of their own (unshare --user
    # --mount; Slurm's job_container/tmpfs makes a private one per job): a cached copy
    # evicted meanwhile stays on disk, deleted, until that namespace ends, and counts. The
    # copy it makes room for is deferred with that reason, never put into backoff (which
    # doubled up to a day and counted as a failed copy), and made once the space is free.
    setup(node_env)
    assert node_env.cli("prestage", "a").returncode == 0
    assert node_env.backings("a")[-1] == str(node_env.cachedir / "a.sqfs")
    holder = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "unshare", "--user", "--map-root-user", "--mount", "sleep", "600"],
    )  # fmt: skip
    try:
        ours = os.readlink("/proc/self/ns/mnt")

        def holds_copy() -> bool:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{holder.pid}/ns/mnt") != ours:
                    mounts = Path(f"/proc/{holder.pid}/mountinfo").read_text()
                    return f" {node_env.mountdir / 'a'} " in mounts
            assert holder.poll() is None, "the user could not make a mount namespace"
            return False

        wait_for(holds_copy)
        assert node_env.cli("pin", "b").returncode == 0  # the pass evicts a, copies b

        done = node_env.cli("rebalance", "--json")

        assert done.returncode == 1, done.stderr
        report = json.loads(done.stdout)
        assert report["evict"] == ["a"] and report["stage"] == ["b"], report
        (failed,) = report["failed"]
        assert failed["step"] == "stage" and failed["dataset"] == "b", failed
        assert "does not fit yet" in failed["error"]
        assert "deleted copies still mounted" in failed["error"], failed
        assert not (node_env.cachedir / "a.sqfs").exists()
        assert len(deleted_copies(node_env)) == 1  # a's, in the user's namespace only
        assert node_env.stack("a") and all("(deleted)" not in b for b in node_env.backings("a"))
        assert node_env.state()["failures"] == {}  # no backoff
        assert node_env.events("stage-failed") == []
    finally:
        holder.kill()
        holder.wait()
    wait_for(lambda: deleted_copies(node_env) == [])  # its namespace gone with it

    report = rebalance(node_env)

    assert report["stage"] == ["b"] and report["failed"] == [], report
    assert node_env.backings("b")[-1] == str(node_env.cachedir / "b.sqfs")
