"""Shared pieces of the end-to-end tier: when it can run, and the Slurm plugins it loads.

Every test in this directory is skipped, with the reason, when the machine cannot run a
local Slurm cluster (not root, Slurm or the build tools missing). The SPANK plugin is built
once per session into a world-readable directory under /tmp: the test user's sbatch/srun
must read plugstack.conf and load the plugin from there (pytest's tmp_path is private to
root).
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
LUA_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/slurm-wlm/job_submit_lua.so")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "salloc", "squeue", "make", "cc")


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
class SlurmKit:
    """The built SPANK plugin (with its plugstack.conf) and `slurm/testcluster` up/down."""

    dir: Path  # world-readable: the test user's sbatch/srun load the plugin from here
    plugstack: Path

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
def slurm_kit() -> Iterator[SlurmKit]:
    base = Path(tempfile.mkdtemp(prefix="ss-e2e-plugin-", dir="/tmp"))
    try:
        base.chmod(0o755)
        subprocess.run(
            ["make", "-s", "-C", str(SPANK_DIR), f"BUILDDIR={base}"],
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
        yield SlurmKit(base, plugstack)
    finally:
        shutil.rmtree(base, ignore_errors=True)
