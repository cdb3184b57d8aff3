"""Cost of a rebalance pass with nothing to do, on an idle node (run every minute).

    .venv/bin/python bench/rebalance_idle.py [--datasets 20] [--passes 30]

Builds DATASETS small images, mounts them through a prolog (then ends the job), caches a
third of them, runs one pass to settle, then PASSES more passes that find nothing to do
(demand source: none; with squeue the pass also pays for two Slurm client calls). Reports
CPU seconds (user + system, from the children's rusage) and wall time per pass, and the
same for `python -c pass` as the floor every Python command pays.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from benchlib import VENV, create_tree, load_average, remove_tree

CLI = str(VENV / "bin" / "scratch-stage")


def cpu_of(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ARGV."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--passes", type=int, default=30)
    args = parser.parse_args()
    tree = create_tree("ss-bench-rebalance.")
    try:
        with open(tree.config, "a") as f:
            f.write("demand: {source: none}\n")
        src = tree.root / "src"
        (src / "data").mkdir(parents=True)
        (src / "data" / "blob").write_bytes(os.urandom(1 << 20))
        names = [f"ds{i:03d}" for i in range(args.datasets)]
        env = tree.env(PATH="/usr/bin:/bin")
        for name in names:
            subprocess.run([CLI, "image", "build", str(src), name, "--compression", "fast"],
                           env=env, check=True, capture_output=True)  # fmt: skip
        job = tree.job_env(1, "datasets:" + ",".join(names))
        subprocess.run([CLI, "prolog"], env=job, check=True, capture_output=True)
        subprocess.run([CLI, "epilog"], env=job, check=True, capture_output=True)
        for name in names[::3]:
            subprocess.run([CLI, "prestage", name], env=env, check=True, capture_output=True)
        cpu_of([CLI, "rebalance"], env)
        passes = [cpu_of([CLI, "rebalance"], env) for _ in range(args.passes)]
        floor = [cpu_of([sys.executable, "-c", "pass"], env) for _ in range(args.passes)]
    finally:
        remove_tree(tree.root)
    cpu = statistics.median(c for c, _ in passes)
    wall = statistics.median(w for _, w in passes)
    base = statistics.median(c for c, _ in floor)
    print(f"idle rebalance pass, {args.datasets} datasets mounted ({len(names[::3])} cached),"
          f" median of {args.passes}:")  # fmt: skip
    print(f"  CPU {cpu * 1000:.1f} ms/pass, wall {wall * 1000:.1f} ms/pass")
    print(f"  python -c pass: CPU {base * 1000:.1f} ms  (pass / interpreter = {cpu / base:.1f}x)")
    print(f"  every minute: {cpu / 60 * 100:.3f} % of one core")
    print(f"  load average during the run: {load_average():.2f}")


if __name__ == "__main__":
    main()
