"""`install-site-files DEST`: the Slurm and systemd files a site installs, for its paths.

The files ship in the package as data (`scratch_stage/site/`, whose entries are symlinks
to the one copy in the source tree: `slurm/`, `slurm/systemd/`, `spank_config/`; a wheel
holds the resolved files). They are templates: `@SCRATCH_STAGE@` becomes the installed
executable and `@CONFIG@` the configuration file. Written under DEST as

    slurm/prolog.sh, slurm/epilog.sh            0755 (Prolog=/Epilog= wrappers)
    slurm/job_submit.lua, slurm/slurm.conf.snippet
    systemd/*.service, systemd/*.timer          0644
    spank/                                      the SPANK plugin's source and plugstack.conf
    config.example.yaml

A file DEST already holds is replaced only when it is what a previous run wrote (its
sha256 is in DEST/.scratch-stage-site-files.json) or with `force`: an administrator's
edit is never lost silently. Every refusal is decided before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.host.state import write_atomically

SITE_DIR = Path(__file__).resolve().parents[1] / "site"
MANIFEST = ".scratch-stage-site-files.json"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")
# Paths that go verbatim into a unit's ExecStart= and a shell script: no quoting needed,
# no systemd specifier (%), no shell metacharacter.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")


@dataclass(frozen=True)
class Written:
    """One file of the run: its path under DEST, mode, and what happened to it."""

    path: Path
    mode: int
    action: str  # "wrote", "replaced", "forced", "unchanged"


def site_templates() -> list[str]:
    """The template files, relative to the site directory ('slurm/prolog.sh', ...)."""
    if not SITE_DIR.is_dir():
        raise ScratchStageError(f"the site files are missing from this installation ({SITE_DIR})")
    return sorted(
        str(p.relative_to(SITE_DIR))
        for p in SITE_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def mode_of(rel: str) -> int:
    """Hooks are executable (Slurm runs them), everything else is read-only data."""
    return 0o755 if rel.endswith(".sh") else 0o644


def check_path(option: str, value: str) -> str:
    """VALUE if it can be written into a unit and a wrapper as it is, else a one-line error."""
    if not SAFE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise ScratchStageError(
            f"{option} {value!r}: must be an absolute path of letters, digits and . _ + - /"
        )
    return value


def render(text: str, values: dict[str, str], rel: str = "") -> str:
    """TEXT with every placeholder filled in (an unknown one is a bug of the template)."""
    for key, value in values.items():
        text = text.replace(key, value)
    left = PLACEHOLDER.search(text)
    if left:
        raise ScratchStageError(f"site file {rel}: unknown placeholder {left.group()}")
    return text


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_manifest(dest: Path) -> dict[str, str]:
    try:
        data = json.loads((dest / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _existing(path: Path) -> tuple[bytes | None, int | None]:
    """(content, mode) of the regular file at PATH; (None, None) when there is none."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        raise ScratchStageError(f"{path} exists and is not a regular file: not replaced")
    return path.read_bytes(), stat.S_IMODE(st.st_mode)


def install_site_files(
    dest: Path, *, executable: str, config: str, force: bool = False
) -> list[Written]:
    """Write the site files under DEST for EXECUTABLE and CONFIG; what happened to each."""
    values = {
        "@SCRATCH_STAGE@": check_path("--bin", executable),
        "@CONFIG@": check_path("--config", config),
    }
    rendered = {
        rel: render((SITE_DIR / rel).read_text(), values, rel).encode() for rel in site_templates()
    }
    try:
        manifest = _read_manifest(dest)
        plan: list[tuple[str, str]] = []
        refused = []
        for rel, data in rendered.items():
            content, mode = _existing(dest / rel)
            if content is None:
                plan.append((rel, "wrote"))
            elif content == data:
                plan.append((rel, "unchanged" if mode == mode_of(rel) else "wrote"))
            elif manifest.get(rel) == _sha256(content):
                plan.append((rel, "replaced"))
            elif force:
                plan.append((rel, "forced"))
            else:
                refused.append(rel)
        if refused:
            raise ScratchStageError(
                f"{dest / refused[0]} differs from what install-site-files wrote there"
                + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
                + ": not overwritten (--force replaces it); nothing written"
            )
        for rel, action in plan:
            if action != "unchanged":
                (dest / rel).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                write_atomically(dest / rel, rendered[rel], mode=mode_of(rel))
        manifest.update({rel: _sha256(data) for rel, data in rendered.items()})
        write_atomically(
            dest / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(),
            mode=0o644,
        )  # fmt: skip
    except OSError as e:
        where = e.filename or dest
        raise ScratchStageError(f"cannot write the site files to {where}: {e.strerror}") from None
    return [Written(dest / rel, mode_of(rel), action) for rel, action in plan]
