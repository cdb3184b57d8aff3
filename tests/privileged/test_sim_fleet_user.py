"""`simulate-fleet` as a real unprivileged user: it is arithmetic on its options.

It reads no configuration, state, datadir or event log and writes nothing, so there is
nothing for a user to misuse: `nobody` gets exactly root's answer, from a directory it
cannot write, and absurd values end at once with one line or a finite answer.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from nodetree import CLI, admin_environ

NOBODY = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ARGS = ["simulate-fleet", "--nodes", "4", "--nodes", "512", "--json"]


def run(*argv: str, user: list[str]) -> subprocess.CompletedProcess[str]:
    # A configuration path that does not exist: the command must not need one.
    env = admin_environ(SCRATCH_STAGE_CONFIG="/nonexistent/config.yaml")
    return subprocess.run([*user, str(CLI), *argv], env=env, cwd="/", capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def test_nobody_gets_roots_answer_and_touches_nothing() -> None:
    as_root, as_nobody = run(*ARGS, user=[]), run(*ARGS, user=NOBODY)
    assert as_root.returncode == as_nobody.returncode == 0, as_nobody.stderr
    assert as_nobody.stdout == as_root.stdout
    assert as_nobody.stderr == ""
    modes = json.loads(as_nobody.stdout)[1]["modes"]
    assert modes["cooperative"]["ratio"] == 1.0
    assert modes["independent"]["ratio"] == 512.0


def test_absurd_values_from_a_user_end_at_once() -> None:
    huge = run("simulate-fleet", "--nodes", str(10**7), "--size", "999999PB", "--piece", "1",
               "--peer-bandwidth", "1", "--shared-bandwidth", "1", "--json",
               user=NOBODY)  # fmt: skip
    assert huge.returncode == 0, huge.stderr
    seconds = json.loads(huge.stdout)[0]["modes"]["independent"]["seconds"]
    assert seconds == pytest.approx(10**7 * 999999 * 10**15)  # a float, not an overflow
    for option, value in (("--readers", "-3"), ("--nodes", str(10**15)),
                          ("--size", "9" * 400), ("--piece", "0")):  # fmt: skip
        bad = run("simulate-fleet", option, value, user=NOBODY)
        assert bad.returncode == 2, option
        assert len(bad.stderr.splitlines()) == 1 and option in bad.stderr
