"""N "nodes" on one machine for cooperative staging, with a shared datadir whose reads count.

Shared storage is its own filesystem: an ext4 image on a loop device, mounted at
`<base>/shared`, so every byte any node reads from datadir is a read of that one device and
shows in its `/sys/block/loopN/stat` (sectors read; the kernel counts reads that reach the
device, not page-cache hits). Each node is a node tree of its own (statedir, cachedir,
mountdir, config) and its own loopback address 127.0.0.<10+i> for the engine, and runs its
commands in a mount namespace of its own (`unshare --mount`): what it mounts is seen only
there, and goes with the namespace when the command ends.

Everything is under one per-test directory; `close` unmounts and detaches what it made,
and processes are stopped by the PIDs recorded here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodetree import CLI, LOSETUP, UMOUNT, admin_environ, clean_tree

UNSHARE = "/usr/bin/unshare"
MKFS = "/sbin/mkfs.ext4"
SECTOR = 512


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def drop_pages(path: Path) -> None:
    """Evict PATH's pages from the page cache, so the next read reaches the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class SharedStorage:
    """An ext4 filesystem on its own loop device, mounted at BASE/shared."""

    base: Path
    size_mib: int
    device: str = ""

    def __post_init__(self) -> None:
        self.backing = self.base / "shared.ext4"
        self.mountpoint = self.base / "shared"
        with open(self.backing, "wb") as f:
            f.truncate(self.size_mib << 20)
        subprocess.run([MKFS, "-q", "-F", str(self.backing)], check=True, capture_output=True)
        self.device = subprocess.run(
            [LOSETUP, "--find", "--show", str(self.backing)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        self.mountpoint.mkdir()
        subprocess.run(["/usr/bin/mount", self.device, str(self.mountpoint)], check=True)
        self.mountpoint.chmod(0o755)

    def bytes_read(self) -> int:
        fields = Path(f"/sys/block/{os.path.basename(self.device)}/stat").read_text().split()
        return int(fields[2]) * SECTOR

    def close(self) -> None:
        subprocess.run([UMOUNT, "-l", str(self.mountpoint)], capture_output=True)
        if self.device:
            subprocess.run([LOSETUP, "-d", self.device], capture_output=True)


@dataclass
class CoopNode:
    """One node: its tree under ROOT, its address, its config; commands in its namespace."""

    root: Path
    index: int
    datadir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for d in ("cache", "mnt"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "state").mkdir(mode=0o700)
        self.configure()

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def host(self) -> str:
        return f"127.0.0.{10 + self.index}"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def configure(self, **settings: Any) -> None:
        self.settings.update(settings)
        coop = {"enabled": True, "host": self.host, "stall_seconds": 5, "seed_seconds": 60}
        coop.update(self.settings.pop("coop", {}) or {})
        self.settings["coop"] = coop
        values = {
            "datadir": str(self.datadir), "cachedir": str(self.root / "cache"),
            "mountdir": str(self.root / "mnt"), "statedir": str(self.root / "state"),
            "capacity": "2GiB", "lock_timeout": 60, "node": self.name, **self.settings,
        }  # fmt: skip
        self.config_path.write_text(json.dumps(values, indent=1) + "\n")

    def environ(self) -> dict[str, str]:
        return admin_environ(
            SCRATCH_STAGE_CONFIG=str(self.config_path),
            SCRATCH_STAGE_RUNDIR=str(self.root / "run"),
        )

    def spawn_prestage(self, dataset: str, **environ: str) -> subprocess.Popen[str]:
        """`prestage DATASET` in a new mount namespace; the mount table it ended with is
        written to ROOT/mountinfo (the namespace, and its mounts, end with the command)."""
        script = f'"{CLI}" prestage "$1"; rc=$?; cat /proc/self/mountinfo > "$2"; exit $rc'
        proc = subprocess.Popen(
            [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh",
             dataset, str(self.root / "mountinfo")],
            env={**self.environ(), **environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, stdin=subprocess.DEVNULL, cwd="/",
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def cached(self, dataset: str) -> Path:
        return self.root / "cache" / f"{dataset}.sqfs"

    def mounted_backings(self) -> list[str]:
        """The loop devices' backing files of the node's mounts, as its namespace saw them."""
        found = []
        mnt = str(self.root / "mnt")
        for line in (self.root / "mountinfo").read_text().splitlines():
            head, _, tail = line.partition(" - ")
            target, source = head.split()[4], tail.split()[1]
            if target.startswith(mnt + "/") and "/loop" in source:
                found.append(source)
        return found

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.root / "state" / "events.log"
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in records if kind is None or r["event"] == kind]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=30)


class Cluster:
    """N nodes sharing one counted datadir."""

    def __init__(self, base: Path, count: int, size_mib: int) -> None:
        self.base = base
        self.shared = SharedStorage(base, size_mib)
        self.datadir = self.shared.mountpoint / "data"
        self.datadir.mkdir(mode=0o755)
        self.nodes = [CoopNode(base / f"n{i}", i, self.datadir) for i in range(count)]

    def close(self) -> list[str]:
        for node in self.nodes:
            node.kill()
        left = []
        for node in self.nodes:
            left += clean_tree(node.root)
        self.shared.close()
        return left
