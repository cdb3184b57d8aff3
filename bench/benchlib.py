"""Shared benchmark helpers: a throw-away node tree, mount cleanup, percentiles, meminfo."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class NodeTree:
    """A temporary datadir/cachedir/mountdir/statedir and the config file naming them."""

    root: Path

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def cachedir(self) -> Path:
        return self.root / "cache"

    @property
    def mountdir(self) -> Path:
        return self.root / "mnt"

    @property
    def statedir(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def env(self, **extra: str) -> dict[str, str]:
        """A minimal environment (a prolog has no PATH) pointing at this tree's config."""
        return {"SCRATCH_STAGE_CONFIG": str(self.config), **extra}

    def job_env(self, job_id: int, comment: str) -> dict[str, str]:
        """The environment slurmd gives a prolog/epilog of job JOB_ID run as root."""
        return self.env(
            SLURM_JOB_ID=str(job_id), SLURM_JOB_USER="root", SLURM_JOB_UID="0",
            SLURM_JOB_GID="0", SLURM_JOB_COMMENT=comment,
        )  # fmt: skip


def create_tree(prefix: str, *, capacity: str = "4GiB", verify: str = "size") -> NodeTree:
    """A fresh node tree under /tmp (tempfile.mkdtemp) with its config written."""
    tree = NodeTree(Path(os.path.realpath(tempfile.mkdtemp(prefix=prefix))))
    for path in (tree.datadir, tree.cachedir, tree.mountdir, tree.statedir):
        path.mkdir()
    tree.config.write_text(
        f"datadir: {tree.datadir}\ncachedir: {tree.cachedir}\nmountdir: {tree.mountdir}\n"
        f"statedir: {tree.statedir}\ncapacity: {capacity}\nverify: {verify}\n"
    )
    return tree


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below PATH, in mount order (latest last)."""
    prefix = str(path).rstrip("/")
    with open("/proc/self/mountinfo") as f:
        points = [_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), ln.split()[4]) for ln in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def unmount_everything_under(path: Path, *, attempts: int = 200) -> list[str]:
    """`umount -l` every mount below PATH, top layers first, until none is left; the rest."""
    for _ in range(attempts):
        points = mounts_under(path)
        if not points:
            return []
        for point in reversed(points):
            subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL, check=False)
    return mounts_under(path)


def remove_tree(root: Path) -> None:
    """Unmount everything below ROOT, then delete it; never deletes through a mount."""
    left = unmount_everything_under(root)
    if left:
        print(f"WARNING: still mounted, {root} NOT removed: {left}")
        return
    shutil.rmtree(root, ignore_errors=True)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM CHILD (scratch-stage then removes its partial copy) and wait until it is gone."""
    child.terminate()
    while child.poll() is None:
        with contextlib.suppress(KeyboardInterrupt):
            child.wait()


def ignore_interrupts() -> None:
    """From now on Ctrl-C and SIGTERM cannot cut the cleanup short (a 2nd Ctrl-C is common)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every finally: cleanup still runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def percentile(values: list[float], q: float) -> float:
    """The Q-th percentile (0..100) of VALUES, linearly interpolated (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def meminfo_kib(field: str) -> int:
    """One /proc/meminfo field (e.g. 'Cached'), in KiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class CacheSampler:
    """Samples /proc/meminfo Cached: every PERIOD seconds in a thread; growth = peak - start."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.start = self.peak = meminfo_kib("Cached")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CacheSampler:
        self.start = self.peak = meminfo_kib("Cached")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, meminfo_kib("Cached"))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, meminfo_kib("Cached"))

    @property
    def growth_bytes(self) -> int:
        return (self.peak - self.start) * 1024


def drop_page_cache(settle: float = 10.0) -> None:
    """Write back dirty pages (waiting up to SETTLE s for writeback), drop clean ones."""
    os.sync()
    deadline = time.monotonic() + settle
    while meminfo_kib("Dirty") + meminfo_kib("Writeback") > 16 * 1024:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
        os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def load_average() -> float:
    """The 1-minute load average: above the CPU count, the figures are disturbed."""
    return os.getloadavg()[0]


def timed_run(argv: list[str], env: dict[str, str]) -> float:
    """Run ARGV with ENV, output discarded; its wall time in seconds. RuntimeError if it fails."""
    return timed_run_cpu(argv, env)[0]


def timed_run_cpu(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ARGV with ENV; its wall time and CPU time (user + system, from wait4) in seconds.

    CPU time hardly depends on what else the machine runs: it backs up wall-time ratios
    measured on a busy machine. RuntimeError if the command fails.
    """
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            stop_child(child)
            raise
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            detail = err.read().decode(errors="replace").strip()
            raise RuntimeError(f"{' '.join(argv)} exited {child.returncode}: {detail}")
    return elapsed, usage.ru_utime + usage.ru_stime
