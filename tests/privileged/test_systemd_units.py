"""The shipped systemd units mount where the jobs see it; a sandboxed unit would not.

systemd is not PID 1 on every test machine, so a unit is run the way systemd would run
it as far as namespaces go, derived from the unit file itself: a directive that implies a
mount namespace (tests/unit/test_site_files.py has the list from systemd.exec(5)) becomes
`unshare --mount --propagation slave` (systemd makes every mount MS_SLAVE in the service's
namespace), ProtectHostname= becomes `unshare --uts`, NoNewPrivileges= `setpriv
--no-new-privs`, Nice= `nice`. The remaining directives are seccomp filters and prctl
flags without an effect on mounts, and are not emulated.

A "job" is a process started in a fresh mount namespace (`unshare --mount`, as
job_container/tmpfs starts jobs), as an unprivileged user, after the service has mounted.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodetree import CLI, ImageStore, NodeEnv, hello_of, loops_under, one_line, stack_at, wait_for

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "slurm" / "systemd"
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))
from unit.test_site_files import CONFIG_ARGS, INSTALLED_CLI, MOUNT_NAMESPACE, parse_unit  # noqa: E402

UNSHARE, SETPRIV, NICE = "/usr/bin/unshare", "/usr/bin/setpriv", "/usr/bin/nice"
NOBODY = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_systemd_runs_it(unit_text: str) -> list[str]:
    """The unit's ExecStart= in the namespaces (and with the flags) systemd would give it."""
    entries = parse_unit(unit_text)["Service"]
    service = dict(entries)
    namespaces = []
    if any(key in MOUNT_NAMESPACE for key, _ in entries):
        namespaces += ["--mount", "--propagation", "slave"]
    if service.get("ProtectHostname") == "yes":
        namespaces.append("--uts")
    argv = service["ExecStart"].split()
    assert argv[:3] == [INSTALLED_CLI, *CONFIG_ARGS]
    argv[:3] = [str(CLI)]  # the node's configuration comes from its environment
    if "Nice" in service:
        argv = [NICE, "-n", service["Nice"], *argv]
    if service.get("NoNewPrivileges") == "yes":
        argv = [SETPRIV, "--no-new-privs", *argv]
    if namespaces:
        argv = [UNSHARE, *namespaces, "--", *argv]
    return argv


def start_unit(node: NodeEnv, unit_text: str) -> subprocess.Popen[str]:
    """Start the unit's process (killed by the node's finalizer if still running)."""
    proc = subprocess.Popen(
        as_systemd_runs_it(unit_text), env=node.admin_environ(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd="/",
    )  # fmt: skip
    node.procs.append(proc)
    return proc


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, as systemctl stop does; the exit status and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def mounted_in(pid: int, target: Path) -> bool:
    """Whether TARGET is a mount point in the mount namespace of process PID."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(target) for line in lines)


def job_reads(path: Path) -> subprocess.CompletedProcess[str]:
    """`cat PATH` by a job: a new mount namespace, then uid/gid 65534.

    The job starts in PATH's directory (entered as root: pytest's tmp dirs are 0700).
    """
    return subprocess.run(
        [UNSHARE, "--mount", "--", *NOBODY, "/usr/bin/cat", path.name], cwd=path.parent,
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30,
    )  # fmt: skip


def pinned_node(node: NodeEnv, name: str) -> Path:
    """NAME pinned, so that a rebalance pass stages and mounts it; its mount point."""
    node.configure(demand={"source": "none"}, interval=1)
    node.add_image(name)
    assert node.cli("pin", name).returncode == 0
    return node.mountdir / name


def test_the_emulation_follows_the_unit() -> None:
    text = (UNITS / "scratch-stage.service").read_text()
    argv = as_systemd_runs_it(text)
    assert argv[:3] == [UNSHARE, "--uts", "--"]  # ProtectHostname only: no mount namespace
    assert argv[3:] == [SETPRIV, "--no-new-privs", NICE, "-n", "10", str(CLI), "daemon"]
    broken = as_systemd_runs_it(text.replace("[Service]\n", "[Service]\nProtectHome=yes\n"))
    assert broken[:5] == [UNSHARE, "--mount", "--propagation", "slave", "--uts"]


def test_a_unit_with_a_private_mount_namespace_hides_its_mounts(node_env: NodeEnv) -> None:
    """The failure mode of the issue: the service mounts, says so, and no job sees it."""
    target = pinned_node(node_env, "alpha")
    text = (UNITS / "scratch-stage.service").read_text()
    sandboxed = text.replace("[Service]\n", "[Service]\nProtectHome=read-only\n", 1)

    daemon = start_unit(node_env, sandboxed)

    wait_for(lambda: mounted_in(daemon.pid, target), timeout=60)
    status = {d["name"]: d for d in node_env.status()["datasets"]}
    assert status["alpha"]["state"] == "cached"  # what the service believes
    assert stack_at(target) == []  # what the node has
    job = job_reads(target / "hello.txt")
    assert job.returncode != 0 and "No such file" in job.stderr
    assert stop(daemon)[0] == 0
    # The namespace went with the service, and its mount and loop device with it.
    wait_for(lambda: not loops_under(node_env.root), timeout=30)


@pytest.mark.parametrize("unit", ["scratch-stage.service", "scratch-stage-rebalance.service"])
def test_the_shipped_unit_mounts_where_jobs_see_it(node_env: NodeEnv, unit: str) -> None:
    target = pinned_node(node_env, "alpha")

    service = start_unit(node_env, (UNITS / unit).read_text())

    wait_for(lambda: stack_at(target), timeout=60)
    job = job_reads(target / "hello.txt")
    assert job.returncode == 0, job.stderr
    assert job.stdout == hello_of("alpha")
    if unit == "scratch-stage-rebalance.service":  # Type=oneshot: one pass, then exit 0
        assert service.wait(timeout=60) == 0
    returncode, err = stop(service)
    assert returncode == 0, err
    # The mount is the node's, not the service's: it outlives the process.
    assert [m.backing for m in stack_at(target)][-1] == str(node_env.cachedir / "alpha.sqfs")
    assert job_reads(target / "hello.txt").stdout == hello_of("alpha")


@pytest.fixture
def open_node(image_store: ImageStore) -> Iterator[NodeEnv]:
    """A node tree nobody may traverse and read, not write (pytest's own dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="ss-units-", dir="/tmp"))
    node = NodeEnv(base / "node", image_store)
    try:
        for d in (base, node.root, node.datadir, node.cachedir, node.mountdir, node.statedir):
            d.chmod(0o755)
        node.config_path.chmod(0o644)
        yield node
    finally:
        left = node.finalize()
        shutil.rmtree(base, ignore_errors=True)
        assert not left, left


def run_unit_command_as_nobody(node: NodeEnv, unit: str) -> subprocess.CompletedProcess[str]:
    """The unit's ExecStart= command line, typed by an unprivileged user."""
    service = dict(parse_unit((UNITS / unit).read_text())["Service"])
    argv = [str(CLI), *service["ExecStart"].split()[3:]]  # configuration: the environment
    return subprocess.run(
        [*NOBODY, SETPRIV, "--no-new-privs", *argv], env=node.admin_environ(),
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip


def test_an_unprivileged_user_running_the_unit_command_changes_nothing(
    open_node: NodeEnv,
) -> None:
    target = pinned_node(open_node, "alpha")
    state_before = (open_node.statedir / "state.json").read_bytes()

    done = run_unit_command_as_nobody(open_node, "scratch-stage-rebalance.service")

    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert stack_at(target) == [] and loops_under(open_node.root) == {}
    assert (open_node.statedir / "state.json").read_bytes() == state_before
    assert list(open_node.cachedir.iterdir()) == []


def test_an_unprivileged_user_gets_a_clear_error(open_node: NodeEnv) -> None:
    pinned_node(open_node, "alpha")

    done = run_unit_command_as_nobody(open_node, "scratch-stage-rebalance.service")

    assert done.returncode == 1, done.stderr
    assert "statedir" in one_line(done.stderr) and "not to uid 65534" in done.stderr
    assert "internal error" not in done.stderr
