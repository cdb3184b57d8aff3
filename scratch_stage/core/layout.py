"""The file-name protocols of cachedir and statedir, each defined once (pure).

mountdir/<name>                    where jobs read dataset <name>: the mount itself, or for a
                                   restricted dataset a symlink to the one below
mountdir/.access/<name>/mnt        a restricted dataset's mount, under a directory only its
                                   groups may enter (mountdir/.access/<name>, 0750 + ACL)
cachedir/<name>.sqfs               the verified cached copy of dataset <name>
cachedir/.partial/<name>.<pid>.part   a copy in flight by process <pid>
statedir/.<file>.<pid>.tmp         a state write in flight (state.temp_name)
"""

from __future__ import annotations

CACHE_SUFFIX = ".sqfs"
PARTIAL_DIR = ".partial"
PARTIAL_SUFFIX = ".part"


def cached_name(name: str) -> str:
    """The file name of dataset NAME's cached copy inside cachedir."""
    return name + CACHE_SUFFIX


def dataset_of_cached(filename: str) -> str | None:
    """The dataset whose cached copy FILENAME is, or None (hidden files are never copies)."""
    if filename.startswith(".") or not filename.endswith(CACHE_SUFFIX):
        return None
    return filename[: -len(CACHE_SUFFIX)] or None


def partial_name(name: str, pid: int) -> str:
    """The file name of a copy of NAME in flight by PID, inside cachedir/.partial/."""
    return f"{name}.{pid}{PARTIAL_SUFFIX}"


ACCESS_DIR = ".access"
ACCESS_MOUNT = "mnt"


def restricted_mount(name: str) -> str:
    """Where a restricted dataset NAME is mounted, relative to mountdir."""
    return f"{ACCESS_DIR}/{name}/{ACCESS_MOUNT}"


def dataset_of_mount(relative: str) -> str | None:
    """The dataset mounted at RELATIVE (a path below mountdir), or None if it is no mountpoint."""
    if "/" not in relative:
        return relative or None
    parts = relative.split("/")
    if len(parts) == 3 and parts[0] == ACCESS_DIR and parts[2] == ACCESS_MOUNT and parts[1]:
        return parts[1]
    return None
