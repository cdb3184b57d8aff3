"""Benchmark the prolog hot path against a bare interpreter start.

Sets up a throw-away node tree, builds a small image, mounts it with one prolog, then times
sequential prologs (dataset already mounted, and a job with no datasets), concurrent prologs
and epilogs, interleaved with `python -c pass` baselines. Needs root, loop devices and
squashfs-tools. Run:  sudo .venv/bin/python bench/prolog_hot_path.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from benchlib import (
    VENV,
    NodeTree,
    create_tree,
    ignore_interrupts,
    interrupt_on_sigterm,
    load_average,
    percentile,
    remove_tree,
)
from benchlib import timed_run as _timed_run
from benchlib import timed_run_cpu as _timed_run_cpu

DATASET = "bench"
TARGET_RATIO = 3.0
SYSTEM_PYTHON = "/usr/bin/python3"
Command = tuple[list[str], dict[str, str]]
Kind = Callable[[int], Command]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed_run(command: Command) -> float:
    return _timed_run(*command)


def timed_run_cpu(command: Command) -> tuple[float, float]:
    return _timed_run_cpu(*command)


def build_dataset(tree: NodeTree, scratch: str) -> None:
    """A small image (a few files) built by `scratch-stage image build` into datadir."""
    src = tree.root / "src"
    src.mkdir()
    for i in range(8):
        (src / f"file{i}.bin").write_bytes(os.urandom(64 * 1024))
    timed_run(([scratch, "image", "build", str(src), DATASET, "--compression", "fast"], tree.env()))
    shutil.rmtree(src)


def summarize(samples: list[float]) -> dict[str, float]:
    """p50, p99, mean, min and max of SAMPLES (seconds), in milliseconds."""
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def run_sequential(
    kinds: dict[str, Kind], indexes: range
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU time per kind and index, interleaved (order rotated) so drift hits all."""
    names = list(kinds)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for i in indexes:
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, used = timed_run_cpu(kinds[name](i))
            wall[name].append(elapsed)
            cpu[name].append(used)
    return wall, cpu


def run_concurrently(commands: list[Command]) -> tuple[list[float], float]:
    """Start COMMANDS together (a barrier); each one's wall time and the makespan."""
    barrier = threading.Barrier(len(commands) + 1)

    def one(command: Command) -> float:
        barrier.wait()
        return timed_run(command)

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = [pool.submit(one, c) for c in commands]
        try:
            barrier.wait()
            started = time.perf_counter()
            times = [f.result() for f in futures]
        finally:
            barrier.abort()  # on Ctrl-C, release workers that never got to start
        makespan = time.perf_counter() - started
    return times, makespan


def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """The `-X importtime` lines of STDERR as {module, self_us, cumulative_us, depth}."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append(
            {"module": name.strip(), "self_us": int(self_us), "cumulative_us": int(cumulative_us),
             "depth": depth}
        )  # fmt: skip
    return rows


def measure_imports(python: str, scratch: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """One prolog under `python -X importtime`: every module it imported and what it cost."""
    done = subprocess.run(
        [python, "-X", "importtime", scratch, "prolog"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"importtime prolog exited {done.returncode}: {done.stderr[-500:]}")
    return parse_importtime(done.stderr)


def package_dir(python: str) -> Path:
    """Where PYTHON imports scratch_stage from."""
    code = "import os, scratch_stage; print(os.path.dirname(scratch_stage.__file__))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def check_holders(tree: NodeTree, job_ids: list[int]) -> list[str]:
    """Job ids among JOB_IDS missing from state.json (should be none: no lost update)."""
    jobs = json.loads((tree.statedir / "state.json").read_text())["jobs"]
    return [str(j) for j in job_ids if str(j) not in jobs]


def run_benchmark(tree: NodeTree, args: argparse.Namespace) -> dict[str, Any]:
    python, scratch = str(args.venv / "bin/python"), str(args.venv / "bin/scratch-stage")
    # As after `pip install`: stale or missing .pyc files would add compile time to each run.
    subprocess.run([python, "-m", "compileall", "-q", str(package_dir(python))], check=True)
    log(f"node tree {tree.root}; building image {DATASET}")
    build_dataset(tree, scratch)
    prolog, epilog = [scratch, "prolog"], [scratch, "epilog"]
    hot_comment = f"datasets:{DATASET}"
    timed_run((prolog, tree.job_env(1, hot_comment)))  # the first prolog mounts the image
    kinds: dict[str, Kind] = {
        "venv python -c pass": lambda i: ([python, "-c", "pass"], tree.env()),
        "python3 -I -S -c pass": lambda i: ([SYSTEM_PYTHON, "-I", "-S", "-c", "pass"], tree.env()),
        "prolog, dataset mounted": lambda i: (prolog, tree.job_env(10_000 + i, hot_comment)),
        "prolog, no datasets": lambda i: (prolog, tree.job_env(20_000 + i, "")),
    }
    log(f"warm-up: {args.warmup} untimed runs of each")
    run_sequential(kinds, range(args.warmup))
    log(f"sequential: {args.runs} runs of each, interleaved")
    load = load_average()
    samples, cpu = run_sequential(kinds, range(args.warmup, args.warmup + args.runs))
    log(f"concurrent: {args.concurrent} prologs launched together, then as many baselines")
    concurrent_ids = [30_000 + i for i in range(args.concurrent)]
    conc, makespan = run_concurrently(
        [(prolog, tree.job_env(j, hot_comment)) for j in concurrent_ids]
    )
    samples["prolog, concurrent"] = conc
    base_conc, base_makespan = run_concurrently(
        [([python, "-c", "pass"], tree.env())] * args.concurrent
    )
    samples["venv python -c pass, concurrent"] = base_conc
    missing = check_holders(tree, concurrent_ids)
    log("importtime of one prolog (dataset mounted)")
    imports = measure_imports(python, scratch, tree.job_env(40_000, hot_comment))
    empty_imports = measure_imports(python, scratch, tree.job_env(40_001, ""))
    log("epilogs for every job that holds the dataset")
    held = [1, *range(10_000, 10_000 + args.warmup + args.runs), *concurrent_ids, 40_000]
    samples["epilog"] = [timed_run((epilog, tree.job_env(j, ""))) for j in held]
    left = json.loads((tree.statedir / "state.json").read_text())["jobs"]
    result = report(samples, makespan, base_makespan, missing, left, imports, empty_imports, args)
    result["load_average"] = {"before": round(load, 2), "after": round(load_average(), 2)}
    result["cpu_series"] = {name: summarize(values) for name, values in cpu.items()}
    base = result["cpu_series"]["venv python -c pass"]["p50_ms"]
    result["cpu_p50_ratios"] = {
        name: round(s["p50_ms"] / base, 2) for name, s in result["cpu_series"].items()
    }
    return result


def report(
    samples: dict[str, list[float]], makespan: float, base_makespan: float, missing: list[str],
    left: dict[str, Any], imports: list[dict[str, Any]], empty_imports: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    series = {name: summarize(values) for name, values in samples.items()}
    ratios = {}
    for base in ("venv python -c pass", "python3 -I -S -c pass"):
        for name in ("prolog, dataset mounted", "prolog, no datasets", "prolog, concurrent"):
            ratios[f"{name} / {base}"] = {
                "p50": round(series[name]["p50_ms"] / series[base]["p50_ms"], 2),
                "p99": round(series[name]["p99_ms"] / series[base]["p99_ms"], 2),
            }
    hot = ratios["prolog, dataset mounted / venv python -c pass"]["p50"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "runs": args.runs,
        "concurrent": args.concurrent,
        "series": series,
        "ratios": ratios,
        "concurrent_makespan_ms": round(makespan * 1000, 1),
        "concurrent_baseline_makespan_ms": round(base_makespan * 1000, 1),
        "holders_missing_after_concurrent": missing,
        "holders_left_after_epilogs": sorted(left),
        "target": {"hot_p50_ratio": hot, "limit": TARGET_RATIO, "met": hot <= TARGET_RATIO},
        "imports_total_ms": round(sum(r["self_us"] for r in imports) / 1000, 1),
        "imports_no_datasets_total_ms": round(sum(r["self_us"] for r in empty_imports) / 1000, 1),
        "imports": sorted(imports, key=lambda r: -r["cumulative_us"])[:40],
    }


def print_report(result: dict[str, Any], top: int) -> None:
    print(f"\nprolog hot path, {result['runs']} sequential runs each ({result['date']}, "
          f"{result['machine']['cpus']} cpus, Python {result['machine']['python']})")  # fmt: skip
    print(f"{'series':34} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'mean':>8} {'min':>7} {'max':>7}")
    for name, s in result["series"].items():
        print(
            f"{name:34} {s['n']:>4} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} {s['mean_ms']:>8.1f} "
            f"{s['min_ms']:>7.1f} {s['max_ms']:>7.1f}"
        )
    print("\nCPU time (user+sys) per run, p50 ms, and p50 ratio to the venv interpreter:")
    for name, s in result["cpu_series"].items():
        print(f"  {name:34} {s['p50_ms']:>8.1f}  {result['cpu_p50_ratios'][name]:>5.2f}x")
    print("\nwall-time ratios (p50/p50, p99/p99):")
    for name, r in result["ratios"].items():
        print(f"  {name:66} {r['p50']:>5.2f}x {r['p99']:>5.2f}x")
    print(
        f"\n{result['concurrent']} concurrent prologs finished in "
        f"{result['concurrent_makespan_ms']:.0f} ms (baseline interpreters: "
        f"{result['concurrent_baseline_makespan_ms']:.0f} ms); holders lost: "
        f"{result['holders_missing_after_concurrent'] or 'none'}; "
        f"holders left after epilogs: {result['holders_left_after_epilogs'] or 'none'}"
    )
    load = result["load_average"]
    if max(load.values()) > (result["machine"]["cpus"] or 1):
        print(f"WARNING: load average {load['before']} -> {load['after']}: figures disturbed")
    target = result["target"]
    verdict = "MET" if target["met"] else "NOT MET"
    print(f"target hot-path p50 <= {target['limit']:g}x venv interpreter: "
          f"{target['hot_p50_ratio']:.2f}x -> {verdict}")  # fmt: skip
    print(
        f"\nimports of one prolog (-X importtime): {result['imports_total_ms']:.1f} ms in all "
        f"(no-datasets prolog: {result['imports_no_datasets_total_ms']:.1f} ms); "
        f"top {top} by cumulative time:"
    )
    for row in result["imports"][:top]:
        indent = "  " * row["depth"]
        print(f"  {row['cumulative_us'] / 1000:7.1f} ms  (self {row['self_us'] / 1000:5.1f})  "
              f"{indent}{row['module']}")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="sequential runs per series")
    parser.add_argument("--concurrent", type=int, default=32, help="prologs launched together")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per series first")
    parser.add_argument("--top", type=int, default=25, help="import rows to print")
    parser.add_argument("--venv", type=Path, default=VENV, help="virtualenv to benchmark")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("mksquashfs"):
        log("needs root and squashfs-tools (mksquashfs) for loop mounts")
        return 2
    interrupt_on_sigterm()
    tree = create_tree("scratch-stage-bench-prolog-")
    try:
        result = run_benchmark(tree, args)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        ignore_interrupts()
        remove_tree(tree.root)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
