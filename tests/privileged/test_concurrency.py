"""Concurrent prologs, epilogs and copies lose no update and mount once (docs/design.md)."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from pathlib import Path

from nodetree import NodeEnv, Popen, blob_of, loops_under

DATASETS = [f"d{i}" for i in range(10)]
# Read at collection: the autouse fixture in tests/conftest.py removes every SCRATCH_STAGE_*
# variable before a test runs, so reading it inside the test always gave the full minute.
SOAK_SECONDS = float(os.environ.get("SCRATCH_STAGE_SOAK_SECONDS", "60"))


def job_request(rng: random.Random) -> tuple[set[str], dict[str, str]]:
    """A random subset of DATASETS, and the job asking for it by comment, SPANK option or both."""
    names = rng.sample(DATASETS, rng.randint(1, 4))
    style = rng.choice(["comment", "spank", "both"])
    if style == "comment":
        job = {"comment": f"run {rng.randint(1, 9)} datasets:{','.join(names)}"}
    elif style == "spank":
        job = {"spank": ",".join(names)}
    else:
        job = {"comment": f"datasets:{names[0]}", "spank": ",".join(names[1:] or names)}
    return set(names), job


def start(node: NodeEnv, kind: str, job_id: int, job: dict[str, str]) -> Popen:
    return node.spawn([kind], node.job_environ(job_id, **job))


def finish(procs: list[Popen]) -> None:
    for proc in procs:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr


def test_fifty_concurrent_prologs_and_epilogs(node_env: NodeEnv) -> None:
    for name in DATASETS:
        node_env.add_image(name)
    rng = random.Random(20240601)
    requests = {job_id: job_request(rng) for job_id in range(1, 61)}
    jobs = {job_id: job for job_id, (_, job) in requests.items()}

    # Wave 1: 30 prologs at once. Wave 2: 30 more prologs racing 20 epilogs of wave 1.
    finish([start(node_env, "prolog", j, jobs[j]) for j in range(1, 31)])
    wave2 = [start(node_env, "prolog", j, jobs[j]) for j in range(31, 61)]
    wave2 += [start(node_env, "epilog", j, jobs[j]) for j in range(1, 21)]
    rng.shuffle(wave2)
    finish(wave2)

    expected: dict[str, list[str]] = {}
    for job_id in range(21, 61):
        for name in requests[job_id][0]:
            expected.setdefault(name, []).append(str(job_id))
    assert node_env.holders() == {n: sorted(h) for n, h in expected.items()}
    assert sorted(node_env.state()["jobs"]) == sorted(str(j) for j in range(21, 61))
    every = set().union(*(names for names, _ in requests.values()))
    for name in DATASETS:
        layers = node_env.backings(name)
        assert layers == ([str(node_env.datadir / f"{name}.sqfs")] if name in every else [])
    assert (node_env.mountdir / "d3" / "blob.bin").read_bytes() == blob_of("d3")


def test_concurrent_prestages_copy_once(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.configure(chunk_size="4KiB", verify="sha256")
    node_env.prolog(1, comment="datasets:alpha")

    procs = [node_env.spawn(["prestage", "alpha"]) for _ in range(4)]
    procs += [start(node_env, "prolog", j, {"spank": "alpha"}) for j in range(2, 8)]
    finish(procs)

    assert len(node_env.events("stage-start")) == 1
    assert len(node_env.events("stage-done")) == 1
    assert node_env.backings("alpha") == [
        str(node_env.datadir / "alpha.sqfs"), str(node_env.cachedir / "alpha.sqfs"),
    ]  # fmt: skip
    assert node_env.holders() == {"alpha": [str(j) for j in range(1, 8)]}
    assert node_env.state()["staging"] == {}


def _loop(node: NodeEnv, stop: threading.Event, failures: list[str], *args: str) -> None:
    """Run one administrator command over and over until STOP; record unexpected exits."""
    while not stop.is_set():
        done = node.cli(*args)
        if done.returncode not in (0, 1) or "internal error" in done.stderr:
            failures.append(f"{' '.join(args)}: {done.returncode} {done.stderr.strip()}")


def _job_loop(
    node: NodeEnv, stop: threading.Event, failures: list[str], job_id: int, job: dict[str, str]
) -> None:
    """Prolog, a short run, epilog, again (a new job id each time) until STOP."""
    round_ = 0
    while not stop.is_set():
        jid = job_id * 1000 + round_
        for kind in ("prolog", "epilog"):
            done = node.run([kind], node.job_environ(jid, **job))
            if done.returncode != 0:
                failures.append(f"{kind} {jid}: {done.returncode} {done.stderr.strip()}")
        round_ += 1


def test_a_minute_of_everything_at_once(node_env: NodeEnv) -> None:
    # 50 job slots cycling prolog/epilog, with rebalance, prestage, purge and pin/unpin in
    # loops beside them; the cache on disk is sampled against the capacity all along.
    for name in DATASETS:
        node_env.add_image(name)
    size = max(os.path.getsize(node_env.datadir / f"{n}.sqfs") for n in DATASETS)
    capacity = 3 * size
    node_env.configure(capacity=str(capacity), idle_unmount=2, demand={"source": "none"})
    rng = random.Random(7)
    stop = threading.Event()
    failures: list[str] = []
    threads = [
        threading.Thread(target=_job_loop, args=(node_env, stop, failures, j, job_request(rng)[1]))
        for j in range(1, 51)
    ]
    threads += [
        threading.Thread(target=_loop, args=(node_env, stop, failures, *args))
        for args in (("rebalance",), ("prestage", "d1"), ("prestage", "d2", "d3"),
                     ("purge", "--all"), ("pin", "d4"), ("unpin", "d4"))
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    worst = 0
    deadline = time.monotonic() + SOAK_SECONDS
    try:
        while time.monotonic() < deadline:
            worst = max(worst, _cache_on_disk(node_env))
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
    assert failures == []
    assert worst <= capacity, f"{worst} bytes on disk, capacity {capacity}"
    finish([start(node_env, "prolog", j, {"comment": f"datasets:d{j % 10}"}) for j in range(1, 6)])
    assert node_env.holders() == {f"d{j % 10}": [str(j)] for j in range(1, 6)}
    state = node_env.state()
    assert state["intents"] == {} and state["staging"] == {}


def _cache_on_disk(node: NodeEnv) -> int:
    """Bytes of the cache on disk: files in cachedir and deleted copies loop devices hold."""
    total = 0
    for base, _, files in os.walk(node.cachedir):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(base, f)).st_size
    for device, backing in loops_under(node.cachedir).items():
        if backing.endswith(" (deleted)"):
            with contextlib.suppress(OSError, ValueError):
                total += int(Path(f"/sys/block/{device[5:]}/size").read_text()) * 512
    return total
