"""The Slurm client side the end-to-end tests share: as the test user, and as root."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

USER = "ssuser"


@dataclass
class SlurmClient:
    """Commands against the test cluster in CLUSTER_DIR (made by slurm/testcluster up)."""

    cluster_dir: Path

    @property
    def conf(self) -> Path:
        return self.cluster_dir / "etc" / "slurm.conf"

    @property
    def work(self) -> Path:
        return self.cluster_dir / "work"  # owned by the test user; jobs run from here

    @property
    def path(self) -> str:
        """PATH with the cluster's Slurm first (slurm/testcluster records its prefix)."""
        recorded = self.cluster_dir / "slurm-prefix"
        default = os.environ.get("PATH", "/usr/bin:/bin")
        if not recorded.exists():
            return default
        prefix = recorded.read_text().strip()
        return f"{prefix}/bin:{prefix}/sbin:{default}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": self.path}

    def run_as_user(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "runuser",
                "-u",
                USER,
                "--",
                "env",
                f"SLURM_CONF={self.conf}",
                f"PATH={self.path}",
                *args,
            ],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def admin(self, *args: str) -> str:
        """A Slurm command as root; its stdout (it must succeed)."""
        return subprocess.run(
            list(args), env=self.env(), capture_output=True, text=True, timeout=60, check=True
        ).stdout

    def submit(self, *args: str) -> str:
        """sbatch ARGS as the test user; the job id (the submission must succeed)."""
        proc = self.run_as_user("sbatch", "--parsable", *args)
        assert proc.returncode == 0, f"sbatch {args} failed: {proc.stderr}"
        return proc.stdout.strip().split(";")[0]
