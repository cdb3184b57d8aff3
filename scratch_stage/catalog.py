"""The images in datadir: names, fingerprints, squashfs sanity, per-job access."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from scratch_stage.errors import DatasetError, NodeFault
from scratch_stage.requests import is_valid_name, shorten

SUFFIXES = (".sqfs", ".squashfs")
SQUASHFS_MAGIC = b"hsqs"
# Superblock layout: https://dr-emann.github.io/squashfs/ (bytes_used is a u64 at offset 40).
_SUPERBLOCK = struct.Struct("<4sIIIIHHHHHHQQ")


@dataclass(frozen=True)
class Fingerprint:
    """What identifies one version of an image file: size, mtime and inode."""

    size: int
    mtime_ns: int
    inode: int

    def to_json(self) -> list[int]:
        return [self.size, self.mtime_ns, self.inode]

    @classmethod
    def from_json(cls, data: object) -> Fingerprint:
        if not (isinstance(data, list) and len(data) == 3 and all(type(x) is int for x in data)):
            raise ValueError(f"bad fingerprint {data!r}")
        return cls(*data)

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class Image:
    """A dataset image on slow storage."""

    name: str
    path: Path
    fingerprint: Fingerprint
    mode: int
    uid: int
    gid: int

    @property
    def size(self) -> int:
        return self.fingerprint.size


def check_squashfs_header(header: bytes, file_size: int) -> str | None:
    """None when HEADER starts a plausible squashfs image of FILE_SIZE bytes, else why not."""
    if len(header) < _SUPERBLOCK.size or header[:4] != SQUASHFS_MAGIC:
        return "not a squashfs image (no 'hsqs' magic)"
    bytes_used = _SUPERBLOCK.unpack_from(header)[12]
    if bytes_used > file_size:
        return f"truncated squashfs image ({file_size} of {bytes_used} bytes)"
    return None


def read_header(path: Path) -> bytes:
    """The first bytes of PATH, enough for the squashfs superblock."""
    with open(path, "rb") as f:
        return f.read(_SUPERBLOCK.size)


def name_of(filename: str) -> str | None:
    """The dataset name for an image file name, or None if it is not one."""
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            name = filename[: -len(suffix)]
            return name if is_valid_name(name) else None
    return None


def _stat_datadir(datadir: Path) -> None:
    try:
        if not stat.S_ISDIR(os.stat(datadir).st_mode):
            raise NodeFault(f"datadir {datadir} is not a directory")
    except OSError as e:
        raise NodeFault(f"datadir {datadir} unreachable: {e.strerror}") from None


def _image_from(name: str, path: Path, st: os.stat_result) -> Image:
    return Image(name, path, Fingerprint.of(st), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def lookup_image(datadir: Path, name: str) -> Image:
    """The image for NAME, checked; DatasetError if unknown or bad, NodeFault if datadir is gone."""
    if not is_valid_name(name):
        # The one gate for every caller: '../x' must never reach a path under datadir.
        raise DatasetError(f"not a dataset name: {shorten(name)}")
    for suffix in SUFFIXES:
        path = datadir / (name + suffix)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise NodeFault(f"cannot stat image {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise DatasetError(f"dataset {name!r}: {path} is not a regular file")
        problem = check_squashfs_header(read_header(path), st.st_size)
        if problem:
            raise DatasetError(f"dataset {name!r}: {path}: {problem}")
        return _image_from(name, path, st)
    _stat_datadir(datadir)
    raise DatasetError(f"unknown dataset {shorten(name)} (no {name}.sqfs in {datadir})")


@dataclass(frozen=True)
class Catalog:
    """Every image in datadir by name, and the files that could not be used."""

    images: Mapping[str, Image]
    problems: Mapping[str, str]


def scan_catalog(datadir: Path) -> Catalog:
    """Scan DATADIR once; NodeFault if it cannot be listed."""
    _stat_datadir(datadir)
    try:
        entries = sorted(os.scandir(datadir), key=lambda e: e.name)
    except OSError as e:
        raise NodeFault(f"cannot list datadir {datadir}: {e.strerror}") from None
    images: dict[str, Image] = {}
    problems: dict[str, str] = {}
    for entry in entries:
        _scan_entry(entry, images, problems)
    return Catalog(images, problems)


def _scan_entry(
    entry: os.DirEntry[str], images: dict[str, Image], problems: dict[str, str]
) -> None:
    if not entry.name.endswith(SUFFIXES) or entry.name.startswith("."):
        return
    name = name_of(entry.name)
    if name is None:
        problems[entry.name] = "file name is not a valid dataset name"
        return
    if name in images:
        problems[entry.name] = f"duplicate of {images[name].path.name}; ignored"
        return
    try:
        image = lookup_image(Path(entry.path).parent, name)
    except DatasetError as e:
        problems[entry.name] = str(e)
        return
    images[name] = image


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
    """None when the user (UID, GIDS) may read IMAGE under the configured groups, else why not."""
    if uid == 0:
        return None
    if allowed_groups is not None and not (gids & group_ids(allowed_groups)):
        return f"dataset {image.name!r} is restricted to groups {', '.join(allowed_groups)}"
    if image.uid == uid:
        readable = image.mode & stat.S_IRUSR
    elif image.gid in gids:
        readable = image.mode & stat.S_IRGRP
    else:
        readable = image.mode & stat.S_IROTH
    return None if readable else f"image {image.path} is not readable by uid {uid}"
