"""End to end, on a real single-node Slurm cluster (22.05 and 25.11): the submit side.

The SPANK plugin (spank_config/) adds `--datasets=` to sbatch/srun/salloc and passes it to
the prolog as SPANK_DATASETS; job_submit.lua (slurm/) refuses unknown, malformed and
forbidden datasets at submission with a message the user sees, and copies --datasets into
the job comment for queued-job demand.

One cluster for the module (`slurm/testcluster up` under a fresh directory in /tmp, with the
plugin built once per session by conftest.py); its finalizer always runs `slurm/testcluster
down DIR --purge`. It is set up the way a site with its own Slurm configuration would:

- job_submit.lua is the site's own script, with a rule of its own, that requires
  slurm/job_submit.lua installed as the module scratch_stage_submit.lua (test_jobs.py uses
  the file as a whole job_submit.lua);
- the catalog it reads is written by `scratch-stage catalog --publish` from real images and
  a configuration with `access` groups (uids and gids expanded at publish time);
- plugstack.conf names the plugin without a path (found through PluginDir) and gives it
  `mountdir=`.

Jobs are submitted as the unprivileged test user.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from slurmclient import USER, SlurmClient

if TYPE_CHECKING:
    from conftest import SlurmKit

REPO = Path(__file__).resolve().parents[2]
SCRATCH_STAGE = Path(sys.prefix) / "bin" / "scratch-stage"
# More than job_submit.lua lists in a message (10), to see the list cut short.
FILLER = [f"filler{i:02d}" for i in range(12)]
USAGE = "scratch-stage: --datasets needs a comma-separated list of dataset names"
MOUNTDIR = "/scratch/ds"  # the plugin's mountdir= argument, shown in --help

# The site's own job_submit.lua: two lines for scratch-stage, then its own rule.
SITE_JOB_SUBMIT = """\
package.path = "{plugin_dir}/?.lua;" .. package.path
local scratch_stage = require("scratch_stage_submit")
scratch_stage.configure{{catalog = "{catalog}", recheck_seconds = 1}}

function slurm_job_submit(job_desc, part_list, submit_uid)
    if scratch_stage.job_submit(job_desc, part_list, submit_uid) ~= slurm.SUCCESS then
        return slurm.ERROR
    end
    if job_desc.comment ~= nil and string.find(job_desc.comment, "site-forbidden", 1, true) then
        slurm.log_user("%s", "site policy: no site-forbidden jobs here")
        return slurm.ERROR
    end
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    if scratch_stage.job_modify(job_desc, job_rec, part_list, modify_uid) ~= slurm.SUCCESS then
        return slurm.ERROR
    end
    return slurm.SUCCESS
end
"""


@dataclass
class Cluster(SlurmClient):
    base: Path = Path()  # everything of this module: plugin, catalog, prolog output
    catalog: Path = Path()
    envdir: Path = Path()  # the prolog writes the environment of job N to envdir/N

    @property
    def dir(self) -> Path:
        return self.cluster_dir

    def submit(self, *args: str) -> str:
        return super().submit("--output=/dev/null", *args)

    def prolog_env(self, job_id: str, timeout: float = 30) -> dict[str, str]:
        """The environment the prolog of JOB_ID ran with."""
        path = self.envdir / job_id
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"no prolog ran for job {job_id} in {timeout}s"
            time.sleep(0.2)
        env = {}
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
        return env

    def comment(self, job_id: str) -> str:
        out = self.admin("scontrol", "show", "job", job_id)
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("Comment="):
                return line[len("Comment=") :]
        return ""


def publish_catalog(base: Path, catalog: Path, access: dict[str, list[str]]) -> None:
    """Images in BASE/data (one real squashfs image under every name), then the catalog."""
    data = base / "data"
    data.mkdir(mode=0o755)
    src = base / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    config = base / "config.yaml"
    access_yaml = "".join(f"  {name}: {groups}\n" for name, groups in access.items())
    config.write_text(f"datadir: {data}\ncachedir: {base / 'cache'}\naccess:\n{access_yaml}")
    scratch_stage = [str(SCRATCH_STAGE), "--config", str(config)]
    subprocess.run(
        [*scratch_stage, "image", "build", str(src), "alpha", "--compression", "fast"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for name in ("beta.v2", "mine", "secret", "nobody-at-all", *FILLER):
        os.link(data / "alpha.sqfs", data / f"{name}.sqfs")
    done = subprocess.run(
        [*scratch_stage, "catalog", "--publish", str(catalog)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"published {3 + 2 + len(FILLER)} dataset(s)" in done.stdout


@pytest.fixture(scope="module")
def cluster(slurm_kit: SlurmKit) -> Iterator[Cluster]:
    # Under /tmp, world-traversable: the test user's sbatch reads the plugin's directory.
    base = Path(tempfile.mkdtemp(prefix="ss-e2e-submit-", dir="/tmp"))
    cluster_dir = base / "cluster"
    try:
        base.chmod(0o755)
        plugin_dir = base / "plugin"
        envdir = base / "env"
        plugin_dir.mkdir(mode=0o755)
        envdir.mkdir(mode=0o700)
        catalog = plugin_dir / "catalog.txt"
        shutil.copy(REPO / "slurm" / "job_submit.lua", plugin_dir / "scratch_stage_submit.lua")
        job_submit = plugin_dir / "job_submit.lua"
        job_submit.write_text(SITE_JOB_SUBMIT.format(plugin_dir=plugin_dir, catalog=catalog))
        # the plugin by name, found through PluginDir (slurm_kit.dir is world-readable)
        plugstack = plugin_dir / "plugstack.conf"
        plugstack.write_text(f"required scratch_stage_spank.so mountdir={MOUNTDIR}/\n")
        plugstack.chmod(0o644)
        prolog = plugin_dir / "prolog"
        prolog.write_text(
            "#!/bin/sh\n"
            f'env > "{envdir}/.$SLURM_JOB_ID" && mv "{envdir}/.$SLURM_JOB_ID" '
            f'"{envdir}/$SLURM_JOB_ID"\n'
            "exit 0\n"
        )
        prolog.chmod(0o755)
        slurm_kit.up(
            cluster_dir,
            prolog=str(prolog),
            plugstack=str(plugstack),
            plugin_dir=str(slurm_kit.dir),
            job_submit=str(job_submit),
            user=USER,
        )
        # the user exists now (testcluster creates it): restrict one dataset to its group
        own_group = grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name
        access = {"mine": [own_group], "secret": ["root"], "nobody-at-all": []}
        publish_catalog(base, catalog, access)
        yield Cluster(cluster_dir, base, catalog, envdir)
    finally:
        slurm_kit.down(cluster_dir)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- SPANK --datasets


def test_sbatch_datasets_reaches_prolog_and_comment(cluster: Cluster) -> None:
    job = cluster.submit("--datasets=alpha", "--wrap", "true")
    env = cluster.prolog_env(job)
    assert env.get("SPANK_DATASETS") == "alpha"
    assert "datasets:alpha" in env.get("SLURM_JOB_COMMENT", "").split()
    assert "datasets:alpha" in cluster.comment(job).split()


def test_datasets_directive_in_batch_script(cluster: Cluster) -> None:
    script = cluster.dir / "work" / "directive.sh"
    script.write_text("#!/bin/sh\n#SBATCH --datasets=beta.v2,alpha\ntrue\n")
    script.chmod(0o644)
    job = cluster.submit(str(script))
    env = cluster.prolog_env(job)
    assert env.get("SPANK_DATASETS") == "beta.v2,alpha"
    assert "datasets:beta.v2,alpha" in cluster.comment(job).split()


def test_srun_datasets(cluster: Cluster) -> None:
    proc = cluster.run_as_user("srun", "--datasets=alpha", "printenv", "SLURM_JOB_ID")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    assert cluster.prolog_env(job).get("SPANK_DATASETS") == "alpha"


def test_salloc_datasets(cluster: Cluster) -> None:
    proc = cluster.run_as_user("salloc", "--datasets=beta.v2", "printenv", "SLURM_JOB_ID")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().splitlines()[-1]
    assert cluster.prolog_env(job).get("SPANK_DATASETS") == "beta.v2"


def test_queued_job_comment_merges_option_and_keeps_other_text(cluster: Cluster) -> None:
    job = cluster.submit(
        "--hold", "--comment=run 7 datasets:alpha", "--datasets=alpha,beta.v2", "--wrap", "true"
    )
    try:
        out = cluster.admin("squeue", "-h", "-j", job, "-o", "%k")
        assert out.strip() == "run 7 datasets:alpha datasets:beta.v2"
    finally:
        cluster.admin("scancel", job)


def test_comment_only_request_is_left_alone(cluster: Cluster) -> None:
    job = cluster.submit("--comment=datasets:alpha,beta.v2 note", "--wrap", "true")
    env = cluster.prolog_env(job)
    assert env.get("SLURM_JOB_COMMENT") == "datasets:alpha,beta.v2 note"
    assert "SPANK_DATASETS" not in env


@pytest.mark.parametrize("value", ["", "alpha,,beta.v2", "alpha,", "al pha", "a;b", ".hidden"])
def test_bad_datasets_value_fails_in_the_client(cluster: Cluster, value: str) -> None:
    proc = cluster.run_as_user("sbatch", f"--datasets={value}", "--wrap", "true")
    assert proc.returncode != 0
    assert USAGE in proc.stderr
    assert "Submitted batch job" not in proc.stdout


# ---------------------------------------------------------------- job_submit.lua


def test_unknown_dataset_in_comment_is_rejected(cluster: Cluster) -> None:
    proc = cluster.run_as_user("sbatch", "--comment=datasets:nope", "--wrap", "true")
    assert proc.returncode != 0
    assert "scratch-stage: unknown dataset 'nope' (known: alpha, beta.v2, " in proc.stderr
    # the list is cut after 10 names
    assert "... 7 more)" in proc.stderr


def test_unknown_dataset_in_option_is_rejected(cluster: Cluster) -> None:
    proc = cluster.run_as_user("sbatch", "--datasets=alpha,imagenet", "--wrap", "true")
    assert proc.returncode != 0
    assert "scratch-stage: unknown dataset 'imagenet'" in proc.stderr


def test_dots_are_part_of_the_name(cluster: Cluster) -> None:
    proc = cluster.run_as_user("sbatch", "--comment=datasets:beta", "--wrap", "true")
    assert proc.returncode != 0
    assert "unknown dataset 'beta'" in proc.stderr


def test_malformed_name_in_comment_is_rejected(cluster: Cluster) -> None:
    proc = cluster.run_as_user("sbatch", "--comment=datasets:../etc", "--wrap", "true")
    assert proc.returncode != 0
    assert "scratch-stage: malformed dataset name '../etc'" in proc.stderr


def test_restricted_dataset_is_rejected_for_non_members(cluster: Cluster) -> None:
    proc = cluster.run_as_user("sbatch", "--datasets=secret", "--wrap", "true")
    assert proc.returncode != 0
    assert (
        f"scratch-stage: dataset 'secret' is restricted to the groups root and user {USER} "
        "is in none of them" in proc.stderr
    )
    proc = cluster.run_as_user("srun", "--comment=datasets:nobody-at-all", "true")
    assert proc.returncode != 0
    assert "dataset 'nobody-at-all' is restricted" in proc.stderr


def test_restricted_dataset_is_accepted_for_members(cluster: Cluster) -> None:
    job = cluster.submit("--datasets=mine", "--wrap", "true")
    assert cluster.prolog_env(job).get("SPANK_DATASETS") == "mine"


def test_catalog_problems_fail_open(cluster: Cluster) -> None:
    aside = cluster.catalog.with_name("catalog.aside")
    cluster.catalog.rename(aside)
    try:
        time.sleep(1.5)  # the copy under test rechecks the catalog every second
        job = cluster.submit("--comment=datasets:nope", "--wrap", "true")
        assert job.isdigit()
        log = (cluster.dir / "log" / "slurmctld.log").read_text()
        assert "scratch-stage: cannot read the catalog" in log
    finally:
        aside.rename(cluster.catalog)
    time.sleep(1.5)
    proc = cluster.run_as_user("sbatch", "--comment=datasets:nope", "--wrap", "true")
    assert proc.returncode != 0
    assert "unknown dataset 'nope'" in proc.stderr


def test_comment_update_of_a_queued_job_is_checked(cluster: Cluster) -> None:
    # Slurm 22.05's scontrol does not print slurm.log_user() text of a refused update (it
    # says "Unspecified error for job N"): the reason is in slurmctld's log.
    job = cluster.submit("--hold", "--wrap", "true")
    try:
        for comment, reason in [
            ("datasets:nope", "unknown dataset 'nope'"),
            ("datasets:secret", "dataset 'secret' is restricted"),
        ]:
            proc = cluster.run_as_user("scontrol", "update", f"jobid={job}", f"comment={comment}")
            assert proc.returncode != 0
            assert f"Unspecified error for job {job}" in proc.stderr
            log = (cluster.dir / "log" / "slurmctld.log").read_text()
            assert f"refused a modification by uid {pwd.getpwnam(USER).pw_uid}" in log
            assert reason in log
        assert cluster.comment(job) == ""
        proc = cluster.run_as_user("scontrol", "update", f"jobid={job}", "comment=datasets:beta.v2")
        assert proc.returncode == 0, proc.stderr
        assert cluster.comment(job) == "datasets:beta.v2"
    finally:
        cluster.admin("scancel", job)


# ---------------------------------------------------------------- coexistence with a site


def test_the_catalog_lists_who_may_use_restricted_datasets(cluster: Cluster) -> None:
    lines = cluster.catalog.read_text().splitlines()
    user = pwd.getpwnam(USER)
    group = grp.getgrgid(user.pw_gid).gr_name
    mine = next(line for line in lines if line.startswith("mine\t"))
    assert f"groups={group}" in mine.split("\t")
    assert str(user.pw_uid) in mine.split("\tuids=")[1].split(",")
    assert "alpha\t*" in lines
    assert "nobody-at-all\tgroups=\tgids=\tuids=" in lines


def test_the_sites_own_rule_still_applies(cluster: Cluster) -> None:
    proc = cluster.run_as_user(
        "sbatch", "--comment=site-forbidden datasets:alpha", "--wrap", "true"
    )
    assert proc.returncode != 0
    assert "site policy: no site-forbidden jobs here" in proc.stderr
    # scratch-stage's check comes first in this site's script
    proc = cluster.run_as_user("sbatch", "--comment=site-forbidden datasets:nope", "--wrap", "true")
    assert proc.returncode != 0
    assert "unknown dataset 'nope'" in proc.stderr and "site policy" not in proc.stderr


def test_another_uid_or_gid_does_not_open_a_restricted_dataset(cluster: Cluster) -> None:
    # sbatch refuses both for a user; slurmctld would too (the ids must match the munge
    # credential), whatever client sent the request
    for identity in ("--gid=0", "--uid=0"):
        proc = cluster.run_as_user("sbatch", identity, "--datasets=secret", "--wrap", "true")
        assert proc.returncode != 0, proc.stdout
        assert "Submitted batch job" not in proc.stdout
    assert cluster.admin("squeue", "-h", "-o", "%i %k").count("secret") == 0


def test_help_names_the_mount_directory(cluster: Cluster) -> None:
    proc = cluster.run_as_user("sbatch", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "--datasets=name[,name...]" in text
    assert f"available at {MOUNTDIR}/<name> on the job's nodes" in text


def test_a_bad_plugstack_argument_is_reported_and_the_default_kept(cluster: Cluster) -> None:
    plugstack = cluster.base / "plugin" / "plugstack.conf"
    good = plugstack.read_text()
    try:  # read again by every command: no restart
        plugstack.write_text("required scratch_stage_spank.so mountdir=relative bogus=1\n")
        proc = cluster.run_as_user("sbatch", "--help")
        assert proc.returncode == 0, proc.stderr
        assert "ignoring argument 'mountdir=relative'" in proc.stderr
        assert "ignoring argument 'bogus=1'" in proc.stderr
        assert "available at /datasets/<name> on the job's nodes" in " ".join(proc.stdout.split())
        job = cluster.submit("--datasets=alpha", "--wrap", "true")
        assert cluster.prolog_env(job).get("SPANK_DATASETS") == "alpha"
    finally:
        plugstack.write_text(good)
