"""An image grants neither setuid nor device access; per-dataset access control (docs/design.md)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from nodetree import NodeEnv, hello_of

NOBODY = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run_as_nobody(directory: Path, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ./PROGRAM in DIRECTORY as uid/gid 65534.

    The cwd is entered as root before privileges are dropped, so the test tree's parent
    directories (pytest keeps them 0700) need not be open to nobody.
    """
    return subprocess.run(
        [*NOBODY, f"./{program}", *args], cwd=directory, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin"}, timeout=30,
    )  # fmt: skip


def control_mount(node_env: NodeEnv, options: str) -> Path:
    """The setuid image mounted by hand with OPTIONS, to prove the test can see the difference."""
    target = node_env.mountdir / "control"
    target.mkdir()
    image = node_env.datadir / "sec.sqfs"
    argv = ["/usr/bin/mount", "-t", "squashfs", "-o", options, str(image), str(target)]
    subprocess.run(argv, check=True, capture_output=True)
    return target


def test_setuid_binary_in_image_does_not_run_setuid(node_env: NodeEnv) -> None:
    node_env.add_image("sec", "setuid")
    assert node_env.prolog(11, comment="datasets:sec").returncode == 0
    mounted = node_env.mountdir / "sec"
    st = os.stat(mounted / "id")
    assert (st.st_uid, st.st_mode & stat.S_ISUID) == (0, stat.S_ISUID)
    assert "nosuid" in node_env.stack("sec")[0].options.split(",")

    done = run_as_nobody(mounted, "id", "-u")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "65534"


def test_control_setuid_runs_as_root_without_nosuid(node_env: NodeEnv) -> None:
    node_env.add_image("sec", "setuid")
    target = control_mount(node_env, "loop,ro")

    done = run_as_nobody(target, "id", "-u")

    assert done.stdout.strip() == "0"


def test_device_node_in_image_is_unusable(node_env: NodeEnv) -> None:
    node_env.add_image("sec", "setuid")
    assert node_env.prolog(11, comment="datasets:sec").returncode == 0
    device = node_env.mountdir / "sec" / "null"
    assert stat.S_ISCHR(os.stat(device).st_mode)

    with pytest.raises(PermissionError):
        open(device, "rb").close()


def test_control_device_node_opens_without_nodev(node_env: NodeEnv) -> None:
    node_env.add_image("sec", "setuid")
    target = control_mount(node_env, "loop,ro")

    with open(target / "null", "rb") as device:
        assert device.read(10) == b""


@pytest.mark.parametrize(
    ("groups", "user", "uid", "gid", "mounted"),
    [
        (["root"], "nobody", 65534, 65534, False),
        (["no-such-group"], "nobody", 65534, 65534, False),
        (["nogroup"], "nobody", 65534, 65534, True),
        (["root"], "root", 0, 0, True),
    ],
)
def test_access_groups(
    node_env: NodeEnv, groups: list[str], user: str, uid: int, gid: int, mounted: bool
) -> None:
    node_env.add_image("secret")
    node_env.add_image("public")
    node_env.configure(access={"secret": groups})

    done = node_env.prolog(11, comment="datasets:secret,public", user=user, uid=uid, gid=gid)

    assert done.returncode == 0, done.stderr
    assert (node_env.mountdir / "public" / "hello.txt").read_text() == hello_of("public")
    expected = {"public": ["11"], "secret": ["11"]} if mounted else {"public": ["11"]}
    assert node_env.holders() == expected
    assert bool(node_env.stack("secret")) is mounted
    refused = node_env.events("refused")
    if mounted:
        assert refused == []
    else:
        assert [(e["dataset"], e["job"], e["user"]) for e in refused] == [("secret", "11", user)]
        assert "restricted to groups" in refused[0]["reason"]
        assert "refused" in done.stderr and "restricted" in done.stderr


@pytest.mark.parametrize(("uid", "mounted"), [(65534, False), (0, True)])
def test_image_mode_0600_is_refused_for_other_users(
    node_env: NodeEnv, uid: int, mounted: bool
) -> None:
    node_env.add_image("private", mode=0o600)
    user = "root" if uid == 0 else "nobody"

    done = node_env.prolog(12, spank="private", user=user, uid=uid, gid=uid)

    assert done.returncode == 0, done.stderr
    assert bool(node_env.stack("private")) is mounted
    refused = node_env.events("refused") if not mounted else []
    if not mounted:
        assert len(refused) == 1
        assert "not readable by uid 65534" in refused[0]["reason"]
        assert node_env.holders() == {}
