"""Whatever a data owner leaves in datadir is a refusal of that one dataset, never a node fault.

Every hostile entry sits next to a good image. The prolog that asks for both exits 0,
mounts the good one and records a `refused` event for the other; `status`, `rebalance
--dry-run` and `catalog` keep working for the administrator and still list the good one.
No byte of a hostile file name reaches a terminal raw.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from nodetree import CLI, NodeEnv, hello_of, one_line

ESCAPE = "\x1b]0;owned\x07\x1b[2J\x1b[31m"
# A terminal acts on these: ESC, BEL, CSI (8-bit), and a bidi override that reorders text.
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")


def _copy_good(node_env: NodeEnv, path: Path) -> Path:
    shutil.copyfile(node_env.datadir / "good.sqfs", path)
    return path


def header_only(node_env: NodeEnv, path: Path) -> None:
    """The real superblock of a good image, claiming to be the whole image (96 bytes)."""
    header = bytearray((node_env.datadir / "good.sqfs").read_bytes()[:96])
    struct.pack_into("<Q", header, 40, len(header))
    path.write_bytes(bytes(header))


def _make(node_env: NodeEnv, kind: str) -> None:
    d = node_env.datadir
    if kind == "loop":
        os.symlink("loop.sqfs", d / "loop.sqfs")
    elif kind == "pingpong":
        os.symlink("pong.sqfs", d / "pingpong.sqfs")
        os.symlink("pingpong.sqfs", d / "pong.sqfs")
    elif kind == "notdir":
        os.symlink("good.sqfs/inner.sqfs", d / "notdir.sqfs")
    elif kind == "outside":
        elsewhere = _copy_good(node_env, node_env.root / "elsewhere.sqfs")
        os.symlink(elsewhere, d / "outside.sqfs")
    elif kind == "dotdot":
        _copy_good(node_env, node_env.root / "up.sqfs")
        os.symlink("../up.sqfs", d / "dotdot.sqfs")
    elif kind == "unopenable":
        # Root can stat this file but not open it (a 0200 sysctl): EACCES for root.
        os.symlink("/proc/sys/vm/compact_memory", d / "unopenable.sqfs")
    elif kind == "dangling":
        os.symlink("nothing-here.sqfs", d / "dangling.sqfs")
    elif kind == "fifo":
        os.mkfifo(d / "fifo.sqfs")
    elif kind == "directory":
        (d / "directory.sqfs").mkdir()
    elif kind == "device":
        os.mknod(d / "device.sqfs", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    elif kind == "socket":
        os.mknod(d / "socket.sqfs", 0o600 | stat.S_IFSOCK)
    elif kind == "sparse":
        with open(d / "sparse.sqfs", "wb") as f:
            f.truncate(1 << 40)  # 1 TiB of nothing
    elif kind == "headeronly":
        header_only(node_env, d / "headeronly.sqfs")
    elif kind == "userowned":
        path = _copy_good(node_env, d / "userowned.sqfs")
        os.chown(path, 65534, 65534)
        path.chmod(0o644)
    elif kind == "worldwritable":
        _copy_good(node_env, d / "worldwritable.sqfs").chmod(0o666)
    else:
        raise AssertionError(kind)


HOSTILE = [
    "loop", "pingpong", "notdir", "outside", "dotdot", "unopenable", "dangling", "fifo",
    "directory", "device", "socket", "sparse", "headeronly", "userowned", "worldwritable",
]  # fmt: skip


def assert_no_raw_controls(*outputs: str) -> None:
    for text in outputs:
        for control in RAW_CONTROLS:
            assert control not in text, f"raw {control!r} in output {text!r}"


def problem_files(kind: str) -> set[str]:
    """The datadir entries that KIND leaves behind, each one a problem."""
    return {"pingpong.sqfs", "pong.sqfs"} if kind == "pingpong" else {f"{kind}.sqfs"}


def assert_node_in_service(node_env: NodeEnv, kind: str) -> None:
    """status, rebalance --dry-run and catalog work and list the good image; no raw controls."""
    problem_file = f"{kind}.sqfs"
    status = node_env.cli("status")
    assert status.returncode == 0, status.stderr
    assert any(line.split()[:1] == ["good"] for line in status.stdout.splitlines())
    problem_lines = [line for line in status.stdout.splitlines() if line.startswith("problem:")]
    assert any(problem_file in line for line in problem_lines), status.stdout

    data = node_env.status()
    assert [d["name"] for d in data["datasets"] if d["in_datadir"]] == ["good"]
    assert set(data["problems"]) == problem_files(kind)

    dry = node_env.cli("rebalance", "--dry-run", "--explain")
    assert dry.returncode == 0, dry.stderr
    assert "good" in dry.stdout

    catalog = node_env.cli("catalog")
    assert catalog.returncode == 0, catalog.stderr
    assert [line.split()[0] for line in catalog.stdout.splitlines()] == ["NAME", "good"]
    assert problem_file in catalog.stderr
    assert len(catalog.stderr.splitlines()) == len(problem_files(kind))
    assert_no_raw_controls(
        status.stdout, status.stderr, dry.stdout, dry.stderr, catalog.stdout, catalog.stderr
    )


@pytest.fixture
def node(node_env: NodeEnv) -> NodeEnv:
    node_env.configure(demand={"source": "none"})
    node_env.add_image("good")
    return node_env


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_entry_is_refused_and_the_node_stays_in_service(node: NodeEnv, kind: str) -> None:
    _make(node, kind)

    done = node.prolog(11, comment=f"datasets:{kind},good")

    assert done.returncode == 0, done.stderr
    assert (node.mountdir / "good" / "hello.txt").read_text() == hello_of("good")
    assert node.stack(kind) == []
    assert node.holders() == {"good": ["11"]}
    refused = node.events("refused")
    assert [(e["dataset"], e["job"]) for e in refused] == [(kind, "11")]
    assert "\n" not in refused[0]["reason"]
    assert_node_in_service(node, kind)
    assert node.epilog(11).returncode == 0


def test_one_pass_over_every_hostile_entry_at_once(node: NodeEnv) -> None:
    for kind in HOSTILE:
        _make(node, kind)

    done = node.prolog(12, comment="datasets:" + ",".join([*HOSTILE, "good"]))

    assert done.returncode == 0, done.stderr
    assert node.holders() == {"good": ["12"]}
    assert sorted(e["dataset"] for e in node.events("refused")) == sorted(HOSTILE)
    data = node.status()
    assert set(data["problems"]) == set().union(*map(problem_files, HOSTILE))
    assert node.cli("rebalance", "--dry-run").returncode == 0
    assert node.cli("catalog").returncode == 0


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        # escape sequences: retitle, clear, colour the terminal
        (f"{ESCAPE}evil.sqfs", "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mevil.sqfs"),
        ("\u202eevil.sqfs", "\\u202eevil.sqfs"),  # right-to-left override
        ("fake\nevil.sqfs", "fake\\nevil.sqfs"),  # a forged second line in every listing
        ("\udcff\udcfeevil.sqfs", "\\xff\\xfeevil.sqfs"),  # not UTF-8 (bytes 0xff 0xfe)
        ("\x9b2Jevil.sqfs", "\\u009b2Jevil.sqfs"),  # an 8-bit CSI (UTF-8 encoded)
        ("\udc9b2Jevil.sqfs", "\\x9b2Jevil.sqfs"),  # a raw 8-bit CSI byte
    ],
)
def test_hostile_file_names_never_reach_the_terminal_raw(
    node: NodeEnv, filename: str, shown: str
) -> None:
    path = os.fsencode(node.datadir) + b"/" + os.fsencode(filename)
    shutil.copyfile(node.datadir / "good.sqfs", path)

    outputs = []
    for args in (["status"], ["status", "--json"], ["catalog"], ["catalog", "--json"],
                 ["rebalance", "--dry-run", "--explain"], ["info", "good"]):  # fmt: skip
        done = node.cli(*args)
        assert done.returncode == 0, (args, done.stderr)
        outputs += [done.stdout, done.stderr]
    assert_no_raw_controls(*outputs)
    catalog = node.cli("catalog")
    assert one_line(catalog.stderr).startswith(f"problem: {shown}: ")  # escaped, one line
    assert [line.split()[0] for line in catalog.stdout.splitlines()] == ["NAME", "good"]
    assert f"problem: {shown}: " in node.cli("status").stdout
    assert json.loads(node.cli("catalog", "--json").stdout)["problems"].keys() == {filename}


def test_image_root_cannot_open_is_refused_not_a_crash(node: NodeEnv) -> None:
    """EACCES inside datadir (as on root-squashed NFS): root without DAC override, a 0000 image."""
    node.add_image("locked").chmod(0o000)
    no_dac = ["/usr/bin/setpriv", "--bounding-set=-dac_override,-dac_read_search"]

    def run(args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*no_dac, str(CLI), *args], env=environ, capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL, cwd="/",
        )  # fmt: skip

    done = run(["prolog"], node.job_environ(13, comment="datasets:locked,good"))

    assert done.returncode == 0, done.stderr
    assert node.holders() == {"good": ["13"]}
    refused = node.events("refused")
    assert [e["dataset"] for e in refused] == ["locked"]
    assert "ermission denied" in refused[0]["reason"]
    for args in (["status"], ["catalog"], ["rebalance", "--dry-run"]):
        done = run(args, node.admin_environ())
        assert done.returncode == 0, (args, done.stderr)
