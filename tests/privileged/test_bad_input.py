"""Hostile and broken input: a user's mistake never fails a prolog, a node fault does.

Every case runs on a node where job 1 already holds `beta`: nothing it depends on (its
hold, beta's mount stack) may change, and the good entry of the same request still mounts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from nodetree import NodeEnv, hello_of, mounts_under, one_line

LONG_NAME = "n" * 129
TEN_KB_COMMENT = "datasets:alpha," + ",".join(f"bad/{i:05}" for i in range(1000))


@pytest.fixture
def busy_node(node_env: NodeEnv) -> NodeEnv:
    node_env.add_image("alpha")
    node_env.add_image("beta")
    (node_env.datadir / "x.sqfs").write_text("not a squashfs image at all\n" * 200)
    truncated = (node_env.datadir / "beta.sqfs").read_bytes()[:4096]
    (node_env.datadir / "trunc.sqfs").write_bytes(truncated)
    (node_env.datadir / "dir.sqfs").mkdir()
    done = node_env.prolog(1, comment="datasets:beta")
    assert done.returncode == 0, done.stderr
    return node_env


def hook_log_lines(stderr: str) -> list[str]:
    """The prolog's stderr, checked to be log lines of its own, each a single short line."""
    lines = stderr.splitlines()
    for line in lines:
        assert line.startswith("scratch-stage prolog["), line
        assert not line.startswith("scratch-stage prolog[1]:"), f"forged log line: {line}"
        assert len(line) < 600, line
    return lines


BAD_REQUESTS = {
    "slash": {"comment": "datasets:alpha,foo/bar"},
    "dotdot": {"comment": "datasets:..,alpha,../beta"},
    "dot-prefix": {"comment": "datasets:.hidden,alpha"},
    "space-in-spank": {"spank": "alpha, my data"},
    "space-in-comment": {"comment": "datasets:alpha, beta"},
    "shell-metacharacters": {"spank": "alpha,$(touch pwned),`id`,a;b,c|d,e&&f,g>h,'q',\"r\""},
    "unicode": {"comment": "datasets:alpha,ïmagenet,数据,cafe\u0301"},
    "empty-token": {"comment": "datasets:", "spank": "alpha"},
    "empty-entries": {"comment": "datasets:alpha,,", "spank": ","},
    "newline": {"spank": "alpha,evil\nscratch-stage prolog[1]: ERROR forged"},
    "control-characters": {"spank": "alpha,\x1b[31mred,nul\x01"},
    "too-long-name": {"comment": f"datasets:alpha,{LONG_NAME}"},
    "ten-kb-comment": {"comment": TEN_KB_COMMENT},
    "ten-kb-name": {"comment": "datasets:alpha," + "a" * 10_000},
    "unknown-dataset": {"comment": "datasets:alpha,nosuch"},
    "non-squashfs-image": {"comment": "datasets:alpha,x"},
    "truncated-image": {"comment": "datasets:alpha,trunc"},
    "directory-image": {"comment": "datasets:alpha,dir"},
    "name-with-suffix": {"comment": "datasets:alpha,beta.sqfs"},
}


@pytest.mark.parametrize("job", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_entry_refused_good_entry_served(busy_node: NodeEnv, job: dict[str, str]) -> None:
    before_jobs, before_stacks = busy_node.snapshot()

    done = busy_node.prolog(50, **job)

    assert done.returncode == 0, done.stderr
    assert (busy_node.mountdir / "alpha" / "hello.txt").read_text() == hello_of("alpha")
    after_jobs, after_stacks = busy_node.snapshot()
    assert after_jobs.pop("50")[0] == ["alpha"]
    assert after_jobs == before_jobs
    assert after_stacks.pop("alpha") == [str(busy_node.datadir / "alpha.sqfs")]
    assert after_stacks == before_stacks
    # Nothing else got mounted anywhere in the tree (no '<mountdir>/../beta').
    assert sorted(m.target for m in mounts_under(busy_node.root)) == [
        str(busy_node.mountdir / "alpha"), str(busy_node.mountdir / "beta"),
    ]  # fmt: skip
    assert sorted(os.listdir(busy_node.mountdir)) == ["alpha", "beta"]
    lines = hook_log_lines(done.stderr)
    refusals = [line for line in lines if "' refused: " in line]
    assert refusals and all("job 50" in line for line in refusals)
    refused = busy_node.events("refused")  # every line of the event log is one JSON object
    assert refused and all(e["job"] == "50" for e in refused)
    assert not (busy_node.root / "pwned").exists() and not Path("/pwned").exists()


def test_ten_kb_comment_logs_few_lines(busy_node: NodeEnv) -> None:
    done = busy_node.prolog(50, comment=TEN_KB_COMMENT)

    assert done.returncode == 0
    lines = hook_log_lines(done.stderr)
    assert len(lines) <= 10
    assert any("995 more bad entries" in line for line in lines)
    assert len(busy_node.events("refused")) == 6


def test_request_of_only_bad_entries_mounts_nothing(busy_node: NodeEnv) -> None:
    before = busy_node.snapshot()

    done = busy_node.prolog(50, comment="datasets:../beta,nosuch,x", spank="a b")

    assert done.returncode == 0, done.stderr
    assert busy_node.snapshot() == before
    assert len(busy_node.events("refused")) == 4


def test_missing_datadir_is_a_node_fault(busy_node: NodeEnv) -> None:
    shutil.rmtree(busy_node.datadir)

    done = busy_node.prolog(50, comment="datasets:alpha")

    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "node fault" in line and "datadir" in line and "job 50" in line
    assert list(busy_node.state()["jobs"]) == ["1"]


def test_statedir_unusable_is_a_node_fault(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    blocker = node_env.root / "statedir-is-a-file"
    blocker.write_text("")
    node_env.configure(statedir=str(blocker))

    done = node_env.prolog(50, comment="datasets:alpha")

    assert done.returncode != 0
    assert "statedir" in one_line(done.stderr)


def test_mount_that_fails_is_refused_not_a_drain(busy_node: NodeEnv) -> None:
    # A bad image (or a mount the kernel rejects) is this job's problem: exit 0, refused.
    before = busy_node.snapshot()
    busy_node.configure(mount_command="/bin/false")

    done = busy_node.prolog(50, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    refused = busy_node.events("refused")
    assert refused and refused[-1]["dataset"] == "alpha" and refused[-1]["job"] == "50"
    assert "cannot be mounted" in refused[-1]["reason"]
    assert busy_node.snapshot() == before  # no hold for job 50, no mount, no intent left
    assert busy_node.state()["intents"] == {}


def test_mount_command_missing_is_a_node_fault(busy_node: NodeEnv) -> None:
    before = busy_node.snapshot()
    busy_node.configure(mount_command="/nonexistent/mount")

    done = busy_node.prolog(50, comment="datasets:alpha")

    assert done.returncode != 0
    assert "node fault" in one_line(done.stderr)
    assert busy_node.snapshot() == before


def test_epilog_with_bad_comment_still_releases(busy_node: NodeEnv) -> None:
    done = busy_node.epilog(1, comment="datasets:../x," + "z" * 5000)

    assert done.returncode == 0, done.stderr
    assert busy_node.holders() == {}


def _config_broken(node_env: NodeEnv, how: str) -> None:
    path = node_env.config_path
    if how == "missing":
        path.unlink()
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "yaml-syntax":
        path.write_text("datadir: [unclosed\n")
    elif how == "not-a-mapping":
        path.write_text("- just\n- a list\n")
    elif how == "unknown-key":
        node_env.configure(colour="blue")
    elif how == "bad-values":
        node_env.configure(capacity="lots", verify="md5", datadir="relative/path")
    elif how == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")


CONFIG_BREAKAGES = [
    "missing", "directory", "yaml-syntax", "not-a-mapping", "unknown-key", "bad-values", "binary",
]  # fmt: skip


@pytest.mark.parametrize("how", CONFIG_BREAKAGES)
def test_broken_config(busy_node: NodeEnv, how: str) -> None:
    _config_broken(busy_node, how)

    status = busy_node.cli("status")
    prolog = busy_node.prolog(50, comment="datasets:alpha")
    epilog = busy_node.epilog(1)

    assert status.returncode == 4
    assert one_line(status.stderr).startswith("scratch-stage: error:")
    # The prolog of job 1 validated the file before it broke: prolog and epilog log the
    # error and run on that known-good configuration (tests/privileged/test_config_push.py).
    assert prolog.returncode == 0, prolog.stderr
    assert "configuration" in prolog.stderr and " ERROR " in prolog.stderr
    assert epilog.returncode == 0, epilog.stderr
    assert (busy_node.mountdir / "alpha" / "hello.txt").read_text() == hello_of("alpha")
    assert list(busy_node.state()["jobs"]) == ["50"]


@pytest.mark.parametrize("how", CONFIG_BREAKAGES)
def test_broken_config_without_known_good(busy_node: NodeEnv, how: str) -> None:
    shutil.rmtree(busy_node.rundir)  # as after a reboot: /run is empty
    _config_broken(busy_node, how)

    prolog = busy_node.prolog(50, comment="datasets:alpha")
    epilog = busy_node.epilog(1)

    assert prolog.returncode != 0
    assert "configuration" in one_line(prolog.stderr)
    # An epilog that cannot read its configuration drains the node too: better than a
    # hold that is silently never released.
    assert epilog.returncode != 0
    assert len(busy_node.stack("beta")) == 1


def test_all_config_errors_are_reported_at_once(busy_node: NodeEnv) -> None:
    busy_node.configure(capacity="lots", verify="md5", colour="blue")

    done = busy_node.cli("status")

    line = one_line(done.stderr)
    assert all(key in line for key in ("capacity", "verify", "colour"))


@pytest.mark.parametrize(
    "args",
    [
        ["info", "../x"],
        ["info", "nosuch"],
        ["info", "a/b"],
        ["pin", "a b"],
        ["pin", "nosuch"],
        ["unpin", ".."],
        ["unpin", "alpha"],
        ["purge", "../beta"],
        ["prestage", "../beta"],
        ["prestage", "x"],
    ],
)
def test_cli_bad_names_fail_with_one_line(busy_node: NodeEnv, args: list[str]) -> None:
    before = busy_node.snapshot()

    done = busy_node.cli(*args)

    assert done.returncode == 1, done.stdout
    assert one_line(done.stderr).startswith("scratch-stage: error:")
    assert busy_node.snapshot() == before
    assert sorted(os.listdir(busy_node.cachedir)) in ([], [".partial"])
