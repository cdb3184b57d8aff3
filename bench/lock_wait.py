"""How long a prolog waits for the state lock while a rebalance unmounts and evicts.

    sudo .venv/bin/python bench/lock_wait.py [--idle 300] [--evict 20] [--prologs 50]
                                             [--spacing 0.1]

Mounts IDLE datasets through prologs and ends those jobs (so a pass unmounts them all as
idle), caches EVICT more and shrinks the capacity (so the same pass evicts them), then
starts that pass and, right after, PROLOGS prologs of other datasets, each needing a fresh
mount: all at once (burst) or one every SPACING seconds (spread). Each prolog records the
time it waited for the state lock in its `request` event (`lock_wait_ms`). Baselines in the
same run: the same prologs with no pass running. Target (crash-consistency issue): p99
under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from benchlib import VENV, NodeTree, create_tree, load_average, percentile, remove_tree

CLI = str(VENV / "bin" / "scratch-stage")


def run_prologs(tree: NodeTree, jobs: list[tuple[int, str]], spacing: float = 0.0) -> None:
    """Start the prologs of JOBS (all at once, or SPACING seconds apart) and wait for all."""
    procs = []
    for j, n in jobs:
        procs.append(subprocess.Popen([CLI, "prolog"], env=tree.job_env(j, f"datasets:{n}")))
        time.sleep(spacing)
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("a prolog failed")


def waits_of(events: str, first_job: int, end_job: int) -> list[float]:
    waits = []
    with open(events) as f:
        for line in f:
            record = json.loads(line)
            job = int(record.get("job", 0))
            if record.get("event") == "request" and first_job <= job < end_job:
                waits.append(float(record["lock_wait_ms"]))
    return waits


def _remount_idle(tree: NodeTree, idle: list[str], evict: list[str]) -> None:
    """Mount IDLE again (prologs, then epilogs) and cache EVICT again, so a pass has work."""
    config = tree.config.read_text()
    tree.config.write_text(config.replace("capacity: 1KiB", "capacity: 1GiB"))
    env = tree.env(PATH="/usr/bin:/bin")
    for i in range(0, len(idle), 30):
        job = tree.job_env(1 + i, "datasets:" + ",".join(idle[i : i + 30]))
        subprocess.run([CLI, "prolog"], env=job, check=True)
        subprocess.run([CLI, "epilog"], env=job, check=True)
    subprocess.run([CLI, "prestage", *evict], env=env, check=True, capture_output=True)
    tree.config.write_text(tree.config.read_text().replace("capacity: 1GiB", "capacity: 1KiB"))
    time.sleep(1.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--evict", type=int, default=20)
    parser.add_argument("--prologs", type=int, default=50)
    parser.add_argument("--spacing", type=float, default=0.1)
    args = parser.parse_args()
    tree = create_tree("ss-bench-lockwait.", capacity="1GiB")
    try:
        with open(tree.config, "a") as f:
            f.write("demand: {source: none}\nidle_unmount: 1\n")
        env = tree.env(PATH="/usr/bin:/bin")
        src = tree.root / "src"
        (src / "d").mkdir(parents=True)
        (src / "d" / "blob").write_bytes(os.urandom(1 << 16))
        subprocess.run([CLI, "image", "build", str(src), "base", "--compression", "fast"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        idle = [f"idle{i:03d}" for i in range(args.idle)]
        evict = [f"ev{i:03d}" for i in range(args.evict)]
        busy = [f"job{i:03d}" for i in range(4 * args.prologs)]
        for name in idle + evict + busy:
            os.link(tree.datadir / "base.sqfs", tree.datadir / f"{name}.sqfs")
        with open(tree.config, "a") as f:
            f.write("capacity: 1KiB\n")
        tree.config.write_text(tree.config.read_text().replace("capacity: 1GiB\n", ""))
        events = str(tree.statedir / "events.log")
        runs: dict[str, list[float]] = {}
        passes: list[str] = []
        for label, spacing, first in (
            ("burst, no pass", 0.0, 10_000),
            ("burst, during the pass", 0.0, 20_000),
            ("spread, no pass", args.spacing, 30_000),
            ("spread, during the pass", args.spacing, 40_000),
        ):
            offset = (first // 10_000 - 1) * args.prologs
            jobs = [(first + i, busy[offset + i]) for i in range(args.prologs)]
            rebalance = None
            if "during" in label:
                _remount_idle(tree, idle, evict)
                rebalance = subprocess.Popen(
                    [CLI, "rebalance"], env=env, stdout=subprocess.PIPE, text=True
                )
                time.sleep(0.3)  # the pass is unmounting now
            started = time.monotonic()
            run_prologs(tree, jobs, spacing)
            if rebalance is not None:
                out, _ = rebalance.communicate()
                done = out.count("unmounted ") + out.count("evicted ")
                took = time.monotonic() - started
                passes.append(
                    f"{label}: the pass unmounted or evicted {done}; prologs {took:.1f} s"
                )
            runs[label] = waits_of(events, first, first + 10_000)
    finally:
        remove_tree(tree.root)
    print(f"state-lock wait of {args.prologs} prologs (lock_wait_ms of `request`); burst: all at "
          f"once, spread: one every {args.spacing:g} s")  # fmt: skip
    for label, waits in runs.items():
        p50, p99 = percentile(waits, 50), percentile(waits, 99)
        print(f"  {label:24s} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {max(waits):7.1f} ms")
    for line in passes:
        print(f"  {line}")
    print(f"  load average during the run: {load_average():.2f}")


if __name__ == "__main__":
    main()
