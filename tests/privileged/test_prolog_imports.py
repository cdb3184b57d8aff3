"""The prolog's import budget, on a real node: which modules a real prolog loads.

Each prolog runs with PYTHONPROFILEIMPORTTIME=1 (what `-X importtime` prints), on a real
node tree with real images and loop mounts. A job without datasets loads nothing beyond
the bare interpreter and our entry point; a job whose dataset is mounted, a job that
mounts one, an epilog and a job with a hostile comment never load the modules that made
the prolog slow (docs/benchmarks.md, "Prolog hot path").
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from nodetree import NodeEnv

# Measured at 2 to 18 ms of every job start each (with what they import).
FORBIDDEN = {
    "yaml", "click", "logging", "logging.handlers", "dataclasses", "inspect", "ast",
    "typing", "traceback", "string", "socket", "pickle", "shlex", "tempfile",
    "shutil", "filelock", "hashlib", "secrets", "tokenize", "dis", "pathlib", "fnmatch",
    "urllib.parse", "ipaddress",
}  # fmt: skip
# Only what mounting needs: running mount(8) and setting up the loop device.
MOUNT_ONLY = {"subprocess", "selectors", "threading", "ctypes", "array"}


def imported(stderr: str) -> set[str]:
    """The modules in STDERR's `import time:` lines."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    }


def profiled(node_env: NodeEnv, args: list[str], job_id: int, **job: str) -> set[str]:
    environ = {**node_env.job_environ(job_id, **job), "PYTHONPROFILEIMPORTTIME": "1"}
    done = node_env.run(args, environ)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = imported(done.stderr)
    assert "scratch_stage.hookmain" in modules  # the measurement sees our modules
    return modules


def bare_interpreter(environ: dict[str, str]) -> set[str]:
    """What `python -c pass` imports in ENVIRON (site imports pwd when HOME is unset)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], env=environ, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    return imported(done.stderr)


@pytest.fixture
def warm(node_env: NodeEnv) -> NodeEnv:
    """Two images; alpha mounted by a first prolog (which also caches the configuration)."""
    node_env.add_image("alpha")
    node_env.add_image("beta")
    first = node_env.prolog(1, comment="datasets:alpha")
    assert first.returncode == 0, first.stderr
    return node_env


def test_job_without_datasets_loads_nothing_but_the_entry_point(warm: NodeEnv) -> None:
    modules = profiled(warm, ["prolog"], 2, comment="lr=0.1 epochs=90")
    ours = {"scratch_stage", "scratch_stage.__main__", "scratch_stage.hookmain", "__future__"}
    assert modules - bare_interpreter(warm.job_environ(2)) <= ours


def test_dataset_already_mounted_loads_no_heavy_module(warm: NodeEnv) -> None:
    modules = profiled(warm, ["prolog"], 3, comment="datasets:alpha")
    assert warm.holders()["alpha"] == ["1", "3"]
    assert not (FORBIDDEN | MOUNT_ONLY) & modules, sorted((FORBIDDEN | MOUNT_ONLY) & modules)
    assert "scratch_stage.host.state" in modules  # it did take the state


def test_fresh_mount_loads_only_what_mounting_needs(warm: NodeEnv) -> None:
    modules = profiled(warm, ["prolog"], 4, comment="datasets:beta")
    assert warm.holders()["beta"] == ["4"]
    assert len(warm.stack("beta")) == 1
    assert not FORBIDDEN & modules, sorted(FORBIDDEN & modules)


def test_epilog_loads_no_heavy_module(warm: NodeEnv) -> None:
    modules = profiled(warm, ["epilog"], 1)
    assert "alpha" not in warm.holders()
    assert not (FORBIDDEN | MOUNT_ONLY) & modules, sorted((FORBIDDEN | MOUNT_ONLY) & modules)


def test_hostile_comment_cannot_pull_in_the_slow_path(warm: NodeEnv) -> None:
    # What a user controls: the comment. Thousands of bad names, a newline, a path, an
    # image that does not exist: refused, logged on one line each, exit 0, nothing heavy.
    bad = ["../../etc/shadow", "-rf", "nosuch", "alpha", *(f"x{i}/" for i in range(3000))]
    comment = "datasets:" + ",".join(bad) + ",a\x1b[2J\nb"
    modules = profiled(warm, ["prolog"], 5, comment=comment)
    assert not (FORBIDDEN | MOUNT_ONLY) & modules, sorted((FORBIDDEN | MOUNT_ONLY) & modules)
    assert warm.holders()["alpha"] == ["1", "5"]
    refused = warm.events("refused")
    assert any(e["dataset"] == "nosuch" for e in refused)
