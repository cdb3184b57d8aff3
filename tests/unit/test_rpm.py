"""The RPM for RHEL 9 (`make rpm`): built from the spec with rpmbuild, linted, unpacked and run.

Debian's `rpm` package brings rpmbuild; rpmlint is its own package. Without them the
tests skip with the reason. The unpacked payload is run with this machine's python3 (the
package is pure Python) to show that what the spec installs is a working scratch-stage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "packaging" / "rpm" / "scratch-stage.spec"
BUILD = REPO / "packaging" / "rpm" / "build-rpm"
SITELIB = "usr/lib/python3.9/site-packages"


@pytest.fixture(scope="module")
def rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is missing (apt install rpm)")
    out = tmp_path_factory.mktemp("rpm")
    done = subprocess.run(
        [str(BUILD), str(out)], capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip())


def query(rpm: Path, *args: str) -> list[str]:
    done = subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_rpm_holds_what_a_site_needs(rpm: Path) -> None:
    files = set(query(rpm, "-l"))
    for path in (
        "/usr/bin/scratch-stage",
        f"/{SITELIB}/scratch_stage/cli.py",
        f"/{SITELIB}/scratch_stage/site/slurm/prolog.sh",
        "/usr/share/scratch-stage/slurm/prolog.sh",
        "/usr/share/scratch-stage/slurm/job_submit.lua",
        "/usr/share/scratch-stage/spank/scratch_stage_spank.c",
        "/usr/lib/systemd/system/scratch-stage.service",
        "/usr/lib/systemd/system/scratch-stage-demand.timer",
    ):
        assert path in files, path
    assert any(p.endswith("/LICENSE") for p in files)
    requires = set(query(rpm, "--requires"))
    assert {"python3-click >= 7.1", "python3-pyyaml", "python(abi) = 3.9"} <= requires
    assert query(rpm, "--qf", "%{ARCH}\n") == ["noarch"]


def test_the_unpacked_payload_runs(rpm: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    cpio = subprocess.run(
        f"rpm2cpio {rpm} | cpio -idm --quiet", shell=True, cwd=root, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert cpio.returncode == 0, cpio.stderr
    prolog = root / "usr/share/scratch-stage/slurm/prolog.sh"
    assert prolog.read_text().splitlines()[-1] == (
        "exec /usr/bin/scratch-stage --config /etc/scratch-stage/config.yaml prolog"
    )
    assert os.stat(prolog).st_mode & 0o777 == 0o755
    assert not (root / SITELIB / "scratch_stage/site/slurm/prolog.sh").is_symlink()
    env = {**os.environ, "PYTHONPATH": str(root / SITELIB)}
    done = subprocess.run(
        [sys.executable, str(root / "usr/bin/scratch-stage"), "install-site-files",
         str(tmp_path / "site"), "--bin", "/usr/bin/scratch-stage"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the package's own templates render what the package ships
    assert (tmp_path / "site/slurm/prolog.sh").read_bytes() == prolog.read_bytes()


def test_rpmlint_has_nothing_left_to_say(rpm: Path) -> None:
    if shutil.which("rpmlint") is None:
        pytest.skip("rpmlint is missing (apt install rpmlint)")
    done = subprocess.run(
        ["rpmlint", "-r", str(SPEC.with_suffix(".rpmlintrc")), str(SPEC), str(rpm)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "0 errors, 0 warnings" in done.stdout, done.stdout
