"""The one place that runs external commands, and the pure builders of their argv."""

from __future__ import annotations

import subprocess

from scratch_stage.core.errors import CommandError

TYPE_CHECKING = False  # not typing's: the prolog imports this module to mount
if TYPE_CHECKING:
    from collections.abc import Sequence
    from os import PathLike

    StrPath = str | PathLike[str]

# An image never grants setuid or device access (docs/security.md).
# The loop device is attached by scratch-stage itself, from the descriptor it checked
# (loopdev.py): mount(8) only mounts that device.
MOUNT_OPTIONS = "ro,nosuid,nodev"
COMPRESSORS = {
    "fast": ("-comp", "lz4"),
    "balanced": ("-comp", "zstd", "-Xcompression-level", "6"),
    "small": ("-comp", "xz"),
    "lzo": ("-comp", "lzo"),
}


def build_mount_argv(mount: Sequence[str], device: StrPath, target: StrPath) -> list[str]:
    """argv that mounts the squashfs on loop DEVICE read-only at TARGET."""
    return [*mount, "-t", "squashfs", "-o", MOUNT_OPTIONS, str(device), str(target)]


def build_umount_argv(umount: Sequence[str], target: StrPath, *, lazy: bool = False) -> list[str]:
    """argv that unmounts the top layer at TARGET (detached lazily if LAZY)."""
    return [*umount, *(["-l"] if lazy else []), str(target)]


def build_mksquashfs_argv(
    mksquashfs: Sequence[str], src: StrPath, dest: StrPath, compression: str
) -> list[str]:
    """argv that builds DEST from directory SRC; files owned by root, no xattrs, no progress."""
    return [
        *mksquashfs, str(src), str(dest), *COMPRESSORS[compression],
        "-noappend", "-all-root", "-no-xattrs", "-quiet", "-no-progress",
    ]  # fmt: skip


def run(argv: Sequence[str], *, timeout: float) -> str:
    """Run ARGV and return its stdout; CommandError with its last stderr line if it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise CommandError(f"command not found: {argv[0]}", missing=True) from None
    except OSError as e:  # not executable, a directory, ...: still the command's fault
        raise CommandError(f"cannot run {argv[0]}: {e.strerror or e}", missing=True) from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv[0]} timed out after {timeout:g}s: {' '.join(argv)}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit status {done.returncode}"
        raise CommandError(f"{' '.join(argv)}: {detail}")
    return done.stdout
