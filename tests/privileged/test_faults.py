"""Fault injection at every side-effect point: SIGKILL right before and right after each
irreversible step, then the next command reconciles and the node's invariants hold.

The seam is SCRATCH_STAGE_FAULT=<point>[@N] (scratch_stage/host/faults.py). Each case asserts
that the process really died at that point (exit -9), then checks the invariants against
the real mount table, loop devices and disk, read independently of the package:
no cached record without its file, no mounted dataset without a holder or an idle timer,
no holder lost, the cache within capacity on disk, no partial copy, no loop device leaked,
no intent left. Finally the same command succeeds again.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nodetree import NodeEnv, loops_under, mount_table, mounts_under

KILLED = -9


def run_with_fault(
    node_env: NodeEnv, point: str, args: list[str], environ: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return node_env.run(args, {**environ, "SCRATCH_STAGE_FAULT": point})


def disk_bytes(directory: Path) -> int:
    """Bytes of every file under DIRECTORY (apparent sizes)."""
    total = 0
    for base, _, files in os.walk(directory):
        for f in files:
            total += os.lstat(os.path.join(base, f)).st_size
    return total


def deleted_loop_bytes(directory: Path) -> int:
    """Bytes of deleted files under DIRECTORY that loop devices still hold."""
    total = 0
    for device, backing in loops_under(directory).items():
        if backing.endswith(" (deleted)"):
            name = device.rsplit("/", 1)[-1]
            total += int(Path(f"/sys/block/{name}/size").read_text()) * 512
    return total


def check_invariants(
    node_env: NodeEnv, holds_before: dict[str, list[str]], capacity: int
) -> dict[str, object]:
    """Run the next command (status reconciles), then check every invariant; the state."""
    done = node_env.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    state = node_env.state()
    assert state["intents"] == {}, "an intent of a dead process survived reconcile"
    assert state["staging"] == {}, "a copy of a dead process survived reconcile"
    for name, (fingerprint, _, _) in state["cached"].items():
        path = node_env.cachedir / f"{name}.sqfs"
        assert path.exists(), f"{name} recorded as cached but {path} is missing"
        assert path.stat().st_size == fingerprint[0]
    held = {n for datasets, _, _ in state["jobs"].values() for n in datasets}
    for mount in mounts_under(node_env.mountdir):
        name = os.path.relpath(mount.target, node_env.mountdir)
        assert name in held or name in state["last_used"], f"{name} mounted, unaccounted for"
    for job, datasets in holds_before.items():
        assert job in state["jobs"], f"job {job}'s hold was lost"
        assert set(datasets) <= set(state["jobs"][job][0]), f"job {job} lost a dataset"
    assert disk_bytes(node_env.cachedir) + deleted_loop_bytes(node_env.cachedir) <= capacity
    partial = node_env.cachedir / ".partial"
    assert not partial.exists() or os.listdir(partial) == [], "a partial copy was left"
    sources = {m.source for m in mount_table()}
    leaked = [d for d in loops_under(node_env.root) if d not in sources]
    assert leaked == [], f"loop devices leaked: {leaked}"
    return state


def holds(node_env: NodeEnv) -> dict[str, list[str]]:
    path = node_env.statedir / "state.json"
    if not path.exists():
        return {}
    return {job: hold[0] for job, hold in node_env.state()["jobs"].items()}


def top_backing(node_env: NodeEnv, name: str) -> str | None:
    backings = node_env.backings(name)
    return backings[-1] if backings else None


# --- scenarios: a setup, the command under test, and a check that it works afterwards ---

Scenario = tuple[Callable[[NodeEnv], None], Callable[[NodeEnv], tuple[list[str], dict[str, str]]]]


def setup_images(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.add_image("beta")


def setup_prolog_done(node_env: NodeEnv) -> None:
    setup_images(node_env)
    assert node_env.prolog(7, comment="datasets:alpha").returncode == 0


def setup_cached(node_env: NodeEnv) -> None:
    setup_images(node_env)
    assert node_env.cli("prestage", "alpha").returncode == 0


def setup_cached_and_held(node_env: NodeEnv) -> None:
    setup_cached(node_env)
    assert node_env.prolog(9, comment="datasets:alpha").returncode == 0


def setup_evict_for_pin(node_env: NodeEnv) -> None:
    """alpha cached; beta pinned; room for one: the pass evicts alpha and stages beta."""
    setup_cached(node_env)
    size = max(os.path.getsize(node_env.datadir / f"{n}.sqfs") for n in ("alpha", "beta"))
    node_env.configure(capacity=str(size + size // 2), demand={"source": "none"})
    assert node_env.cli("pin", "beta").returncode == 0


def setup_idle(node_env: NodeEnv) -> None:
    setup_prolog_done(node_env)
    assert node_env.epilog(7).returncode == 0
    node_env.configure(idle_unmount=1, demand={"source": "none"})
    time.sleep(1.2)


def prolog_cmd(node_env: NodeEnv) -> tuple[list[str], dict[str, str]]:
    return ["prolog"], node_env.job_environ(8, comment="datasets:alpha,beta")


def epilog_cmd(node_env: NodeEnv) -> tuple[list[str], dict[str, str]]:
    return ["epilog"], node_env.job_environ(7)


def admin(*args: str) -> Callable[[NodeEnv], tuple[list[str], dict[str, str]]]:
    return lambda node_env: (list(args), node_env.admin_environ())


SCENARIOS: dict[str, tuple[Callable[[NodeEnv], None], Callable[..., tuple[list[str], dict[str, str]]], list[str]]] = {  # noqa: E501
    "prolog": (setup_images, prolog_cmd, [
        "before-state-write@1", "after-state-write@1", "before-mount@1", "after-mount@1",
        "before-mount@2", "after-mount@2", "before-state-write@2", "after-state-write@2",
    ]),
    "epilog": (setup_prolog_done, epilog_cmd, ["before-state-write", "after-state-write"]),
    "prestage": (setup_images, admin("prestage", "alpha"), [
        "before-state-write@1", "after-state-write@1", "before-rename", "after-rename",
        "before-state-write@2", "after-state-write@2", "before-mount", "after-mount",
        "before-state-write@3", "after-state-write@3",
    ]),
    "rebalance-evict": (setup_evict_for_pin, admin("rebalance"), [
        "before-umount", "after-umount", "before-unlink", "after-unlink",
        "before-rename", "after-rename", "before-mount", "after-mount",
    ]),
    "rebalance-idle-unmount": (setup_idle, admin("rebalance"), ["before-umount", "after-umount"]),
    "purge": (setup_cached, admin("purge", "alpha"), [
        "before-umount", "after-umount", "before-unlink", "after-unlink",
    ]),
    "purge-force": (setup_cached_and_held, admin("purge", "--force", "alpha"), [
        "before-umount", "after-umount", "before-mount", "after-mount",
    ]),
}  # fmt: skip
CASES = [(scenario, point) for scenario, (_, _, points) in SCENARIOS.items() for point in points]


@pytest.mark.parametrize(("scenario", "point"), CASES, ids=[f"{s}:{p}" for s, p in CASES])
def test_kill_at_side_effect_point_then_reconcile(
    node_env: NodeEnv, scenario: str, point: str
) -> None:
    setup, command, _ = SCENARIOS[scenario]
    setup(node_env)
    capacity = 1024**3
    if "capacity" in node_env.settings:
        capacity = int(node_env.settings["capacity"])
    before = holds(node_env)
    if scenario == "epilog":
        before.pop("7")  # the job whose epilog runs: its hold may go
    args, environ = command(node_env)

    done = run_with_fault(node_env, point, args, environ)

    assert done.returncode == KILLED, f"{point} not reached: {done.returncode} {done.stderr}"
    check_invariants(node_env, before, capacity)
    again = node_env.run(args, environ)  # and the node works: the command succeeds now
    if scenario.startswith("purge"):
        assert again.returncode == 0 or "no cached copy" in again.stderr, again.stderr
        # a held dataset left without a mount is mounted again by the next pass
        assert node_env.cli("rebalance").returncode in (0, 1)
    else:
        assert again.returncode == 0, again.stderr
    state = check_invariants(node_env, before, capacity)
    if scenario == "prolog":
        assert set(state["jobs"]["8"][0]) == {"alpha", "beta"}  # type: ignore[index]
        for name in ("alpha", "beta"):
            assert top_backing(node_env, name) == str(node_env.datadir / f"{name}.sqfs")
    if scenario == "prestage":
        assert top_backing(node_env, "alpha") == str(node_env.cachedir / "alpha.sqfs")
    if scenario == "purge-force":
        assert top_backing(node_env, "alpha") == str(node_env.datadir / "alpha.sqfs")
    if scenario == "rebalance-evict":
        assert set(state["cached"]) == {"beta"}  # type: ignore[arg-type]
        assert not (node_env.cachedir / "alpha.sqfs").exists()
