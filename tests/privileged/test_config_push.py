"""A bad configuration push does not drain the node: hooks keep the known-good one.

Real images, real loop mounts; the CLI runs as Slurm runs it. The node's runtime
directory (its /run/scratch-stage) is the tree's own, through SCRATCH_STAGE_RUNDIR.
"""

from __future__ import annotations

import os
import stat

from nodetree import NodeEnv, hello_of


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def test_typo_push_keeps_mounting_and_releasing_as_before(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.add_image("beta")
    first = node_env.prolog(1, comment="datasets:alpha")
    assert first.returncode == 0, first.stderr
    assert error_lines(first.stderr) == []
    cache_dir = node_env.rundir
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700

    # The push: a typo, and a mountdir change that must not take effect while invalid.
    elsewhere = node_env.root / "other-mnt"
    node_env.configure(capcity="2TB", mountdir=str(elsewhere))
    environ = node_env.job_environ(2, comment="datasets:beta")
    prolog = node_env.run(["--config", str(node_env.config_path), "prolog"], environ)
    check = node_env.cli("config", "check")

    assert prolog.returncode == 0, prolog.stderr
    [line] = error_lines(prolog.stderr)
    assert "job 2" in line and "capcity: unknown key" in line
    assert (node_env.mountdir / "beta" / "hello.txt").read_text() == hello_of("beta")
    assert not elsewhere.exists()
    assert sorted(node_env.state()["jobs"]) == ["1", "2"]
    assert check.returncode == 4
    assert "error: capcity: unknown key (did you mean capacity?)" in check.stdout.splitlines()

    for job in (1, 2):
        epilog = node_env.epilog(job)
        assert epilog.returncode == 0, epilog.stderr
        assert len(error_lines(epilog.stderr)) == 1
    assert node_env.state()["jobs"] == {}

    # Fixed: the new file is validated and used, without an error line.
    node_env.settings.pop("capcity")
    node_env.configure()
    fixed = node_env.prolog(3, comment="datasets:alpha")
    assert fixed.returncode == 0 and error_lines(fixed.stderr) == [], fixed.stderr
    assert (elsewhere / "alpha" / "hello.txt").read_text() == hello_of("alpha")
    assert os.path.ismount(elsewhere / "alpha")
