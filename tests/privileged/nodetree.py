"""A node tree for the privileged tests: images, the CLI as Slurm runs it, the mount table.

The CLI runs as a subprocess exactly as Slurm runs it: the job in environment variables,
and for prolog and epilog no PATH at all. The mount table and loop devices are read here
independently of the package under test, so a parser bug there cannot hide itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CLI = Path(sys.prefix) / "bin" / "scratch-stage"
ADMIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MKSQUASHFS, UMOUNT, LOSETUP = "/usr/bin/mksquashfs", "/usr/bin/umount", "/usr/sbin/losetup"
REQUIRED_PROGRAMS = (MKSQUASHFS, "/usr/bin/mount", UMOUNT, LOSETUP)
BLOB_SIZE = 256 * 1024
BIG_SIZE = 300 * 1024 * 1024
RUN_TIMEOUT = 120.0
Popen = subprocess.Popen  # of str: every process here runs in text mode


# --- the mount table and loop devices, read independently of the package under test ---


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    target: str
    options: str
    fstype: str
    source: str

    @property
    def backing(self) -> str | None:
        """The loop device's backing file (' (deleted)' kept), None if not a loop mount."""
        name = self.source.rsplit("/", 1)[-1]
        if not name.startswith("loop"):
            return None
        return loop_backing(name)


def mount_table() -> list[Mount]:
    """Every mount of this mount namespace, in kernel order."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        h, t = head.split(), tail.split()
        mounts.append(Mount(int(h[0]), int(h[1]), _unescape(h[4]), h[5], t[0], _unescape(t[1])))
    return mounts


def mounts_under(directory: Path) -> list[Mount]:
    """Mounts at DIRECTORY or below it."""
    top = os.path.realpath(directory)
    return [m for m in mount_table() if m.target == top or m.target.startswith(top + "/")]


def stack_at(target: Path) -> list[Mount]:
    """The mounts stacked at TARGET, bottom first."""
    here = [m for m in mount_table() if m.target == os.path.realpath(target)]
    by_parent = {m.parent_id: m for m in here}
    ids = {m.mount_id for m in here}
    current = next((m for m in here if m.parent_id not in ids), None)
    ordered: list[Mount] = []
    while current is not None and current not in ordered:
        ordered.append(current)
        current = by_parent.get(current.mount_id)
    return ordered


def loop_backing(name: str) -> str | None:
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().rstrip("\n")
    except OSError:
        return None


def loops_under(directory: Path) -> dict[str, str]:
    """/dev/loopN -> backing file, for loop devices whose backing file is under DIRECTORY.

    Read from sysfs rather than `losetup -j FILE`: a replaced or deleted image keeps its
    loop device but no longer has a path that `losetup -j` could match.
    """
    top = os.path.realpath(directory) + "/"
    found = {}
    for entry in Path("/sys/block").glob("loop*"):
        backing = loop_backing(entry.name)
        if backing and backing.startswith(top):
            found[f"/dev/{entry.name}"] = backing
    return found


def clean_tree(root: Path) -> list[str]:
    """Unmount everything under ROOT and detach loops backed under it; what is left.

    ROOT is the test's whole tree, not just its mountdir: a bug that mounts outside the
    mountdir (say '<mountdir>/../x') must not leak either.
    """
    for _ in range(100):
        mounts = mounts_under(root)
        if not mounts:
            break
        # The newest mount first: it is the top of its stack (or a child of an older one).
        for mount in reversed(mounts):
            subprocess.run([UMOUNT, "-l", mount.target], capture_output=True)
    for device in loops_under(root):
        # On a device still open, LOOP_CLR_FD only sets autoclear: it goes when closed.
        subprocess.run([LOSETUP, "-d", device], capture_output=True)
    return [f"still mounted: {m.target} ({m.source})" for m in mounts_under(root)]


# --- a mount namespace per test ---

_CLONE_NEWNS, _MS_REC, _MS_SLAVE, _MNT_DETACH = 0x20000, 0x4000, 0x80000, 2


def _libc_call(name: str, *args: Any) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        code = ctypes.get_errno()
        hint = ""
        others = len(os.listdir("/proc/self/task")) - 1  # native threads too
        if name in ("unshare", "setns") and others:
            python = threading.active_count() - 1
            hint = f" ({others} other thread(s) of pytest still run, {python} of them Python's)"
        raise OSError(code, f"{name}: {os.strerror(code)}{hint}")


def _rejoin(namespace: int) -> None:
    """setns into the mount NAMESPACE, waiting up to 10 s while it is refused (EINVAL: a
    thread that shares this one's filesystem context, seen rarely and briefly in CI runs;
    a thread that stays makes the last refusal the error)."""
    end = time.monotonic() + 10
    while True:
        try:
            _libc_call("setns", namespace, _CLONE_NEWNS)
            return
        except OSError as e:
            if e.errno != errno.EINVAL or time.monotonic() >= end:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def own_mount_namespace() -> Iterator[None]:
    """The body runs in a mount namespace of its own; the caller's is restored after.

    A mount namespace created elsewhere on the machine while a test's image is mounted
    (another checkout's `unshare --mount`, a Slurm job container) gets a copy of that mount,
    and unless propagation is shared the test's unmount does not reach the copy: a cached
    copy the test evicts then keeps its loop device and its blocks, deleted, until that
    namespace ends, and rightly counts against the cache budget. Seen: "b does not fit:
    266240 of 400000 bytes used" in test_rebalance, the deleted a.sqfs mounted in four
    namespaces of another worktree's test_coop. Here nothing made by the test leaves the
    namespace (slave: the machine's mounts still come in), and the copies of other
    sessions' loop mounts it starts with are detached at once so that it pins none of
    theirs either. Whatever is left when the body ends goes with the namespace.
    Needs a single-threaded caller (unshare and setns refuse a shared filesystem context).
    """
    original = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc_call("unshare", _CLONE_NEWNS)
        try:
            _libc_call("mount", b"none", b"/", None, _MS_REC | _MS_SLAVE, None)
            for mount in reversed(mount_table()):
                if mount.source.startswith("/dev/loop"):
                    with contextlib.suppress(OSError):  # gone with its parent already
                        _libc_call("umount2", os.fsencode(mount.target), _MNT_DETACH)
            yield
        finally:
            _rejoin(original)
            os.fchdir(cwd)  # setns moved it to the namespace's root
    finally:
        os.close(cwd)
        os.close(original)


# --- images, built once per session ---


def blob_of(key: str) -> bytes:
    """The deterministic pseudo-random content of the image KEY's blob.bin."""
    return random.Random(key).randbytes(BLOB_SIZE)


def hello_of(key: str) -> str:
    """The content of the image KEY's hello.txt."""
    return f"this is dataset image {key}\n"


class ImageStore:
    """Images built with `scratch-stage image build`, once per session, by key.

    Every image holds hello.txt and blob.bin (see hello_of, blob_of). Special keys:
    'setuid' adds a setuid-root copy of /usr/bin/id and a /dev/null device node;
    'big' is BIG_SIZE bytes of random data (for copies slow enough to interrupt).
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.datadir = base / "images"
        self.datadir.mkdir()
        self.config = base / "config.yaml"
        self.config.write_text(
            f"datadir: {self.datadir}\ncachedir: {base / 'cache'}\n"
            f"mountdir: {base / 'mnt'}\nstatedir: {base / 'state'}\n"
        )
        self.built: dict[str, Path] = {}

    def get(self, key: str) -> Path:
        if key not in self.built:
            self.built[key] = self._build(key)
        return self.built[key]

    def _build(self, key: str) -> Path:
        src = self.base / "src" / key
        src.mkdir(parents=True)
        src.chmod(0o755)
        (src / "hello.txt").write_text(hello_of(key))
        (src / "blob.bin").write_bytes(blob_of(key))
        if key == "setuid":
            shutil.copy("/usr/bin/id", src / "id")
            (src / "id").chmod(0o4755)
            os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        if key == "big":
            with open(src / "random.bin", "wb") as f:
                for _ in range(BIG_SIZE // (1 << 24)):
                    f.write(os.urandom(1 << 24))
        done = subprocess.run(
            [str(CLI), "--config", str(self.config), "image", "build", str(src), key,
             "--compression", "fast"],
            capture_output=True, text=True, env=admin_environ(), timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        shutil.rmtree(src)
        return self.datadir / f"{key}.sqfs"


# --- one node per test ---


def admin_environ(**extra: str) -> dict[str, str]:
    """An administrator's shell environment (no variable of the calling shell leaks in)."""
    return {"PATH": ADMIN_PATH, "LANG": "C.UTF-8", **extra}


@dataclass
class NodeEnv:
    """A node tree (datadir, cachedir, mountdir, statedir, config.yaml) under ROOT."""

    root: Path
    store: ImageStore
    settings: dict[str, Any] = field(default_factory=dict)
    procs: list[Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        for d in (self.datadir, self.cachedir, self.mountdir):
            d.mkdir(parents=True, exist_ok=True)
        self.statedir.mkdir(mode=0o700)  # private, as scratch-stage creates it
        self.configure()

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
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def rundir(self) -> Path:
        """This node's /run/scratch-stage (the last validated configuration)."""
        return self.root / "run"

    def configure(self, **overrides: Any) -> None:
        """(Re)write config.yaml: the tree's directories, a 1GiB capacity, then OVERRIDES."""
        self.settings.update(overrides)
        values = {
            "datadir": str(self.datadir),
            "cachedir": str(self.cachedir),
            "mountdir": str(self.mountdir),
            "statedir": str(self.statedir),
            "capacity": "1GiB",
            "lock_timeout": 60,
            **self.settings,
        }
        text = json.dumps({k: v for k, v in values.items() if v is not None}, indent=1)
        self.config_path.write_text(text + "\n")  # JSON is YAML

    def add_image(self, name: str, key: str | None = None, *, mode: int = 0o644) -> Path:
        """Put image KEY (default NAME) in datadir as NAME.sqfs; a copy, so it may be changed."""
        path = self.datadir / f"{name}.sqfs"
        built = self.store.get(key or name)
        if key == "big":
            os.link(built, path)  # 300 MB: share it; tests never change it in place
        else:
            shutil.copyfile(built, path)
            path.chmod(mode)
        return path

    def replace_image(self, name: str, key: str) -> None:
        """Atomically replace NAME's image by image KEY, as a data steward would."""
        tmp = self.datadir / f".{name}.new"
        shutil.copyfile(self.store.get(key), tmp)
        tmp.chmod(0o644)
        os.replace(tmp, self.datadir / f"{name}.sqfs")

    # running the CLI

    def job_environ(
        self, job_id: int | str, *, comment: str | None = None, spank: str | None = None,
        user: str = "root", uid: int = 0, gid: int = 0,
    ) -> dict[str, str]:  # fmt: skip
        """What slurmd gives a prolog or epilog (no PATH), plus where the config is."""
        environ = {
            "SCRATCH_STAGE_CONFIG": str(self.config_path),
            "SCRATCH_STAGE_RUNDIR": str(self.rundir),
            "SLURM_JOB_ID": str(job_id),
            "SLURM_JOB_USER": user,
            "SLURM_JOB_UID": str(uid),
            "SLURM_JOB_GID": str(gid),
        }
        if comment is not None:
            environ["SLURM_JOB_COMMENT"] = comment
        if spank is not None:
            environ["SPANK_DATASETS"] = spank
        return environ

    def prolog(self, job_id: int | str, **job: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["prolog"], self.job_environ(job_id, **job))

    def epilog(self, job_id: int | str, **job: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["epilog"], self.job_environ(job_id, **job))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An administrator's command on this node."""
        return self.run(list(args), self.admin_environ())

    def admin_environ(self) -> dict[str, str]:
        return admin_environ(
            SCRATCH_STAGE_CONFIG=str(self.config_path), SCRATCH_STAGE_RUNDIR=str(self.rundir)
        )

    def run(self, args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), *args], env=environ, capture_output=True, text=True,
            timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, cwd="/",
        )  # fmt: skip

    def spawn(
        self, args: list[str], environ: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start the CLI without waiting; killed by the finalizer if still running."""
        proc = subprocess.Popen(
            [str(CLI), *args], env=environ or self.admin_environ(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd="/",
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    # observing the node

    def status(self) -> dict[str, Any]:
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def holders(self) -> dict[str, list[str]]:
        """Dataset name -> holders, for datasets with holders, from `status --json`."""
        rows = self.status()["datasets"]
        return {d["name"]: d["holders"] for d in rows if d["holders"]}

    def state(self) -> dict[str, Any]:
        return json.loads((self.statedir / "state.json").read_text())  # type: ignore[no-any-return]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.statedir / "events.log"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in records if kind is None or r["event"] == kind]

    def stack(self, name: str) -> list[Mount]:
        """The mounts at mountdir/NAME, bottom first."""
        return stack_at(self.mountdir / name)

    def backings(self, name: str) -> list[str | None]:
        """The loop backing file of each layer at mountdir/NAME, bottom first."""
        return [m.backing for m in self.stack(name)]

    def snapshot(self) -> tuple[dict[str, Any], dict[str, list[str | None]]]:
        """The jobs in state.json and every mount stack: what other jobs depend on."""
        stacks = {}
        for mount in mounts_under(self.mountdir):
            name = os.path.relpath(mount.target, self.mountdir)
            stacks[name] = self.backings(name)
        return self.state()["jobs"], stacks

    def finalize(self) -> list[str]:
        """Kill our processes, unmount and detach everything of this tree; what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=30)
        return clean_tree(self.root)


# --- small assertion helpers ---


def one_line(text: str) -> str:
    """TEXT's only line (a clear one-line message), failing if it has none or several."""
    lines = text.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), f"expected one line, got {text!r}"
    return lines[0]


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.005) -> Any:
    """Poll PREDICATE until it returns something true; that value, or fail at TIMEOUT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {predicate}")
