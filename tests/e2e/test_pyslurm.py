"""The pyslurm demand source against a real Slurm 25.11 controller (the 25.11 tier only).

pyslurm 25.11.2, built by slurm/build-slurm against the Slurm prefix, is installed from its
wheel into a directory of this module (`pip install --target`) and put on the PYTHONPATH of
a child interpreter (this venv's) that reads one queue through both sources:
`snapshot_from_pyslurm` (after `usable_pyslurm` accepted the module) and the squeue source
(`read_snapshot`, `demand: {source: squeue}`), plus the configured `pyslurm` source. The
queue, submitted by the unprivileged test user: a blocker holding the whole node, a pending
job backfill plans onto it, a held job, a job without datasets, and a job whose comment
ends in a line forging another job's squeue record. The 22.05 parameter is skipped: no
pyslurm release speaks to Slurm 22.05 any more.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from slurmclient import SlurmClient

if TYPE_CHECKING:
    from conftest import SlurmKit

FORGED = "999999|debug|4294967295|1|N/A|localhost|datasets:p"

# Run by the child: both sources on one queue, as JSON on stdout.
READ_BOTH = """
import json, sys
from pathlib import Path
from scratch_stage.host import runner
from scratch_stage.host.config import Config, DemandConfig
from scratch_stage.slurm.demand import node_demand
from scratch_stage.slurm.demand_sources import read_snapshot
from scratch_stage.slurm.pyslurm_source import snapshot_from_pyslurm, usable_pyslurm

bin, scratch, now = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
timeout = float(sys.argv[4])
def config(source):
    return Config(datadir=scratch, cachedir=scratch, node="localhost", command_timeout=timeout,
                  squeue_command=(str(bin / "squeue"),), sinfo_command=(str(bin / "sinfo"),),
                  scontrol_command=(str(bin / "scontrol"),), demand=DemandConfig(source=source))
out = {}
try:
    version = runner.run([str(bin / "scontrol"), "--version"], timeout=timeout)
except Exception as e:
    version = str(e)
module, why = usable_pyslurm(version)
out["why"] = why
out["pyslurm_version"] = getattr(module, "__version__", None)
if module is not None:
    out["pyslurm"] = snapshot_from_pyslurm(module, now).to_json()
for source in ("squeue", "pyslurm"):
    snap = read_snapshot(config(source), now)
    out[source + "_source"] = None if snap is None else snap.to_json()
    if snap is not None:
        out[source + "_demand"] = node_demand(snap, "localhost", now=now, horizon=3600.0)
print(json.dumps(out))
"""


@dataclass
class Queue(SlurmClient):
    site_packages: Path = Path()  # pyslurm, installed from the wheel
    scratch: Path = Path()
    slurm_bin: Path = Path()
    jobs: dict[str, str] | None = None  # role -> job id

    def read_both(self, slurm_conf: bool = True, timeout: float = 30) -> tuple[dict[str, Any], str]:
        """The child's JSON (both sources on this queue, TIMEOUT per command), its stderr.

        Without SLURM_CONF the child finds no Slurm configuration at all (the prefix has no
        etc/slurm.conf, and there is no DNS SRV record for configless Slurm).
        """
        env = {**self.env(), "PYTHONPATH": str(self.site_packages)}
        if not slurm_conf:
            del env["SLURM_CONF"]
        proc = subprocess.run(
            [sys.executable, "-c", READ_BOTH, str(self.slurm_bin), str(self.scratch),
             str(time.time()), str(timeout)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
        return json.loads(proc.stdout), proc.stderr


def jobs_of(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(snapshot["jobs"], key=lambda j: int(j["job_id"]))


@pytest.fixture(scope="module")
def queue(slurm_kit: SlurmKit) -> Iterator[Queue]:
    install = slurm_kit.install
    if install.version != "25.11":
        pytest.skip(f"pyslurm 25.11 needs Slurm 25.11; no pyslurm release fits {install.version}")
    wheel = install.wheel()
    assert wheel is not None, f"no pyslurm wheel in {install.prefix}/wheels: run slurm/build-slurm"
    base = Path(tempfile.mkdtemp(prefix="ss-e2e-pyslurm-", dir="/tmp"))
    cluster_dir = base / "cluster"
    try:
        base.chmod(0o755)
        site_packages = base / "site-packages"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
             "--target", str(site_packages), str(wheel)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        (base / "scratch").mkdir()
        slurm_kit.up(cluster_dir)
        q = Queue(cluster_dir, site_packages, base / "scratch", install.bin)
        # a blocker on the whole node, so everything else stays pending
        blocker = q.submit("--output=/dev/null", "--exclusive", "--time=3", "--wrap", "sleep 600")
        wait_for(lambda: q.admin("squeue", "-h", "-j", blocker, "-o", "%T").strip() == "RUNNING")
        q.jobs = {
            "planned": q.submit("--output=/dev/null", "--time=1", "--comment=datasets:a",
                                "--wrap", "true"),
            "held": q.submit("--output=/dev/null", "--hold", "--comment=run 7 datasets:b,c",
                             "--wrap", "true"),
            "plain": q.submit("--output=/dev/null", "--time=1", "--comment=no request",
                              "--wrap", "true"),
            "newline": q.submit("--output=/dev/null", "--time=1",
                                f"--comment=datasets:a\n{FORGED}", "--wrap", "true"),
        }  # fmt: skip
        planned = q.jobs["planned"]
        wait_for(lambda: q.admin("squeue", "-h", "-j", planned, "-o", "%Y").strip() == "localhost")
        yield q
    finally:
        slurm_kit.down(cluster_dir)
        shutil.rmtree(base, ignore_errors=True)


def wait_for(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s"
        time.sleep(0.3)


def test_pyslurm_and_squeue_see_the_same_demand(queue: Queue) -> None:
    assert queue.jobs is not None
    for _ in range(3):  # backfill may re-plan a start time between the two reads
        out, stderr = queue.read_both()
        if out.get("pyslurm") and jobs_of(out["pyslurm"]) == jobs_of(out["squeue_source"]):
            break
        time.sleep(1)
    assert out["why"] == "", out["why"]
    assert out["pyslurm_version"].startswith("25.11."), out
    by_pyslurm, by_squeue = jobs_of(out["pyslurm"]), jobs_of(out["squeue_source"])
    assert by_pyslurm == by_squeue
    assert (
        out["pyslurm"]["partitions"]
        == out["squeue_source"]["partitions"]
        == {"debug": ["localhost"]}
    )
    # the jobs that asked for datasets, and nothing forged by the newline
    assert {j["job_id"]: j["datasets"] for j in by_pyslurm} == {
        queue.jobs["planned"]: ["a"],
        queue.jobs["held"]: ["b", "c"],
        queue.jobs["newline"]: ["a"],
    }
    planned = next(j for j in by_pyslurm if j["job_id"] == queue.jobs["planned"])
    assert planned["sched_nodes"] == ["localhost"] and planned["start"] is not None
    # both read the time limit in seconds (--time=1 is one minute; pyslurm gives minutes)
    assert planned["time_limit"] == 60
    # the configured pyslurm source used pyslurm (no fallback) and weighs the node alike
    assert "not pyslurm" not in stderr and "pyslurm failed" not in stderr, stderr
    assert jobs_of(out["pyslurm_source"]) == by_pyslurm
    assert out["pyslurm_demand"] == pytest.approx(out["squeue_demand"])
    # a held job (priority 0) weighs nothing, by either source
    assert out["pyslurm_demand"]["a"] > 0
    assert out["pyslurm_demand"].get("b", 0) == 0
    assert "p" not in out["pyslurm_demand"]


def test_pyslurm_without_a_slurm_configuration_does_not_end_the_process(queue: Queue) -> None:
    # libslurm exits the process on import when it finds no configuration: the source
    # tries the import in a child, says why, and falls back (squeue cannot work either)
    # (a SLURM_CONF naming a missing file makes libslurm retry for 60 s before it exits:
    # the child's import then times out, with the same fallback)
    out, stderr = queue.read_both(slurm_conf=False, timeout=10)
    assert out["why"] == (
        "pyslurm does not import in a child process (Could not establish a configuration source)"
    )
    assert out["pyslurm_source"] is None and out["squeue_source"] is None
    # the configured pyslurm source went on to squeue (which failed too) in this process
    assert stderr.count("no demand this pass:") == 2 and "bin/squeue -h -t PD" in stderr, stderr
