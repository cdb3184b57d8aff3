"""Benchmark `scratch-stage prestage` against `cp` and `cp` + `sync` on a >= 1 GiB image.

The image (incompressible random data, stored uncompressed) is built once into a reusable
cache directory, or given with --image. Every run starts with the page cache dropped, copies
the same source into the same cachedir, and records wall time and page-cache growth.
Needs root, loop devices and squashfs-tools. Run:
  sudo .venv/bin/python bench/staging_throughput.py [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchlib import (
    VENV,
    CacheSampler,
    NodeTree,
    create_tree,
    drop_page_cache,
    ignore_interrupts,
    interrupt_on_sigterm,
    load_average,
    percentile,
    remove_tree,
    timed_run,
    unmount_everything_under,
)

DATASET = "throughput"
IMAGE_CACHE = Path("/tmp/scratch-stage-bench-cache")
FILE_MIB = 64
TARGET_RATIO = 0.9
# Uncompressed everything: the image is as big as the random data it holds.
MKSQUASHFS_FLAGS = [
    "-noI",
    "-noD",
    "-noF",
    "-noX",
    "-no-xattrs",
    "-all-root",
    "-quiet",
    "-no-progress",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cached_image(size_mib: int) -> Path:
    """The reusable image of SIZE_MIB MiB of random data, built on first use."""
    image = IMAGE_CACHE / f"{DATASET}-{size_mib}MiB.sqfs"
    if image.is_file() and image.stat().st_size >= size_mib * 1024 * 1024:
        log(f"reusing {image} ({image.stat().st_size} bytes)")
        return image
    IMAGE_CACHE.mkdir(mode=0o755, exist_ok=True)
    src, partial = IMAGE_CACHE / f"src.{os.getpid()}", image.with_suffix(".building")
    try:
        log(f"building {image}: {size_mib} MiB of random data, uncompressed")
        write_random_files(src, size_mib)
        subprocess.run(["mksquashfs", str(src), str(partial), *MKSQUASHFS_FLAGS], check=True)
        os.replace(partial, image)
    finally:
        shutil.rmtree(src, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return image


def write_random_files(src: Path, size_mib: int) -> None:
    """SIZE_MIB MiB of os.urandom bytes in files of FILE_MIB MiB under SRC."""
    src.mkdir()
    left = size_mib
    for i in range(0, size_mib, FILE_MIB):
        with open(src / f"random{i // FILE_MIB:04d}.bin", "wb") as f:
            for _ in range(min(FILE_MIB, left)):
                f.write(os.urandom(1024 * 1024))
        left -= FILE_MIB


def link_into_datadir(image: Path, tree: NodeTree) -> Path:
    """IMAGE as datadir/DATASET.sqfs: a hard link (same inode), a symlink across filesystems."""
    target = tree.datadir / f"{DATASET}.sqfs"
    try:
        os.link(image, target)
    except OSError:
        target.symlink_to(image)
    return target


def measure(run: Callable[[], None], size: int, tree: NodeTree) -> dict[str, float]:
    """Wall time, MB/s and peak page-cache growth of RUN copying SIZE bytes from a cold cache.

    For prestage, copy_mb_s is the stager's own copy+verify time (its stage-done event),
    without the process start, locking and mounting around it.
    """
    drop_page_cache()
    load = load_average()
    with CacheSampler(0.05) as sampler:
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
    result = {
        "seconds": round(seconds, 3),
        "mb_s": round(size / 1e6 / seconds, 1),
        "cache_growth_mib": round(sampler.growth_bytes / 2**20, 1),
        "load_before": round(load, 2),
    }
    copy_seconds = stage_done_seconds(tree)
    if copy_seconds:
        result["copy_mb_s"] = round(size / 1e6 / copy_seconds, 1)
    return result


def stage_done_seconds(tree: NodeTree) -> float | None:
    """The copy time of the last stage-done event in TREE's event log, if any."""
    try:
        lines = (tree.statedir / "events.log").read_text().splitlines()
    except FileNotFoundError:
        return None
    done = [json.loads(line) for line in lines if '"stage-done"' in line]
    return float(done[-1]["seconds"]) if done else None


def scrub_cachedir(tree: NodeTree) -> None:
    """Unmount every dataset of TREE and delete every copy and partial copy in its cachedir."""
    unmount_everything_under(tree.mountdir)
    shutil.rmtree(tree.cachedir)
    tree.cachedir.mkdir()
    for name in ("state.json", "events.log"):
        with contextlib.suppress(FileNotFoundError):
            (tree.statedir / name).unlink()
    os.sync()


def make_runners(tree: NodeTree, source: Path, scratch: str) -> dict[str, Callable[[], None]]:
    """What each measured run does (the cleanup between runs is not timed)."""
    copy = tree.cachedir / source.name
    env = tree.env()

    def prestage(verify: str) -> Callable[[], None]:
        def run() -> None:
            timed_run([scratch, "prestage", DATASET], {**env, "SCRATCH_STAGE_VERIFY": verify})
            state = json.loads((tree.statedir / "state.json").read_text())
            if DATASET not in state["cached"]:
                raise RuntimeError("prestage exited 0 but the dataset is not cached")

        return run

    def cp() -> None:
        timed_run(["/bin/cp", str(source), f"{tree.cachedir}/"], env)

    def cp_sync() -> None:
        cp()
        timed_run(["/bin/sync", str(copy)], env)  # fsync of the copy (coreutils sync FILE)

    return {
        "cp": cp,
        "cp + sync": cp_sync,
        "prestage (verify size)": prestage("size"),
        "prestage (verify sha256)": prestage("sha256"),
    }


def run_benchmark(tree: NodeTree, image: Path, args: argparse.Namespace) -> dict[str, Any]:
    source = link_into_datadir(image, tree)
    size = source.stat().st_size
    runners = make_runners(tree, source, str(args.venv / "bin/scratch-stage"))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    names = list(runners)
    for rep in range(args.repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            log(f"run {rep + 1}/{args.repeat}: {name}")
            scrub_cachedir(tree)
            runs[name].append(measure(runners[name], size, tree))
            log(f"  {runs[name][-1]}")
    scrub_cachedir(tree)
    return report(runs, size, image, args)


def median_of(runs: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return round(percentile(values, 50), 3) if values else None


def report(
    runs: dict[str, list[dict[str, float]]], size: int, image: Path, args: argparse.Namespace
) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {
        name: {
            "median_mb_s": median_of(rs, "mb_s"),
            "median_seconds": median_of(rs, "seconds"),
            "median_cache_growth_mib": median_of(rs, "cache_growth_mib"),
            "median_copy_only_mb_s": median_of(rs, "copy_mb_s"),
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    ratios = {
        f"{p} / {c}": round(results[p]["median_mb_s"] / results[c]["median_mb_s"], 3)
        for p in ("prestage (verify size)", "prestage (verify sha256)")
        for c in ("cp", "cp + sync")
    }
    cp_ratio = ratios["prestage (verify size) / cp"]
    prestage_mib = results["prestage (verify size)"]["median_cache_growth_mib"]
    cp_mib = results["cp"]["median_cache_growth_mib"]
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "mem_mib": memory},
        "image": str(image),
        "image_bytes": size,
        "repeat": args.repeat,
        "results": results,
        "ratios": ratios,
        "targets": {
            "throughput_ratio_to_cp": {
                "value": cp_ratio, "limit": TARGET_RATIO, "met": cp_ratio >= TARGET_RATIO,
            },
            "page_cache_growth_mib": {
                "prestage": prestage_mib, "cp": cp_mib, "met": prestage_mib * 4 <= cp_mib,
            },
        },
    }  # fmt: skip


def print_report(result: dict[str, Any]) -> None:
    print(f"\nstaging throughput, image {result['image']} ({result['image_bytes']} bytes), "
          f"median of {result['repeat']} run(s), page cache dropped before each")  # fmt: skip
    print(f"{'run':26} {'MB/s':>7} {'seconds':>8} {'cache MiB':>10} {'copy-only':>10}  all MB/s")
    for name, r in result["results"].items():
        every = ", ".join(f"{x['mb_s']:.0f}" for x in r["runs"])
        copy_only = r["median_copy_only_mb_s"]
        print(f"{name:26} {r['median_mb_s']:>7.1f} {r['median_seconds']:>8.2f} "
              f"{r['median_cache_growth_mib']:>10.1f} {copy_only or '-':>10}  {every}")  # fmt: skip
    print(
        "(cache MiB: peak growth of Cached: in /proc/meminfo; copy-only: the stager's own "
        "copy+verify time from its stage-done event, without process start and mount)"
    )
    print("\nthroughput ratios (median MB/s):")
    for name, ratio in result["ratios"].items():
        print(f"  {name:42} {ratio:.3f}")
    t = result["targets"]
    r, c = t["throughput_ratio_to_cp"], t["page_cache_growth_mib"]
    print(f"target prestage >= {r['limit']:g}x cp: {r['value']:.3f} -> "
          f"{'MET' if r['met'] else 'NOT MET'}")  # fmt: skip
    print(f"target page-cache growth far below cp's (<= 1/4): prestage {c['prestage']:.0f} MiB, "
          f"cp {c['cp']:.0f} MiB -> {'MET' if c['met'] else 'NOT MET'}")  # fmt: skip
    loads = [x["load_before"] for r in result["results"].values() for x in r["runs"]]
    if max(loads) > (result["machine"]["cpus"] or 1):
        print(f"WARNING: load average up to {max(loads):.1f} during the runs: figures disturbed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="image payload to build")
    parser.add_argument("--image", type=Path, help="use this squashfs image instead of building")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind (median)")
    parser.add_argument("--venv", type=Path, default=VENV, help="virtualenv to benchmark")
    parser.add_argument("--drop-image", action="store_true", help="delete the built image after")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("mksquashfs"):
        log("needs root (drop_caches, loop mounts) and squashfs-tools")
        return 2
    interrupt_on_sigterm()
    tree = create_tree("scratch-stage-bench-staging-", capacity="8GiB")
    image = None
    try:
        image = args.image.resolve() if args.image else cached_image(args.size_mib)
        result = run_benchmark(tree, image, args)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        ignore_interrupts()
        remove_tree(tree.root)
        if args.drop_image and image is not None and not args.image:
            image.unlink()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
