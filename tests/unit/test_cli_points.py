"""Each point of "a CLI that reads like a finished tool" (issue 11), as it was observed.

One test per observation, run through `cli.run_cli` on the node tree of `cli_tree`; the
attacker's view runs the real console script as nobody.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scratch_stage.core.expected import UNPLACED_CAP
from scratch_stage.slurm.demand import PendingJob, Snapshot
from tests.unit.cli_tree import MIB, NOW, CliTree, build_tree, open_tree

PYTHON_REPRS = re.compile(r"\b(None|True|False)\b|\[\]|\{\}")


@pytest.fixture
def tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliTree]:
    yield from open_tree(tmp_path, capsys, monkeypatch)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def configure(tree: CliTree, **changes: str) -> None:
    """Replace (or add) top-level keys of the tree's config.yaml."""
    lines = [
        line
        for line in tree.config.read_text().splitlines()
        if line.split(":", 1)[0] not in changes
    ]
    lines += [f"{key}: {value}" for key, value in changes.items()]
    tree.config.write_text("\n".join(lines) + "\n")


# --- info -------------------------------------------------------------------------------


def test_info_prints_no_python_reprs_and_labels_the_fingerprint(tree: CliTree) -> None:
    for name in ("alpha", "beta", "gamma"):
        code, out, _ = tree.run("info", name)
        assert code == 0
        assert not PYTHON_REPRS.search(out), out
        assert "pin_expires" not in out and "cached_fingerprint" not in out
    _, out, _ = tree.run("info", "gamma")
    assert "pinned:            no" in out and "pin expires:       -" in out
    assert re.search(r"image fingerprint: size 65536 B, mtime 2026-09-21 14:13:20, inode ", out)
    _, out, _ = tree.run("info", "beta")
    assert "pin expires:       2027-01-17 08:00:00 (in 2d)" in out


# --- units ------------------------------------------------------------------------------


def test_value_heat_and_demand_have_units_in_status_and_explain(tree: CliTree) -> None:
    _, status, _ = tree.run("status")
    _, explain, _ = tree.run("rebalance", "--dry-run", "--explain")
    for text in (status, explain):
        assert "e+" not in text and "e-" not in text  # no 1e+06
    row = {line.split()[0]: line.split("  ") for line in status.splitlines()[1:4]}
    assert "1.5 MiB/s" in status and "1.2 MiB" in status
    assert "+3.5 GiB" in " ".join(row["alpha"]) and "-64.0 KiB" in " ".join(row["gamma"])
    assert "VALUE: slow reads a cached copy saves" in status  # the meaning, documented
    assert "DEMAND: bytes queued jobs are expected to read" in status
    assert "gamma: none: not worth a copy: value -64.0 KiB (heat 0 B/s, demand 0 B)" in (explain)
    # Sizes are never negative: only VALUE (a saving) carries a sign.
    assert not re.search(r"(?<![\w+])-\d[\d.]* (B|KiB|MiB|GiB)\b(?!.*VALUE)", status.split("\n")[4])


def test_pin_ttl_answers_in_the_units_it_was_given(tree: CliTree) -> None:
    code, out, _ = tree.run("pin", "gamma", "--ttl", "2d")
    assert (code, out) == (0, "gamma: pinned for 2d (until 2027-01-17 08:00:00)\n")
    _, out, _ = tree.run("pin", "gamma", "--ttl", "90m")
    assert out.startswith("gamma: pinned for 1h30m (")
    _, out, _ = tree.run("pin", "gamma")
    assert out == "gamma: pinned until unpinned\n"


# --- catalog ----------------------------------------------------------------------------


def test_catalog_has_a_header(tree: CliTree) -> None:
    _, out, err = tree.run("catalog")
    assert out.splitlines()[0].split() == ["NAME", "SIZE", "IMAGE"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["alpha", "beta", "gamma"]
    assert one_line(err).startswith("problem: junk.sqfs: ")


# --- config check -----------------------------------------------------------------------


def test_config_check_exits_4_for_missing_directories(tree: CliTree) -> None:
    configure(tree, datadir=str(tree.root / "no-data"), cachedir=str(tree.root / "no-cache"))
    code, out, err = tree.run("config", "check")
    assert code == 4 and err == ""
    *problems, demand, summary = out.splitlines()
    assert problems == [
        "error: datadir: <root>/no-data cannot be used: No such file or directory",
        "error: cachedir: <root>/no-cache cannot be used: No such file or directory",
    ]
    assert demand.startswith("demand: ")  # the active source, before the summary
    assert summary == "<root>/config.yaml: 2 error(s)"


def test_config_check_exits_4_for_parse_errors_with_everything_on_stdout(tree: CliTree) -> None:
    tree.config.write_text("datadir: [unclosed\n")
    code, out, err = tree.run("config", "check")
    assert code == 4 and err == ""
    problem, summary = out.splitlines()
    assert problem.startswith("error: configuration <root>/config.yaml line ")
    assert summary == "<root>/config.yaml: 1 error(s)"


def test_config_check_six_problems_are_six_lines(tree: CliTree) -> None:
    configure(
        tree, capcity="2TB", verify="md5", hysteresis="high", period="soon",
        interval="[1, 2]", node_features="maybe",
    )  # fmt: skip
    code, out, err = tree.run("config", "check")
    assert code == 4 and err == ""
    *problems, summary = out.splitlines()
    assert len(problems) == 6 and all(p.startswith("error: ") for p in problems)
    assert summary.endswith(": 6 error(s)")
    assert max(len(p) for p in problems) < 120


def test_config_check_suggests_the_key_meant(tree: CliTree) -> None:
    configure(tree, capcity="2TB", chunksize="8MiB", zzz="1")
    _, out, _ = tree.run("config", "check")
    assert "error: capcity: unknown key (did you mean capacity?)" in out.splitlines()
    assert "error: chunksize: unknown key (did you mean chunk_size?)" in out.splitlines()
    assert "error: zzz: unknown key" in out.splitlines()  # nothing close: no guess


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("hysteresis", "high", "error: hysteresis: must be a number between 0 and 10, got 'high'"),
        ("interval", "[1]", "error: interval: not a duration: [1] (use s, m, h, d, w)"),
        ("bandwidth", "[1]", "error: bandwidth: not a size: [1] (use B, KB, MB, GB, TB, KiB, "),
        ("demand", "{source: file, path: /x, max_age: high}",
         "error: demand.max_age: not a duration: 'high'"),
    ],
)  # fmt: skip
def test_config_check_shows_no_raw_python_error(
    tree: CliTree, key: str, value: str, expected: str
) -> None:
    configure(tree, **{key: value})
    code, out, _ = tree.run("config", "check")
    assert code == 4
    assert out.splitlines()[0].startswith(expected), out
    assert "could not convert" not in out and "expected string" not in out


def test_other_commands_name_every_configuration_problem_in_one_line(tree: CliTree) -> None:
    configure(tree, capcity="2TB", verify="md5", hysteresis="high")
    code, _, err = tree.run("status")
    assert code == 4
    line = one_line(err)
    assert line.startswith("scratch-stage: error: invalid configuration <root>/config.yaml: ")
    assert "capcity: unknown key (did you mean capacity?); verify: " in line
    assert "hysteresis: must be a number between 0 and 10, got 'high'" in line


# --- demand, usage, help ----------------------------------------------------------------


@pytest.mark.parametrize("squeue", ["/nonexistent/squeue", "/bin/false"])
def test_demand_without_slurm_is_one_clear_line(tree: CliTree, squeue: str) -> None:
    configure(tree, demand="{source: squeue}", squeue_command=squeue)
    code, out, err = tree.run("demand")
    assert (code, out) == (1, "")
    line = one_line(err)
    assert line.startswith("scratch-stage: error: Slurm's queue cannot be read: ")
    assert "warning" not in line.lower()


def test_demand_source_none_is_one_clear_line(tree: CliTree) -> None:
    code, _, err = tree.run("demand")
    assert code == 1
    assert one_line(err) == (
        "scratch-stage: error: no demand to show: the configuration sets demand: {source: none}"
    )


def test_demand_shows_this_nodes_expected_bytes_and_whence(tree: CliTree) -> None:
    """`demand` shows, next to the jobs, the bytes the planner weighs: beta by this node's
    history (3 MiB per job: 3 passes), gamma by the prior (one pass); --json adds them
    to the fields it had. A user who is not root sees the prior (the counters are root's)."""
    published = tree.root / "demand.json"
    soon = NOW + 600  # both jobs due in ten minutes, a one-hour limit
    jobs = (
        PendingJob("1", ("p",), 10, 1, soon, ("node7",), ("beta",), 3600.0),
        PendingJob("2", ("p",), 10, 1, None, (), ("gamma",), 3600.0),
        PendingJob("3", ("p",), 10, 1, soon, ("node8",), ("beta",), 3600.0),  # elsewhere
    )
    snapshot = Snapshot(jobs, {"p": ("node7", "node8")}, NOW)
    published.write_text(json.dumps(snapshot.to_json()))
    configure(tree, demand=f"{{source: file, path: {published}}}")
    with tree.node().store.transaction() as state:
        state.counters.add("beta", "read_slow_bytes", 3 * MIB)
        state.counters.add("beta", "jobs_slow", 1)

    code, out, err = tree.run("demand", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["pending_jobs"] == {"beta": 2, "gamma": 1}  # the fields of before stay
    soon_weight = math.exp(-600 / 3600)
    assert data["node_demand"] == pytest.approx({"beta": soon_weight, "gamma": 0.5 / math.e})
    assert data["per_job"]["beta"] == {"bytes": 3 * MIB, "passes": 3.0, "basis": "history"}
    assert data["per_job"]["gamma"] == {"bytes": 64 * 1024, "passes": 1.0, "basis": "prior"}
    # both land long before the jobs start: every byte counts
    assert data["node_demand_bytes"] == pytest.approx(
        {"beta": soon_weight * 3 * MIB, "gamma": 0.5 / math.e * 64 * 1024}
    )
    assert data["node_prospect_bytes"] == pytest.approx({"beta": 3 * MIB, "gamma": 32 * 1024})
    assert data["history"] is True

    code, out, _ = tree.run("demand")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["DATASET", "PENDING", "JOBS", "DEMAND", "ON", "node7",
                              "EXPECTED", "BYTES", "PER", "JOB"]  # fmt: skip
    assert rows[0].split()[:5] == ["beta", "2", "0.85", "jobs", "2.5"]
    assert rows[0].endswith("3.0 MiB, 3.00 passes (history)")
    assert rows[1].endswith("64.0 KiB, 1.00 passes (prior)")

    code, out, err = tree.run("demand", "--json", euid=65534)
    assert code == 0, err
    data = json.loads(out)
    assert data["history"] is False
    assert data["per_job"]["beta"]["basis"] == "prior"
    assert data["node_demand_bytes"]["beta"] == pytest.approx(soon_weight * MIB)


def test_demand_says_when_the_cap_on_unplaced_jobs_applies(tree: CliTree) -> None:
    # ten unplaced jobs on gamma over two nodes: 5 jobs' shares, scaled to UNPLACED_CAP
    published = tree.root / "demand.json"
    jobs = tuple(PendingJob(str(i), ("p",), 10, 1, None, (), ("gamma",)) for i in range(10))
    published.write_text(json.dumps(Snapshot(jobs, {"p": ("node7", "node8")}, NOW).to_json()))
    configure(tree, demand=f"{{source: file, path: {published}}}")
    code, out, err = tree.run("demand", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["unplaced_scale"] == {"gamma": pytest.approx(UNPLACED_CAP / 5)}
    assert data["node_demand"]["gamma"] == pytest.approx(UNPLACED_CAP / math.e)
    code, out, _ = tree.run("demand")
    assert code == 0 and f"unplaced jobs x{UNPLACED_CAP / 5:.2g} (cap)" in out


@pytest.mark.parametrize(("args", "group"), [(["config"], "config"), (["image"], "image")])
def test_a_group_alone_prints_one_clean_usage_line(
    tree: CliTree, args: list[str], group: str
) -> None:
    code, out, err = tree.run(*args)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert "Usage:" not in line
    assert line.startswith(f"scratch-stage: usage: 'scratch-stage {group}' needs a command: ")


def test_help_is_grouped_with_examples_config_path_and_exit_codes(tree: CliTree) -> None:
    code, out, _ = tree.run("--help")
    assert code == 0
    sections = [line[:-1] for line in out.splitlines() if line.endswith(":") and line[0] != " "]
    assert sections == [
        "Options", "Look", "Act on this node's cache", "Set up", "Run by Slurm and systemd",
        "Offline tools",
    ]  # fmt: skip
    offline = out.split("Offline tools:")[1]
    assert "simulate" in offline and "simulate" not in out.split("Offline tools:")[0]
    assert "Examples:" in out and "$SCRATCH_STAGE_CONFIG" in out
    assert "/etc/scratch-stage/config.yaml" in out
    assert "Exit codes: 0 ok, 1 error, 2 usage, 3 internal bug, 4 configuration," in out
    assert "..." not in out.split("\n", 1)[1]  # no truncated summary (below the usage line)


def test_a_mistyped_command_gets_a_suggestion(tree: CliTree) -> None:
    code, _, err = tree.run("stauts")
    assert code == 2
    assert "Did you mean 'status'?" in one_line(err)


@pytest.mark.parametrize(
    "args",
    [
        ["info", "nosuch"], ["info", "../x"], ["pin", "nosuch"], ["pin", "gamma", "--ttl", "-1d"],
        ["unpin", "gamma"], ["purge", "alpha"], ["purge", "beta"], ["purge"],
        ["purge", "beta", "--all"], ["release", "77"], ["demand"], ["config"],
        ["config", "nope"], ["image"], ["image", "build", "/nonexistent", "x"], ["stauts"],
        ["status", "--bogus"], ["prestage"], ["rebalance", "--nope"], ["catalog", "extra"],
        ["prestage", "nosuch"], ["simulate"], ["simulate", "/nonexistent"], ["metrics", "--write"],
        ["cluster", "--window", "soon"], ["install-site-files"], ["config", "show", "--bogus"],
        ["release"], ["demand", "--publish", "/nonexistent/x.json"],
    ],
)  # fmt: skip
def test_every_error_is_one_line(tree: CliTree, args: list[str]) -> None:
    code, out, err = tree.run(*args)
    assert code in (1, 2, 4), (code, err)
    assert out == ""
    assert one_line(err).startswith("scratch-stage: ")


# --- prestage ---------------------------------------------------------------------------


def test_prestage_progress_lines_show_throughput_and_time_left() -> None:
    from scratch_stage.cli import ProgressLines

    said: list[str] = []
    now = [100.0]
    report = ProgressLines("alpha", said.append, clock=lambda: now[0])
    report(0, 100 * MIB)
    now[0] += 2
    report(20 * MIB, 100 * MIB)
    report(21 * MIB, 100 * MIB)  # same tenth: no line
    now[0] += 8
    report(100 * MIB, 100 * MIB)
    assert said == [
        "alpha: 0% of 100.0 MiB",
        "alpha: 20% of 100.0 MiB, 10.0 MiB/s, 8s left",
        "alpha: 100% of 100.0 MiB, 10.0 MiB/s, done",
    ]


# --- the attacker's view ----------------------------------------------------------------

SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
HOSTILE_FILE = "\x1b]0;owned\x07\x1b[2Jx.sqfs"


@pytest.fixture
def public_tree(capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    """The node tree where nobody can reach it (pytest's own directories are 0700)."""
    if os.geteuid() != 0 or not os.access(SETPRIV, os.X_OK):
        pytest.skip("running a command as another user needs root and setpriv (util-linux)")
    with tempfile.TemporaryDirectory(prefix="scratch-stage-cli-") as top:
        os.chmod(top, 0o755)
        root = Path(top) / "node"
        root.mkdir(mode=0o755)
        build_tree(root)
        (root / "data" / HOSTILE_FILE).write_bytes(b"junk")
        (root / "config.yaml").chmod(0o644)
        yield root


def as_nobody(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "--",
         sys.executable, "-m", "scratch_stage", "--config", str(root / "config.yaml"), *args],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SCRATCH_STAGE_RUNDIR": str(root / "run")},
    )  # fmt: skip


def test_a_user_sees_only_the_public_summary_with_names_escaped(public_tree: Path) -> None:
    root = public_tree
    private = ("4242", "alice", "no space left", "junk", "recovered")
    for args in (["status"], ["status", "--json"], ["info", "alpha"], ["info", "gamma"],
                 ["catalog"], ["catalog", "--json"]):  # fmt: skip
        done = as_nobody(root, *args)
        assert done.returncode == 0, (args, done.stderr)
        for secret in private:
            assert secret not in done.stdout + done.stderr, (args, secret)
        assert "\x1b" not in done.stdout + done.stderr
    status = as_nobody(root, "status").stdout
    assert status.splitlines()[0].split() == ["NAME", "SIZE", "STATE", "CACHED"]
    assert "HOLDERS" not in status and "VALUE" not in status
    # What the user types comes back escaped, in one line.
    done = as_nobody(root, "info", "\x1b[2Jevil\nforged")
    assert done.returncode == 1 and "\x1b" not in done.stderr
    assert one_line(done.stderr).startswith("scratch-stage: error: ")
    # Nor can the user act: pin, purge, publish, release are refused in one line.
    for args in (["pin", "alpha"], ["purge", "--all"], ["release", "4242"],
                 ["catalog", "--publish", str(root / "run" / "c.txt")]):  # fmt: skip
        done = as_nobody(root, *args)
        assert done.returncode != 0, args
        assert one_line(done.stderr).startswith("scratch-stage: error: ")


def test_a_user_cannot_make_a_simulator_policy_value_the_node(public_tree: Path) -> None:
    # The queue oracle (true future reads of submitted jobs) is for replays only: naming
    # it, or anything of the simulator, as the valuation is refused in one line.
    for spec in ("scratch_stage.simulate.policies:QueueOracle", "scratch_stage.simulate.x:f"):
        done = subprocess.run(
            [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             sys.executable, "-m", "scratch_stage", "--config",
             str(public_tree / "config.yaml"), "rebalance", "--dry-run", "--explain"],
            capture_output=True, text=True, timeout=60, cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                 "SCRATCH_STAGE_RUNDIR": str(public_tree / "run"),
                 "SCRATCH_STAGE_VALUE_FUNCTION": spec},
        )  # fmt: skip
        assert done.returncode != 0 and done.stdout == ""
        line = one_line(done.stderr)
        assert line.startswith("scratch-stage: error: ") and "value_function" in line
        assert "only run in replays" in line


def test_root_sees_hostile_file_names_escaped(public_tree: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scratch_stage", "--config", str(public_tree / "config.yaml"),
         "catalog"], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SCRATCH_STAGE_RUNDIR": str(public_tree / "run")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stderr
    assert "problem: \\x1b]0;owned\\x07\\x1b[2Jx.sqfs: " in done.stderr


# --- what a pass and a copy did: typed records, formatted only here ----------------------


def test_done_and_failed_records_read_as_sentences() -> None:
    from scratch_stage.cli import format_done, format_failed
    from scratch_stage.policy.report import DoneRecord, FailedRecord

    assert format_done(DoneRecord("copied", "a", "mounted cached copy over 1 layer(s)")) == (
        "copied a, mounted cached copy over 1 layer(s)"
    )
    assert format_done(DoneRecord("already-cached", "a")) == "a already cached and mounted"
    assert format_done(DoneRecord("evicted", "b", "not worth a copy")) == (
        "evicted b (not worth a copy)"
    )
    assert format_done(DoneRecord("unmounted", "c", "idle")) == "unmounted c (idle)"
    assert format_done(DoneRecord("features", None, "ds_a,ds_b")) == "features: ds_a,ds_b"
    assert format_failed(FailedRecord("stage", "a", "no space")) == "stage a: no space"
    assert format_failed(FailedRecord("features", None, "scontrol: x")) == (
        "node features: scontrol: x"
    )


def test_a_stage_outcome_reads_as_one_line() -> None:
    from pathlib import Path

    from scratch_stage.agent.mounts import MountStep
    from scratch_stage.agent.stager import Staged
    from scratch_stage.cli import format_staged

    over = MountStep("a", Path("/c/a.sqfs"), cached=True, replace=0, below=1)
    assert (
        format_staged(Staged("a", True, over)) == "a: copied, mounted cached copy over 1 layer(s)"
    )
    assert format_staged(Staged("a", False, None)) == "a: already cached and mounted"
    assert format_staged(Staged("a", True, None)) == "a: copied, already mounted"
