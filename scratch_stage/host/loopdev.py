"""Loop devices attached from an open descriptor (loop(4), LOOP_CONFIGURE).

What was checked is what is mounted: the catalog opens an image once and checks that
descriptor (owner, mode, superblock, fingerprint); the loop device is attached to the very
same open file, never to a path that could be swapped in between (docs/security.md).
The device is read-only and autoclear: the kernel detaches it when the last user goes,
so a process killed after attaching, or a mount that fails, leaks no loop device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterator

from scratch_stage.core.errors import NodeFault

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A  # Linux 5.8
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# struct loop_info64: 5 x u64, 4 x u32 (lo_flags last), 64 + 64 + 32 bytes, 2 x u64.
_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
_CONFIG = struct.Struct(f"=II{_INFO64.size}s64x")
_ATTEMPTS = 20


def config_bytes(fd: int) -> bytes:
    """The loop_config for a read-only, autoclear device backed by FD (pure)."""
    info = _INFO64.pack(
        0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR, b"", b"", b"", 0, 0
    )
    return _CONFIG.pack(fd, 0, info)


@contextlib.contextmanager
def attached(fd: int) -> Iterator[str]:
    """A loop device (its /dev path) backed by the open file FD, held open inside the context.

    Mount it inside the context; when the context ends the device stays only while
    something (the mount) uses it. NodeFault if no loop device can be had.
    """
    try:
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise NodeFault(f"cannot open {LOOP_CONTROL}: {e.strerror}") from None
    try:
        loop_fd, path = _configure(control, fd)
    finally:
        os.close(control)
    try:
        yield path
    finally:
        os.close(loop_fd)  # autoclear: detached now unless mounted


def _configure(control: int, fd: int) -> tuple[int, str]:
    for _ in range(_ATTEMPTS):
        try:
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
        except OSError as e:
            raise NodeFault(f"no free loop device: {e.strerror}") from None
        path = f"/dev/loop{number}"
        try:
            loop_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NodeFault(f"cannot open {path}: {e.strerror}") from None
        try:
            fcntl.ioctl(loop_fd, LOOP_CONFIGURE, config_bytes(fd))
        except OSError as e:
            os.close(loop_fd)
            if e.errno == errno.EBUSY:
                continue  # another process took it first: ask for another
            raise NodeFault(f"cannot attach {path}: {e.strerror}") from None
        return loop_fd, path
    raise NodeFault(f"no loop device could be attached after {_ATTEMPTS} attempts")
