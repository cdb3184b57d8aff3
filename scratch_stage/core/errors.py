"""One exception hierarchy; each class carries its exit code (docs/design.md)."""

from __future__ import annotations

# 0 is success and 2 a usage error (click's own code for a UsageError).
EXIT_ERROR = 1
EXIT_BUG = 3
EXIT_CONFIG = 4
EXIT_LOCK_TIMEOUT = 5


class ScratchStageError(Exception):
    """A failure with a one-line message for an administrator."""

    exit_code = EXIT_ERROR


class ConfigError(ScratchStageError):
    """The configuration cannot be loaded or is invalid."""

    exit_code = EXIT_CONFIG


class LockTimeout(ScratchStageError):
    """The node state lock could not be taken in time."""

    exit_code = EXIT_LOCK_TIMEOUT


class NodeFault(ScratchStageError):
    """The node itself is broken (statedir, mounts, datadir): a prolog must fail."""


class DatasetError(ScratchStageError):
    """One dataset cannot be served (unknown, malformed, forbidden, bad image)."""


class CommandError(NodeFault):
    """An external command (mount, umount, mksquashfs) failed; MISSING: it could not run."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class StagingError(ScratchStageError):
    """A copy into the cache failed or was interrupted; nothing partial is kept."""


class NoRoomYet(StagingError):
    """A copy would fit but for deleted copies still mounted (held by a job, or copied into
    another mount namespace, e.g. a Slurm job container or a user's `unshare`): no copy
    failed, so no backoff; the next pass tries again."""


class Interrupted(ScratchStageError):
    """SIGTERM or SIGINT arrived; the command stopped between two steps."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
