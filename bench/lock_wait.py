"""How long a prolog waits for the state lock while a rebalance unmounts and evicts.

    sudo .venv/bin/python bench/lock_wait.py [--idle 300] [--evict 20] [--prologs 50]

Mounts IDLE datasets through prologs and ends those jobs (so a pass unmounts them all as
idle), caches EVICT more and shrinks the capacity (so the same pass evicts them), then
starts that pass and, right after, PROLOGS concurrent prologs of other datasets. Each
prolog records the time it waited for the state lock in its `request` event
(`lock_wait_ms`). Baseline in the same run: the same prologs with no pass running.
Target (crash-consistency issue): p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from benchlib import VENV, NodeTree, create_tree, load_average, percentile, remove_tree

CLI = str(VENV / "bin" / "scratch-stage")


def run_prologs(tree: NodeTree, jobs: list[tuple[int, str]]) -> None:
    """Start every prolog of JOBS at once and wait for all; RuntimeError if one fails."""
    procs = [
        subprocess.Popen([CLI, "prolog"], env=tree.job_env(j, f"datasets:{n}")) for j, n in jobs
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("a prolog failed")


def waits_of(events: str, first_job: int) -> list[float]:
    waits = []
    with open(events) as f:
        for line in f:
            record = json.loads(line)
            if record.get("event") == "request" and int(record.get("job", 0)) >= first_job:
                waits.append(float(record["lock_wait_ms"]))
    return waits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--evict", type=int, default=20)
    parser.add_argument("--prologs", type=int, default=50)
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
        busy = [f"job{i:03d}" for i in range(2 * args.prologs)]
        for name in idle + evict + busy:
            os.link(tree.datadir / "base.sqfs", tree.datadir / f"{name}.sqfs")
        for i in range(0, len(idle), 30):
            job = tree.job_env(1 + i, "datasets:" + ",".join(idle[i : i + 30]))
            subprocess.run([CLI, "prolog"], env=job, check=True)
            subprocess.run([CLI, "epilog"], env=job, check=True)
        subprocess.run([CLI, "prestage", *evict], env=env, check=True, capture_output=True)
        config = tree.config.read_text().replace("capacity: 1GiB", "capacity: 1KiB")
        tree.config.write_text(config)
        time.sleep(1.2)
        events = str(tree.statedir / "events.log")
        base_jobs = [(10_000 + i, busy[i]) for i in range(args.prologs)]
        run_prologs(tree, base_jobs)
        baseline = waits_of(events, 10_000)
        started = time.monotonic()
        rebalance = subprocess.Popen([CLI, "rebalance"], env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)  # the pass is unmounting now
        load_jobs = [(20_000 + i, busy[args.prologs + i]) for i in range(args.prologs)]
        run_prologs(tree, load_jobs)
        out, _ = rebalance.communicate()
        elapsed = time.monotonic() - started
        loaded = waits_of(events, 20_000)
        done = out.count("unmounted ") + out.count("evicted ")
    finally:
        remove_tree(tree.root)
    print(f"state-lock wait of {args.prologs} concurrent prologs (lock_wait_ms of `request`):")
    for label, waits in (("no rebalance", baseline), ("during the pass", loaded)):
        p50, p99 = percentile(waits, 50), percentile(waits, 99)
        print(f"  {label:16s} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {max(waits):7.1f} ms")
    ratio = percentile(loaded, 99) / max(percentile(baseline, 99), 0.1)
    print(f"  p99 during / without the pass: {ratio:.1f}x")
    print(f"  the pass unmounted or evicted {done} datasets in {elapsed:.1f} s")
    print(f"  load average during the run: {load_average():.2f}")


if __name__ == "__main__":
    main()
