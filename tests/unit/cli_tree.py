"""A deterministic node tree for CLI output tests: images, a cached copy, a mount stack,
holds, pins, a failure, events and the last rebalance's figures, read at a fixed time.

The images are files with a plausible squashfs header (catalog checks no more than that);
the mount stack is a recorded-format /proc/self/mountinfo and sysfs under the tree's own
root, so nothing is mounted. Output is made comparable by `normalize` (the tree's path,
inode numbers and change times, which no test can fix, become placeholders).
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scratch_stage.agent.admin import publish_summary
from scratch_stage.agent.node import Node
from scratch_stage.cli import run_cli
from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.config import load_config
from scratch_stage.host.state import RECOVERED, CachedCopy, Failure, Hold, Pin
from scratch_stage.policy.report import LAST_REPORT

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
MTIME = 1_790_000_000  # 2026-09-21 14:13:20 UTC
MIB = 1024**2
_NO_TABLE = (1 << 64) - 1


def superblock(bytes_used: int) -> bytes:
    """A plausible squashfs 4.0 superblock for an image of BYTES_USED bytes."""
    return struct.pack(
        "<4sIIIIHHHHHHQQQQQQQQ", b"hsqs", 2, 0, 131072, 0, 1, 17, 0, 1, 4, 0, 32,
        bytes_used, bytes_used - 8, _NO_TABLE, bytes_used - 64, bytes_used - 32,
        _NO_TABLE, _NO_TABLE,
    )  # fmt: skip


def fake_image(path: Path, size: int) -> Path:
    path.write_bytes(superblock(size) + b"\0" * (size - 96))
    os.utime(path, (MTIME, MTIME))
    return path


@dataclass
class CliTree:
    """The tree under ROOT and how to run the CLI against it."""

    root: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def node(self) -> Node:
        return Node(load_config(str(self.config)), root=self.root, clock=lambda: NOW)

    def run(self, *args: str, euid: int | None = None) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of `scratch-stage --config ... ARGS` (`<root>` in
        ARGS stands for the tree), normalized."""
        self.capsys.readouterr()
        args = tuple(a.replace("<root>", str(self.root)) for a in args)
        code = run_cli(
            ["--config", str(self.config), *args], root=self.root, clock=lambda: NOW, euid=euid
        )
        out, err = self.capsys.readouterr()
        return code, self.normalize(out), self.normalize(err)

    def normalize(self, text: str) -> str:
        text = text.replace(str(self.root), "<root>")
        text = re.sub(r"inode \d+", "inode <n>", text)
        text = re.sub(r'"(inode|ctime_ns)": \d+', r'"\1": "<n>"', text)
        return re.sub(r"ctime \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "ctime <t>", text)


def build_tree(root: Path) -> None:
    """The node tree: see the module docstring."""
    data, cache, mnt, state = (root / d for d in ("data", "cache", "mnt", "state"))
    for d in (data, cache, mnt):
        d.mkdir(mode=0o755)
    state.mkdir(mode=0o700)
    alpha = fake_image(data / "alpha.sqfs", 4 * MIB)
    fake_image(data / "beta.sqfs", 1 * MIB)
    fake_image(data / "gamma.squashfs", 64 * 1024)
    (data / "junk.sqfs").write_bytes(b"not an image at all")
    copy = fake_image(cache / "alpha.sqfs", 4 * MIB)
    (root / "config.yaml").write_text(
        f"datadir: {data}\ncachedir: {cache}\nmountdir: {mnt}\nstatedir: {state}\n"
        "capacity: 1GiB\nnode: node7\ndemand: {source: none}\n"
        "mount_command: /bin/false\numount_command: /bin/false\n"
    )
    # alpha: the slow image with its cached copy mounted over it.
    (mnt / "alpha").mkdir()
    mountinfo = "".join(
        f"{40 + i} {27 if i == 0 else 40} 7:{i} / {mnt / 'alpha'} ro,nosuid,nodev,relatime "
        f"- squashfs /dev/loop{i} ro,errors=continue\n"
        for i in range(2)
    )
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    (root / "proc/diskstats").write_text("")
    for i, backing in enumerate((alpha, copy)):
        (root / f"sys/block/loop{i}/loop").mkdir(parents=True)
        (root / f"sys/block/loop{i}/loop/backing_file").write_text(f"{backing}\n")
    node = Node(load_config(str(root / "config.yaml")), root=root, clock=lambda: NOW)
    with node.store.transaction() as s:
        s.jobs.pop(RECOVERED, None)  # the first load rebuilt the state from the mount
        st = os.stat(alpha)
        s.cached["alpha"] = CachedCopy(Fingerprint.of(st), NOW - 3600, os.stat(copy).st_ino)
        s.jobs["4242"] = Hold(("alpha",), "alice", NOW - 600)
        s.pins["beta"] = Pin(NOW - 60, NOW + 2 * 86400)
        s.failures["gamma"] = Failure(2, NOW + 240, "no space left on the cache filesystem")
    decisions = {
        "alpha": {"action": "keep", "value": 3.5 * 1024**3, "reason": "selected",
                  "heat": 1.5 * MIB, "demand": 1.25 * MIB},
        "beta": {"action": "stage", "value": 1e6, "reason": "pinned", "heat": 0.0,
                 "demand": 0.0},
        "gamma": {"action": "none", "value": -65536.0, "reason": "not worth a copy",
                  "heat": 0.0, "demand": 0.0},
    }  # fmt: skip
    (state / LAST_REPORT).write_text(json.dumps({"at": NOW - 30, "decisions": decisions}))
    events = [
        {"ts": NOW - 3700, "event": "stage-done", "dataset": "alpha", "bytes": 4 * MIB,
         "seconds": 2.5},
        {"ts": NOW - 3600, "event": "mount", "dataset": "alpha",
         "detail": "cached copy mounted over the image"},
        {"ts": NOW - 600, "time": "2027-01-15T07:50:00.000Z", "event": "request",
         "node": "node7", "dataset": "alpha", "job": "4242", "user": "alice"},
        {"ts": NOW - 60, "event": "pin", "dataset": "beta", "expires": NOW + 2 * 86400},
    ]  # fmt: skip
    (state / "events.log").write_text("".join(json.dumps(e) + "\n" for e in events))
    publish_summary(node)  # what a user's status reads, as root's status leaves it


def open_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliTree]:
    """The body of a fixture: `yield from open_tree(tmp_path, capsys, monkeypatch)`."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("COLUMNS", "100")  # --help wraps at the terminal's width
    time.tzset()
    from scratch_stage.host.logs import setup_cli_logging

    setup_cli_logging(0)  # log to this test's stderr, not an earlier test's closed one
    root = tmp_path / "node"
    root.mkdir()
    build_tree(root)
    try:
        yield CliTree(root, capsys)
    finally:
        monkeypatch.undo()
        time.tzset()
