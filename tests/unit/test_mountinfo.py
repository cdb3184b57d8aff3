from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratch_stage.host.mountinfo import (
    Layer,
    loop_name,
    parse_mountinfo,
    parse_mountinfo_line,
    read_all_stacks,
    read_backing_file,
    read_stack,
    stack_at,
    unescape,
)

DATA = Path(__file__).parent.parent / "data"
RECORDED = (DATA / "mountinfo-stacked.txt").read_text()
BACKING = json.loads((DATA / "sysfs-loop-stacked.json").read_text())
# Where the recording was made (see tests/data/README.md).
MOUNTDIR = "/tmp/ss-record.fxd7/datasets"
IMAGENET = f"{MOUNTDIR}/imagenet"


def fake_root(tmp_path: Path, mountinfo: str, backing: dict[str, str]) -> Path:
    """ROOT/proc/self/mountinfo and ROOT/sys/block/loopN/loop/backing_file, as the kernel has."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for loop, path in backing.items():
        (tmp_path / "sys/block" / loop / "loop").mkdir(parents=True)
        (tmp_path / "sys/block" / loop / "loop/backing_file").write_text(path)
    return tmp_path


def test_parse_recorded_file() -> None:
    entries = parse_mountinfo(RECORDED)
    assert len(entries) == len(RECORDED.splitlines())
    squashfs = [e for e in entries if e.fstype == "squashfs"]
    assert [e.source for e in squashfs] == ["/dev/loop0", "/dev/loop1", "/dev/loop2"]
    root = next(e for e in entries if e.mount_point == "/")
    assert root.fstype == "ext4"
    assert root.parent_id == 1


def test_recorded_mounts_have_the_product_options() -> None:
    for entry in parse_mountinfo(RECORDED):
        if entry.fstype == "squashfs":
            assert {"ro", "nosuid", "nodev"} <= set(entry.options.split(","))


def test_stack_at_is_bottom_first_for_a_mount_over() -> None:
    stack = stack_at(parse_mountinfo(RECORDED), IMAGENET)
    assert [(e.mount_id, e.source) for e in stack] == [(42, "/dev/loop0"), (43, "/dev/loop1")]
    assert stack[1].parent_id == stack[0].mount_id


def test_stack_order_does_not_depend_on_line_order() -> None:
    entries = parse_mountinfo(RECORDED)
    stack = stack_at(list(reversed(entries)), IMAGENET)
    assert [e.mount_id for e in stack] == [42, 43]


def test_stack_of_three() -> None:
    text = (
        "50 27 7:0 / /m ro - squashfs /dev/loop0 ro\n"
        "52 51 7:2 / /m ro - squashfs /dev/loop2 ro\n"
        "51 50 7:1 / /m ro - squashfs /dev/loop1 ro\n"
    )
    assert [e.mount_id for e in stack_at(parse_mountinfo(text), "/m")] == [50, 51, 52]


def test_stack_at_unmounted_point_is_empty() -> None:
    assert stack_at(parse_mountinfo(RECORDED), f"{MOUNTDIR}/coco") == []
    # A prefix of a mountpoint is not that mountpoint.
    assert stack_at(parse_mountinfo(RECORDED), f"{MOUNTDIR}/image") == []


def test_space_in_mountpoint_is_unescaped() -> None:
    assert "with\\040space" in RECORDED
    stack = stack_at(parse_mountinfo(RECORDED), f"{MOUNTDIR}/with space")
    assert [e.source for e in stack] == ["/dev/loop2"]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("a\\040b", "a b"),
        ("tab\\011here", "tab\there"),
        ("new\\012line", "new\nline"),
        ("back\\134slash", "back\\slash"),
        ("\\040\\040", "  "),
        ("plain", "plain"),
        ("not\\04", "not\\04"),
        ("not\\999", "not\\999"),
    ],
)
def test_unescape(field: str, expected: str) -> None:
    assert unescape(field) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "42 27 7:0 / /mnt ro",  # no separator
        "42 27 7:0 / /mnt ro - squashfs",  # no source
        "x 27 7:0 / /mnt ro - squashfs /dev/loop0 ro",  # mount id not a number
        "42 27 7:0 / - squashfs /dev/loop0 ro",  # too few fields before the separator
    ],
)
def test_malformed_lines_are_skipped(line: str) -> None:
    assert parse_mountinfo_line(line) is None
    text = f"{line}\n42 27 7:0 / /mnt ro - squashfs /dev/loop0 ro\n"
    assert [e.mount_id for e in parse_mountinfo(text)] == [42]


def test_optional_fields_are_skipped() -> None:
    line = "42 27 7:0 / /mnt ro,relatime shared:5 master:1 - squashfs /dev/loop0 ro"
    entry = parse_mountinfo_line(line)
    assert entry is not None
    assert (entry.options, entry.fstype, entry.source) == ("ro,relatime", "squashfs", "/dev/loop0")


def test_source_with_space_is_unescaped() -> None:
    entry = parse_mountinfo_line("42 27 0:5 / /mnt rw - fuse my\\040src rw")
    assert entry is not None
    assert entry.source == "my src"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/dev/loop0", "loop0"),
        ("/dev/loop12", "loop12"),
        ("loop3", "loop3"),
        ("/dev/loop", None),
        ("/dev/loop-control", None),
        ("/dev/sda1", None),
        ("tmpfs", None),
    ],
)
def test_loop_name(source: str, expected: str | None) -> None:
    assert loop_name(source) == expected


def test_layer_deleted_backing_file() -> None:
    layer = Layer(42, "/dev/loop0", "squashfs", "/data/imagenet.sqfs (deleted)")
    assert layer.deleted
    assert layer.backing_path == "/data/imagenet.sqfs"


def test_layer_live_backing_file() -> None:
    layer = Layer(42, "/dev/loop0", "squashfs", "/data/imagenet.sqfs")
    assert not layer.deleted
    assert layer.backing_path == "/data/imagenet.sqfs"


def test_layer_without_loop() -> None:
    layer = Layer(42, "tmpfs", "tmpfs", None)
    assert not layer.deleted
    assert layer.backing_path is None


def test_read_stack_from_fake_root(tmp_path: Path) -> None:
    root = fake_root(tmp_path, RECORDED, BACKING)
    layers = read_stack(root, IMAGENET)
    assert [la.backing_path for la in layers] == [
        "/tmp/ss-record.fxd7/imagenet.sqfs",
        "/tmp/ss-record.fxd7/cache-imagenet.sqfs",
    ]
    assert [la.mount_id for la in layers] == [42, 43]
    assert not any(la.deleted for la in layers)


def test_read_stack_with_deleted_backing(tmp_path: Path) -> None:
    backing = dict(BACKING, loop0="/tmp/ss-record.fxd7/imagenet.sqfs (deleted)\n")
    root = fake_root(tmp_path, RECORDED, backing)
    bottom, top = read_stack(root, IMAGENET)
    assert bottom.deleted
    assert bottom.backing_path == "/tmp/ss-record.fxd7/imagenet.sqfs"
    assert not top.deleted


def test_read_stack_loop_without_sysfs_entry(tmp_path: Path) -> None:
    root = fake_root(tmp_path, RECORDED, {})
    layers = read_stack(root, IMAGENET)
    assert [la.backing for la in layers] == [None, None]


def test_read_backing_file_keeps_spaces(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "", BACKING)
    assert read_backing_file(root, "loop2") == "/tmp/ss-record.fxd7/coco v1.sqfs"
    assert read_backing_file(root, "loop9") is None


def test_read_all_stacks_from_fake_root(tmp_path: Path) -> None:
    root = fake_root(tmp_path, RECORDED, BACKING)
    stacks = read_all_stacks(root, MOUNTDIR)
    assert sorted(stacks) == ["imagenet", "with space"]
    assert len(stacks["imagenet"]) == 2
    assert [la.backing_path for la in stacks["with space"]] == ["/tmp/ss-record.fxd7/coco v1.sqfs"]
    assert read_all_stacks(root, MOUNTDIR + "/") == stacks


def test_read_all_stacks_ignores_nested_and_sibling_mounts(tmp_path: Path) -> None:
    text = RECORDED + (
        "60 42 0:40 / /tmp/ss-record.fxd7/datasets/imagenet/sub rw - tmpfs tmpfs rw\n"
        "61 27 0:41 / /tmp/ss-record.fxd7/datasets-other/x rw - tmpfs tmpfs rw\n"
    )
    root = fake_root(tmp_path, text, BACKING)
    assert sorted(read_all_stacks(root, MOUNTDIR)) == ["imagenet", "with space"]


def test_read_all_stacks_nothing_mounted(tmp_path: Path) -> None:
    root = fake_root(tmp_path, RECORDED, BACKING)
    assert read_all_stacks(root, "/datasets") == {}
