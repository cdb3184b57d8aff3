"""Shared pieces of the end-to-end tier: when it can run, which Slurm, the plugins it loads.

Every test in this directory is skipped, with the reason, when the machine cannot run a
local Slurm cluster (not root, Slurm or the build tools missing). Every test that uses a
cluster runs twice, once per Slurm (the `slurm_install` fixture):

- `slurm22.05`: Debian 12's packages;
- `slurm25.11`: Slurm 25.11 installed under a prefix by `slurm/build-slurm`, from
  $SCRATCH_STAGE_SLURM_PREFIX (an installed prefix) or $SCRATCH_STAGE_SLURM_TARBALL (built
  once into /var/cache/scratch-stage, reused afterwards); neither set: skipped, saying so.

The SPANK plugin is built once per session and Slurm, against that Slurm's headers, into a
world-readable directory under /tmp: the test user's sbatch/srun must read plugstack.conf
and load the plugin from there (pytest's tmp_path is private to root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the test modules import slurmclient from here
    sys.path.insert(0, str(HERE))
TESTCLUSTER = REPO / "slurm" / "testcluster"
JOB_SUBMIT_LUA = REPO / "slurm" / "job_submit.lua"
SPANK_DIR = REPO / "spank_config"
DEBIAN_PLUGIN_DIR = Path("/usr/lib/x86_64-linux-gnu/slurm-wlm")
LUA_PLUGIN = DEBIAN_PLUGIN_DIR / "job_submit_lua.so"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "salloc", "squeue", "make", "cc")
BUILD_SLURM = REPO / "slurm" / "build-slurm"
PREFIX_ENV, TARBALL_ENV = "SCRATCH_STAGE_SLURM_PREFIX", "SCRATCH_STAGE_SLURM_TARBALL"


def missing_requirement() -> str | None:
    """Why the end-to-end tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "end-to-end Slurm tests need root (they start munged, slurmctld and slurmd)"
    if not os.access(TESTCLUSTER, os.X_OK):
        return f"{TESTCLUSTER} is missing or not executable"
    for program in PROGRAMS:
        if shutil.which(program) is None:
            return (
                f"{program} not found: apt install munge slurmctld slurmd slurm-client "
                "libslurm-dev make gcc"
            )
    if not Path("/usr/include/slurm/spank.h").exists():
        return "/usr/include/slurm/spank.h missing: apt install libslurm-dev"
    if not LUA_PLUGIN.exists():
        return f"{LUA_PLUGIN} missing (Debian's slurm-wlm-basic-plugins provides it)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = missing_requirement()
    if missing is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=missing))


@dataclass(frozen=True)
class SlurmInstall:
    """One Slurm: Debian's packages (PREFIX None) or an installed prefix."""

    version: str  # major.minor, "22.05" or "25.11"
    prefix: Path | None

    @property
    def bin(self) -> Path:
        return self.prefix / "bin" if self.prefix else Path("/usr/bin")

    @property
    def include(self) -> Path:
        return self.prefix / "include" if self.prefix else Path("/usr/include")

    @property
    def plugin_dir(self) -> Path:
        return self.prefix / "lib" / "slurm" if self.prefix else DEBIAN_PLUGIN_DIR

    def wheel(self) -> Path | None:
        """The pyslurm wheel slurm/build-slurm built against this prefix, if any."""
        wheels = sorted((self.prefix / "wheels").glob("pyslurm-*.whl")) if self.prefix else []
        return wheels[-1] if wheels else None


def installed_version(prefix: Path) -> str:
    """'25.11' from the prefix's `slurmctld -V` ('slurm 25.11.7')."""
    out = subprocess.run([str(prefix / "sbin" / "slurmctld"), "-V"], capture_output=True,
                         text=True, timeout=30, check=False).stdout  # fmt: skip
    return ".".join(out.split()[-1].split(".")[:2]) if out.split() else "?"


def slurm_25_11() -> SlurmInstall:
    """The Slurm 25.11 prefix from the environment (built now if need be), or a skip."""
    prefix_text = os.environ.get(PREFIX_ENV, "")
    tarball = os.environ.get(TARBALL_ENV, "")
    if not prefix_text and not tarball:
        pytest.skip(
            f"the Slurm 25.11 tier needs {TARBALL_ENV}=<slurm-25.11.x.tar.gz> (built once by "
            f"slurm/build-slurm into /var/cache/scratch-stage) or {PREFIX_ENV}=<installed prefix>"
        )
    if not prefix_text:
        built = subprocess.run([str(BUILD_SLURM), tarball], capture_output=True, text=True,
                               timeout=3600, check=False)  # fmt: skip
        assert built.returncode == 0, f"slurm/build-slurm {tarball} failed:\n{built.stderr}"
        prefix_text = built.stdout.strip().splitlines()[-1]
    prefix = Path(prefix_text)
    if not (prefix / "sbin" / "slurmctld").exists():
        pytest.fail(f"{PREFIX_ENV}={prefix}: no sbin/slurmctld there")
    version = installed_version(prefix)
    assert version == "25.11", f"{prefix} holds Slurm {version}, not 25.11"
    lua = prefix / "lib" / "slurm" / "job_submit_lua.so"
    assert lua.exists(), f"{lua} missing: run slurm/build-slurm on the tarball to add it"
    return SlurmInstall(version, prefix)


@pytest.fixture(scope="session", params=["22.05", "25.11"], ids=["slurm22.05", "slurm25.11"])
def slurm_install(request: pytest.FixtureRequest) -> SlurmInstall:
    if request.param == "22.05":
        return SlurmInstall("22.05", None)
    return slurm_25_11()


@dataclass(frozen=True)
class SlurmKit:
    """The SPANK plugin built for one Slurm (with its plugstack.conf), `testcluster` up/down."""

    dir: Path  # world-readable: the test user's sbatch/srun load the plugin from here
    plugstack: Path
    install: SlurmInstall

    def job_submit_lua(self, dest: Path, catalog: Path) -> Path:
        """job_submit.lua as shipped, reading CATALOG and rechecking it every second."""
        lines = []
        for line in JOB_SUBMIT_LUA.read_text().splitlines():
            if line.startswith("local CATALOG_PATH ="):
                line = f'local CATALOG_PATH = "{catalog}"'
            elif line.startswith("local CATALOG_RECHECK_SECONDS ="):
                line = "local CATALOG_RECHECK_SECONDS = 1"
            lines.append(line)
        assert any(str(catalog) in line for line in lines), "CATALOG_PATH line not found"
        dest.write_text("\n".join(lines) + "\n")
        return dest

    def up(self, cluster_dir: Path, **settings: str) -> None:
        """`slurm/testcluster up CLUSTER_DIR` with TESTCLUSTER_<KEY>=value for each setting."""
        env = {**os.environ, **{f"TESTCLUSTER_{k.upper()}": v for k, v in settings.items()}}
        env.pop("SLURM_CONF", None)
        env.pop("TESTCLUSTER_SLURM_PREFIX", None)
        if self.install.prefix:
            env["TESTCLUSTER_SLURM_PREFIX"] = str(self.install.prefix)
        up = subprocess.run(
            [str(TESTCLUSTER), "up", str(cluster_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert up.returncode == 0, f"testcluster up failed:\n{up.stderr}"

    def down(self, cluster_dir: Path) -> None:
        """Stop the cluster's recorded daemons and remove its directory."""
        subprocess.run(
            [str(TESTCLUSTER), "down", str(cluster_dir), "--purge"], timeout=120, check=False
        )


@pytest.fixture(scope="session")
def slurm_kit(slurm_install: SlurmInstall) -> Iterator[SlurmKit]:
    base = Path(tempfile.mkdtemp(prefix="ss-e2e-plugin-", dir="/tmp"))
    try:
        base.chmod(0o755)
        make = ["make", "-s", "-C", str(SPANK_DIR), f"BUILDDIR={base}"]
        subprocess.run(
            [*make, f"SLURM_INCLUDE={slurm_install.include}"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        so = base / "scratch_stage_spank.so"
        so.chmod(0o755)
        plugstack = base / "plugstack.conf"
        # required here (optional in production): a plugin that fails to load must fail loudly
        plugstack.write_text(f"required {so}\n")
        plugstack.chmod(0o644)
        yield SlurmKit(base, plugstack, slurm_install)
    finally:
        shutil.rmtree(base, ignore_errors=True)
