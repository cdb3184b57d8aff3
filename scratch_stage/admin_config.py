"""`config check`: what the configuration names must exist and be usable on this node."""

from __future__ import annotations

import os

from scratch_stage.config import Config


def check_config(config: Config) -> list[str]:
    """Every problem with the directories and commands CONFIG names (empty when all is well)."""
    problems = []
    for key in ("datadir", "cachedir"):
        path = getattr(config, key)
        if not path.is_dir():
            problems.append(f"{key} {path} is not a directory")
    for key in ("mount_command", "umount_command", "mksquashfs_command"):
        program = getattr(config, key)[0]
        if not os.access(program, os.X_OK):
            problems.append(f"{key}: {program} is not an executable program")
    if config.statedir.exists() and not os.access(config.statedir, os.W_OK):
        problems.append(f"statedir {config.statedir} is not writable")
    return problems
