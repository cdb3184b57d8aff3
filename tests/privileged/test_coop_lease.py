"""Reader leases on shared storage with real processes racing, and an attacker (nobody).

Several processes (the "nodes") contend for a lease slot in one coordination directory; each
records when it holds it, and the records must never overlap beyond the configured number of
readers. A holder killed with SIGKILL loses its slot after the lease time, not before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scratch_stage.host.catalog import Trust
from scratch_stage.host.lease import COOP_DIRNAME, CoopUnavailable, open_entry

NOBODY = 65534
AS_NOBODY = ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

CONTENDER = r"""
import json, os, sys, time
from scratch_stage.host.catalog import Trust
from scratch_stage.host.lease import open_entry
coop, readers, log, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
entry = open_entry(coop, "img.key", Trust(), 2.0)
end = time.monotonic() + seconds
held = 0
while time.monotonic() < end:
    lease = entry.try_acquire(readers, f"p{os.getpid()}")
    if lease is None:
        time.sleep(0.001)
        continue
    start = time.time()
    time.sleep(0.005)
    assert entry.renew(lease)
    stop = time.time()
    with open(log, "a") as f:
        f.write(json.dumps([start, stop, os.getpid()]) + "\n")
    entry.release(lease)
    held += 1
print(held)
"""


def run_contenders(tmp_path: Path, readers: int, count: int, seconds: float) -> list[list[float]]:
    log = tmp_path / "held.log"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONTENDER,
                str(tmp_path / "coop"),
                str(readers),
                str(log),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o) for o in outs) > count  # they really did take turns
    return [json.loads(line) for line in log.read_text().splitlines()]


def max_overlap(intervals: list[list[float]]) -> int:
    events = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])
    # At equal times, a release sorts before an acquire: (t, -1) < (t, 1).
    now = most = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


@pytest.mark.parametrize("readers", [1, 2])
def test_racing_processes_never_exceed_the_readers(tmp_path: Path, readers: int) -> None:
    held = run_contenders(tmp_path, readers, count=6, seconds=3.0)
    assert max_overlap(held) <= readers
    assert len({pid for _, _, pid in held}) >= 2


def test_killed_holder_loses_its_lease_after_the_expiry(tmp_path: Path) -> None:
    coop = tmp_path / "coop"
    code = (
        "import sys, time\n"
        "from scratch_stage.host.catalog import Trust\n"
        "from scratch_stage.host.lease import open_entry\n"
        "e = open_entry(sys.argv[1], 'img.key', Trust(), 2.0)\n"
        "assert e.try_acquire(1, 'victim') is not None\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    victim = subprocess.Popen(
        [sys.executable, "-c", code, str(coop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert victim.stdout is not None and victim.stdout.readline() == "held\n"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        entry = open_entry(str(coop), "img.key", Trust(), 2.0)
        assert entry.try_acquire(1, "n2") is None  # not yet: its lease is still live
        deadline = time.monotonic() + 10
        lease = None
        while lease is None and time.monotonic() < deadline:
            time.sleep(0.1)
            lease = entry.try_acquire(1, "n2")
        assert lease is not None and lease.generation == 1
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def nobody(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, *argv], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_nobody_cannot_block_or_steer_through_a_sticky_datadir(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    datadir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(datadir, 0o1777)  # sticky and world-writable, as some sites keep it
    coop = datadir / COOP_DIRNAME
    # nobody gets there first: its directory is never used (staging goes on independently).
    assert nobody("/bin/mkdir", "-m", "0777", COOP_DIRNAME, cwd=datadir).returncode == 0
    with pytest.raises(CoopUnavailable, match="not a trusted owner"):
        open_entry(str(coop), "img.key", Trust(), 60.0)
    assert nobody("/bin/rmdir", COOP_DIRNAME, cwd=datadir).returncode == 0
    # root's directory: nobody can neither read the digest nor plant a lease, peer or digest.
    entry = open_entry(str(coop), "img.key", Trust(), 60.0)
    entry.publish_meta({"sha256": "0" * 64, "torrent": "secret"})
    for argv in (
        ["/bin/cat", f"{COOP_DIRNAME}/img.key/meta.json"],
        ["/bin/ls", COOP_DIRNAME],
        ["/usr/bin/touch", f"{COOP_DIRNAME}/img.key/lease-0.0"],
        ["/usr/bin/touch", f"{COOP_DIRNAME}/img.other"],
        ["/bin/mv", COOP_DIRNAME, "moved"],
    ):
        done = nobody(*argv, cwd=datadir)
        assert done.returncode != 0, argv
        assert "Permission denied" in done.stderr or "Operation not permitted" in done.stderr
    assert entry.try_acquire(1, "n1") is not None
    assert entry.read_meta() == {"sha256": "0" * 64, "torrent": "secret"}
