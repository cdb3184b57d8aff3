"""Reproductions of what was observed on main before the node-state protocol (each of
these failed there): phantom cached copies, commands under the state lock, a user holding
the lock, a waiting prestage that never noticed its copier died, capacity exceeded on
disk, unhandled OSError, and copies retried on every pass."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nodetree import CLI, NodeEnv, hello_of, loops_under, mounts_under

KILLED = -9


def test_interrupted_eviction_leaves_no_phantom_cached_copy(node_env: NodeEnv) -> None:
    # Main: a pass evicting two datasets, killed after the first unlink, kept the first
    # recorded as cached with no file; prestage then said "already cached and mounted".
    for name in ("alpha", "beta", "gamma"):
        node_env.add_image(name)
    assert node_env.cli("prestage", "alpha", "beta").returncode == 0
    size = os.path.getsize(node_env.datadir / "gamma.sqfs")
    node_env.configure(capacity=str(size + size // 2), demand={"source": "none"})
    assert node_env.cli("pin", "gamma").returncode == 0
    env = {**node_env.admin_environ(), "SCRATCH_STAGE_FAULT": "after-unlink@1"}

    done = node_env.run(["rebalance"], env)

    assert done.returncode == KILLED
    status = {d["name"]: d for d in node_env.status()["datasets"]}
    for name in ("alpha", "beta"):
        on_disk = (node_env.cachedir / f"{name}.sqfs").exists()
        assert status[name]["cached"] == on_disk
    first = "alpha" if not (node_env.cachedir / "alpha.sqfs").exists() else "beta"
    again = node_env.cli("prestage", first)
    assert again.returncode in (0, 1)
    assert "already cached" not in again.stdout


def test_slow_umount_does_not_hold_the_state_lock(node_env: NodeEnv, tmp_path: Path) -> None:
    # Main: the rebalance unmounted idle stacks under the state lock; one slow umount made
    # concurrent prologs time out (exit 5, a drained node).
    # The umount blocks until the test lets it go (a fixed sleep in it, with a fixed sleep
    # here for the pass to reach it and a time limit on the prolog, failed under load).
    entered, release = tmp_path / "umount-entered", tmp_path / "umount-release"
    slow = tmp_path / "slow-umount"
    slow.write_text(
        f"#!/bin/sh\ntouch {entered}\nwhile [ ! -e {release} ]; do sleep 0.05; done\n"
        'exec /usr/bin/umount "$@"\n'
    )
    slow.chmod(0o755)
    node_env.add_image("alpha")
    node_env.add_image("beta")
    assert node_env.prolog(1, comment="datasets:alpha").returncode == 0
    assert node_env.epilog(1).returncode == 0
    node_env.configure(
        idle_unmount=1, umount_command=str(slow), lock_timeout=1, demand={"source": "none"}
    )
    time.sleep(1.2)  # at least the idle time (a lower bound: load only lengthens it)
    rebalance = node_env.spawn(["rebalance"])
    try:
        wait_until(entered.exists, timeout=60)  # the pass is inside the slow umount now

        # Were the umount under the state lock, this prolog would give up after
        # lock_timeout (1 s) and fail: the umount does not end before release exists.
        prolog = node_env.prolog(2, comment="datasets:beta")

        assert prolog.returncode == 0, prolog.stderr
        assert node_env.stack("beta") and not release.exists()
    finally:
        release.touch()
    assert rebalance.wait(timeout=60) == 0
    assert node_env.stack("alpha") == []


def test_unprivileged_user_cannot_hold_the_state_lock(node_env: NodeEnv) -> None:
    # Main: statedir 0755 and state.lock 0644: `flock -s state.lock sleep 600` as any user
    # made every prolog exit 5. The old layout is made private and the lock replaced.
    node_env.add_image("alpha")
    node_env.statedir.chmod(0o755)
    lock = node_env.statedir / "state.lock"
    lock.write_text("")
    lock.chmod(0o644)
    for directory in (node_env.root, *node_env.root.parents):
        if str(directory).startswith("/tmp/"):
            directory.chmod(directory.stat().st_mode | 0o005)  # a user can reach statedir
    holder = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "flock", "-s", str(lock), "sleep", "60"],
    )  # fmt: skip
    try:
        wait_until(lambda: lock_taken(lock) or holder.poll() is not None)
        assert holder.poll() is None, "the user could not even take the old lock"
        done = node_env.prolog(3, comment="datasets:alpha")
        assert done.returncode == 0, done.stderr
        assert (node_env.statedir.stat().st_mode & 0o777) == 0o700
        again = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "flock", "-n", "-s", str(lock), "true"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert again.returncode != 0  # the private statedir cannot even be entered now
        assert node_env.holders() == {"alpha": ["3"]}
    finally:
        holder.kill()
        holder.wait()


def test_a_bad_image_is_refused_and_the_jobs_other_datasets_stay_held(node_env: NodeEnv) -> None:
    # Main: a later dataset failing to mount exited 1 (drain) and left earlier ones mounted
    # without a holder. Now: refused, and the good one is mounted and held.
    node_env.add_image("alpha")
    bad = node_env.add_image("broken", "beta")
    with open(bad, "r+b") as f:  # a valid superblock, a zeroed body
        f.seek(96)
        f.write(b"\0" * (os.path.getsize(bad) - 96))

    done = node_env.prolog(4, comment="datasets:alpha,broken")

    assert done.returncode == 0, done.stderr
    assert node_env.holders() == {"alpha": ["4"]}
    assert [os.path.basename(m.target) for m in mounts_under(node_env.mountdir)] == ["alpha"]
    refused = node_env.events("refused")
    assert refused[-1]["dataset"] == "broken" and "cannot be mounted" in refused[-1]["reason"]


def test_waiting_prestage_reaps_a_dead_copier(node_env: NodeEnv) -> None:
    # Main: a prestage waiting for another process's copy waited forever after kill -9.
    node_env.add_image("big", "big")
    node_env.configure(bandwidth="20MB")
    first = node_env.spawn(["prestage", "big"])
    wait_until(lambda: "big" in staging(node_env))
    node_env.configure(bandwidth=0)
    second = node_env.spawn(["prestage", "big"])
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()

    assert second.wait(timeout=90) == 0
    assert node_env.backings("big")[-1] == str(node_env.cachedir / "big.sqfs")


def staging(node_env: NodeEnv) -> dict[str, object]:
    path = node_env.statedir / "state.json"
    return node_env.state()["staging"] if path.exists() else {}  # type: ignore[no-any-return]


def lock_taken(lock: Path) -> bool:
    """Whether another process holds a flock on LOCK (probed without waiting)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # not even created yet
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's own lock, if it got one
    return False


def has_open(pid: int, path: Path) -> bool:
    """Whether process PID has PATH open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
    return False


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_replaced_image_still_held_counts_on_disk(node_env: NodeEnv) -> None:
    # Main: re-staging a replaced image that a job held renamed over the mounted copy; the
    # old inode stayed in use but no longer counted (status 4 MiB used, df 8.4 MB).
    node_env.add_image("alpha")
    size = os.path.getsize(node_env.datadir / "alpha.sqfs")
    node_env.configure(capacity=str(2 * size + size // 2))
    assert node_env.cli("prestage", "alpha").returncode == 0
    assert node_env.prolog(5, comment="datasets:alpha").returncode == 0
    node_env.replace_image("alpha", "beta")
    assert os.path.getsize(node_env.datadir / "alpha.sqfs") == size  # same-size images

    first = node_env.cli("prestage", "alpha")  # room for two: the held old one and this
    assert first.returncode == 0, first.stderr
    assert node_env.status()["used_bytes"] >= 2 * size  # the deleted, still-mounted copy
    node_env.replace_image("alpha", "gamma")
    second = node_env.cli("prestage", "alpha")  # a third copy would exceed the capacity

    assert second.returncode == 1 and "does not fit" in second.stderr
    on_disk = sum(f.stat().st_size for f in node_env.cachedir.glob("*.sqfs"))
    deleted = [b for b in node_env.backings("alpha") if b and b.endswith(" (deleted)")]
    assert on_disk + size * len(deleted) <= 2 * size + size // 2


def test_unwritable_cachedir_with_stage_budget_is_not_a_drain(node_env: NodeEnv) -> None:
    # Main: prolog_stage_budget > 0 and an unusable cachedir: exit 3 with a traceback.
    node_env.add_image("alpha")
    shutil.rmtree(node_env.cachedir)
    node_env.cachedir.write_text("a file where the cache directory should be")
    node_env.configure(prolog_stage_budget=5)

    done = node_env.prolog(6, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert node_env.holders() == {"alpha": ["6"]}


def test_failing_copies_back_off(node_env: NodeEnv) -> None:
    # Main: capacity larger than the real filesystem made every pass retry the same copy.
    node_env.add_image("alpha")
    small = node_env.root / "smallcache"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    node_env.configure(cachedir=str(small), capacity="1GiB", demand={"source": "none"})
    assert node_env.cli("pin", "alpha").returncode == 0

    first = node_env.cli("rebalance")
    second = node_env.cli("rebalance")

    assert "does not fit on the cache filesystem" in first.stdout
    assert "not retried before" in second.stdout
    assert len(node_env.events("stage-failed")) == 1
    row = next(d for d in node_env.status()["datasets"] if d["name"] == "alpha")
    assert row["failures"] == 1 and row["retry_at"] is not None


@pytest.mark.parametrize("swap", ["symlink", "rename"])
def test_image_swapped_while_the_prolog_waits_is_not_mounted(node_env: NodeEnv, swap: str) -> None:
    # Main: the image was checked before the state lock and mounted by path after it;
    # swapping mine.sqfs for a root-only 0600 image in that window mounted the private image
    # for the user. Now the loop device is attached to the descriptor checked again against
    # the fingerprint the access decision was made on: the swap is refused.
    mine = node_env.add_image("mine", "alpha")
    secret = node_env.add_image("secret", "beta", mode=0o600)
    lock = node_env.statedir / "state.lock"
    # Held until its stdin closes (fixed sleeps here, for the holder to take the lock and
    # the prolog to reach it, let either come too late under load).
    holder = subprocess.Popen(["flock", str(lock), "cat"], stdin=subprocess.PIPE)
    try:
        wait_until(lambda: lock_taken(lock))
        prolog = node_env.spawn(
            ["prolog"],
            node_env.job_environ(21, comment="datasets:mine", user="nobody", uid=65534, gid=65534),
        )
        # The prolog checks the image before it opens the lock: once it has the lock file
        # open it has checked mine.sqfs, and it waits for the lock.
        wait_until(lambda: has_open(prolog.pid, lock) or prolog.poll() is not None)
        assert prolog.poll() is None, prolog.communicate()
        if swap == "symlink":
            os.unlink(mine)
            os.symlink("secret.sqfs", mine)
        else:
            os.replace(secret, mine)
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
        _, stderr = prolog.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert prolog.returncode == 0, stderr
    assert node_env.stack("mine") == []
    backings = [b for b in loops_under(node_env.root).values()]
    assert not any("secret" in b or "beta" in b for b in backings)
    refused = node_env.events("refused")
    assert (
        refused[-1]["dataset"] == "mine" and "changed since it was checked" in refused[-1]["reason"]
    )
    assert node_env.holders() == {}


def test_loop_devices_are_read_only_and_autoclear(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    assert node_env.prolog(22, comment="datasets:alpha").returncode == 0
    (device,) = [m.source for m in node_env.stack("alpha")]
    sysfs = Path("/sys/block") / device.rsplit("/", 1)[-1]
    assert (sysfs / "ro").read_text().strip() == "1"
    assert (sysfs / "loop/autoclear").read_text().strip() == "1"
    assert (sysfs / "loop/backing_file").read_text().strip() == str(node_env.datadir / "alpha.sqfs")


def _as_user(uid: int, gid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _reachable(node_env: NodeEnv) -> None:
    for directory in (node_env.root, *node_env.root.parents):
        if str(directory).startswith("/tmp/"):
            directory.chmod(directory.stat().st_mode | 0o005)


def test_restricted_dataset_is_readable_only_by_its_groups(node_env: NodeEnv) -> None:
    # Main: mountpoints 0755 in the host namespace, cached copies 0644: a user outside the
    # dataset's groups read secret/hello.txt while a member's job held it, and after.
    # nobody (primary group nogroup) is a member; daemon (uid 1) is not.
    node_env.add_image("secret")
    node_env.add_image("public")
    node_env.configure(access={"secret": ["nogroup"]})
    _reachable(node_env)
    hello = str(node_env.mountdir / "secret" / "hello.txt")
    copy = str(node_env.cachedir / "secret.sqfs")

    done = node_env.prolog(
        31, comment="datasets:secret,public", user="nobody", uid=65534, gid=65534
    )

    assert done.returncode == 0, done.stderr
    assert _as_user(65534, 65534, "cat", hello).stdout == hello_of("secret")
    outsider = _as_user(1, 1, "cat", hello)
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr
    assert _as_user(1, 1, "cat", str(node_env.mountdir / "public" / "hello.txt")).returncode == 0
    assert node_env.cli("prestage", "secret").returncode == 0  # now mounted over, cached
    assert node_env.backings("secret")[-1] == copy
    assert _as_user(65534, 65534, "cat", hello).stdout == hello_of("secret")
    assert "Permission denied" in _as_user(1, 1, "cat", hello).stderr
    assert "Permission denied" in _as_user(1, 1, "head", "-c", "4", copy).stderr
    assert node_env.epilog(31).returncode == 0  # released, still mounted until idle
    assert node_env.stack("secret")
    assert "Permission denied" in _as_user(1, 1, "cat", hello).stderr


def test_link_to_a_restricted_dataset_must_be_restricted_too(node_env: NodeEnv) -> None:
    node_env.add_image("secret")
    os.symlink("secret.sqfs", node_env.datadir / "alias.sqfs")
    node_env.configure(access={"secret": ["root"]})

    done = node_env.prolog(32, comment="datasets:alias")

    assert done.returncode == 0, done.stderr
    assert node_env.stack("alias") == []
    assert "must be restricted itself" in node_env.events("refused")[-1]["reason"]


def test_a_user_status_reads_the_public_summary_only(node_env: NodeEnv) -> None:
    # Main: state.json and events.log were world-readable (other users' job ids, datasets,
    # refusal reasons). Now they are root's; a user's `status` reads a public summary.
    node_env.add_image("alpha")
    node_env.configure(demand={"source": "none"})
    _reachable(node_env)
    env = node_env.admin_environ()
    user_status = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   str(CLI), "status"]  # fmt: skip

    before = subprocess.run(user_status, env=env, capture_output=True, text=True, timeout=60)
    assert before.returncode == 1 and "public summary" in before.stderr
    assert "Traceback" not in before.stderr and len(before.stderr.splitlines()) == 1

    assert node_env.prolog(41, comment="datasets:alpha").returncode == 0
    assert node_env.cli("rebalance").returncode in (0, 1)
    for private in ("state.json", "events.log"):
        assert (node_env.statedir / private).stat().st_mode & 0o077 == 0
    shown = subprocess.run(user_status, env=env, capture_output=True, text=True, timeout=60)
    as_json = subprocess.run(
        [*user_status, "--json"], env=env, capture_output=True, text=True, timeout=60
    )

    assert shown.returncode == 0, shown.stderr
    assert "alpha" in shown.stdout and "mounted" in shown.stdout
    assert "HOLDERS" not in shown.stdout and " 41" not in shown.stdout
    data = json.loads(as_json.stdout)
    assert [d["name"] for d in data["datasets"]] == ["alpha"]
    assert set(data["datasets"][0]) == {"name", "size", "state", "cached"}
    assert '"41"' not in as_json.stdout and "holders" not in as_json.stdout


def test_trusted_owners_admits_a_data_stewards_images_only(node_env: NodeEnv) -> None:
    # By default only root's images are mounted; `trusted_owners` names the stewards whose
    # own images are served too. Another user's image stays refused.
    steward = node_env.add_image("steward")
    os.chown(steward, 1, 1)  # daemon
    stranger = node_env.add_image("stranger", "beta")
    os.chown(stranger, 65534, 65534)  # nobody

    assert node_env.prolog(51, comment="datasets:steward").returncode == 0
    assert node_env.stack("steward") == []
    node_env.configure(trusted_owners={"users": ["daemon"]})
    done = node_env.prolog(52, comment="datasets:steward,stranger")

    assert done.returncode == 0, done.stderr
    assert node_env.stack("steward") and node_env.stack("stranger") == []
    assert "owned by uid 65534" in node_env.events("refused")[-1]["reason"]
    check = node_env.cli("config", "check")
    assert "trusted_owners." not in check.stdout + check.stderr
    node_env.configure(trusted_owners={"users": ["no-such-steward"]})
    bad = node_env.cli("config", "check")
    assert bad.returncode == 4 and "no-such-steward" in bad.stdout
