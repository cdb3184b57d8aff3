"""The cache of the last validated configuration: fast prolog, known-good after a bad push.

The subprocess tests run the CLI as Slurm runs a prolog (the job in the environment, no
PATH), with SCRATCH_STAGE_RUNDIR pointing at the test's own runtime directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scratch_stage.core.errors import ConfigError
from scratch_stage.core.units import Capacity
from scratch_stage.host import config as config_module
from scratch_stage.host.config import load_config, load_hook_config
from scratch_stage.host.configcache import ConfigCache

CONSOLE_SCRIPT = Path(sys.prefix) / "bin" / "scratch-stage"
CLI = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "scratch_stage"]
SETPRIV = "/usr/bin/setpriv"
NOBODY = 65534
TYPO = "capcity: 2TB\n"


def good_config(tree: Path, **extra: str) -> Path:
    """TREE/config.yaml naming directories under TREE (datadir exists, empty), and EXTRA."""
    for directory in ("data", "state"):
        (tree / directory).mkdir(exist_ok=True)
    values = {
        "datadir": tree / "data", "cachedir": tree / "cache", "mountdir": tree / "mnt",
        "statedir": tree / "state", **extra,
    }  # fmt: skip
    path = tree / "config.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return path


def cache_files() -> list[Path]:
    return sorted(Path(config_module.RUNDIR).glob("config-*.json"))


# --- in process --------------------------------------------------------------------------


def test_cache_is_root_only(tmp_path: Path) -> None:
    load_config(str(good_config(tmp_path)), {})
    [cache] = cache_files()
    assert stat.S_IMODE(os.stat(config_module.RUNDIR).st_mode) == 0o700
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert cache.stat().st_uid == os.geteuid()
    record = json.loads(cache.read_text())
    assert record["config"]["capacity"] == "80%"  # the validated form, defaults included
    assert "chunk_size" in record["config"]


def test_bad_push_keeps_the_known_good_configuration_for_hooks_only(tmp_path: Path) -> None:
    path = good_config(tmp_path, capacity="1GiB")
    good = load_config(str(path), {})
    path.write_text(path.read_text().replace("1GiB", "2GiB") + TYPO)

    with pytest.raises(ConfigError, match="capcity: unknown key"):
        load_config(str(path), {})  # every command but prolog and epilog fails
    config, problem = load_hook_config(str(path), {})
    assert config == good and config.capacity == Capacity(1024**3)
    assert problem is not None and "capcity: unknown key" in str(problem)
    # Still the known good one on the next run, and the error again.
    assert load_hook_config(str(path), {})[1] is not None


@pytest.mark.parametrize("how", ["missing", "yaml", "not-a-mapping", "bad-value"])
def test_any_unloadable_file_falls_back(tmp_path: Path, how: str) -> None:
    path = good_config(tmp_path)
    good = load_config(str(path), {})
    if how == "missing":
        path.unlink()
    elif how == "yaml":
        path.write_text("datadir: [unclosed\n")
    elif how == "not-a-mapping":
        path.write_text("- a\n- list\n")
    else:
        path.write_text(path.read_text() + "verify: md5\n")
    config, problem = load_hook_config(str(path), {})
    assert config == good and problem is not None


def test_without_known_good_a_bad_file_is_an_error(tmp_path: Path) -> None:
    path = good_config(tmp_path, capcity="2TB")
    with pytest.raises(ConfigError, match="capcity"):
        load_hook_config(str(path), {})
    assert cache_files() == []


def test_known_good_is_per_set_of_environment_overrides(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    load_config(str(path), {"SCRATCH_STAGE_PERIOD": "30"})
    path.write_text(path.read_text() + TYPO)
    assert load_hook_config(str(path), {"SCRATCH_STAGE_PERIOD": "30"})[0].period == 30.0
    with pytest.raises(ConfigError, match="capcity"):
        load_hook_config(str(path), {"SCRATCH_STAGE_PERIOD": "45"})


def test_fixed_file_replaces_the_known_good(tmp_path: Path) -> None:
    path = good_config(tmp_path, node="first")
    load_config(str(path), {})
    path.write_text(path.read_text().replace("first", "second"))
    assert load_config(str(path), {}).node == "second"
    path.write_text(path.read_text() + TYPO)
    assert load_hook_config(str(path), {})[0].node == "second"


def test_a_cache_entry_that_no_longer_validates_is_not_used(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    load_config(str(path), {})
    [cache] = cache_files()
    record = json.loads(cache.read_text())
    record["config"]["retired_key"] = 1  # as if written by another version
    cache.write_text(json.dumps(record))
    assert load_config(str(path), {}).source == str(path)  # parsed again, and re-cached
    assert "retired_key" not in cache.read_text()
    record["config"]["retired_key"] = 1
    cache.write_text(json.dumps(record))
    path.write_text(path.read_text() + TYPO)
    with pytest.raises(ConfigError, match="capcity"):
        load_hook_config(str(path), {})


def test_untrusted_rundir_is_neither_read_nor_written(tmp_path: Path) -> None:
    rundir = Path(config_module.RUNDIR)
    rundir.mkdir(mode=0o700)
    rundir.chmod(0o1777)
    path = good_config(tmp_path)
    load_config(str(path), {})
    assert cache_files() == []
    rundir.chmod(0o700)
    load_config(str(path), {})
    assert len(cache_files()) == 1


def test_symlinked_cache_file_is_refused(tmp_path: Path) -> None:
    path = good_config(tmp_path, node="real")
    load_config(str(path), {})
    [cache] = cache_files()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(cache.read_text().replace('"real"', '"via-symlink"'))
    elsewhere.chmod(0o600)
    cache.unlink()
    cache.symlink_to(elsewhere)
    path.write_text(path.read_text() + TYPO)
    with pytest.raises(ConfigError):  # the symlink is no known-good configuration
        load_hook_config(str(path), {})
    path.write_text(path.read_text().replace(TYPO, ""))
    assert load_config(str(path), {}).node == "real"
    # The write replaced the symlink itself, never the file it pointed to.
    assert not cache.is_symlink()
    assert '"via-symlink"' in elsewhere.read_text()


# --- as an unprivileged user ------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SETPRIV, os.X_OK), reason="needs root and setpriv"
)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.fixture
def public_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 0755 directory the unprivileged user can traverse, with RUNDIR inside it."""
    parent = Path(tempfile.mkdtemp(prefix="ss-rundir-"))
    try:
        parent.chmod(0o755)
        monkeypatch.setattr(config_module, "RUNDIR", parent / "run")
        yield parent
    finally:
        shutil.rmtree(parent)


@needs_root
def test_unprivileged_user_cannot_plant_a_configuration(
    tmp_path: Path, public_parent: Path
) -> None:
    path = good_config(tmp_path, node="real")
    rundir = Path(config_module.RUNDIR)
    load_config(str(path), {})
    [cache] = cache_files()
    planted = cache.read_text().replace('"real"', '"planted"')
    assert '"planted"' in planted
    name = cache.name
    write = 'printf "%s" "$1" > "$2"'

    # 1. The directory as shipped (0700): the user cannot even create a file in it.
    cache.unlink()
    done = as_nobody("/bin/sh", "-c", write, "sh", planted, str(rundir / name))
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert not (rundir / name).exists()

    # 2. A rundir made world-writable (a mistake, or a hostile pre-creation): the user's
    #    file is well-formed and keyed right, yet not used, and nothing is written there.
    rundir.chmod(0o1777)
    done = as_nobody("/bin/sh", "-c", write, "sh", planted, str(rundir / name))
    assert done.returncode == 0, done.stderr
    assert (rundir / name).stat().st_uid == NOBODY
    assert load_config(str(path), {}).node == "real"
    path.write_text(path.read_text() + TYPO)
    with pytest.raises(ConfigError, match="capcity"):  # not a known-good one either
        load_hook_config(str(path), {})

    # 3. The same file in a root-only directory, still the user's: refused.
    rundir.chmod(0o700)
    with pytest.raises(ConfigError, match="capcity"):
        load_hook_config(str(path), {})

    # Control: the planted bytes themselves were acceptable; only their owner was not.
    os.chown(rundir / name, 0, 0)
    (rundir / name).chmod(0o600)
    assert load_hook_config(str(path), {})[0].node == "planted"


# --- the real CLI, as Slurm runs a prolog ----------------------------------------------


def hook(
    kind: str, config: Path, rundir: Path, job: int, *extra_args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        "SCRATCH_STAGE_CONFIG": str(config), "SCRATCH_STAGE_RUNDIR": str(rundir),
        "SLURM_JOB_ID": str(job), "SLURM_JOB_USER": "root", "SLURM_JOB_UID": "0",
        "SLURM_JOB_GID": "0", "SLURM_JOB_COMMENT": "datasets:nosuch", **env,
    }  # fmt: skip
    return subprocess.run(
        [*CLI, *extra_args, kind], env=environ, capture_output=True, text=True, timeout=60,
        cwd="/",
    )  # fmt: skip


def events(statedir: Path) -> list[dict[str, object]]:
    log = statedir / "events.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_typo_pushed_after_a_good_load_keeps_hooks_running(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    path = good_config(tmp_path)
    first = hook("prolog", path, rundir, 1)
    assert first.returncode == 0, first.stderr
    assert [e["job"] for e in events(tmp_path / "state")] == ["1"]

    # The push: a typo, and a statedir change that must not take effect.
    good_config(tmp_path, statedir=str(tmp_path / "other"), capcity="2TB")
    prolog = hook("prolog", path, rundir, 2)
    epilog = hook("epilog", path, rundir, 2)
    check = subprocess.run(
        [*CLI, "--config", str(path), "config", "check"], capture_output=True, text=True,
        env={"SCRATCH_STAGE_RUNDIR": str(rundir)}, timeout=60,
    )  # fmt: skip

    for done in (prolog, epilog):
        assert done.returncode == 0, done.stderr
        errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "capcity: unknown key" in errors[0], done.stderr
        assert "last configuration that validated" in errors[0]
    # It behaved as before: the refusal went to the known-good statedir.
    assert [e["job"] for e in events(tmp_path / "state") if e["event"] == "refused"] == [
        "1", "2",
    ]  # fmt: skip
    assert not (tmp_path / "other").exists()
    assert check.returncode == 4
    assert "error: capcity: unknown key (did you mean capacity?)" in check.stdout.splitlines()


def test_typo_without_known_good_is_a_node_fault(tmp_path: Path) -> None:
    path = good_config(tmp_path, capcity="2TB")
    for kind in ("prolog", "epilog"):
        done = hook(kind, path, tmp_path / "run", 3)
        assert done.returncode == 4, done.stderr
        assert "capcity: unknown key" in done.stderr


def imported_modules(stderr: str) -> set[str]:
    """The module names in `-X importtime` output."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_prolog_does_not_import_yaml_while_the_cache_is_valid(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    rundir = tmp_path / "run"
    cold = hook("prolog", path, rundir, 1, PYTHONPROFILEIMPORTTIME="1")
    warm = hook("prolog", path, rundir, 2, PYTHONPROFILEIMPORTTIME="1")
    assert cold.returncode == warm.returncode == 0, warm.stderr
    assert "yaml" in imported_modules(cold.stderr)  # the first load parses the file
    assert "scratch_stage.host.config" in imported_modules(warm.stderr)
    assert "yaml" not in imported_modules(warm.stderr)
    assert "click" not in imported_modules(warm.stderr)
    path.touch()  # a new mtime: the cache no longer vouches for the file
    touched = hook("prolog", path, rundir, 3, PYTHONPROFILEIMPORTTIME="1")
    assert "yaml" in imported_modules(touched.stderr)


def test_cache_key_is_the_path_and_the_overrides(tmp_path: Path) -> None:
    name = ConfigCache(tmp_path, Path("/etc/a.yaml"), {}).name
    assert ConfigCache(tmp_path / "x", Path("/etc/a.yaml"), {}).name == name
    assert ConfigCache(tmp_path, Path("/etc/b.yaml"), {}).name != name
    assert ConfigCache(tmp_path, Path("/etc/a.yaml"), {"period": "5"}).name != name
