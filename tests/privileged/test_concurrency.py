"""Concurrent prologs, epilogs and copies lose no update and mount once (DESIGN 7.2, 7.4)."""

from __future__ import annotations

import random

from nodetree import NodeEnv, Popen, blob_of

DATASETS = [f"d{i}" for i in range(10)]


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
