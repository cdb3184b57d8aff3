"""The Slurm client side the end-to-end tests share: as the test user, and as root."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

USER = "ssuser"
# JobState values of a job that has not ended ("" while scontrol does not know it yet)
ACTIVE_STATES = ("", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """CHECK()'s first truthy result, polled; fails the test after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


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

    def started(self, tag: str, timeout: float = 60) -> str:
        """The job id the job tagged TAG recorded once it ran (in WORK/TAG.id)."""
        path = self.work / f"{tag}.id"
        wait_for(f"job {tag} to start", path.exists, timeout)
        return path.read_text().strip()

    def output(self, tag: str) -> str:
        return (self.work / f"{tag}.out").read_text()

    def release(self, tag: str) -> None:
        """Let the job tagged TAG end (its script waits for WORK/TAG.release)."""
        (self.work / f"{tag}.release").touch()

    def job_field(self, job_id: str, key: str) -> str:
        """KEY of `scontrol show job JOB_ID` ("" if absent)."""
        for item in self.admin("scontrol", "show", "job", "-o", job_id).split():
            name, _, value = item.partition("=")
            if name == key:
                return value
        return ""

    def wait_completed(self, job_id: str, timeout: float = 60) -> None:
        def ended() -> str:
            state = self.job_field(job_id, "JobState")
            return "" if state in ACTIVE_STATES else state

        state = wait_for(f"job {job_id} to end", ended, timeout)
        assert state == "COMPLETED", f"job {job_id} ended {state}"
