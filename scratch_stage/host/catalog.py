"""The images in datadir: names, fingerprints, squashfs sanity, trust, per-job access.

Whoever can write datadir chooses which bytes a name stands for, so an image is opened
once, relative to a descriptor of datadir and without following a symlink out of it, and
everything (type, owner, mode, header, fingerprint) is checked on that open descriptor:
what was checked is what the caller reads or mounts. Anything wrong with one entry is a
DatasetError (a refusal of that dataset); only datadir itself missing or unlistable is a
NodeFault. The threat model is docs/security.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct

from scratch_stage.core.errors import DatasetError, NodeFault
from scratch_stage.core.records import field, record
from scratch_stage.core.requests import is_valid_name, shorten

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from os import PathLike
    from typing import Callable

SUFFIXES = (".sqfs", ".squashfs")
SQUASHFS_MAGIC = b"hsqs"
# The squashfs 4.0 superblock, 96 bytes (fs/squashfs/squashfs_fs.h in Linux):
# magic, inodes, mkfs_time, block_size, fragments, compression, block_log, flags, no_ids,
# s_major, s_minor, root_inode, bytes_used, id_table_start, xattr_id_table_start,
# inode_table_start, directory_table_start, fragment_table_start, lookup_table_start.
_SUPERBLOCK = struct.Struct("<4sIIIIHHHHHHQQQQQQQQ")
SUPERBLOCK_SIZE = _SUPERBLOCK.size
_COMPRESSORS = frozenset(range(1, 7))  # gzip, lzma, lzo, xz, lz4, zstd
_NO_TABLE = (1 << 64) - 1  # SQUASHFS_INVALID_BLK: an optional table that is absent
_METADATA_SIZE = 8192
# A fingerprint read from a state file written before ctime was recorded: it equals no
# real file's (the kernel sets ctime from its clock; no user can set it), so such a
# cached copy is verified again instead of being trusted.
UNKNOWN_CTIME = -1
# Open flags: never follow a link (checked by hand, one level), never block on a FIFO,
# never become the controlling terminal, never leak into a child.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# An entry that changes between its lstat and its open is looked at again, a few times.
_ATTEMPTS = 3


@record(frozen=True)
class Fingerprint:
    """What identifies one version of an image file: size, mtime, inode and ctime.

    ctime catches a rewrite in place whose mtime was set back (touch -r, rsync -t, cp -p).
    """

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int = UNKNOWN_CTIME

    def to_json(self) -> list[int]:
        return [self.size, self.mtime_ns, self.inode, self.ctime_ns]

    @classmethod
    def from_json(cls, data: object) -> Fingerprint:
        """A fingerprint from its JSON list; the old 3-element form gets UNKNOWN_CTIME."""
        if not (
            isinstance(data, list) and len(data) in (3, 4) and all(type(x) is int for x in data)
        ):
            raise ValueError(f"bad fingerprint {data!r}")
        return cls(*data)

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@record(frozen=True)
class Image:
    """A dataset image on slow storage.

    PATH is the file that was opened. When NAME's file is a symlink to another image in
    datadir, TARGET is that image's dataset name (PATH is its file): access rules apply
    to both names. TARGET is None when NAME is the file itself.
    """

    name: str
    path: str
    fingerprint: Fingerprint
    mode: int
    uid: int
    gid: int
    target: str | None = None

    @property
    def size(self) -> int:
        return self.fingerprint.size

    @property
    def names(self) -> tuple[str, ...]:
        """Every dataset name this image is served under: the name, and its target if any."""
        return (self.name,) if self.target is None else (self.name, self.target)


@record(frozen=True)
class OpenImage:
    """An image and a read-only descriptor of exactly the file that was checked."""

    image: Image
    fd: int


def _default_uids() -> frozenset[int]:
    # Root, and whoever runs this: bytes it could have written itself grant it nothing.
    return frozenset({0, os.geteuid()})


@record(frozen=True)
class Trust:
    """Who may decide the bytes that root mounts: owners and groups allowed to write images.

    An image is served only if its owner is a trusted uid, it is not writable by others,
    and it is group-writable only for a trusted gid (and then has no POSIX ACL that could
    grant write to someone else). Datadir itself must be owned by a trusted uid and be
    writable by nobody else, unless it is sticky (then others may add their own files,
    which are not trusted, but cannot rename or remove anyone else's).
    """

    trusted_uids: frozenset[int] = field(default_factory=_default_uids)
    trusted_gids: frozenset[int] = frozenset({0})

    def file_problem(self, st: os.stat_result, fd: int | None = None) -> str | None:
        """None when the file (ST, open as FD) is trusted, else why not."""
        if st.st_uid not in self.trusted_uids:
            return f"owned by uid {st.st_uid}, not a trusted owner ({self._uids()})"
        if st.st_mode & stat.S_IWOTH:
            return f"writable by any user (mode {stat.S_IMODE(st.st_mode):04o})"
        if st.st_mode & stat.S_IWGRP:
            if st.st_gid not in self.trusted_gids:
                return f"writable by group {st.st_gid}, not a trusted group ({self._gids()})"
            if fd is not None and _has_acl(fd):
                return "group-writable with a POSIX ACL (its mask may grant write to others)"
        return None

    def directory_problem(self, st: os.stat_result) -> str | None:
        """None when datadir (ST) lets no untrusted user rename or remove a trusted image."""
        if st.st_uid not in self.trusted_uids:
            return f"datadir is owned by uid {st.st_uid}, not a trusted owner ({self._uids()})"
        others = st.st_mode & stat.S_IWOTH or (
            st.st_mode & stat.S_IWGRP and st.st_gid not in self.trusted_gids
        )
        if others and not st.st_mode & stat.S_ISVTX:
            return (
                f"datadir is writable by untrusted users (mode {stat.S_IMODE(st.st_mode):04o}) "
                "and not sticky (chmod +t): any image could be renamed over another name"
            )
        return None

    def _uids(self) -> str:
        return "trusted uids " + ",".join(map(str, sorted(self.trusted_uids)))

    def _gids(self) -> str:
        return "trusted gids " + (",".join(map(str, sorted(self.trusted_gids))) or "none")


def _has_acl(fd: int) -> bool:
    try:
        os.getxattr(fd, "system.posix_acl_access")
    except OSError:
        return False  # ENODATA: none; ENOTSUP: the filesystem has no POSIX ACLs
    return True


def check_squashfs_header(header: bytes, file_size: int) -> str | None:
    """None when HEADER starts a plausible squashfs 4.0 image of FILE_SIZE bytes, else why not.

    The checks are those the kernel makes before it trusts a superblock, so an image
    refused here is one that would fail to mount (a node fault) rather than a refusal.
    """
    if len(header) < len(SQUASHFS_MAGIC) or header[:4] != SQUASHFS_MAGIC:
        return "not a squashfs image (no 'hsqs' magic)"
    if len(header) < SUPERBLOCK_SIZE:
        return f"truncated squashfs image ({len(header)} bytes, no whole superblock)"
    (_, inodes, _, block_size, _, compression, block_log, _, no_ids, major, minor, root_inode,
     bytes_used, id_table, xattr_table, inode_table, directory_table, fragment_table,
     lookup_table) = _SUPERBLOCK.unpack_from(header)  # fmt: skip
    if (major, minor) != (4, 0):
        return f"unsupported squashfs version {major}.{minor} (4.0 expected)"
    if compression not in _COMPRESSORS:
        return f"unknown squashfs compressor {compression}"
    if not (4096 <= block_size <= 1 << 20 and block_log < 32 and block_size == 1 << block_log):
        return f"corrupt squashfs superblock (block size {block_size}, log {block_log})"
    if bytes_used > file_size:
        return f"truncated squashfs image ({file_size} of {bytes_used} bytes)"
    optional = (xattr_table, fragment_table, lookup_table)
    tables_fit = (
        SUPERBLOCK_SIZE <= inode_table < directory_table < bytes_used
        and id_table + 8 <= bytes_used
        and all(t == _NO_TABLE or t < bytes_used for t in optional)
    )
    if not tables_fit or inodes == 0 or no_ids == 0 or root_inode & 0xFFFF > _METADATA_SIZE:
        return "corrupt squashfs superblock (its tables do not fit in the image)"
    return None


def read_header(path: str | PathLike[str]) -> bytes:
    """The first bytes of PATH, enough for the squashfs superblock."""
    with open(path, "rb") as f:
        return f.read(SUPERBLOCK_SIZE)


def name_of(filename: str) -> str | None:
    """The dataset name for an image file name, or None if it is not one."""
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            name = filename[: -len(suffix)]
            return name if is_valid_name(name) else None
    return None


class _Missing(Exception):
    """No directory entry of that name (try the next suffix)."""


def _open_datadir(datadir: str | PathLike[str]) -> int:
    """A descriptor of DATADIR; NodeFault if it is gone or not a directory."""
    try:
        return os.open(datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise NodeFault(f"datadir {datadir} is not a directory") from None
    except OSError as e:
        raise NodeFault(f"datadir {datadir} unreachable: {e.strerror}") from None


@contextlib.contextmanager
def opened_image(
    datadir: str | PathLike[str], name: str, *, trust: Trust | None = None
) -> Iterator[OpenImage]:
    """NAME's image, checked, with an O_RDONLY descriptor valid inside the context.

    DatasetError if NAME is unknown or its entry cannot be served (with a one-line reason),
    NodeFault if datadir itself is gone.
    """
    if not is_valid_name(name):
        # The one gate for every caller: '../x' must never reach a path under datadir.
        raise DatasetError(f"not a dataset name: {shorten(name)}")
    dirfd = _open_datadir(datadir)
    try:
        opened = _open_by_name(datadir, dirfd, name, trust or Trust())
    finally:
        os.close(dirfd)
    try:
        yield opened
    finally:
        os.close(opened.fd)


def lookup_image(datadir: str | PathLike[str], name: str, *, trust: Trust | None = None) -> Image:
    """The image for NAME, checked; DatasetError if unknown or bad, NodeFault if datadir is gone."""
    with opened_image(datadir, name, trust=trust) as opened:
        return opened.image


def _open_by_name(datadir: str | PathLike[str], dirfd: int, name: str, trust: Trust) -> OpenImage:
    directory = trust.directory_problem(os.fstat(dirfd))
    for suffix in SUFFIXES:
        try:
            return _open_entry(datadir, dirfd, name + suffix, name, trust, directory)
        except _Missing:
            continue
    raise DatasetError(f"unknown dataset {shorten(name)} (no {name}.sqfs in {datadir})")


def _open_entry(
    datadir: str | PathLike[str],
    dirfd: int,
    filename: str,
    name: str,
    trust: Trust,
    directory: str | None,
) -> OpenImage:
    """The image in entry FILENAME (of dataset NAME), checked on its descriptor."""

    def refuse(problem: str) -> DatasetError:
        return DatasetError(f"dataset {name!r}: {filename}: {problem}")

    fd, st, actual = _open_regular(dirfd, filename, refuse)
    try:
        if directory:
            raise refuse(directory)
        problem = trust.file_problem(st, fd)
        if problem is None:
            try:
                header = os.pread(fd, SUPERBLOCK_SIZE, 0)
            except OSError as e:
                raise refuse(f"cannot read: {e.strerror}") from None
            problem = check_squashfs_header(header, st.st_size)
        if problem:
            raise refuse(problem if actual == filename else f"(link to {actual}) {problem}")
        target = name_of(actual)
        image = Image(
            name, os.path.join(datadir, actual), Fingerprint.of(st), stat.S_IMODE(st.st_mode),
            st.st_uid, st.st_gid, None if target == name else target,
        )  # fmt: skip
    except BaseException:
        os.close(fd)
        raise
    return OpenImage(image, fd)


if TYPE_CHECKING:
    _Refuse = Callable[[str], DatasetError]
_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)  # fmt: skip


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "of an unknown type")


def _open_regular(dirfd: int, filename: str, refuse: _Refuse) -> tuple[int, os.stat_result, str]:
    """(descriptor, fstat, file name) of the regular file at FILENAME or its one-level link.

    Nothing but a regular file is ever opened (a device's open can have side effects); an
    entry that changes between lstat and open is looked at again.
    """
    for _ in range(_ATTEMPTS):
        try:
            st = os.stat(filename, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            raise _Missing from None
        except OSError as e:
            raise refuse(e.strerror or str(e)) from None
        actual = filename
        if stat.S_ISLNK(st.st_mode):
            try:
                link = os.readlink(filename, dir_fd=dirfd)
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOENT):
                    continue  # no longer a symlink: look again
                raise refuse(e.strerror or str(e)) from None
            actual = _link_target(link, refuse)
            try:
                st = os.stat(actual, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                raise refuse(f"dangling symlink to {actual}") from None
            except OSError as e:
                raise refuse(f"symlink to {actual}: {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                raise refuse(f"symlink to {actual}, another symlink (one level is served)")
        if not stat.S_ISREG(st.st_mode):
            where = "" if actual == filename else f"symlink to {actual}, "
            raise refuse(f"{where}{_kind(st.st_mode)}, not a regular file")
        try:
            fd = os.open(actual, _OPEN_FLAGS, dir_fd=dirfd)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                continue  # replaced by a symlink since the lstat: look again
            raise refuse(e.strerror or str(e)) from None
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) == (st.st_dev, st.st_ino):
            return fd, opened, actual
        os.close(fd)  # swapped between lstat and open: look again
    raise refuse("changed while being opened; try again")


def _link_target(link: str, refuse: _Refuse) -> str:
    """The file name a symlink in datadir may point to: an image directly in datadir."""
    if "/" in link:
        raise refuse(
            f"symlink to {shorten(link)}: only a link to an image directly in datadir is served"
        )
    if link.startswith(".") or name_of(link) is None:
        raise refuse(f"symlink to {shorten(link)}, which is not an image file name")
    return link


@record(frozen=True)
class Catalog:
    """Every image in datadir by name, and the files that could not be used."""

    images: Mapping[str, Image]
    problems: Mapping[str, str]


def scan_catalog(datadir: str | PathLike[str], *, trust: Trust | None = None) -> Catalog:
    """Scan DATADIR once; NodeFault if it cannot be listed, any bad entry is a problem."""
    trust = trust or Trust()
    dirfd = _open_datadir(datadir)
    try:
        try:
            filenames = sorted(os.listdir(dirfd))
        except OSError as e:
            raise NodeFault(f"cannot list datadir {datadir}: {e.strerror}") from None
        directory = trust.directory_problem(os.fstat(dirfd))
        images: dict[str, Image] = {}
        problems: dict[str, str] = {}
        seen: dict[str, str] = {}
        for filename in filenames:
            if filename.startswith(".") or not filename.endswith(SUFFIXES):
                continue
            name = name_of(filename)
            if name is None:
                problems[filename] = "file name is not a valid dataset name"
            elif name in seen:
                # Lookup by name takes the first suffix: this file is never served.
                problems[filename] = f"duplicate of {seen[name]}; ignored"
            else:
                seen[name] = filename
                with contextlib.suppress(_Missing):  # removed since the listing
                    _scan_entry(datadir, dirfd, filename, name, trust, directory, images, problems)
    finally:
        os.close(dirfd)
    return Catalog(images, problems)


def _scan_entry(
    datadir: str | PathLike[str], dirfd: int, filename: str, name: str, trust: Trust,
    directory: str | None, images: dict[str, Image], problems: dict[str, str],
) -> None:  # fmt: skip
    try:
        opened = _open_entry(datadir, dirfd, filename, name, trust, directory)
    except DatasetError as e:
        problems[filename] = str(e)
        return
    os.close(opened.fd)
    images[name] = opened.image


def user_gids(user: str, gid: int) -> frozenset[int]:
    """Every group id of USER (primary GID included)."""
    try:
        return frozenset(os.getgrouplist(user, gid))
    except (KeyError, OSError):
        return frozenset([gid])


def group_ids(names: Iterable[str]) -> frozenset[int]:
    """The gids of the named Unix groups that exist."""
    import grp

    gids = set()
    for name in names:
        try:
            gids.add(grp.getgrnam(name).gr_gid)
        except KeyError:
            continue
    return frozenset(gids)


def access_problem(
    image: Image, uid: int, gids: frozenset[int], allowed_groups: Iterable[str] | None
) -> str | None:
    """None when the user (UID, GIDS) may read IMAGE under the configured groups, else why not.

    Only IMAGE's own name's groups are given here; image_access_problem checks a link's
    target too.
    """
    if uid == 0:
        return None
    if allowed_groups is not None and not (gids & group_ids(allowed_groups)):
        return f"dataset {image.name!r} is restricted to groups {', '.join(allowed_groups)}"
    return _mode_problem(image, uid, gids)


def image_access_problem(
    image: Image, uid: int, gids: frozenset[int], access: Mapping[str, Iterable[str]]
) -> str | None:
    """None when the user may read IMAGE under the rules (ACCESS) of every name it has."""
    if uid == 0:
        return None
    for dataset in image.names:
        groups = access.get(dataset)
        if groups is not None and not (gids & group_ids(groups)):
            what = f"dataset {image.name!r}"
            if dataset != image.name:
                what += f" is a link to {dataset!r}, which"
            return f"{what} is restricted to groups {', '.join(groups)}"
    return _mode_problem(image, uid, gids)


def _mode_problem(image: Image, uid: int, gids: frozenset[int]) -> str | None:
    if image.uid == uid:
        readable = image.mode & stat.S_IRUSR
    elif image.gid in gids:
        readable = image.mode & stat.S_IRGRP
    else:
        readable = image.mode & stat.S_IROTH
    return None if readable else f"image {image.path} is not readable by uid {uid}"
