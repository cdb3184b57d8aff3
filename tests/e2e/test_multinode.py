"""End to end on a 4-node Slurm cluster on this machine (22.05 and 25.11): many-node jobs.

`slurm/testcluster up` with TESTCLUSTER_NODES=4 runs four slurmds, n1..n4, each in its own
mount and UTS namespace in which DIR/nodes/<node> is bind-mounted on DIR/node; so every
node has its own mountdir, cachedir and statedir under DIR/node and its own scratch-stage
configuration at DIR/node/scratch-stage.yaml (TESTCLUSTER_NODE_CONFIG), while datadir is
one directory all nodes share. The Prolog/Epilog wrappers use that one path; the tests look
into a node with `testcluster exec DIR NODE -- CMD`. Jobs are submitted as the unprivileged
test user. One cluster per module and Slurm; its finalizer runs `testcluster down --purge`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from slurmclient import USER, SlurmClient, wait_for

if TYPE_CHECKING:
    from conftest import SlurmKit

REPO = Path(__file__).resolve().parents[2]
SCRATCH_STAGE = REPO / ".venv" / "bin" / "scratch-stage"
TESTCLUSTER = REPO / "slurm" / "testcluster"
NODES = ("n1", "n2", "n3", "n4")
# a: the 4-node job's; b: the 2-node job's; s: restricted to root; p: a pending job's;
# f: only ever named by a forged record
DATASETS = ("a", "b", "s", "p", "f")
HELLO = "hello from dataset {}\n"

# One task per node (srun): what it read at <mountdir>/<ds> on its node.
TASK_SCRIPT = """#!/bin/sh
ds=$1 m="{mountdir}/$1"
if [ -r "$m/blob.bin" ]; then
    echo "read $(hostname) $(sha256sum < "$m/blob.bin" | cut -d' ' -f1) $(cat "$m/hello.txt")"
else
    echo "none $(hostname)"
fi
"""

# The batch script: a step on every node of the job, then wait until the test releases it.
JOB_SCRIPT = """#!/bin/sh
tag=$1 ds=$2
srun sh "{work}/task.sh" "$ds"
echo "$SLURM_JOB_ID" > "{work}/$tag.id.tmp" && mv "{work}/$tag.id.tmp" "{work}/$tag.id"
i=0
while [ ! -e "{work}/$tag.release" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
"""


def our_loop_devices(base: Path) -> list[str]:
    """Loop devices whose backing file lies under BASE."""
    out = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True,
                         text=True, check=False).stdout  # fmt: skip
    return [line for line in out.splitlines() if f" {base}/" in f" {line.split(None, 1)[-1]}"]


def running(pid: int) -> bool:
    """PID exists and has not exited (an exited orphan lingers until PID 1 reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class Cluster(SlurmClient):
    """A 4-node test cluster and its nodes' scratch-stage configuration."""

    base: Path = Path()
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def node_dir(self) -> Path:
        return self.cluster_dir / "node"  # each node's own directory, inside its namespace

    @property
    def mountdir(self) -> Path:
        return self.node_dir / "mount"

    def on(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """ARGS as root inside NODE (`testcluster exec`)."""
        return subprocess.run(
            [str(TESTCLUSTER), "exec", str(self.cluster_dir), node, "--", *args],
            env=self.env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def spawn(self, node: str, *args: str) -> subprocess.Popen[str]:
        """ARGS as root inside NODE, started (stdout and stderr piped)."""
        return subprocess.Popen(
            [str(TESTCLUSTER), "exec", str(self.cluster_dir), node, "--", *args],
            env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def scratch_stage(self, node: str, *args: str) -> str:
        proc = self.on(node, str(SCRATCH_STAGE), *args)
        assert proc.returncode == 0, f"scratch-stage {args} on {node} failed: {proc.stderr}"
        return proc.stdout

    def status(self, node: str) -> dict[str, dict[str, Any]]:
        data = json.loads(self.scratch_stage(node, "status", "--json"))
        return {d["name"]: d for d in data["datasets"]}

    def holders(self, node: str, name: str) -> list[str]:
        return list(self.status(node).get(name, {}).get("holders", []))

    def mounted(self, node: str, name: str) -> bool:
        """A squashfs is mounted for NAME in NODE's mount table (restricted: behind .access)."""
        table = self.on(node, "cat", "/proc/self/mountinfo").stdout.splitlines()
        points = {f"{self.mountdir}/{name}", f"{self.mountdir}/.access/{name}/mnt"}
        return any(line.split()[4] in points and " - squashfs " in line for line in table)

    def job(self, tag: str, *args: str, dataset: str = "") -> str:
        """sbatch ARGS of the job script tagged TAG reading DATASET on each of its nodes."""
        out = f"--output={self.work / tag}.out"
        return self.submit(out, *args, str(self.work / "job.sh"), tag, dataset)

    def wait_idle(self) -> None:
        """Every node returns to idle; none is ever drained on the way."""

        def idle() -> bool:
            states = dict(
                line.split()
                for line in self.admin("sinfo", "-h", "-N", "-o", "%N %T").splitlines()
                if line.strip()
            )
            drained = {n: s for n, s in states.items() if "drain" in s}
            assert not drained, f"nodes drained: {self.admin('sinfo', '-R')}"
            return all(states.get(n) == "idle" for n in NODES)

        wait_for("the nodes to be idle", idle, 60)

    def reads(self, tag: str) -> dict[str, str]:
        """Node -> what the job's task there read ('sha256 hello...' or 'none')."""
        seen: dict[str, str] = {}
        for line in self.output(tag).splitlines():
            kind, _, rest = line.partition(" ")
            if kind in ("read", "none"):
                node, _, what = rest.partition(" ")
                seen[node] = what if kind == "read" else "none"
        return seen


def build_images(base: Path) -> dict[str, str]:
    """BASE/data/<name>.sqfs for each dataset; name -> sha256 of its blob.bin."""
    (base / "data").mkdir(mode=0o755)
    bootstrap = base / "build-config.yaml"
    bootstrap.write_text(f"datadir: {base}/data\ncachedir: {base}/build-cache\n")
    sums = {}
    for name in DATASETS:
        src = base / "src" / name
        src.mkdir(parents=True)
        (src / "hello.txt").write_text(HELLO.format(name))
        blob = os.urandom(256 * 1024)
        (src / "blob.bin").write_bytes(blob)
        sums[name] = hashlib.sha256(blob).hexdigest()
        subprocess.run(
            [str(SCRATCH_STAGE), "--config", str(bootstrap), "image", "build", str(src), name,
             "--compression", "fast"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return sums


def node_config_template(base: Path, kit: SlurmKit) -> Path:
    template = base / "node-config.yaml"
    template.write_text(
        f"datadir: {base / 'data'}\n"
        "cachedir: @NODEDIR@/cache\nmountdir: @NODEDIR@/mount\nstatedir: @NODEDIR@/state\n"
        "capacity: 64MiB\nnode: @NODE@\n"
        "demand: {source: squeue}\n"
        f"squeue_command: {kit.install.bin / 'squeue'}\n"
        f"sinfo_command: {kit.install.bin / 'sinfo'}\n"
        f"scontrol_command: {kit.install.bin / 'scontrol'}\n"
        "access:\n  s: [root]\n"
    )
    return template


@pytest.fixture(scope="module")
def cluster(slurm_kit: SlurmKit) -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="ss-e2e-multinode-", dir="/tmp"))
    cluster_dir = base / "cluster"
    try:
        base.chmod(0o755)
        sums = build_images(base)
        for node in NODES:  # the nodes' own directories, seen at cluster_dir/node inside each
            for sub in ("mount", "cache", "state"):
                (cluster_dir / "nodes" / node / sub).mkdir(mode=0o755, parents=True)
        wrappers = {}
        for hook in ("prolog", "epilog"):
            wrapper = base / f"{hook}.sh"
            wrapper.write_text(
                f"#!/bin/sh\nexport SCRATCH_STAGE_CONFIG={cluster_dir}/node/scratch-stage.yaml\n"
                f"exec {SCRATCH_STAGE} {hook}\n"
            )
            wrapper.chmod(0o755)
            wrappers[hook] = str(wrapper)
        slurm_kit.up(
            cluster_dir, **wrappers, plugstack=str(slurm_kit.plugstack), user=USER,
            nodes=str(len(NODES)), node_config=str(node_config_template(base, slurm_kit)),
        )  # fmt: skip
        site = Cluster(cluster_dir, base, sums)
        for name, text in (("task.sh", TASK_SCRIPT), ("job.sh", JOB_SCRIPT)):
            path = site.work / name
            path.write_text(text.format(mountdir=site.mountdir, work=site.work))
            path.chmod(0o644)
        yield site
    finally:
        slurm_kit.down(cluster_dir)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- the cluster itself


def test_each_node_has_its_own_name_directory_and_mount_table(cluster: Cluster) -> None:
    states = cluster.admin("sinfo", "-h", "-N", "-o", "%N %T").split()
    assert states == [w for n in NODES for w in (n, "idle")], states
    for node in NODES:
        proc = cluster.on(
            node, "sh", "-c", 'hostname; echo "$TESTCLUSTER_NODE $SCRATCH_STAGE_CONFIG"'
        )
        assert proc.stdout.split() == [node, node, f"{cluster.node_dir}/scratch-stage.yaml"]
        config = cluster.on(node, "cat", f"{cluster.node_dir}/scratch-stage.yaml").stdout
        assert f"node: {node}\n" in config and f"mountdir: {cluster.mountdir}\n" in config
    # a mount made inside n2 is in n2's mount table only, not the host's nor n3's
    target = cluster.node_dir / "probe"
    made = cluster.on("n2", "sh", "-c", f"mkdir -p {target} && mount -t tmpfs probe {target}")
    assert made.returncode == 0, made.stderr
    try:
        assert " probe " in cluster.on("n2", "cat", "/proc/self/mountinfo").stdout
        assert " probe " not in cluster.on("n3", "cat", "/proc/self/mountinfo").stdout
        assert " probe " not in Path("/proc/self/mountinfo").read_text()
        assert (cluster.cluster_dir / "nodes" / "n2" / "probe").is_dir()
        assert not (cluster.cluster_dir / "nodes" / "n3" / "probe").exists()
    finally:
        cluster.on("n2", "umount", str(target))
    assert cluster.on("nine", "true").returncode != 0


def test_down_leaves_nothing_behind_also_after_a_failed_up(slurm_kit: SlurmKit) -> None:
    base = Path(tempfile.mkdtemp(prefix="ss-e2e-mn-down-", dir="/tmp"))
    try:
        base.chmod(0o755)
        src = base / "src"
        src.mkdir()
        (src / "x").write_text("x\n")
        image = base / "img.sqfs"
        subprocess.run(["mksquashfs", str(src), str(image), "-quiet", "-noappend"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        cluster_dir = base / "cluster"
        env = {**os.environ, "TESTCLUSTER_NODES": "2", "TESTCLUSTER_TIMEOUT": "0"}
        env.pop("TESTCLUSTER_SLURM_PREFIX", None)
        if slurm_kit.install.prefix:
            env["TESTCLUSTER_SLURM_PREFIX"] = str(slurm_kit.install.prefix)
        # a zero timeout: `up` starts every daemon, then fails waiting for the nodes
        up = subprocess.run([str(TESTCLUSTER), "up", str(cluster_dir)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert up.returncode != 0 and "not idle" in up.stderr, up.stderr
        status = subprocess.run([str(TESTCLUSTER), "status", str(cluster_dir)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        pids = [int(w.rstrip(")")) for w in status.stdout.split() if w.rstrip(")").isdigit()]
        assert len(pids) == 2 + 3 * 2, status.stdout  # munged, slurmctld; per node 3
        node = Cluster(cluster_dir)
        target = cluster_dir / "node" / "m"
        mount = node.on("n1", "sh", "-c",
                        f"mkdir -p {target} && mount -o loop,ro {image} {target} && "
                        f"cat {target}/x")  # fmt: skip
        assert mount.stdout == "x\n", mount.stderr
        assert our_loop_devices(base), "the node's loop device is not attached"
        down = subprocess.run([str(TESTCLUSTER), "down", str(cluster_dir), "--purge"],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert down.returncode == 0, down.stderr
        assert not [p for p in pids if running(p)], "a recorded process survived"
        assert our_loop_devices(base) == []
        assert str(base) not in Path("/proc/self/mountinfo").read_text()
        assert not cluster_dir.exists()
    finally:
        subprocess.run([str(TESTCLUSTER), "down", str(base / "cluster"), "--purge"],
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- many-node jobs


def test_a_four_node_job_reads_its_dataset_on_every_node(cluster: Cluster) -> None:
    tag = "four"
    job = cluster.job(tag, "-N4", "--comment=datasets:a", dataset="a")
    try:
        assert cluster.started(tag) == job
        expected = f"{cluster.checksums['a']} {HELLO.format('a').strip()}"
        assert cluster.reads(tag) == dict.fromkeys(NODES, expected), cluster.output(tag)
        for node in NODES:
            assert cluster.holders(node, "a") == [job], node
            assert cluster.mounted(node, "a"), node
    finally:
        cluster.release(tag)
    cluster.wait_completed(job)
    cluster.wait_idle()
    for node in NODES:
        assert cluster.holders(node, "a") == [], node


def test_a_two_node_job_sees_its_dataset_only_on_its_nodes(cluster: Cluster) -> None:
    tag = "two"
    job = cluster.job(tag, "-N2", "-w", "n2,n3", "--comment=datasets:b", dataset="b")
    try:
        assert cluster.started(tag) == job
        expected = f"{cluster.checksums['b']} {HELLO.format('b').strip()}"
        assert cluster.reads(tag) == {"n2": expected, "n3": expected}, cluster.output(tag)
        for node in NODES:
            ours = node in ("n2", "n3")
            assert cluster.mounted(node, "b") is ours, node
            assert cluster.holders(node, "b") == ([job] if ours else []), node
            present = cluster.on(node, "test", "-e", f"{cluster.mountdir}/b/hello.txt")
            assert (present.returncode == 0) is ours, node
    finally:
        cluster.release(tag)
    cluster.wait_completed(job)
    cluster.wait_idle()
    assert [n for n in NODES if cluster.holders(n, "b")] == []


def job_pids(job: str) -> list[str]:
    """The processes whose environment says they belong to JOB."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job}".encode() in environ:
            pids.append(proc.name)
    return pids


ATTACK_SCRIPT = """#!/bin/sh
# The attacker's job on n1: read dataset s (restricted to root), mounted on n2 only.
cat "{mountdir}/s/hello.txt" 2>/dev/null && echo "LEAK local"
for pid in {pids}; do
    cat "/proc/$pid/root{mountdir}/.access/s/mnt/hello.txt" 2>/dev/null && echo "LEAK via $pid"
    ls "/proc/$pid/root{mountdir}" >/dev/null 2>&1 && echo "LEAK listing via $pid"
done
echo "attack done"
"""


def test_a_user_cannot_reach_another_nodes_restricted_mount(cluster: Cluster) -> None:
    # root's job holds s on n2; the test user's job on n1 tries to read it through n2's
    # namespace (/proc/PID/root of the root job's processes and of n2's slurmd)
    tag = "owner"
    out = f"--output={cluster.work / tag}.out"
    script = str(cluster.work / "job.sh")
    owner = cluster.admin("sbatch", "--parsable", out, "-w", "n2", "--comment=datasets:s",
                          script, tag, "").strip().split(";")[0]  # fmt: skip
    try:
        assert cluster.started(tag) == owner
        assert cluster.mounted("n2", "s") and not cluster.mounted("n1", "s")
        slurmd = (cluster.cluster_dir / "nodes" / "n2" / "slurmd.pid").read_text().strip()
        pids = [slurmd, *job_pids(owner)]
        assert len(pids) > 1, "no process of the root job found"
        # the way in exists: root on n1 reads s through those same paths
        probe = cluster.on(
            "n1", "cat", f"/proc/{slurmd}/root{cluster.mountdir}/.access/s/mnt/hello.txt"
        )
        assert probe.stdout == HELLO.format("s"), probe.stderr
        attack = cluster.work / "attack.sh"
        attack.write_text(ATTACK_SCRIPT.format(mountdir=cluster.mountdir, pids=" ".join(pids)))
        attack.chmod(0o644)
        job = cluster.submit(f"--output={cluster.work}/attack.out", "-w", "n1", str(attack))
        cluster.wait_completed(job)
        text = (cluster.work / "attack.out").read_text()
        assert "attack done" in text and "LEAK" not in text, text
    finally:
        cluster.release(tag)
    cluster.wait_completed(owner)
    cluster.wait_idle()


# ---------------------------------------------------------------- placement-aware demand


def test_a_pending_job_is_prefetched_on_exactly_its_planned_nodes(cluster: Cluster) -> None:
    # the blocker fills all four nodes; time limits let backfill plan the 3-node job onto
    # three of them (SchedNodes), so its demand counts there and not on the fourth
    blocker = cluster.job("blocker", "-N4", "--exclusive", "--time=2")
    try:
        assert cluster.started("blocker") == blocker
        job = cluster.job("pending", "-N3", "--time=1", "--comment=datasets:p", dataset="p")
        cluster.release("pending")  # it ends as soon as it has read p

        def planned() -> list[str]:
            hosts = cluster.admin("squeue", "-h", "-j", job, "-o", "%Y").strip()
            if hosts in ("", "(null)", "N/A"):
                return []
            return cluster.admin("scontrol", "show", "hostnames", hosts).split()

        nodes = wait_for("backfill to plan the pending job (squeue's SchedNodes, %Y)", planned, 30)
        assert len(nodes) == 3 and set(nodes) < set(NODES), nodes
        published = cluster.base / "demand.json"
        cluster.scratch_stage("n1", "demand", "--publish", str(published))
        assert json.loads(published.read_text())["peers"] == {"p": nodes}
        for node in NODES:
            assert cluster.status(node)["p"]["cached"] is False, node
            report = json.loads(cluster.scratch_stage(node, "rebalance", "--json"))
            assert report["failed"] == [], (node, report)
            assert ("p" in report["stage"]) is (node in nodes), (node, report)
            view = json.loads(cluster.scratch_stage(node, "demand", "--json"))
            expected = [n for n in nodes if n != node] if node in nodes else None
            assert view["peers"].get("p") == expected, (node, view)
        assert cluster.job_field(job, "JobState") == "PENDING"  # prefetched before it starts
        for node in NODES:
            assert cluster.status(node)["p"]["cached"] is (node in nodes), node
    finally:
        cluster.release("blocker")
    cluster.wait_completed(blocker)
    assert cluster.started("pending") == job
    cluster.wait_completed(job)
    expected_read = f"{cluster.checksums['p']} {HELLO.format('p').strip()}"
    assert cluster.reads("pending") == dict.fromkeys(nodes, expected_read)
    cluster.wait_idle()


def test_a_comment_cannot_forge_a_planned_many_node_job(cluster: Cluster) -> None:
    # The attacker (the test user) ends a held job's comment with a line that reads like
    # squeue's record of a 4-node job planned onto every node, wanting dataset f.
    forged = "999999|debug|4294967295|4|N/A|n[1-4]|datasets:f"
    job = cluster.submit("--hold", "--output=/dev/null", f"--comment=datasets:a\n{forged}",
                         "--wrap", "true")  # fmt: skip
    try:
        assert forged in cluster.admin("squeue", "-h", "-j", job, "-o", "%k").splitlines()
        published = cluster.base / "demand-forged.json"
        cluster.scratch_stage("n1", "demand", "--publish", str(published))
        data = json.loads(published.read_text())
        assert [j["job_id"] for j in data["jobs"]] == [job], data["jobs"]
        assert "f" not in data["peers"], data["peers"]
        for node in NODES:
            report = json.loads(cluster.scratch_stage(node, "rebalance", "--json"))
            assert "f" not in report["stage"], (node, report)
            decision = report["decisions"].get("f", {})
            assert decision.get("demand", 0) == 0, (node, decision)
            assert cluster.status(node)["f"]["cached"] is False, node
    finally:
        cluster.admin("scancel", job)


# ---------------------------------------------------------------- cooperative staging


def drop_pages(path: Path) -> None:
    """Evict PATH's pages from the page cache, so the next read reaches the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def device_bytes_read(device: str) -> int:
    """Bytes read from DEVICE (its sectors read: reads that reached it, not page-cache hits)."""
    return int(Path(f"/sys/block/{os.path.basename(device)}/stat").read_text().split()[2]) * 512


def node_events(cluster: Cluster, node: str, kind: str) -> list[dict[str, Any]]:
    path = cluster.cluster_dir / "nodes" / node / "state" / "events.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_a_pending_four_node_job_is_staged_reading_shared_storage_about_once(
    cluster: Cluster,
) -> None:
    # Shared storage for this test: its own ext4 filesystem on a loop device (mount(8) sets
    # autoclear), so every byte any node reads from it is counted, mounted under the
    # cluster's DIR/shared (a mount there reaches every node); the nodes' configurations
    # point datadir there, with cooperative staging on (each node's engine on its own address).
    shared = cluster.cluster_dir / "shared" / "storage"
    backing = cluster.base / "shared.ext4"
    with open(backing, "wb") as f:
        f.truncate(96 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(backing)], check=True, capture_output=True)
    shared.mkdir()
    subprocess.run(["mount", "-o", "loop", str(backing), str(shared)], check=True)
    configs = {n: cluster.cluster_dir / "nodes" / n / "scratch-stage.yaml" for n in NODES}
    originals = {n: path.read_text() for n, path in configs.items()}
    blocker = ""
    try:
        device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(shared)], check=True,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        shared.chmod(0o755)
        (shared / "data").mkdir(mode=0o755)
        src = cluster.base / "src" / "c"
        src.mkdir()
        blob = os.urandom(24 << 20)
        (src / "blob.bin").write_bytes(blob)
        (src / "hello.txt").write_text(HELLO.format("c"))
        build = cluster.base / "build-c.yaml"
        build.write_text(f"datadir: {shared}/data\ncachedir: {cluster.base}/build-cache\n")
        subprocess.run([str(SCRATCH_STAGE), "--config", str(build), "image", "build", str(src),
                        "c", "--compression", "fast"], check=True, capture_output=True)  # fmt: skip
        image = shared / "data" / "c.sqfs"
        for i, node in enumerate(NODES, start=1):
            text = originals[node].replace(f"datadir: {cluster.base / 'data'}\n",
                                           f"datadir: {shared / 'data'}\n")  # fmt: skip
            assert text != originals[node]
            coop = f"coop: {{enabled: true, host: 127.0.0.{10 + i}, stall_seconds: 10}}\n"
            configs[node].write_text(text + coop)

        blocker = cluster.job("blocker-c", "-N4", "--exclusive", "--time=2")
        assert cluster.started("blocker-c") == blocker
        job = cluster.job("coop", "-N4", "--time=1", "--comment=datasets:c", dataset="c")
        cluster.release("coop")  # it ends as soon as it has read c
        wait_for(
            "backfill to plan the 4-node job onto every node",
            lambda: cluster.admin("squeue", "-h", "-j", job, "-o", "%Y").strip() == "n[1-4]",
            30,
        )
        drop_pages(image)
        before = device_bytes_read(device)
        # every node's rebalance at once, as their timers would when the demand appears
        passes = {node: cluster.spawn(node, str(SCRATCH_STAGE), "rebalance", "--json")
                  for node in NODES}  # fmt: skip
        for node, proc in passes.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (node, err)
            assert "c" in json.loads(out)["stage"], (node, out)
        read = device_bytes_read(device) - before
        size = image.stat().st_size
        assert read <= 1.25 * size, f"shared storage read {read} bytes for a {size}-byte image"
        readers = [n for n in NODES if node_events(cluster, n, "coop-lease")]
        fetched = [n for n in NODES if node_events(cluster, n, "coop-fetched")]
        assert len(readers) == 1 and sorted(readers + fetched) == list(NODES), (readers, fetched)
        for node in NODES:
            assert cluster.status(node)["c"]["cached"] is True, node
        assert cluster.job_field(job, "JobState") == "PENDING"  # staged before it starts
        cluster.release("blocker-c")
        cluster.wait_completed(blocker)
        assert cluster.started("coop") == job
        cluster.wait_completed(job)
        expected = f"{hashlib.sha256(blob).hexdigest()} {HELLO.format('c').strip()}"
        assert cluster.reads("coop") == dict.fromkeys(NODES, expected)
        cluster.wait_idle()
    finally:
        if blocker:
            cluster.release("blocker-c")
        for node, text in originals.items():
            configs[node].write_text(text)
        subprocess.run(["umount", "-l", str(shared)], capture_output=True, check=False)
