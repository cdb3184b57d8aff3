from __future__ import annotations

import grp
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratch_stage.core.errors import DatasetError, NodeFault
from scratch_stage.host.catalog import (
    UNKNOWN_CTIME,
    Fingerprint,
    Image,
    Trust,
    access_problem,
    check_squashfs_header,
    group_ids,
    image_access_problem,
    lookup_image,
    name_of,
    opened_image,
    scan_catalog,
    user_gids,
)

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


NO_TABLE = (1 << 64) - 1


def superblock(bytes_used: int, **fields: int) -> bytes:
    """A plausible squashfs 4.0 superblock (96 bytes) for an image of BYTES_USED bytes.

    The tables sit at the end of the image, in mksquashfs's order; FIELDS override any.
    """
    values = {
        "inodes": 2, "mkfs_time": 0, "block_size": 131072, "fragments": 0, "compression": 1,
        "block_log": 17, "flags": 0, "no_ids": 1, "major": 4, "minor": 0, "root_inode": 32,
        "bytes_used": bytes_used, "id_table": bytes_used - 8, "xattr_table": NO_TABLE,
        "inode_table": bytes_used - 64, "directory_table": bytes_used - 32,
        "fragment_table": NO_TABLE, "lookup_table": NO_TABLE, **fields,
    }  # fmt: skip
    header = struct.pack("<4sIIIIHHHHHHQQQQQQQQ", b"hsqs", *values.values())
    assert len(header) == 96
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
    assert image.path == str(datadir / f"tiny{suffix}")
    st = os.stat(image.path)
    assert image.size == st.st_size == real_image.stat().st_size
    assert image.fingerprint == Fingerprint(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    assert image.target is None
    assert (image.uid, image.gid) == (st.st_uid, st.st_gid)
    assert image.mode == st.st_mode & 0o7777


def test_sqfs_is_preferred_over_squashfs(datadir: Path) -> None:
    fake_image(datadir / "a.squashfs", 4096)
    fake_image(datadir / "a.sqfs", 8192)
    assert os.path.basename(lookup_image(datadir, "a").path) == "a.sqfs"


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
    assert check_squashfs_header(superblock(4096)[:95], 4096) is not None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"major": 3}, "unsupported squashfs version 3.0"),
        ({"minor": 1}, "unsupported squashfs version 4.1"),
        ({"compression": 0}, "unknown squashfs compressor 0"),
        ({"compression": 7}, "unknown squashfs compressor 7"),
        ({"block_size": 2048, "block_log": 11}, "block size 2048"),
        ({"block_size": 2 << 20, "block_log": 21}, "block size"),
        ({"block_log": 16}, "block size 131072, log 16"),
        ({"block_log": 40}, "log 40"),
        ({"inode_table": 95}, "tables do not fit"),
        ({"directory_table": 4096}, "tables do not fit"),
        ({"directory_table": 4096 - 64}, "tables do not fit"),  # not after the inode table
        ({"id_table": 4090}, "tables do not fit"),
        ({"fragment_table": 4096}, "tables do not fit"),
        ({"inodes": 0}, "tables do not fit"),
        ({"no_ids": 0}, "tables do not fit"),
        ({"root_inode": 8193}, "tables do not fit"),
    ],
)
def test_implausible_superblocks_are_refused(fields: dict[str, int], expected: str) -> None:
    problem = check_squashfs_header(superblock(4096, **fields), 4096)
    assert problem is not None and expected in problem


def test_a_header_alone_is_not_an_image() -> None:
    """The superblock of a real image, cut to itself: it would fail to mount (a node fault)."""
    header = superblock(4096)
    assert check_squashfs_header(header, len(header)) is not None  # bytes_used says 4096
    alone = superblock(96, inode_table=96, directory_table=96, id_table=88)
    assert check_squashfs_header(alone, 96) == (
        "corrupt squashfs superblock (its tables do not fit in the image)"
    )


@pytest.mark.parametrize("compression", ["gzip", "lzo", "xz", "lz4", "zstd"])
@pytest.mark.parametrize("options", [[], ["-b", "4K", "-no-fragments"], ["-noI", "-noD", "-nopad"]])
def test_real_images_pass_the_header_check(
    tmp_path: Path, compression: str, options: list[str]
) -> None:
    if MKSQUASHFS is None:
        pytest.skip("mksquashfs not installed")
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a").write_bytes(os.urandom(20000))
    image = tmp_path / "x.sqfs"
    argv = [MKSQUASHFS, tmp_path / "src", image, "-quiet", "-no-progress", "-comp", compression]
    subprocess.run([*argv, *options], check=True)
    data = image.read_bytes()
    assert check_squashfs_header(data[:96], len(data)) is None


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
    assert os.path.basename(catalog.images["dup"].path) == "dup.sqfs"
    assert os.path.basename(catalog.images["imagenet.v2"].path) == "imagenet.v2.squashfs"
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
    fingerprint = Fingerprint(123, 1_700_000_000_123_456_789, 42, 1_700_000_001_000_000_000)
    assert fingerprint.to_json() == [123, 1_700_000_000_123_456_789, 42, 1_700_000_001_000_000_000]
    assert Fingerprint.from_json(json.loads(json.dumps(fingerprint.to_json()))) == fingerprint


@given(st.integers(0, 2**63), st.integers(0, 2**63), st.integers(0, 2**64), st.integers(0, 2**63))
def test_fingerprint_round_trip_property(size: int, mtime: int, inode: int, ctime: int) -> None:
    fingerprint = Fingerprint(size, mtime, inode, ctime)
    assert Fingerprint.from_json(json.loads(json.dumps(fingerprint.to_json()))) == fingerprint


def test_old_three_element_fingerprint_never_matches_a_real_file(tmp_path: Path) -> None:
    """A state file written before ctime was recorded: its copies are verified again."""
    path = tmp_path / "x.sqfs"
    path.write_bytes(b"x")
    st = os.stat(path)
    old = Fingerprint.from_json([st.st_size, st.st_mtime_ns, st.st_ino])
    assert old.ctime_ns == UNKNOWN_CTIME
    assert (old.size, old.mtime_ns, old.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert old != Fingerprint.of(st)


def test_rewrite_in_place_with_mtime_restored_changes_the_fingerprint(datadir: Path) -> None:
    path = fake_image(datadir / "a.sqfs", 4096)
    before = lookup_image(datadir, "a").fingerprint
    st = os.stat(path)
    time.sleep(0.01)  # ctime comes from the kernel clock: let it move
    with open(path, "r+b") as f:
        f.seek(2048)
        f.write(b"tampered")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, rsync -t, touch -r do
    after = lookup_image(datadir, "a").fingerprint
    assert (after.size, after.mtime_ns, after.inode) == (before.size, before.mtime_ns, before.inode)
    assert after != before


@pytest.mark.parametrize(
    "data",
    [None, [], [1, 2], [1, 2, 3, 4, 5], [1, 2, "3"], [1, 2.0, 3], [True, 2, 3], [1, 2, 3, None],
     {"size": 1}, "1,2,3"],
)  # fmt: skip
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


# --- open once, check the descriptor ---


def test_opened_image_gives_a_descriptor_of_the_checked_file(datadir: Path) -> None:
    path = fake_image(datadir / "a.sqfs", 8192)
    with opened_image(datadir, "a") as opened:
        st = os.fstat(opened.fd)
        assert Fingerprint.of(st) == opened.image.fingerprint
        assert os.pread(opened.fd, 96, 0) == path.read_bytes()[:96]
        os.unlink(path)  # replaced or removed now: the descriptor still reads what was checked
        assert os.pread(opened.fd, 4, 0) == b"hsqs"
        fd = opened.fd
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with the context


def test_opened_image_closes_its_descriptor_on_refusal(datadir: Path) -> None:
    (datadir / "x.sqfs").write_bytes(b"not an image" * 10)
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(DatasetError):
            lookup_image(datadir, "x")
    assert set(os.listdir("/proc/self/fd")) == before


def test_alias_symlink_records_its_target(datadir: Path) -> None:
    fake_image(datadir / "secret.sqfs", 4096)
    os.symlink("secret.sqfs", datadir / "alias.sqfs")
    image = lookup_image(datadir, "alias")
    assert (image.name, image.target, image.names) == ("alias", "secret", ("alias", "secret"))
    assert image.path == str(datadir / "secret.sqfs")
    assert image.fingerprint == lookup_image(datadir, "secret").fingerprint
    assert lookup_image(datadir, "secret").names == ("secret",)


def test_link_between_the_suffixes_of_one_name_is_no_alias(datadir: Path) -> None:
    fake_image(datadir / "a.squashfs", 4096)
    os.symlink("a.squashfs", datadir / "a.sqfs")
    image = lookup_image(datadir, "a")
    assert (image.target, os.path.basename(image.path)) == (None, "a.squashfs")


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        ("evil.sqfs", "another symlink"),  # a loop
        ("ping.sqfs", "another symlink"),  # two levels: evil -> ping -> evil
        ("real.sqfs/x.sqfs", "directly in datadir"),  # through a non-directory
        ("../outside.sqfs", "directly in datadir"),
        ("{outside}", "directly in datadir"),  # an absolute path to a real image
        ("/proc/sys/vm/compact_memory", "directly in datadir"),  # root can stat, not open
        ("sub/inner.sqfs", "directly in datadir"),
        ("notes.txt", "not an image file name"),
        (".hidden.sqfs", "not an image file name"),
        ("bad name.sqfs", "not an image file name"),
        ("\x1b[2Jx.sqfs", "not an image file name"),
        ("missing.sqfs", "dangling symlink to missing.sqfs"),
        ("dir.sqfs", "a directory, not a regular file"),
        ("fifo.sqfs", "a FIFO, not a regular file"),
    ],
)
def test_symlink_policy(tmp_path: Path, datadir: Path, link: str, reason: str) -> None:
    fake_image(datadir / "real.sqfs", 4096)
    fake_image(tmp_path / "outside.sqfs", 4096)
    (datadir / "sub").mkdir()
    fake_image(datadir / "sub/inner.sqfs", 4096)
    (datadir / "notes.txt").write_bytes(superblock(4096) + bytes(4000))
    fake_image(datadir / ".hidden.sqfs", 4096)
    (datadir / "dir.sqfs").mkdir()
    os.mkfifo(datadir / "fifo.sqfs")
    os.symlink("evil.sqfs", datadir / "ping.sqfs")
    os.symlink(link.format(outside=tmp_path / "outside.sqfs"), datadir / "evil.sqfs")

    with pytest.raises(DatasetError) as info:
        lookup_image(datadir, "evil")

    message = str(info.value)
    assert message.startswith("dataset 'evil': evil.sqfs: ")
    assert reason in message
    assert "\n" not in message and "\x1b" not in message
    catalog = scan_catalog(datadir)
    assert catalog.problems["evil.sqfs"] == message
    assert "real" in catalog.images


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "chardev"])
def test_special_files_are_refused_without_being_opened(datadir: Path, kind: str) -> None:
    path = datadir / "x.sqfs"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block forever
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        os.mknod(path, 0o600 | stat.S_IFSOCK)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod of a device needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    expected = {"fifo": "a FIFO", "directory": "a directory", "socket": "a socket",
                "chardev": "a character device"}[kind]  # fmt: skip
    with pytest.raises(DatasetError, match=f"x.sqfs: {expected}, not a regular file"):
        lookup_image(datadir, "x")


def test_huge_sparse_file_is_refused_quickly(datadir: Path) -> None:
    with open(datadir / "sparse.sqfs", "wb") as f:
        f.truncate(1 << 40)
    started = time.monotonic()
    with pytest.raises(DatasetError, match="no 'hsqs' magic"):
        lookup_image(datadir, "sparse")
    assert time.monotonic() - started < 1.0


def test_scan_lists_every_bad_entry_and_keeps_going(datadir: Path) -> None:
    fake_image(datadir / "good.sqfs", 4096)
    os.symlink("loop.sqfs", datadir / "loop.sqfs")
    os.symlink("good.sqfs/x.sqfs", datadir / "notdir.sqfs")
    os.mkfifo(datadir / "fifo.sqfs")
    (datadir / "headeronly.sqfs").write_bytes(superblock(4096))
    fake_image(datadir / "writable.sqfs", 4096).chmod(0o666)
    (datadir / "\x1b[31mred.sqfs").write_bytes(b"")

    catalog = scan_catalog(datadir)

    assert list(catalog.images) == ["good"]
    assert set(catalog.problems) == {
        "loop.sqfs", "notdir.sqfs", "fifo.sqfs", "headeronly.sqfs", "writable.sqfs",
        "\x1b[31mred.sqfs",
    }  # fmt: skip
    assert all("\n" not in why for why in catalog.problems.values())


# --- trust: root mounts only bytes a trusted owner controls ---


def untrusting(st: os.stat_result) -> Trust:
    """A trust policy under which the owner of ST (this test's user) is not trusted."""
    return Trust(trusted_uids=frozenset({st.st_uid + 1}))


def test_default_trust_is_root_and_the_caller(datadir: Path) -> None:
    assert Trust().trusted_uids == {0, os.geteuid()}
    assert Trust().trusted_gids == {0}
    fake_image(datadir / "a.sqfs", 4096)
    assert lookup_image(datadir, "a").uid == os.geteuid()


def test_image_of_an_untrusted_owner_is_refused(datadir: Path) -> None:
    path = fake_image(datadir / "a.sqfs", 4096)
    st = os.stat(path)
    trust = Trust(trusted_uids=frozenset({st.st_uid, st.st_uid + 1}))
    lookup_image(datadir, "a", trust=trust)
    os.chmod(datadir, 0o700)  # the datadir's owner is trusted below too
    mine = Trust(trusted_uids=frozenset({st.st_uid + 1}))
    with pytest.raises(DatasetError, match=rf"owned by uid {st.st_uid}, not a trusted owner"):
        lookup_image(datadir, "a", trust=mine)


@pytest.mark.parametrize(
    ("mode", "trusted_gids", "problem"),
    [
        (0o644, frozenset(), None),
        (0o444, frozenset(), None),
        (0o666, frozenset(), "writable by any user (mode 0666)"),
        (0o646, None, "writable by any user (mode 0646)"),
        (0o664, frozenset(), "writable by group"),
        (0o664, None, None),  # None: the file's own group is trusted
    ],
)
def test_writable_images_are_refused(
    datadir: Path, mode: int, trusted_gids: frozenset[int] | None, problem: str | None
) -> None:
    path = fake_image(datadir / "a.sqfs", 4096)
    path.chmod(mode)
    gids = frozenset({path.stat().st_gid}) if trusted_gids is None else trusted_gids
    trust = Trust(trusted_gids=gids)
    if problem is None:
        assert lookup_image(datadir, "a", trust=trust).mode == mode
    else:
        with pytest.raises(DatasetError, match=re.escape(problem)):
            lookup_image(datadir, "a", trust=trust)
        assert problem in scan_catalog(datadir, trust=trust).problems["a.sqfs"]


@pytest.mark.parametrize(
    ("mode", "served"),
    [(0o755, True), (0o775, False), (0o777, False), (0o1777, True), (0o1775, True)],
)
def test_datadir_anyone_may_rename_in_serves_nothing(
    datadir: Path, mode: int, served: bool
) -> None:
    fake_image(datadir / "a.sqfs", 4096)
    datadir.chmod(mode)
    trust = Trust(trusted_gids=frozenset())
    if served:
        assert lookup_image(datadir, "a", trust=trust).name == "a"
        assert list(scan_catalog(datadir, trust=trust).images) == ["a"]
    else:
        with pytest.raises(DatasetError, match=r"not sticky \(chmod \+t\)"):
            lookup_image(datadir, "a", trust=trust)
        assert "not sticky" in scan_catalog(datadir, trust=trust).problems["a.sqfs"]
    with pytest.raises(DatasetError, match="unknown dataset"):
        lookup_image(datadir, "nosuch", trust=trust)  # unknown stays unknown


def test_datadir_of_an_untrusted_owner_serves_nothing(datadir: Path) -> None:
    fake_image(datadir / "a.sqfs", 4096)
    st = os.stat(datadir)
    trust = Trust(trusted_uids=frozenset({st.st_uid + 1}))
    with pytest.raises(DatasetError, match=f"datadir is owned by uid {st.st_uid}"):
        lookup_image(datadir, "a", trust=trust)


# --- access applies to every name an image is served under ---


@pytest.mark.parametrize(
    ("access", "allowed"),
    [
        ({}, True),
        ({"secret": ["wheel-xyz"]}, False),  # the target's rule applies to the alias
        ({"alias": ["wheel-xyz"]}, False),
        ({"secret": ["{member}"]}, True),
        ({"secret": ["{member}"], "alias": ["wheel-xyz"]}, False),
        ({"secret": ["{member}"], "alias": ["{member}"]}, True),
    ],
)
def test_image_access_applies_both_names(access: dict[str, list[str]], allowed: bool) -> None:
    member = grp.getgrgid(0).gr_name
    rules = {k: [g.format(member=member) for g in v] for k, v in access.items()}
    image = Image("alias", Path("/d/secret.sqfs"), Fingerprint(1, 1, 1, 1), 0o644, 0, 0, "secret")
    problem = image_access_problem(image, 1000, frozenset({0}), rules)
    assert (problem is None) is allowed
    if "secret" in rules and not allowed and "alias" not in rules:
        assert problem == (
            "dataset 'alias' is a link to 'secret', which is restricted to groups wheel-xyz"
        )
    assert image_access_problem(image, 0, frozenset({0}), rules) is None  # root reads all


def test_image_access_checks_the_file_mode_too() -> None:
    image = Image("alias", Path("/d/private.sqfs"), Fingerprint(1, 1, 1, 1), 0o600, 0, 0, "private")
    problem = image_access_problem(image, 1000, frozenset({1000}), {})
    assert problem == "image /d/private.sqfs is not readable by uid 1000"
