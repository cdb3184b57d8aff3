"""`image build`: mksquashfs into a temporary file in datadir, then an atomic rename."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from scratch_stage.core.errors import DatasetError, ScratchStageError
from scratch_stage.core.requests import is_valid_name, shorten
from scratch_stage.host import runner
from scratch_stage.host.catalog import SUFFIXES, check_squashfs_header, read_header
from scratch_stage.host.config import Config


def build_image(config: Config, src: Path, name: str, *, compression: str, replace: bool) -> Path:
    """Build datadir/NAME.sqfs from directory SRC; the image, or ScratchStageError."""
    if not is_valid_name(name):
        raise DatasetError(f"not a dataset name: {shorten(name)}")
    if not src.is_dir():
        raise ScratchStageError(f"source {src} is not a directory")
    datadir = Path(config.datadir)
    dest = datadir / (name + SUFFIXES[0])
    others = [datadir / (name + s) for s in SUFFIXES]
    if not replace and any(p.exists() for p in others):
        raise ScratchStageError(f"dataset {name} already exists in {config.datadir}; use --replace")
    # Hidden temporary name: the catalog never lists a half-built image.
    tmp = datadir / f".{name}.{os.getpid()}.building"
    try:
        argv = runner.build_mksquashfs_argv(config.mksquashfs_command, src, tmp, compression)
        runner.run(argv, timeout=24 * 3600)
        problem = check_squashfs_header(read_header(tmp), tmp.stat().st_size)
        if problem:
            raise ScratchStageError(f"mksquashfs produced a bad image: {problem}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest
