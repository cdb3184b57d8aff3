"""`install-site-files`: the templates written for a chosen installation, nothing lost."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from scratch_stage.agent.site_files import (
    MANIFEST,
    SITE_DIR,
    install_site_files,
    render,
    site_templates,
)
from scratch_stage.cli import run_cli
from scratch_stage.core.errors import ScratchStageError

REPO = Path(__file__).resolve().parents[2]
EXE, CONF = "/opt/site/venv/bin/scratch-stage", "/etc/site/scratch-stage.yaml"
EXPECTED = {
    "config.example.yaml": "scratch_stage/config.example.yaml",
    "slurm/prolog.sh": "slurm/prolog.sh",
    "slurm/epilog.sh": "slurm/epilog.sh",
    "slurm/job_submit.lua": "slurm/job_submit.lua",
    "slurm/slurm.conf.snippet": "slurm/slurm.conf.snippet",
    "systemd/scratch-stage.service": "slurm/systemd/scratch-stage.service",
    "systemd/scratch-stage-rebalance.service": "slurm/systemd/scratch-stage-rebalance.service",
    "systemd/scratch-stage-rebalance.timer": "slurm/systemd/scratch-stage-rebalance.timer",
    "systemd/scratch-stage-demand.service": "slurm/systemd/scratch-stage-demand.service",
    "systemd/scratch-stage-demand.timer": "slurm/systemd/scratch-stage-demand.timer",
    "spank/Makefile": "spank_config/Makefile",
    "spank/README.md": "spank_config/README.md",
    "spank/plugstack.conf": "spank_config/plugstack.conf",
    "spank/scratch_stage_spank.c": "spank_config/scratch_stage_spank.c",
}


def install(dest: Path, **kw: bool) -> dict[str, str]:
    written = install_site_files(dest, executable=EXE, config=CONF, **kw)
    return {str(w.path.relative_to(dest)): w.action for w in written}


def test_one_copy_of_each_file_in_the_tree() -> None:
    # scratch_stage/site holds links to the files in slurm/ and spank_config/, no copies.
    assert site_templates() == sorted(EXPECTED)
    for rel, source in EXPECTED.items():
        assert (SITE_DIR / rel).is_symlink(), rel
        assert (SITE_DIR / rel).resolve() == (REPO / source).resolve(), rel


def test_written_with_the_paths_and_modes(tmp_path: Path) -> None:
    dest = tmp_path / "site"
    assert install(dest) == dict.fromkeys(EXPECTED, "wrote")
    for rel in EXPECTED:
        st = os.stat(dest / rel)
        assert stat.S_IMODE(st.st_mode) == (0o755 if rel.endswith(".sh") else 0o644), rel
        assert "@SCRATCH_STAGE@" not in (dest / rel).read_text(), rel
        assert "@CONFIG@" not in (dest / rel).read_text(), rel
    last = (dest / "slurm/prolog.sh").read_text().splitlines()[-1]
    assert last == f"exec {EXE} --config {CONF} prolog"
    unit = (dest / "systemd/scratch-stage.service").read_text()
    assert f"\nExecStart={EXE} --config {CONF} daemon\n" in unit
    # files without placeholders are copied as they are
    assert (dest / "slurm/job_submit.lua").read_bytes() == (
        REPO / "slurm/job_submit.lua"
    ).read_bytes()
    manifest = json.loads((dest / MANIFEST).read_text())
    assert sorted(manifest) == sorted(EXPECTED)


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    install(tmp_path)
    before = {rel: os.stat(tmp_path / rel).st_mtime_ns for rel in EXPECTED}
    assert install(tmp_path) == dict.fromkeys(EXPECTED, "unchanged")
    assert {rel: os.stat(tmp_path / rel).st_mtime_ns for rel in EXPECTED} == before


def test_an_older_version_it_wrote_is_replaced(tmp_path: Path) -> None:
    install(tmp_path)
    # what an earlier version wrote (recorded in the manifest), not touched since
    old = b"#!/bin/sh\nexec /old/bin/scratch-stage prolog\n"
    (tmp_path / "slurm/prolog.sh").write_bytes(old)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    import hashlib

    manifest["slurm/prolog.sh"] = hashlib.sha256(old).hexdigest()
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    actions = install(tmp_path)
    assert actions["slurm/prolog.sh"] == "replaced"
    assert EXE in (tmp_path / "slurm/prolog.sh").read_text()


def test_an_administrators_edit_is_kept_and_nothing_is_written(tmp_path: Path) -> None:
    install(tmp_path)
    unit = tmp_path / "systemd/scratch-stage.service"
    edited = unit.read_text() + "# site: our own note\n"
    unit.write_text(edited)
    (tmp_path / "slurm/epilog.sh").unlink()
    with pytest.raises(ScratchStageError) as e:
        install(tmp_path)
    assert str(e.value) == (
        f"{unit} differs from what install-site-files wrote there: not overwritten "
        "(--force replaces it); nothing written"
    )
    assert unit.read_text() == edited
    assert not (tmp_path / "slurm/epilog.sh").exists()  # nothing written at all
    assert install(tmp_path, force=True)["systemd/scratch-stage.service"] == "forced"
    assert "our own note" not in unit.read_text()


def test_a_file_it_did_not_write_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm/prolog.sh").write_text("#!/bin/sh\n# the site's own prolog\n")
    with pytest.raises(ScratchStageError, match="differs from what install-site-files"):
        install(tmp_path)
    assert "site's own" in (tmp_path / "slurm/prolog.sh").read_text()


def test_a_symlink_in_dest_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "site/slurm").mkdir(parents=True)
    (tmp_path / "site/slurm/prolog.sh").symlink_to(victim)
    with pytest.raises(ScratchStageError, match="is not a regular file: not replaced"):
        install(tmp_path / "site", force=True)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    "bad", ["relative/bin", "/opt/a b/scratch-stage", "/opt/%h/bin", "/opt/x;rm -rf /", "/a/../b"]
)
def test_paths_that_would_not_survive_a_unit_or_a_shell_are_refused(
    tmp_path: Path, bad: str
) -> None:
    with pytest.raises(ScratchStageError, match="must be an absolute path"):
        install_site_files(tmp_path, executable=bad, config=CONF)
    with pytest.raises(ScratchStageError, match="--config"):
        install_site_files(tmp_path, executable=EXE, config=bad)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_placeholder_is_a_bug_not_a_silent_file() -> None:
    with pytest.raises(ScratchStageError, match="unknown placeholder @PREFIX@"):
        render("exec @SCRATCH_STAGE@ @PREFIX@\n", {"@SCRATCH_STAGE@": EXE}, "x")


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["install-site-files", str(tmp_path / "s"), "--prefix", "/opt/p"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == len(EXPECTED)
    assert f"wrote {tmp_path}/s/slurm/prolog.sh (0755)" in out
    prolog = (tmp_path / "s/slurm/prolog.sh").read_text()
    assert "exec /opt/p/bin/scratch-stage --config /etc/scratch-stage/config.yaml prolog" in prolog
    code = run_cli(["install-site-files", str(tmp_path / "t"), "--prefix", "/a", "--bin", "/b"])
    assert code == 2 and "not both" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
