"""`config check`: semantic errors fail it (a push gate), warnings are printed, one line each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scratch_stage.agent.admin_config import Finding, check_config
from scratch_stage.host.config import Config, validate_config

CONSOLE_SCRIPT = Path(sys.prefix) / "bin" / "scratch-stage"
CLI = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "scratch_stage"]
TRUE = "/bin/true"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for directory in ("data", "cache", "state"):
        (tmp_path / directory).mkdir(mode=0o700)
    (tmp_path / "data").chmod(0o755)
    return tmp_path


def config_of(tree: Path, **values: Any) -> Config:
    raw = {
        "datadir": str(tree / "data"), "cachedir": str(tree / "cache"),
        "statedir": str(tree / "state"), "mountdir": str(tree / "mnt"),
        "mount_command": TRUE, "umount_command": TRUE, "mksquashfs_command": TRUE,
        "squeue_command": TRUE, "sinfo_command": TRUE, "scontrol_command": TRUE,
        "capacity": "1GiB", "demand": {"source": "squeue"}, **values,
    }  # fmt: skip
    return validate_config(raw, "test")


def messages(findings: list[Finding], *, error: bool) -> list[str]:
    return [f.message for f in findings if f.error == error]


def without_same_fs(findings: list[Finding]) -> list[Finding]:
    # datadir and cachedir share the test's filesystem; that warning has its own test.
    return [f for f in findings if "same filesystem" not in f.message]


def test_clean_configuration_has_no_findings(tree: Path) -> None:
    assert without_same_fs(check_config(config_of(tree))) == []


@pytest.mark.parametrize("capacity", [80, "80", 1048575])
def test_capacity_without_unit_below_one_mib_is_an_error(tree: Path, capacity: object) -> None:
    [message] = messages(check_config(config_of(tree, capacity=capacity)), error=True)
    assert message.startswith("capacity: ") and "no unit" in message
    assert f"{capacity}%" in message


@pytest.mark.parametrize("capacity", ["80%", "80B", "4KiB", 1048576, "500MB"])
def test_capacity_with_unit_or_large_is_no_error(tree: Path, capacity: object) -> None:
    assert messages(check_config(config_of(tree, capacity=capacity)), error=True) == []


@pytest.mark.parametrize("capacity", [0, "0", "0B", "0GB"])
def test_zero_capacity_is_an_error(tree: Path, capacity: object) -> None:
    [message] = messages(check_config(config_of(tree, capacity=capacity)), error=True)
    assert message.startswith("capacity: 0")


def test_capacity_above_the_cache_filesystem_is_a_warning(tree: Path) -> None:
    st = os.statvfs(tree / "cache")
    size = st.f_blocks * st.f_frsize
    over = without_same_fs(check_config(config_of(tree, capacity=size + 4096)))
    assert [f.message.split(":")[0] for f in over if not f.error] == ["capacity"]
    assert without_same_fs(check_config(config_of(tree, capacity=size))) == []


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module_xyz:value", "cannot be imported"),
        ("os:no_such_function", "has no 'no_such_function'"),
        ("os:sep", "is not callable"),
    ],
)
def test_bad_value_function_is_an_error(tree: Path, spec: str, fragment: str) -> None:
    [message] = messages(check_config(config_of(tree, value_function=spec)), error=True)
    assert message.startswith("value_function: ") and fragment in message


def test_importable_value_function_is_fine(tree: Path) -> None:
    findings = check_config(config_of(tree, value_function="os.path:join"))
    assert messages(findings, error=True) == []


def test_access_group_that_does_not_exist_is_an_error(tree: Path) -> None:
    access = {"imagenet": ["root", "no-such-group-xyz"], "coco": ["also-missing-xyz"]}
    errors = messages(check_config(config_of(tree, access=access)), error=True)
    assert sorted(errors) == [
        "access.coco: Unix group 'also-missing-xyz' does not exist",
        "access.imagenet: Unix group 'no-such-group-xyz' does not exist",
    ]


def test_missing_directories_and_programs_are_errors(tree: Path) -> None:
    config = config_of(
        tree, datadir=str(tree / "nope"), mount_command="/nonexistent/mount",
        mksquashfs_command="/nonexistent/mksquashfs",
    )  # fmt: skip
    findings = check_config(config)
    errors = messages(findings, error=True)
    assert any(m.startswith("datadir: ") for m in errors)
    assert any(m.startswith("mount_command: ") for m in errors)
    # mksquashfs only builds images: a compute node may well lack it.
    assert any(m.startswith("mksquashfs_command: ") for m in messages(findings, error=False))


def test_slurm_clients_are_checked_only_when_used(tree: Path) -> None:
    missing = {"squeue_command": "/nonexistent/squeue", "scontrol_command": "/nonexistent/x"}
    used = messages(check_config(config_of(tree, **missing)), error=True)
    assert [m.split(":")[0] for m in used] == ["squeue_command"]
    unused = config_of(tree, demand={"source": "none"}, **missing)
    assert messages(check_config(unused), error=True) == []
    features = config_of(tree, demand={"source": "none"}, node_features=True, **missing)
    assert [m.split(":")[0] for m in messages(check_config(features), error=True)] == [
        "scontrol_command"
    ]


def test_shared_filesystem_of_cachedir_and_datadir_is_a_warning(tree: Path) -> None:
    findings = check_config(config_of(tree))
    assert [f.message.split(":")[0] for f in findings] == ["cachedir"]
    assert not findings[0].error and "same filesystem" in findings[0].message
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tree).st_dev:
        pytest.skip("no second filesystem to put the cache on")
    assert check_config(config_of(tree, cachedir=str(other))) == []


@pytest.mark.parametrize("mode", [0o1777, 0o775, 0o757])
def test_writable_datadir_is_a_warning(tree: Path, mode: int) -> None:
    (tree / "data").chmod(mode)
    [warning] = without_same_fs(check_config(config_of(tree)))
    assert not warning.error and warning.message.startswith("datadir: ")
    assert f"{mode:04o}" in warning.message


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o704, 0o702])
def test_statedir_open_to_others_is_a_warning(tree: Path, mode: int) -> None:
    (tree / "state").chmod(mode)
    [warning] = without_same_fs(check_config(config_of(tree)))
    assert not warning.error and warning.message.startswith("statedir: ")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the statedir away")
def test_statedir_not_owned_by_root_is_a_warning(tree: Path) -> None:
    os.chown(tree / "state", 65534, 65534)
    [warning] = without_same_fs(check_config(config_of(tree)))
    assert "owned by uid 65534" in warning.message


def test_findings_are_one_line_each(tree: Path) -> None:
    (tree / "data").chmod(0o1777)
    findings = check_config(config_of(tree, capacity=80, value_function="nope_xyz:f"))
    assert len(findings) >= 3
    assert all("\n" not in f.message for f in findings)


# --- the command, as a push pipeline runs it ------------------------------------------


def config_check(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(path), "config", "check"], capture_output=True, text=True,
        timeout=60, env={"SCRATCH_STAGE_RUNDIR": str(tmp_path / "run")},
    )  # fmt: skip


def write_config(tree: Path, extra: str) -> Path:
    path = tree / "c.yaml"
    path.write_text(
        f"datadir: {tree / 'data'}\ncachedir: {tree / 'cache'}\nstatedir: {tree / 'state'}\n"
        f"mountdir: {tree / 'mnt'}\nmksquashfs_command: {TRUE}\n"
        f"demand: {{source: none}}\n{extra}"
    )
    return path


def test_check_exits_4_on_errors_and_lists_each_on_one_line(tree: Path) -> None:
    done = config_check(write_config(tree, "capacity: 80\ncapcity: 2TB\nverify: md5\n"), tree)
    assert done.returncode == 4
    assert done.stderr == ""  # the report is the command's output: all of it on stdout
    lines = done.stdout.splitlines()
    assert "error: capcity: unknown key (did you mean capacity?)" in lines
    assert any(line.startswith("error: verify: ") for line in lines)
    assert lines[-1].endswith(": 2 error(s)")  # parse errors first: capacity later
    done = config_check(write_config(tree, "capacity: 80\n"), tree)
    assert done.returncode == 4
    *problems, demand, summary = done.stdout.splitlines()
    assert demand.startswith("demand: ")  # the active source and its cost, then the summary
    [line] = [line for line in problems if line.startswith("error: ")]
    assert line.startswith("error: capacity: 80 has no unit")
    assert all(line.startswith(("error: ", "warning: ")) for line in problems)
    assert summary.endswith(": 1 error(s)") or "1 error(s)" in summary


def test_check_exits_0_with_warnings_only(tree: Path) -> None:
    (tree / "data").chmod(0o1777)
    done = config_check(write_config(tree, "capacity: 80%\n"), tree)
    assert done.returncode == 0, done.stdout
    *problems, demand, summary = done.stdout.splitlines()
    assert demand.startswith("demand: ")
    assert all(line.startswith("warning: ") for line in problems)
    assert any("datadir" in line for line in problems)
    assert "ok" in summary and "warning(s)" in summary


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(0o755, None), (0o775, "writable by group or others"), (None, "No such file")],
)
def test_metrics_dir_the_rebalance_would_refuse_is_a_warning(
    tree: Path, mode: int | None, expected: str | None
) -> None:
    textfile = tree / "textfile"
    if mode is not None:
        textfile.mkdir()
        textfile.chmod(mode)
    findings = without_same_fs(check_config(config_of(tree, metrics_dir=str(textfile))))
    assert messages(findings, error=True) == []
    warnings = messages(findings, error=False)
    if expected is None:
        assert warnings == []
    else:
        [warning] = warnings
        assert warning.startswith("metrics_dir: ") and expected in warning
        assert warning.endswith("no metrics file will be written")


def test_coop_directory_is_checked_only_when_enabled(tree: Path) -> None:
    coop = tree / "data" / ".scratch-stage-coop"
    assert without_same_fs(check_config(config_of(tree))) == []
    [missing] = messages(
        without_same_fs(check_config(config_of(tree, coop={"enabled": True}))), error=False
    )
    assert missing.startswith("coop.dir: ") and "does not exist" in missing
    coop.mkdir()
    coop.chmod(0o777)  # anyone could plant leases, peers or digests there
    [open_dir] = messages(
        without_same_fs(check_config(config_of(tree, coop={"enabled": True}))), error=False
    )
    assert "writable by any user" in open_dir and open_dir.endswith("(nodes copy independently)")
    coop.chmod(0o700)
    assert (
        messages(
            without_same_fs(check_config(config_of(tree, coop={"enabled": True}))), error=False
        )
        == []
    )
