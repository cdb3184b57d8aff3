"""slurm/build-slurm's bookkeeping: the prefix it names, reuse, refusals (no Slurm is built).

The real build (minutes) runs in the 25.11 tier (tests/e2e/conftest.py); here the script
runs on small tarballs holding only a META file, against prefixes laid out as a finished
build leaves them, so that everything before `configure` is exercised for real.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

BUILD_SLURM = Path(__file__).resolve().parents[2] / "slurm" / "build-slurm"
META = "  Meta:\t\t1\n  Name:\t\tslurm\n  Major:\t\t{0}\n  Minor:\t\t{1}\n  Micro:\t\t{2}\n"


def tarball(path: Path, top: str, meta: str | None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        files = {f"{top}/README": "not slurm\n"}
        if meta is not None:
            files[f"{top}/META"] = meta
            files[f"{top}/contribs/x/META"] = META.format(1, 2, 3)  # a deeper META is not it
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def finished_prefix(prefix: Path) -> None:
    """What a complete build leaves: the stamp, the Lua plugin and the pyslurm wheel."""
    (prefix / "lib" / "slurm").mkdir(parents=True)
    (prefix / "lib" / "slurm" / "job_submit_lua.so").write_bytes(b"")
    (prefix / "wheels").mkdir()
    (prefix / "wheels" / "pyslurm-25.11.2-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    (prefix / ".complete").write_bytes(b"")


def run(*args: str | Path, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(user or []), str(BUILD_SLURM), *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_a_finished_build_is_reused_without_touching_it(tmp_path: Path) -> None:
    src = tarball(tmp_path / "slurm-25.11.7.tar.gz", "slurm-25.11.7", META.format(25, 11, 7))
    cache = tmp_path / "cache"
    prefix = cache / f"slurm-25.11.7-{sha12(src)}"
    finished_prefix(prefix)
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    done = run(src, cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(prefix)
    assert done.stderr == ""
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


def test_the_version_comes_from_meta_else_from_the_name(tmp_path: Path) -> None:
    # META wins over a misleading file name; the top-level META, not a deeper one
    src = tarball(tmp_path / "slurm-1.2.3.tar.gz", "slurm-src", META.format(24, 5, 9))
    finished_prefix(tmp_path / "c1" / f"slurm-24.5.9-{sha12(src)}")
    assert run(src, tmp_path / "c1").stdout.strip().endswith(f"/slurm-24.5.9-{sha12(src)}")
    named = tarball(tmp_path / "slurm-23.11.4.tar.bz2", "x", None)
    finished_prefix(tmp_path / "c2" / f"slurm-23.11.4-{sha12(named)}")
    assert run(named, tmp_path / "c2").stdout.strip().endswith(f"/slurm-23.11.4-{sha12(named)}")


@pytest.mark.parametrize("what", ["missing", "no version"])
def test_bad_tarballs_get_one_line(tmp_path: Path, what: str) -> None:
    src = tmp_path / "release.tar.gz"
    if what == "no version":
        tarball(src, "release", None)
    done = run(src, tmp_path / "cache")
    assert done.returncode == 1
    expected = (
        f"build-slurm: error: no such tarball: {src}"
        if what == "missing"
        else f"build-slurm: error: cannot tell the Slurm version of {src} "
        "(no META, no slurm-X.Y.Z name)"
    )
    assert done.stderr.splitlines() == [expected]
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the script as nobody through setpriv")
def test_a_user_cannot_start_a_build() -> None:
    # an unprivileged user finds a finished build, but cannot make the script build one
    # (under /tmp itself: pytest's tmp_path is private to root)
    with tempfile.TemporaryDirectory(prefix="ss-build-slurm-", dir="/tmp") as tmp:
        as_nobody(Path(tmp))


def as_nobody(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    src = tarball(tmp_path / "slurm-25.11.7.tar.gz", "slurm-25.11.7", META.format(25, 11, 7))
    src.chmod(0o644)
    cache = tmp_path / "cache"
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = run(src, cache, user=nobody)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"build-slurm: error: {cache}/slurm-25.11.7-{sha12(src)} is not built yet and building "
        f"it needs root (apt, {cache})"
    ]
    assert not cache.exists()
    finished_prefix(cache / f"slurm-25.11.7-{sha12(src)}")
    for path in [cache, *cache.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    done = run(src, cache, user=nobody)
    assert done.returncode == 0, done.stderr
