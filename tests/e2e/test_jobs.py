"""End to end, on a real single-node Slurm cluster (22.05 and 25.11): jobs reading datasets.

The cluster's Prolog/Epilog exec wrappers that run this checkout's `scratch-stage prolog` /
`epilog` with a configuration whose datadir, cachedir, mountdir and statedir all live under
one fresh directory in /tmp; images are real squashfs files, mounts are real loop mounts.
Jobs are submitted as the unprivileged test user, with `--comment=datasets:...` and with the
SPANK option `--datasets=...` (job_submit.lua enabled, reading the published catalog).

Finalizers always run, in this order: `slurm/testcluster down DIR --purge` (cancels the jobs
and stops the daemons), then every mount under the directory is unmounted (lazily, top
layer first; the loop devices are autocleared), then the directory is removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from slurmclient import USER, SlurmClient, wait_for

from scratch_stage.core.expected import UNPLACED_CAP
from scratch_stage.slurm.demand import Snapshot, node_demand, parse_slurm_time

if TYPE_CHECKING:
    from conftest import SlurmKit

REPO = Path(__file__).resolve().parents[2]
SCRATCH_STAGE = REPO / ".venv" / "bin" / "scratch-stage"
# a: read by most jobs; p: only ever wanted by a pending job; f: never read (node features)
DATASETS = ("a", "p", "f")
HELLO = "hello from dataset {}\n"

# The job: print the dataset's files and its mount layers (the loop device's backing file,
# top layer last), record its job id, then wait until the test releases it.
JOB_SCRIPT = """#!/bin/sh
{directive}
tag=$1 ds=$2
if [ -n "$ds" ]; then
    cat "{mountdir}/$ds/hello.txt"
    sha256sum "{mountdir}/$ds/blob.bin"
    awk -v m="{mountdir}/$ds" '$5 == m' /proc/self/mountinfo | while read -r line; do
        dev=${{line##* - squashfs }}; dev=${{dev%% *}}
        echo "layer $dev $(cat /sys/block/${{dev#/dev/}}/loop/backing_file)"
    done
fi
echo "ran"
echo "$SLURM_JOB_ID" > "{work}/$tag.id.tmp" && mv "{work}/$tag.id.tmp" "{work}/$tag.id"
i=0
while [ ! -e "{work}/$tag.release" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
"""


def unmount_under(base: Path) -> None:
    """Unmount every mount below BASE, deepest and topmost first, until none is left."""
    for _ in range(20):
        targets = subprocess.run(
            ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        mine = [t for t in targets if t.startswith(f"{base}/")]
        if not mine:
            return
        for target in sorted(mine, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


@dataclass
class Site(SlurmClient):
    """One test cluster and the scratch-stage node configuration its prolog uses."""

    base: Path = Path()
    config: Path = Path()
    mountdir: Path = Path()
    cachedir: Path = Path()
    statedir: Path = Path()
    checksums: dict[str, str] = field(default_factory=dict)

    def scratch_stage(self, *args: str, env: dict[str, str] | None = None) -> str:
        """`scratch-stage --config CONFIG ARGS` as root, with this cluster's SLURM_CONF
        (and ENV: more variables, e.g. SCRATCH_STAGE_CAPACITY)."""
        proc = subprocess.run(
            [str(SCRATCH_STAGE), "--config", str(self.config), *args],
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"scratch-stage {args} failed: {proc.stderr}"
        return proc.stdout

    def status(self) -> dict[str, dict[str, Any]]:
        data = json.loads(self.scratch_stage("status", "--json"))
        return {d["name"]: d for d in data["datasets"]}

    def holders(self, name: str) -> list[str]:
        return list(self.status().get(name, {}).get("holders", []))

    def script(self, name: str, directive: str = "") -> Path:
        path = self.work / name
        path.write_text(
            JOB_SCRIPT.format(directive=directive, mountdir=self.mountdir, work=self.work)
        )
        path.chmod(0o644)
        return path

    def node_state(self) -> str:
        return self.admin("sinfo", "-h", "-N", "-n", "localhost", "-o", "%T").strip()

    def wait_idle(self) -> None:
        """The node returns to idle; it must never be drained on the way."""

        def idle() -> bool:
            state = self.node_state()
            assert "drain" not in state, f"node drained: {self.admin('sinfo', '-R')}"
            return state == "idle"

        wait_for("the node to be idle", idle, 60)

    def wait_backfill_after(self, moment: float) -> None:
        """Until a backfill cycle ended in a later second than MOMENT (`sdiag`; one every
        bf_interval=5 s, later under load: a fixed sleep could end before it)."""

        def last_cycle() -> bool:
            for line in self.admin("sdiag").splitlines():
                if line.strip().startswith("Last cycle when:") and line.rstrip().endswith(")"):
                    return int(line.rstrip(")").rsplit("(", 1)[1]) > int(moment)
            return False

        wait_for("a backfill cycle", last_cycle, 60)

    def features(self) -> list[str]:
        out = self.admin("scontrol", "show", "node", "-o", "localhost")
        for item in out.split():
            name, _, value = item.partition("=")
            if name == "ActiveFeatures":
                return [] if value in ("", "(null)") else value.split(",")
        return []


def build_site(
    base: Path, name: str, images: dict[str, Path], lua: bool, kit: SlurmKit, **extra: str
) -> Site:
    """Config and wrappers for one cluster under BASE/NAME-*, then the cluster itself.

    EXTRA: more TESTCLUSTER_<KEY> settings (slurm/testcluster).
    """
    dirs = {key: base / f"{name}-{key}" for key in ("datadir", "cachedir", "mountdir", "statedir")}
    dirs["datadir"] = base / "data"  # the images are shared by every cluster
    for path in dirs.values():
        path.mkdir(mode=0o755, exist_ok=True)
    config = base / f"{name}-config.yaml"
    config.write_text(
        "".join(f"{key}: {path}\n" for key, path in dirs.items()) + "capacity: 256MiB\n"
        "node: localhost\n"
        "demand: {source: squeue}\n"
        f"squeue_command: {kit.install.bin / 'squeue'}\n"
        f"sinfo_command: {kit.install.bin / 'sinfo'}\n"
        f"scontrol_command: {kit.install.bin / 'scontrol'}\n"
        "node_features: true\n"
    )
    wrappers = {}
    for hook in ("prolog", "epilog"):
        # Slurm runs these with no PATH and no SCRATCH_STAGE_CONFIG
        wrapper = base / f"{name}-{hook}.sh"
        wrapper.write_text(
            f"#!/bin/sh\nexport SCRATCH_STAGE_CONFIG={config}\nexec {SCRATCH_STAGE} {hook}\n"
        )
        wrapper.chmod(0o755)
        wrappers[hook] = str(wrapper)
    cluster_dir = base / f"{name}-cluster"
    settings = {**wrappers, "plugstack": str(kit.plugstack), "user": USER, **extra}
    site = Site(cluster_dir, base, config, dirs["mountdir"], dirs["cachedir"], dirs["statedir"])
    if lua:
        catalog = base / f"{name}-catalog.txt"
        site.scratch_stage("catalog", "--publish", str(catalog))
        settings["job_submit"] = str(kit.job_submit_lua(base / f"{name}-job_submit.lua", catalog))
    kit.up(cluster_dir, **settings)
    for dataset, src in images.items():
        site.checksums[dataset] = hashlib.sha256((src / "blob.bin").read_bytes()).hexdigest()
    return site


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A world-traversable directory with the sample images in BASE/data."""
    path = Path(tempfile.mkdtemp(prefix="ss-e2e-jobs-", dir="/tmp"))
    try:
        path.chmod(0o755)
        (path / "data").mkdir(mode=0o755)
        bootstrap = path / "build-config.yaml"
        bootstrap.write_text(f"datadir: {path}/data\ncachedir: {path}/build-cache\n")
        for name in DATASETS:
            src = path / "src" / name
            src.mkdir(parents=True)
            (src / "hello.txt").write_text(HELLO.format(name))
            (src / "blob.bin").write_bytes(os.urandom(512 * 1024))
            subprocess.run(
                [str(SCRATCH_STAGE), "--config", str(bootstrap), "image", "build", str(src), name,
                 "--compression", "fast"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        yield path
    finally:
        for cluster_dir in path.glob("*-cluster"):
            subprocess.run(
                [str(REPO / "slurm" / "testcluster"), "down", str(cluster_dir), "--purge"],
                timeout=120,
                check=False,
            )
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def site(base: Path, slurm_kit: SlurmKit) -> Iterator[Site]:
    images = {name: base / "src" / name for name in DATASETS}
    built = build_site(base, f"main{slurm_kit.install.version}", images, lua=True, kit=slurm_kit)
    yield built
    slurm_kit.down(built.cluster_dir)


@pytest.fixture()
def site_without_lua(base: Path, slurm_kit: SlurmKit) -> Iterator[Site]:
    images = {name: base / "src" / name for name in DATASETS}
    name = f"nolua{slurm_kit.install.version}"
    built = build_site(base, name, images, lua=False, kit=slurm_kit)
    yield built
    slurm_kit.down(built.cluster_dir)


def finished_output(site: Site, tag: str) -> str:
    """TAG's output once it holds the job script's last line ("ran", printed before the
    job records its id). Under srun the output reaches the file through srun's I/O
    forwarding, which can lag behind the job: seen with only the first line there."""

    def whole() -> str:
        out = site.output(tag)
        return out if "ran\n" in out else ""

    return str(wait_for(f"the output of {tag}", whole))


def check_read(site: Site, tag: str, dataset: str) -> None:
    out = finished_output(site, tag)
    assert HELLO.format(dataset) in out
    assert f"{site.checksums[dataset]}  {site.mountdir}/{dataset}/blob.bin" in out


# ---------------------------------------------------------------- one job, four ways


@pytest.mark.parametrize("how", ["comment", "sbatch-option", "sbatch-directive", "srun-option"])
def test_job_reads_its_dataset_and_releases_it(site: Site, how: str) -> None:
    tag = f"one-{how}"
    out = str(site.work / f"{tag}.out")
    srun = None
    if how == "comment":
        site.submit(
            f"--output={out}", "--comment=datasets:a", str(site.script("plain.sh")), tag, "a"
        )
    elif how == "sbatch-option":
        site.submit(f"--output={out}", "--datasets=a", str(site.script("plain.sh")), tag, "a")
    elif how == "sbatch-directive":
        script = site.script("directive.sh", directive="#SBATCH --datasets=a")
        site.submit(f"--output={out}", str(script), tag, "a")
    else:
        with open(out, "w") as stdout:
            srun = subprocess.Popen(
                ["runuser", "-u", USER, "--", "env", f"SLURM_CONF={site.conf}",
                 f"PATH={site.path}", "srun",
                 "--datasets=a", "sh", str(site.script("plain.sh")), tag, "a"],
                cwd=site.work, stdout=stdout, stderr=subprocess.STDOUT,
            )  # fmt: skip
    try:
        job = site.started(tag)
        check_read(site, tag, "a")
        assert site.holders("a") == [job]
    finally:
        site.release(tag)
        if srun is not None:
            assert srun.wait(timeout=60) == 0, site.output(tag)
    site.wait_completed(job)
    site.wait_idle()
    assert site.holders("a") == []


def test_concurrent_jobs_share_one_mount(site: Site) -> None:
    script = str(site.script("plain.sh"))
    tags = ["shared-1", "shared-2"]
    for tag in tags:
        site.submit(f"--output={site.work / tag}.out", "--comment=datasets:a", script, tag, "a")
    try:
        jobs = [site.started(tag) for tag in tags]
        for tag in tags:
            check_read(site, tag, "a")
        assert sorted(site.holders("a")) == sorted(jobs)
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        layers = [line for line in mountinfo if line.split()[4] == f"{site.mountdir}/a"]
        assert len(layers) == 1, layers
        # both jobs saw that same single layer
        assert site.output(tags[0]).count("layer ") == 1
        assert [ln for ln in site.output(tags[0]).splitlines() if ln.startswith("layer ")] == [
            ln for ln in site.output(tags[1]).splitlines() if ln.startswith("layer ")
        ]
    finally:
        for tag in tags:
            site.release(tag)
    for job in jobs:
        site.wait_completed(job)
    site.wait_idle()
    assert site.holders("a") == []


# ---------------------------------------------------------------- bad requests


def test_malformed_request_past_validation_never_drains(site_without_lua: Site) -> None:
    site = site_without_lua
    tag = "malformed"
    site.submit(
        f"--output={site.work / tag}.out",
        "--comment=datasets:../etc,nope",
        str(site.script("plain.sh")),
        tag,
        "",
    )
    site.release(tag)  # nothing to check while it runs
    job = site.started(tag)
    site.wait_completed(job)
    site.wait_idle()
    assert "ran" in site.output(tag)
    events = [json.loads(line) for line in (site.statedir / "events.log").read_text().splitlines()]
    refused = [e for e in events if e.get("job") == job and e["event"] == "refused"]
    assert {e["dataset"] for e in refused} == {"../etc", "nope"}, refused
    assert not [e for e in events if e.get("job") == job and e["event"] != "refused"]
    assert list(site.mountdir.iterdir()) == []


# ---------------------------------------------------------------- rebalance and Slurm


def test_rebalance_prefetches_for_a_pending_job(site: Site) -> None:
    script = str(site.script("plain.sh"))
    # the blocker takes both CPUs; time limits let backfill plan the pending job's start
    site.submit("--output=/dev/null", "--time=2", "-n", "2", script, "blocker", "")
    try:
        site.started("blocker")
        out = f"--output={site.work}/pending.out"
        job = site.submit(out, "--time=1", "--comment=datasets:p", script, "pending", "p")
        site.release("pending")  # it ends as soon as it has read p
        wait_for(
            "backfill to plan the pending job onto localhost (squeue's SchedNodes, %Y)",
            lambda: site.admin("squeue", "-h", "-j", job, "-o", "%Y").strip() == "localhost",
            30,
        )
        assert site.status()["p"]["state"] == "cold"
        report = json.loads(site.scratch_stage("rebalance", "--json"))
        decision = report["decisions"]["p"]
        assert decision["heat"] == 0 and decision["demand"] > 0, decision
        assert "p" in report["stage"], report  # (a too, hot from the earlier jobs)
        assert report["failed"] == [], report
        assert site.job_field(job, "JobState") == "PENDING"  # prefetched before it starts
        assert site.status()["p"]["cached"] is True
    finally:
        site.release("blocker")
    assert site.started("pending") == job
    site.wait_completed(job)
    site.wait_idle()
    # inside the job, the top layer at mountdir/p was the loop device of the cached copy
    check_read(site, "pending", "p")
    layers = [ln.split() for ln in site.output("pending").splitlines() if ln.startswith("layer ")]
    assert layers, site.output("pending")
    assert layers[-1][2].startswith(f"{os.path.realpath(site.cachedir)}/"), layers
    assert site.holders("p") == []


def test_free_room_prefetches_for_a_job_backfill_has_not_placed(site: Site) -> None:
    """One pass stages p for a pending job Slurm could not place (the blocker has no time
    limit, so backfill has no end to plan with): room nothing else wants costs only the
    copy. With no room left, nothing held or kept is evicted for it. The attacker (the
    test user) also queues held jobs with a year's time limit wanting f: they weigh
    nothing."""
    script = str(site.script("plain.sh"))
    if site.status()["p"]["cached"]:
        site.scratch_stage("purge", "p")
    site.scratch_stage("pin", "a")  # a cached, then held by the blocker
    site.scratch_stage("rebalance", "--json")
    site.scratch_stage("unpin", "a")
    assert site.status()["a"]["cached"] is True
    site.submit("--output=/dev/null", "-n", "2", "--comment=datasets:a", script, "blocker2", "a")
    queued: list[str] = []
    try:
        site.started("blocker2")
        queued.append(site.submit("--output=/dev/null", "--time=1", "--comment=datasets:p",
                                  script, "pending2", "p"))  # fmt: skip
        for _ in range(5):
            queued.append(site.submit("--hold", "--time=365-0", "--output=/dev/null",
                                      "--comment=datasets:f", "--wrap", "true"))  # fmt: skip
        submitted = time.time()
        site.wait_backfill_after(submitted)  # a backfill pass has run: it cannot place the job
        assert site.admin("squeue", "-h", "-j", queued[0], "-o", "%Y").strip() in ("(null)", "")
        # no start estimate, or one as far as the blocker's limit: demand ~ 0 now
        start = site.admin("squeue", "-h", "-j", queued[0], "-o", "%S").strip()
        assert start == "N/A" or (parse_slurm_time(start) or 0) > time.time() + 86400, start
        cached = {n: d for n, d in site.status().items() if d["cached"]}
        full = str(sum(d["size"] for d in cached.values()))
        report = json.loads(
            site.scratch_stage("rebalance", "--json", env={"SCRATCH_STAGE_CAPACITY": full})
        )
        assert report["evict"] == [] and report["stage"] == [], report
        assert {n for n, d in site.status().items() if d["cached"]} == set(cached)
        assert report["decisions"]["p"]["action"] == "none", report["decisions"]["p"]
        report = json.loads(site.scratch_stage("rebalance", "--json"))
        assert report["stage"] == ["p"], report
        assert report["decisions"]["p"]["reason"].startswith("speculative: free room")
        assert report["decisions"]["f"]["demand"] == 0, report["decisions"]["f"]
        assert report["evict"] == [] and report["failed"] == [], report
        assert site.status()["p"]["cached"] is True
        assert site.job_field(queued[0], "JobState") == "PENDING"
    finally:
        for job in queued:
            site.admin("scancel", job)
        site.release("blocker2")
        site.release("pending2")
    site.wait_idle()


def only_a_cached_and_just_read(site: Site, tag: str) -> str:
    """Only a is cached, and a job (TAG) has just read it: a has heat, and no holder now.
    The path of the plain job script."""
    script = str(site.script("plain.sh"))
    for name, data in site.status().items():
        if data["cached"] and name != "a":
            site.scratch_stage("purge", name)
    site.scratch_stage("pin", "a")
    site.scratch_stage("rebalance", "--json")
    site.scratch_stage("unpin", "a")
    assert site.status()["a"]["cached"] is True
    reader = site.submit(f"--output={site.work}/{tag}.out", "--comment=datasets:a", script,
                         tag, "a")  # fmt: skip
    site.release(tag)
    assert site.started(tag) == reader
    site.wait_completed(reader)
    check_read(site, tag, "a")
    return script


def rebalance_keeps_a_out_of_f(site: Site, env: dict[str, str]) -> dict[str, Any]:
    """A real pass with ENV: nothing evicted or staged, a still cached, f not. Its report."""
    report: dict[str, Any] = json.loads(site.scratch_stage("rebalance", "--json", env=env))
    assert report["evict"] == [] and report["stage"] == [], report
    assert site.status()["a"]["cached"] is True
    assert site.status()["f"]["cached"] is False
    return report


def cancel_behind(site: Site, queued: list[str], blocker: str) -> None:
    """Cancel the QUEUED jobs, then let the BLOCKER job end."""
    for job in queued:
        site.admin("scancel", job)
    site.release(blocker)


def test_many_pending_jobs_cannot_evict_a_dataset_being_read(site: Site) -> None:
    """The attacker (the test user) queues many jobs wanting f that backfill cannot place
    (they depend on a blocker: no start estimate, no SchedNodes), and a few held ones:
    together they count as at most UNPLACED_CAP jobs sure to run here, at an unknown start
    (x e^-1), so f does not take the room of a, which a job has just read. Without the cap,
    the same queue would have outweighed a's value (node_demand on the published snapshot,
    against the pass's own figures)."""
    script = only_a_cached_and_just_read(site, "reader")
    blocker = site.submit("--output=/dev/null", "-n", "2", script, "blocker3", "")
    queued: list[str] = []
    count = 40
    try:
        site.started("blocker3")
        after = f"--dependency=afterany:{blocker}"
        for _ in range(count):
            queued.append(site.submit(after, "--time=1", "--output=/dev/null",
                                      "--comment=datasets:f", "--wrap", "true"))  # fmt: skip
        for _ in range(5):
            queued.append(site.submit("--hold", "--time=1", "--output=/dev/null",
                                      "--comment=datasets:f", "--wrap", "true"))  # fmt: skip
        time.sleep(6)  # a backfill pass (bf_interval=5) has run: it cannot place them
        placed = site.admin("squeue", "-h", "-j", queued[0], "-o", "%Y|%S").strip()
        assert placed in ("(null)|N/A", "|N/A"), placed
        sizes = {n: d["size"] for n, d in site.status().items()}
        full = str(max(sizes["a"], sizes["f"]))  # room for one of the two
        # a 10 s horizon: a's heat, measured over the few seconds since a's last sample,
        # stands for a dataset read steadily; f's demand does not depend on it
        env = {"SCRATCH_STAGE_CAPACITY": full, "SCRATCH_STAGE_HORIZON": "10"}
        published = site.base / "demand-flood.json"
        shown = json.loads(
            site.scratch_stage("demand", "--json", "--publish", str(published), env=env)
        )
        assert shown["pending_jobs"]["f"] == count + 5, shown
        cap = UNPLACED_CAP * math.exp(-1) * 1.000001
        assert shown["node_demand"]["f"] <= cap, shown
        dry = json.loads(site.scratch_stage("rebalance", "--dry-run", "--json", env=env))
        kept, wanted = dry["decisions"]["a"], dry["decisions"]["f"]
        assert kept["heat"] > 0 and kept["action"] == "keep", kept
        assert 0 < wanted["demand"] <= cap * sizes["f"], wanted
        snapshot = Snapshot.from_json(json.loads(published.read_text()))
        uncapped = node_demand(
            snapshot, "localhost", now=snapshot.taken_at, horizon=10.0, sizes=sizes,
            unplaced_cap=math.inf,
        )["f"]  # fmt: skip
        assert uncapped - sizes["f"] > kept["value"], (uncapped, kept)  # the attack, uncapped
        report = rebalance_keeps_a_out_of_f(site, env)
        assert report["decisions"]["f"]["action"] == "none", report["decisions"]["f"]
    finally:
        cancel_behind(site, queued, "blocker3")


def test_placed_jobs_due_far_ahead_cannot_evict_a_dataset_being_read(site: Site) -> None:
    """The attacker (the test user) queues jobs wanting f, with a year's time limit, behind
    a blocker with a 30-minute limit: backfill places the first ones here (SchedNodes),
    due in about 30 minutes, the others wait unplaced. A placed job's wait counts from when
    f's copy must start (`wait_discount`): f copies in a blink here, so with a 10 s horizon
    the placed ones weigh ~0 (the unplaced at most the cap) and a, which a job has just
    read, keeps its room. The same published queue, for an image
    whose copy would take until their start, weighs them in full (the rule on Slurm's
    own output): that is what a big image gets, and what it gets only for jobs due within
    about its copy time plus a horizon."""
    script = only_a_cached_and_just_read(site, "reader4")
    site.submit("--output=/dev/null", "--time=30", "-n", "2", script, "blocker4", "")
    queued: list[str] = []
    try:
        site.started("blocker4")
        for _ in range(4):
            queued.append(site.submit("--time=365-0", "--output=/dev/null",
                                      "--comment=datasets:f", "--wrap", "true"))  # fmt: skip
        wait_for(
            "backfill to plan the first queued job onto localhost (SchedNodes, %Y)",
            lambda: site.admin("squeue", "-h", "-j", queued[0], "-o", "%Y").strip() == "localhost",
            30,
        )
        start = parse_slurm_time(site.admin("squeue", "-h", "-j", queued[0], "-o", "%S"))
        assert start is not None and start > time.time() + 20 * 60, start
        sizes = {n: d["size"] for n, d in site.status().items()}
        full = str(max(sizes["a"], sizes["f"]))  # room for one of the two
        env = {"SCRATCH_STAGE_CAPACITY": full, "SCRATCH_STAGE_HORIZON": "10"}
        published = site.base / "demand-far.json"
        site.scratch_stage("demand", "--publish", str(published), env=env)
        dry = json.loads(site.scratch_stage("rebalance", "--dry-run", "--json", env=env))
        kept, wanted = dry["decisions"]["a"], dry["decisions"]["f"]
        assert kept["action"] == "keep" and wanted["action"] == "none", dry["decisions"]
        # the unplaced ones weigh at most the cap (x e^-1: unknown start), the placed ~0
        assert wanted["demand"] <= UNPLACED_CAP * math.exp(-1) * sizes["f"] * 1.000001, wanted
        snapshot = Snapshot.from_json(json.loads(published.read_text()))
        placed = [j for j in snapshot.jobs if j.sched_nodes == ("localhost",)]
        assert placed and all(j.start and j.start > snapshot.taken_at + 1200 for j in placed)
        first = min(j.start or 0.0 for j in placed)
        due = [j for j in placed if j.start == first]
        slow_copy = {"f": first - snapshot.taken_at}  # lands as the first ones start
        big = node_demand(
            snapshot, "localhost", now=snapshot.taken_at, horizon=10.0, sizes=sizes,
            copy_seconds=slow_copy,
        )["f"]  # fmt: skip
        assert big >= len(due) * sizes["f"] * 0.99, (big, placed)  # one pass each, weight 1
        rebalance_keeps_a_out_of_f(site, env)
    finally:
        cancel_behind(site, queued, "blocker4")


def test_a_running_jobs_time_limit_counts_at_most_a_day_of_its_reads(site: Site) -> None:
    """The rebalance reads the time limits of running jobs (squeue -t R): a job reading p,
    whose copy is gone, counts what it would read after a copy lands. The attacker (the
    test user) asks for a year: it counts at most half a day at the rate it reads now."""
    script = str(site.script("plain.sh"))
    if site.status()["p"]["cached"]:
        site.scratch_stage("purge", "p")
    job = site.submit("--time=365-0", "--output=/dev/null", "--comment=datasets:p", script,
                      "year", "p")  # fmt: skip
    try:
        assert site.started("year") == job
        published = site.base / "demand-running.json"
        site.scratch_stage("demand", "--publish", str(published))
        assert json.loads(published.read_text())["running"][job] == 365 * 86400.0
        report = json.loads(site.scratch_stage("rebalance", "--dry-run", "--json"))
        decision = report["decisions"]["p"]
        assert decision["heat"] > 0 and decision["demand"] > 0, decision
        assert decision["demand"] <= decision["heat"] * 86400 / 2, decision
        assert site.status()["p"]["cached"] is False  # a dry run changes nothing
    finally:
        site.release("year")
    site.wait_completed(job)
    # never drained; not waited for idle: after the many-pending test's cancelled queue,
    # 22.05 shows the node "mixed" with no CPU allocated for minutes
    assert "drain" not in site.node_state(), site.admin("sinfo", "-R")


def test_node_features_follow_the_cache(site: Site) -> None:
    # f: no job reads it, so neither heat nor demand brings it back once purged
    site.scratch_stage("pin", "f")
    report = json.loads(site.scratch_stage("rebalance", "--json"))
    assert "f" in report["stage"] or site.status()["f"]["cached"], report
    assert "ds_f" in site.features()
    site.scratch_stage("unpin", "f")
    site.scratch_stage("purge", "f")
    report = json.loads(site.scratch_stage("rebalance", "--json"))
    assert "f" not in report["stage"], report
    assert "ds_f" not in site.features()
    site.wait_idle()


def test_a_newline_in_a_comment_cannot_forge_a_pending_job(site: Site) -> None:
    # The attacker (the unprivileged test user) ends a held job's comment with a line that
    # reads like squeue's record of a job planned here, wanting the other dataset.
    forged = "999999|debug|4294967295|1|N/A|localhost|datasets:p"
    job = site.submit("--hold", "--output=/dev/null", f"--comment=datasets:a\n{forged}",
                      "--wrap", "true")  # fmt: skip
    try:
        # Slurm keeps the newline: without the record marker this line would be a job
        assert forged in site.admin("squeue", "-h", "-j", job, "-o", "%k").splitlines()
        published = site.base / "demand-newline.json"
        site.scratch_stage("demand", "--publish", str(published))
        jobs = {j["job_id"]: j for j in json.loads(published.read_text())["jobs"]}
        assert "999999" not in jobs, jobs
        assert job in jobs and jobs[job]["partitions"] == ["debug"], jobs
        assert "p" not in {name for j in jobs.values() for name in j["datasets"]}, jobs
    finally:
        site.admin("scancel", job)


# ---------------------------------------------------------------- the cluster view


def _file_value(path: Path, name: str, **labels: str) -> float:
    """One sample of the node's metrics file, read with Prometheus' own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in {path}")


# Prometheus scrapes and evaluates this often here: the span the figures need shrinks with it
SCRAPE = "250ms"


def test_cluster_view_shows_cache_demand_and_prometheus_figures(site: Site, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(REPO / "tests" / "privileged"))
    import promstack

    if promstack.missing():
        pytest.skip(str(promstack.missing()))
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom_file = textfile / "scratch_stage.prom"
    work = tmp_path / "prom"
    work.mkdir()
    original = site.config.read_text()
    script = str(site.script("plain.sh"))
    held = ""
    with (
        promstack.node_exporter(textfile, work) as exporter,
        promstack.prometheus([exporter.removeprefix("http://")], work, interval=SCRAPE) as server,
    ):
        site.config.write_text(original + f"metrics_dir: {textfile}\nprometheus_url: {server}\n")
        try:
            site.scratch_stage("purge", "--all")
            site.scratch_stage("metrics", "--write")  # the baseline Prometheus sees first
            cached_a = 'scratch_stage_read_bytes_total{dataset="a",layer="cached"}'
            promstack.wait_for_query(server, cached_a, bool)
            baseline_seen = time.monotonic()
            before = _file_value(prom_file, "scratch_stage_read_bytes_total", dataset="a",
                                 layer="cached")  # fmt: skip
            site.scratch_stage("pin", "a")
            site.scratch_stage("rebalance")  # copies a, publishes ds_a, writes the metrics
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            out = f"--output={site.work}/viewer.out"
            job = site.submit(out, "--comment=datasets:a", script, "viewer", "a")
            site.started("viewer")
            site.release("viewer")
            site.wait_completed(job)
            site.scratch_stage("rebalance")  # counts the job's reads from the cached copy
            after = _file_value(prom_file, "scratch_stage_read_bytes_total", dataset="a",
                                layer="cached")  # fmt: skip
            assert after - before >= 512 * 1024, (before, after)
            # f: no job has read it, so no heat restaged it (p was read by an earlier test)
            held = site.submit("--hold", "--output=/dev/null", "--comment=datasets:f", script,
                               "held", "f")  # fmt: skip
            promstack.wait_for_query(server, f"{cached_a} == {after:.0f}", bool)
            # increase() extrapolates a series that starts inside the window by half a scrape
            # interval over its span: with 0.25 s scrapes and a span of 4 s, at most ~7 %
            time.sleep(max(0.0, 4 - (time.monotonic() - baseline_seen)))

            data = json.loads(site.scratch_stage("cluster", "--json", "--window", "5m"))
            rows = {d["name"]: d for d in data["datasets"]}
            assert data["nodes"] == 1 and data["prometheus_error"] is None, data
            assert rows["a"]["cached_on"] == ["localhost"], rows
            assert rows["f"]["cached_on"] == [] and rows["f"]["pending_jobs"] == 1, rows
            assert rows["a"]["hit_ratio"] == pytest.approx(1.0, abs=0.01)  # all from the SSD
            size = (site.base / "data" / "a.sqfs").stat().st_size
            assert size <= rows["a"]["copied_bytes"] <= 1.1 * size, (size, rows["a"])
            assert data["cluster_hit_ratio"] == pytest.approx(1.0, abs=0.01)
            table = site.scratch_stage("cluster", "--window", "5m").splitlines()
            assert table[0].split()[:3] == ["DATASET", "CACHED", "ON"]
            row_a = next(line.split() for line in table if line.startswith("a "))
            assert row_a[:4] == ["a", "1:", "localhost", "0"] and row_a[4] == "100.0%", table
            assert table[-1] == "1 node(s); cluster hit ratio 100.0% over 5m"
        finally:
            if held:
                site.admin("scancel", held)
            site.config.write_text(original)
            site.scratch_stage("unpin", "a")
    site.wait_idle()


def test_prolog_run_in_job_serves_the_job(base: Path, slurm_kit: SlurmKit) -> None:
    # PrologFlags=RunInJob (Slurm >= 24.05) runs the prolog inside the job's extern step
    if slurm_kit.install.version == "22.05":
        pytest.skip("Slurm 22.05 has no PrologFlags=RunInJob (added in 24.05)")
    images = {name: base / "src" / name for name in DATASETS}
    name = f"runinjob{slurm_kit.install.version}"
    site = build_site(base, name, images, lua=False, kit=slurm_kit, prolog_flags="RunInJob")
    try:
        assert "RunInJob" in site.admin("scontrol", "show", "config")
        tag = "runinjob"
        site.submit(f"--output={site.work / tag}.out", "--comment=datasets:a",
                    str(site.script("plain.sh")), tag, "a")  # fmt: skip
        try:
            job = site.started(tag)
            check_read(site, tag, "a")
            assert site.holders("a") == [job]
        finally:
            site.release(tag)
        site.wait_completed(job)
        site.wait_idle()
        assert site.holders("a") == []
    finally:
        slurm_kit.down(site.cluster_dir)
