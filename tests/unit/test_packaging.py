"""The wheel carries the site files (resolved, not links), and they work from an install."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scratch_stage.agent.site_files import SITE_DIR, site_templates

REPO = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.deb", "*.rpm"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("wheel") is None:  # setuptools < 70.1 builds no wheel without it
        pytest.skip("the `wheel` package is missing (pip install -e '.[dev]')")
    base = tmp_path_factory.mktemp("wheel")
    tree = base / "tree"  # a copy: the build leaves build/ and egg-info behind
    shutil.copytree(REPO, tree, symlinks=True, ignore=SKIP)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(base / "dist"), str(tree)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (found,) = (base / "dist").glob("scratch_stage-*.whl")
    return found


def test_the_wheel_holds_every_site_file_as_in_the_tree(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for rel in site_templates():
            member = f"scratch_stage/site/{rel}"
            assert member in names, member
            info = z.getinfo(member)
            assert (info.external_attr >> 16) & 0o170000 != 0o120000, f"{member} is a link"
            assert z.read(member) == (SITE_DIR / rel).read_bytes(), member
        assert "scratch_stage/config.example.yaml" in names


def test_install_site_files_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert not (target / "scratch_stage" / "site" / "slurm" / "prolog.sh").is_symlink()
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-m", "scratch_stage", "install-site-files", str(tmp_path / "site"),
         "--bin", "/usr/bin/scratch-stage"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import scratch_stage; print(scratch_stage.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(target)), where  # the wheel's package ran, not the tree's
    assert done.stdout.count("\n") == len(site_templates())
    prolog = (tmp_path / "site" / "slurm" / "prolog.sh").read_text()
    assert prolog.endswith(
        "exec /usr/bin/scratch-stage --config /etc/scratch-stage/config.yaml prolog\n"
    )
