"""The file-name protocols of cachedir and statedir, each defined once (pure).

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
