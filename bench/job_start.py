"""Benchmark job start overhead on a real (local, single-node) Slurm cluster.

Brings up `slurm/testcluster` under a temporary directory with Prolog/Epilog running this
checkout's scratch-stage, builds one small image, then submits as the test user, one at a
time and interleaved, the same batch job with `--comment=datasets:bench` and without any
dataset (both go through the same Prolog). Submit-to-running time is measured from just
before `sbatch` until the clock time the job's first command records (same machine, same
clock). Every job ends before the next one is submitted, so each finds the node idle. The
first job with the dataset mounts the image (reported apart); the rest find it mounted, the
steady state. Needs root. Run:  sudo .venv/bin/python bench/job_start.py [--jobs 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, VENV, interrupt_on_sigterm, load_average, percentile, remove_tree

TESTCLUSTER = REPO / "slurm" / "testcluster"
SCRATCH_STAGE = VENV / "bin" / "scratch-stage"
USER = "ssuser"
DATASET = "bench"
JOB_SCRIPT = """#!/bin/sh
date +%s.%N > "{work}/$SLURM_JOB_ID.start.tmp" && mv "{work}/$SLURM_JOB_ID.start.tmp" \\
    "{work}/$SLURM_JOB_ID.start"
{read}
"""
ENDED_POLL = 0.05


class Bench:
    """A throw-away cluster whose Prolog/Epilog run scratch-stage on a tree under BASE."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cluster = base / "cluster"
        self.conf = self.cluster / "etc" / "slurm.conf"
        self.work = self.cluster / "work"

    def set_up(self) -> None:
        """Config, wrappers, the image, then `testcluster up` (raises on failure)."""
        b = self.base
        for name in ("data", "cache", "mnt", "state", "src"):
            (b / name).mkdir(mode=0o755)
        config = b / "config.yaml"
        config.write_text(
            f"datadir: {b}/data\ncachedir: {b}/cache\nmountdir: {b}/mnt\nstatedir: {b}/state\n"
            "capacity: 1GiB\nnode: localhost\ndemand: {source: none}\n"
        )
        (b / "src" / "blob.bin").write_bytes(os.urandom(1024 * 1024))
        subprocess.run(
            [str(SCRATCH_STAGE), "--config", str(config), "image", "build", str(b / "src"),
             DATASET, "--compression", "fast"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        env = {**os.environ, "TESTCLUSTER_USER": USER}
        env.pop("SLURM_CONF", None)
        for hook in ("prolog", "epilog"):
            wrapper = b / f"{hook}.sh"
            wrapper.write_text(
                f"#!/bin/sh\nexport SCRATCH_STAGE_CONFIG={config}\nexec {SCRATCH_STAGE} {hook}\n"
            )
            wrapper.chmod(0o755)
            env[f"TESTCLUSTER_{hook.upper()}"] = str(wrapper)
        up = subprocess.run(
            [str(TESTCLUSTER), "up", str(self.cluster)],
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        if up.returncode != 0:
            raise RuntimeError(f"testcluster up failed:\n{up.stderr}")
        for kind, read in (
            ("with", f"cat {b}/mnt/{DATASET}/blob.bin > /dev/null"),
            ("without", ""),
        ):
            script = self.work / f"{kind}.sh"
            script.write_text(JOB_SCRIPT.format(work=self.work, read=read))
            script.chmod(0o644)

    def tear_down(self) -> None:
        subprocess.run([str(TESTCLUSTER), "down", str(self.cluster), "--purge"], check=False)
        remove_tree(self.base)

    def submit(self, with_dataset: bool) -> tuple[str, float]:
        """(job id, time.time() just before sbatch) of one job."""
        extra = [f"--comment=datasets:{DATASET}"] if with_dataset else []
        script = self.work / ("with.sh" if with_dataset else "without.sh")
        argv = ["runuser", "-u", USER, "--", "env", f"SLURM_CONF={self.conf}", "sbatch",
                "--parsable", "--output=/dev/null", *extra, str(script)]  # fmt: skip
        submitted = time.time()
        done = subprocess.run(
            argv, cwd=self.work, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed: {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0], submitted

    def slurm(self, *argv: str) -> str:
        """The output of a Slurm client command run as root against this cluster."""
        return subprocess.run(
            list(argv), env={**os.environ, "SLURM_CONF": str(self.conf)},
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip

    def job_state(self, job_id: str) -> str:
        for field in self.slurm("scontrol", "show", "job", "-o", job_id).split():
            if field.startswith("JobState="):
                return field.partition("=")[2]
        return ""

    def run_one(self, with_dataset: bool) -> float:
        """Submit-to-running seconds of one job; returns once it has ended and the node is idle."""
        job_id, submitted = self.submit(with_dataset)
        start_file = self.work / f"{job_id}.start"
        deadline = time.monotonic() + 120
        while True:
            state = self.job_state(job_id)
            if state not in ("", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not end in 120s (state {state})")
            time.sleep(ENDED_POLL)
        if state != "COMPLETED" or not start_file.exists():
            raise RuntimeError(f"job {job_id} ended {state} without recording its start")
        while self.slurm("sinfo", "-h", "-N", "-n", "localhost", "-o", "%T").strip() != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not return to idle")
            time.sleep(ENDED_POLL)
        return float(start_file.read_text()) - submitted


def measure(bench: Bench, jobs: int) -> dict[str, Any]:
    first_mount = bench.run_one(True)  # mounts the image; later jobs find it mounted
    bench.run_one(False)  # the same warm-up for the other kind
    times: dict[str, list[float]] = {"with": [], "without": []}
    for i in range(jobs):
        # interleaved, alternating which kind goes first in each pair
        order = (True, False) if i % 2 == 0 else (False, True)
        for with_dataset in order:
            times["with" if with_dataset else "without"].append(bench.run_one(with_dataset))
    summary = {
        kind: {
            "median_s": statistics.median(values),
            "p10_s": percentile(values, 10),
            "p90_s": percentile(values, 90),
            "min_s": min(values),
            "max_s": max(values),
        }
        for kind, values in times.items()
    }
    return {
        "jobs_each": jobs,
        "first_with_dataset_s": first_mount,
        "with_dataset": summary["with"],
        "without_dataset": summary["without"],
        "ratio_of_medians": summary["with"]["median_s"] / summary["without"]["median_s"],
        "median_overhead_s": summary["with"]["median_s"] - summary["without"]["median_s"],
        "load_average": load_average(),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}",
    }


def print_report(result: dict[str, Any]) -> None:
    def row(label: str, s: dict[str, float]) -> str:
        return (
            f"{label:<22} median {s['median_s'] * 1000:7.1f} ms  p10 {s['p10_s'] * 1000:7.1f}  "
            f"p90 {s['p90_s'] * 1000:7.1f}  min {s['min_s'] * 1000:7.1f}  max "
            f"{s['max_s'] * 1000:7.1f}"
        )

    print(f"submit-to-running time, {result['jobs_each']} jobs each, interleaved")
    print(row("with --comment=datasets", result["with_dataset"]))
    print(row("without a dataset", result["without_dataset"]))
    print(f"ratio of medians (with / without): {result['ratio_of_medians']:.3f}")
    print(f"median overhead: {result['median_overhead_s'] * 1000:+.1f} ms")
    print(f"first job with the dataset (mounts the image): {result['first_with_dataset_s']:.3f} s")
    print(f"load average {result['load_average']:.2f}; {result['machine']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs of each kind (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("job_start: needs root (it starts a Slurm cluster and loop-mounts)", file=sys.stderr)
        return 1
    interrupt_on_sigterm()
    base = Path(tempfile.mkdtemp(prefix="ss-bench-jobstart-", dir="/tmp"))
    base.chmod(0o755)  # the test user's jobs reach the mountdir below it
    bench = Bench(base)
    try:
        bench.set_up()
        result = measure(bench, args.jobs)
    finally:
        bench.tear_down()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
