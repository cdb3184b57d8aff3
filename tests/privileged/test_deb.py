"""The .deb (`make deb`): built, lintian-clean, installed with dpkg, used, removed cleanly.

It installs into this machine's /usr (Debian's python3, python3-click, python3-yaml): the
venv-based tests running at the same time never see /usr/lib/python3/dist-packages, and
every path they run is absolute. The package is purged in a finalizer whatever happens;
the test skips when a scratch-stage package or /usr/bin/scratch-stage is there already.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodetree import NodeEnv, hello_of, loops_under, stack_at

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "deb" / "build-deb"
INSTALLED = Path("/usr/bin/scratch-stage")
SHARE = Path("/usr/share/scratch-stage")
NOBODY = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
DEBIAN_DEPENDS = ("python3-click", "python3-yaml", "squashfs-tools")


def installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status}", package],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() == "installed"


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dpkg", *args],
        capture_output=True, text=True, timeout=600, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is missing (apt install dpkg-dev)")
    out = tmp_path_factory.mktemp("deb")
    done = subprocess.run(
        [str(BUILD), str(out), sys.executable], capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def test_lintian_has_nothing_left_to_say(deb: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is missing (apt install lintian)")
    done = subprocess.run(
        ["lintian", "--fail-on", "warning", str(deb)], capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    said = [
        line for line in (done.stdout + done.stderr).splitlines()
        if "running with root privileges" not in line
    ]  # fmt: skip
    assert done.returncode == 0 and said == [], said


def test_the_package_holds_what_a_site_needs(deb: Path) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for path in (
        "/usr/bin/scratch-stage",
        "/usr/lib/python3/dist-packages/scratch_stage/cli.py",
        "/usr/share/scratch-stage/slurm/prolog.sh",
        "/usr/share/scratch-stage/slurm/epilog.sh",
        "/usr/share/scratch-stage/slurm/job_submit.lua",
        "/usr/share/scratch-stage/spank/scratch_stage_spank.c",
        "/usr/share/scratch-stage/spank/plugstack.conf",
        "/lib/systemd/system/scratch-stage.service",
        "/lib/systemd/system/scratch-stage-rebalance.timer",
        "/lib/systemd/system/scratch-stage-demand.timer",
        "/usr/share/doc/scratch-stage/copyright",
        "/usr/share/doc/scratch-stage/README.md.gz",
    ):
        assert path in paths, path
    control = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends", "Architecture"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "python3-click" in control and "python3-yaml" in control
    assert "Architecture: all" in control


@pytest.fixture
def installed_deb(deb: Path) -> Iterator[Path]:
    if installed("scratch-stage") or INSTALLED.exists():
        pytest.skip("scratch-stage is installed on this machine already: not replaced")
    missing = [p for p in DEBIAN_DEPENDS if not installed(p)]
    if missing:
        pytest.skip(f"Debian packages missing: {' '.join(missing)} (make system-deps)")
    try:
        done = dpkg("-i", str(deb))
        assert done.returncode == 0, done.stdout + done.stderr
        yield deb
    finally:
        if installed("scratch-stage") or INSTALLED.exists():
            dpkg("--purge", "scratch-stage")


def package_files() -> list[Path]:
    done = subprocess.run(["dpkg", "-L", "scratch-stage"], capture_output=True, text=True)
    return [Path(p) for p in done.stdout.splitlines() if p and p != "/."]


def test_install_use_and_remove(installed_deb: Path, node_env: NodeEnv, tmp_path: Path) -> None:
    files = package_files()
    assert (
        INSTALLED in files and not Path("/usr/lib/python3/dist-packages/scratch_stage").is_symlink()
    )
    # Root's files, writable by nobody else (what the prolog runs as root).
    for path in files:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            continue  # /lib -> usr/lib on a merged-/usr system
        assert st.st_uid == 0 and st.st_gid == 0, path
        assert not st.st_mode & 0o022, f"{path} is writable by group or others"

    # Debian's python3 and its click and yaml, not this venv
    env = {**node_env.admin_environ(), "PYTHONNOUSERSITE": "1"}
    done = subprocess.run(
        [str(INSTALLED), "--version"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "scratch-stage" in done.stdout, done.stderr
    check = subprocess.run(
        [str(INSTALLED), "--config", str(node_env.config_path), "config", "check"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert f"{node_env.config_path}: ok" in check.stdout, check.stdout
    demand = f"demand: file {node_env.datadir}/.scratch-stage-demand.json"
    assert any(line.startswith(demand) for line in check.stdout.splitlines()), check.stdout

    # The shipped wrapper, and the same one for this node's configuration, rendered by the
    # installed command from the installed templates.
    shipped = (SHARE / "slurm" / "prolog.sh").read_text().splitlines()[-1]
    assert shipped == "exec /usr/bin/scratch-stage --config /etc/scratch-stage/config.yaml prolog"
    assert stat.S_IMODE(os.stat(SHARE / "slurm" / "prolog.sh").st_mode) == 0o755
    site = tmp_path / "site"
    rendered = subprocess.run(
        [str(INSTALLED), "install-site-files", str(site), "--bin", str(INSTALLED),
         "--config", str(node_env.config_path)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    node_env.add_image("alpha")
    job = node_env.job_environ(41, comment="datasets:alpha")
    prolog = subprocess.run(
        [str(site / "slurm" / "prolog.sh")], env=job, capture_output=True, text=True,
        timeout=120, cwd="/", check=False,
    )  # fmt: skip
    assert prolog.returncode == 0, prolog.stderr
    assert (node_env.mountdir / "alpha" / "hello.txt").read_text() == hello_of("alpha")
    assert stack_at(node_env.mountdir / "alpha")
    assert node_env.holders() == {"alpha": ["41"]}
    epilog = subprocess.run(
        [str(site / "slurm" / "epilog.sh")], env=job, capture_output=True, text=True,
        timeout=120, cwd="/", check=False,
    )  # fmt: skip
    assert epilog.returncode == 0, epilog.stderr
    assert node_env.holders() == {}

    # An unprivileged user cannot rewrite the installed site files through the command.
    before = (SHARE / "slurm" / "prolog.sh").read_bytes()
    forged = subprocess.run(
        [*NOBODY, str(INSTALLED), "install-site-files", str(SHARE), "--bin", "/tmp/evil",
         "--force"],
        env=env, capture_output=True, text=True, timeout=60, cwd="/", check=False,
    )  # fmt: skip
    assert forged.returncode == 1 and len(forged.stderr.splitlines()) == 1, forged.stderr
    assert "Permission denied" in forged.stderr
    assert (SHARE / "slurm" / "prolog.sh").read_bytes() == before

    # The mounts are the node's (released, idle); the test's node tree unmounts them.
    assert node_env.finalize() == []
    assert loops_under(node_env.root) == {}

    removed = dpkg("-r", "scratch-stage")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    left = [p for p in files if p.exists() and not p.is_dir()]
    assert left == [], left
    assert not Path("/usr/lib/python3/dist-packages/scratch_stage").exists()  # no __pycache__
    assert not SHARE.exists() and not INSTALLED.exists()
    purged = dpkg("--purge", "scratch-stage")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not installed("scratch-stage")
    status = subprocess.run(["dpkg", "-s", "scratch-stage"], capture_output=True, check=False)
    assert status.returncode != 0  # not even config-files
