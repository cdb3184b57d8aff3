from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from scratch_stage.agent.node import Node
from scratch_stage.agent.reconcile import settle
from scratch_stage.agent.recovery import process_start, rebuild_state
from scratch_stage.core.layout import partial_name
from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.config import Config
from scratch_stage.host.events import EVENTS_FILE
from scratch_stage.host.state import RECOVERED, CachedCopy, Copy, NodeState

DATA = Path(__file__).parent.parent / "data"


def proc_stat(pid: int, comm: str, starttime: str) -> str:
    # proc(5): pid (comm) state ppid ... field 22 is starttime.
    after = ["S"] + [str(n) for n in range(4, 22)] + [starttime] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(after) + "\n"


def image_bytes(size: int) -> bytes:
    # A plausible squashfs 4.0 superblock (version, block size, tables inside the image).
    header = struct.pack(
        "<4sIIIIHHHHHHQQQQQQQQ", b"hsqs", 1, 0, 4096, 0, 4, 12, 0, 1, 4, 0, 0, size,
        size - 8, 2**64 - 1, size - 64, size - 32, 2**64 - 1, 2**64 - 1,
    )  # fmt: skip
    return header + b"\0" * (size - len(header))


@pytest.fixture
def node(tmp_path: Path) -> Node:
    for d in ["data", "cache", "state", "proc/self", "datasets"]:
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("")
    config = Config(
        datadir=tmp_path / "data",
        cachedir=tmp_path / "cache",
        mountdir=tmp_path / "datasets",
        statedir=tmp_path / "state",
    )
    return Node(config, root=tmp_path, clock=lambda: 500.0)


@pytest.mark.parametrize("comm", ["python3", "a b", "evil) 1 2 3 (x", ")"])
def test_process_start_survives_any_command_name(tmp_path: Path, comm: str) -> None:
    (tmp_path / "proc/77").mkdir(parents=True)
    (tmp_path / "proc/77/stat").write_text(proc_stat(77, comm, "987654"))
    assert process_start(tmp_path, 77) == "987654"


def test_process_start_of_a_missing_process(tmp_path: Path) -> None:
    assert process_start(tmp_path, 424242) is None


def test_process_start_of_this_process_is_stable() -> None:
    first = process_start(Path("/"), os.getpid())
    assert first is not None and first.isdigit()
    assert process_start(Path("/"), os.getpid()) == first


def test_partial_name() -> None:
    assert partial_name("imagenet.v2", 123) == "imagenet.v2.123.part"


def test_rebuild_keeps_matching_copies_only(node: Node) -> None:
    data, cache = node.config.datadir, node.config.cachedir
    (data / "good.sqfs").write_bytes(image_bytes(4096))
    (data / "stale.sqfs").write_bytes(image_bytes(4096))
    for name in ["good", "stale", "orphan"]:
        (cache / f"{name}.sqfs").write_bytes(image_bytes(4096))
    good = os.stat(data / "good.sqfs")
    os.utime(cache / "good.sqfs", ns=(good.st_mtime_ns, good.st_mtime_ns))
    os.utime(cache / "stale.sqfs", ns=(1, 1))  # the image was replaced since
    state = rebuild_state(node)
    assert set(state.cached) == {"good"}
    copy = node.config.cachedir / "good.sqfs"
    assert state.cached["good"] == CachedCopy(Fingerprint.of(good), 500.0, copy.stat().st_ino)
    assert state.jobs == {}


def test_rebuild_counts_mounted_datasets_as_held(node: Node, tmp_path: Path) -> None:
    mountdir = str(node.mountdir)
    recorded = (DATA / "mountinfo-stacked.txt").read_text()
    (tmp_path / "proc/self/mountinfo").write_text(
        recorded.replace("/tmp/ss-record.fxd7/datasets", mountdir)
    )
    state = rebuild_state(node)
    assert state.jobs[RECOVERED].datasets == ("imagenet", "with space")
    assert state.holders("imagenet") == [RECOVERED]
    events = [json.loads(line) for line in (node.config.statedir / EVENTS_FILE).open()]
    assert events[-1]["event"] == "recovered"
    assert events[-1]["mounted"] == ["imagenet", "with space"]


def test_settle_reaps_dead_copies(node: Node, tmp_path: Path) -> None:
    (tmp_path / "proc/10").mkdir()
    (tmp_path / "proc/10/stat").write_text(proc_stat(10, "scratch-stage", "111"))
    (tmp_path / "proc/11").mkdir()
    (tmp_path / "proc/11/stat").write_text(proc_stat(11, "scratch-stage", "999"))  # pid reused
    fp = Fingerprint(4096, 1, 1)
    state = NodeState(
        staging={
            "alive": Copy(10, "111", fp, 0.0),
            "reused": Copy(11, "222", fp, 0.0),
            "gone": Copy(12, "333", fp, 0.0),
        }
    )
    os.mkdir(node.partial_dir)
    for name in [partial_name("alive", 10), partial_name("gone", 12), "stray.99.part"]:
        (Path(node.partial_dir) / name).write_bytes(b"x")
    (node.config.cachedir / "reused.sqfs").write_bytes(b"renamed but never recorded")
    notes = settle(node, state, full=True)
    assert sorted(n.split(":")[0] for n in notes if "dead process" in n) == ["gone", "reused"]
    assert set(state.staging) == {"alive"}
    assert os.listdir(node.partial_dir) == [partial_name("alive", 10)]
    assert not (node.config.cachedir / "reused.sqfs").exists()


def test_settle_keeps_a_recorded_cached_copy(node: Node) -> None:
    fp = Fingerprint(4096, 1, 1)
    state = NodeState(
        cached={"a": CachedCopy(fp, 0.0)}, staging={"a": Copy(12, "333", Fingerprint(5, 5, 5), 0)}
    )
    (node.config.cachedir / "a.sqfs").write_bytes(b"v" * 4096)  # the verified copy
    assert settle(node, state, full=True) == ["a: copy by dead process 12 dropped"]
    assert (node.config.cachedir / "a.sqfs").exists()
    assert state.cached == {"a": CachedCopy(fp, 0.0)}


def test_settle_drops_a_cached_record_whose_file_is_gone(node: Node) -> None:
    state = NodeState(cached={"a": CachedCopy(Fingerprint(4096, 1, 1), 0.0)})
    assert settle(node, state) == ["a: cached copy is gone from disk; record dropped"]
    assert state.cached == {}
