from __future__ import annotations

import grp
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratch_stage.catalog import (
    Fingerprint,
    Image,
    access_problem,
    check_squashfs_header,
    group_ids,
    lookup_image,
    name_of,
    scan_catalog,
    user_gids,
)
from scratch_stage.errors import DatasetError, NodeFault

MKSQUASHFS = shutil.which("mksquashfs")
needs_mksquashfs = pytest.mark.skipif(MKSQUASHFS is None, reason="mksquashfs not installed")


@pytest.fixture(scope="session")
def real_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny squashfs image built by the real mksquashfs (no root needed)."""
    if MKSQUASHFS is None:
        pytest.skip("mksquashfs not installed")
    base = tmp_path_factory.mktemp("image")
    (base / "src").mkdir()
    (base / "src/hello.txt").write_text("hello\n")
    image = base / "tiny.sqfs"
    subprocess.run(
        [MKSQUASHFS, base / "src", image, "-quiet", "-noappend", "-no-progress"], check=True
    )
    return image


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def superblock(bytes_used: int) -> bytes:
    """A squashfs superblock header: magic, ten small fields, then bytes_used at offset 40."""
    header = struct.pack(
        "<4sIIIIHHHHHHQQ", b"hsqs", 1, 0, 4096, 0, 4, 12, 0, 0, 0, 0, 0, bytes_used
    )
    assert len(header) == 48
    return header


def fake_image(path: Path, size: int, bytes_used: int | None = None) -> Path:
    """A file of SIZE bytes with a squashfs header claiming BYTES_USED (default SIZE)."""
    header = superblock(size if bytes_used is None else bytes_used)
    path.write_bytes(header + b"\0" * (size - len(header)))
    return path


@pytest.mark.parametrize("suffix", [".sqfs", ".squashfs"])
def test_lookup_real_image(real_image: Path, datadir: Path, suffix: str) -> None:
    shutil.copy(real_image, datadir / f"tiny{suffix}")
    image = lookup_image(datadir, "tiny")
    assert image.name == "tiny"
    assert image.path == datadir / f"tiny{suffix}"
    st = os.stat(image.path)
    assert image.size == st.st_size == real_image.stat().st_size
    assert image.fingerprint == Fingerprint(st.st_size, st.st_mtime_ns, st.st_ino)
    assert (image.uid, image.gid) == (st.st_uid, st.st_gid)
    assert image.mode == st.st_mode & 0o7777


def test_sqfs_is_preferred_over_squashfs(datadir: Path) -> None:
    fake_image(datadir / "a.squashfs", 4096)
    fake_image(datadir / "a.sqfs", 8192)
    assert lookup_image(datadir, "a").path.name == "a.sqfs"


def test_not_squashfs(datadir: Path) -> None:
    (datadir / "x.sqfs").write_bytes(b"PK\x03\x04" + b"\0" * 200)
    with pytest.raises(DatasetError, match="no 'hsqs' magic"):
        lookup_image(datadir, "x")


def test_empty_file_is_not_squashfs(datadir: Path) -> None:
    (datadir / "x.sqfs").write_bytes(b"")
    with pytest.raises(DatasetError, match="not a squashfs image"):
        lookup_image(datadir, "x")


def test_truncated_image(datadir: Path) -> None:
    fake_image(datadir / "t.sqfs", 4096, bytes_used=1 << 20)
    with pytest.raises(DatasetError, match=r"truncated squashfs image \(4096 of 1048576 bytes\)"):
        lookup_image(datadir, "t")


def test_truncated_real_image(real_image: Path, datadir: Path) -> None:
    data = real_image.read_bytes()
    bytes_used = struct.unpack_from("<Q", data, 40)[0]
    assert bytes_used <= len(data)  # mksquashfs pads the image to 4 KiB
    (datadir / "cut.sqfs").write_bytes(data[: bytes_used - 1])
    with pytest.raises(DatasetError, match="truncated"):
        lookup_image(datadir, "cut")


def test_header_exactly_filling_the_file_is_fine() -> None:
    assert check_squashfs_header(superblock(4096), 4096) is None
    assert check_squashfs_header(superblock(4096), 4095) is not None
    assert check_squashfs_header(superblock(48)[:47], 48) is not None


def test_directory_named_like_an_image(datadir: Path) -> None:
    (datadir / "d.sqfs").mkdir()
    with pytest.raises(DatasetError, match="not a regular file"):
        lookup_image(datadir, "d")


def test_unknown_dataset_one_line(datadir: Path) -> None:
    with pytest.raises(DatasetError) as info:
        lookup_image(datadir, "nosuch")
    message = str(info.value)
    assert "unknown dataset 'nosuch'" in message
    assert str(datadir) in message
    assert "\n" not in message


def test_missing_datadir_is_a_node_fault(tmp_path: Path) -> None:
    with pytest.raises(NodeFault, match="unreachable"):
        lookup_image(tmp_path / "gone", "imagenet")
    with pytest.raises(NodeFault):
        scan_catalog(tmp_path / "gone")


def test_datadir_that_is_a_file_is_a_node_fault(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(NodeFault):
        scan_catalog(tmp_path / "file")


def test_dataset_error_is_not_a_node_fault() -> None:
    # The prolog drains the node only on NodeFault: a bad image must never be one.
    assert not issubclass(DatasetError, NodeFault)


def test_scan_catalog(real_image: Path, datadir: Path) -> None:
    shutil.copy(real_image, datadir / "imagenet.sqfs")
    shutil.copy(real_image, datadir / "imagenet.v2.squashfs")
    shutil.copy(real_image, datadir / "dup.sqfs")
    shutil.copy(real_image, datadir / "dup.squashfs")
    shutil.copy(real_image, datadir / "bad name.sqfs")
    shutil.copy(real_image, datadir / ".hidden.sqfs")
    shutil.copy(real_image, datadir / "-dash.sqfs")
    (datadir / "junk.sqfs").write_text("not an image")
    (datadir / "notes.txt").write_text("ignored")
    (datadir / ".imagenet.1234.building").write_text("half built")
    catalog = scan_catalog(datadir)
    assert sorted(catalog.images) == ["dup", "imagenet", "imagenet.v2"]
    assert catalog.images["dup"].path.name == "dup.sqfs"
    assert catalog.images["imagenet.v2"].path.name == "imagenet.v2.squashfs"
    assert set(catalog.problems) == {"bad name.sqfs", "-dash.sqfs", "dup.squashfs", "junk.sqfs"}
    assert "duplicate of dup.sqfs" in catalog.problems["dup.squashfs"]
    assert "not a valid dataset name" in catalog.problems["bad name.sqfs"]
    assert "hsqs" in catalog.problems["junk.sqfs"]


def test_scan_empty_datadir(datadir: Path) -> None:
    catalog = scan_catalog(datadir)
    assert dict(catalog.images) == {}
    assert dict(catalog.problems) == {}


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("imagenet.sqfs", "imagenet"),
        ("imagenet.v2.sqfs", "imagenet.v2"),
        ("coco.squashfs", "coco"),
        ("x.sqfs.squashfs", "x.sqfs"),
        ("imagenet.SQFS", None),
        ("imagenet", None),
        (".sqfs", None),
        ("a b.sqfs", None),
        ("..sqfs", None),
    ],
)
def test_name_of(filename: str, expected: str | None) -> None:
    assert name_of(filename) == expected


def test_fingerprint_json_round_trip() -> None:
    fingerprint = Fingerprint(123, 1_700_000_000_123_456_789, 42)
    assert Fingerprint.from_json(json.loads(json.dumps(fingerprint.to_json()))) == fingerprint


@given(st.integers(0, 2**63), st.integers(0, 2**63), st.integers(0, 2**64))
def test_fingerprint_round_trip_property(size: int, mtime: int, inode: int) -> None:
    fingerprint = Fingerprint(size, mtime, inode)
    assert Fingerprint.from_json(json.loads(json.dumps(fingerprint.to_json()))) == fingerprint


@pytest.mark.parametrize(
    "data",
    [None, [], [1, 2], [1, 2, 3, 4], [1, 2, "3"], [1, 2.0, 3], [True, 2, 3], {"size": 1}, "1,2,3"],
)
def test_fingerprint_rejects_bad_json(data: object) -> None:
    with pytest.raises(ValueError, match="bad fingerprint"):
        Fingerprint.from_json(data)


def make_image(mode: int, uid: int = 1000, gid: int = 1000, name: str = "ds") -> Image:
    return Image(name, Path(f"/data/{name}.sqfs"), Fingerprint(1, 1, 1), mode, uid, gid)


@pytest.mark.parametrize(
    ("mode", "uid", "gids", "allowed"),
    [
        (0o400, 1000, {1000}, True),  # owner bit
        (0o040, 1000, {1000}, False),  # owner class decides for the owner, as in Unix
        (0o040, 1001, {1000}, True),  # group bit
        (0o040, 1001, {2000}, False),
        (0o004, 1001, {2000}, True),  # other bit
        (0o044, 1001, {1000}, True),
        (0o440, 1001, {2000}, False),
        (0o000, 1000, {1000}, False),
        (0o000, 0, {0}, True),  # root reads anything
    ],
)
def test_access_by_file_mode(mode: int, uid: int, gids: set[int], allowed: bool) -> None:
    problem = access_problem(make_image(mode), uid, frozenset(gids), None)
    assert (problem is None) == allowed
    if problem:
        assert "not readable by uid" in problem


def test_access_by_configured_groups() -> None:
    group = grp.getgrgid(0).gr_name  # exists on every Linux system
    image = make_image(0o444)
    assert access_problem(image, 1000, frozenset({0, 5000}), [group]) is None
    problem = access_problem(image, 1000, frozenset({5000}), [group])
    assert problem is not None
    assert "restricted to groups" in problem
    assert group in problem


def test_configured_groups_and_file_mode_both_apply() -> None:
    group = grp.getgrgid(0).gr_name
    assert access_problem(make_image(0o400), 1001, frozenset({0}), [group]) is not None


def test_unknown_configured_group_refuses_everyone_but_root() -> None:
    image = make_image(0o444)
    assert access_problem(image, 1000, frozenset({1000}), ["no-such-group-xyz"]) is not None
    assert access_problem(image, 0, frozenset({0}), ["no-such-group-xyz"]) is None


def test_empty_group_list_restricts_to_root() -> None:
    image = make_image(0o444)
    assert access_problem(image, 1000, frozenset({1000}), []) is not None
    assert access_problem(image, 0, frozenset(), []) is None


def test_group_ids_skip_unknown_groups() -> None:
    root_group = grp.getgrgid(0).gr_name
    assert group_ids([root_group, "no-such-group-xyz"]) == frozenset({0})


def test_user_gids() -> None:
    assert 0 in user_gids("root", 0)
    assert user_gids("no-such-user-xyz", 4242) == frozenset({4242})


def test_access_with_real_file_modes(real_image: Path, datadir: Path) -> None:
    path = datadir / "private.sqfs"
    shutil.copy(real_image, path)
    os.chmod(path, 0o600)
    image = lookup_image(datadir, "private")
    other_uid = image.uid + 1
    assert access_problem(image, other_uid, frozenset({image.gid}), None) is not None
    os.chmod(path, 0o640)
    image = lookup_image(datadir, "private")
    assert access_problem(image, other_uid, frozenset({image.gid}), None) is None
    assert access_problem(image, other_uid, frozenset({image.gid + 1}), None) is not None


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "", "x" * 200, "a\nb"])
def test_lookup_refuses_non_names_before_touching_the_filesystem(
    tmp_path: Path, datadir: Path, name: str
) -> None:
    fake_image(tmp_path / "x.sqfs", 4096)  # reachable as datadir/../x.sqfs
    with pytest.raises(DatasetError) as info:
        lookup_image(datadir, name)
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 120
