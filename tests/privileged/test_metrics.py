"""The metrics file after a real workload, read back with Prometheus' parser; and a real
unprivileged user who tries to make it lie, or to learn private facts from it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from nodetree import BLOB_SIZE, CLI, NodeEnv
from prometheus_client.parser import text_string_to_metric_families
from test_rebalance import drop_caches, read_all

from scratch_stage.host.metrics import METRICS_FILE

NOBODY = 65534
AS_NOBODY = ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, through prometheus_client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_rebalance_writes_metrics_that_match_the_workload(
    node_env: NodeEnv, textfile_dir: Path
) -> None:
    node = node_env
    node.configure(capacity=800_000, demand={"source": "none"}, metrics_dir=str(textfile_dir))
    node.add_image("a")
    node.add_image("b.v2+x")
    done = node.prolog(4242, comment="datasets:a,nope", user="nobody", uid=NOBODY, gid=NOBODY)
    assert done.returncode == 0, done.stderr
    drop_caches()
    read_all(node.mountdir / "a")
    assert node.cli("rebalance").returncode == 0

    path = textfile_dir / METRICS_FILE
    st = path.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o644)
    text = path.read_text()
    samples = parse(text)
    assert BLOB_SIZE <= value(samples, "scratch_stage_read_bytes_total", dataset="a",
                              layer="slow") <= 2 * BLOB_SIZE  # fmt: skip
    assert value(samples, "scratch_stage_read_bytes_total", dataset="a", layer="cached") == 0
    assert value(samples, "scratch_stage_job_starts_total", dataset="a", layer="slow") == 1
    assert value(samples, "scratch_stage_refusals_total", reason="unavailable") == 1
    assert value(samples, "scratch_stage_dataset_mounted", dataset="a") == 1
    assert value(samples, "scratch_stage_dataset_mounted", dataset="b.v2+x") == 0
    assert value(samples, "scratch_stage_rebalance_passes_total") == 1
    assert value(samples, "scratch_stage_last_rebalance_success") == 1
    assert value(samples, "scratch_stage_cache_capacity_bytes") == 800_000
    # private facts never reach the world-readable file
    assert "4242" not in text and "nobody" not in text and "nope" not in text

    assert node.cli("prestage", "a").returncode == 0
    drop_caches()
    read_all(node.mountdir / "a")  # from the cached copy, counted by metrics itself
    written = node.cli("metrics", "--write")
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == f"wrote {path}"
    samples = parse(path.read_text())
    size = (node.datadir / "a.sqfs").stat().st_size
    assert value(samples, "scratch_stage_copied_bytes_total", dataset="a") == size
    assert value(samples, "scratch_stage_copies_finished_total", dataset="a") == 1
    assert value(samples, "scratch_stage_dataset_cached", dataset="a") == 1
    cached = value(samples, "scratch_stage_read_bytes_total", dataset="a", layer="cached")
    assert BLOB_SIZE <= cached <= 2 * BLOB_SIZE
    printed = node.cli("metrics")
    assert printed.returncode == 0 and parse(printed.stdout) == samples


def test_a_user_cannot_make_the_metrics_file_lie(node_env: NodeEnv, textfile_dir: Path) -> None:
    node = node_env
    node.configure(demand={"source": "none"}, metrics_dir=str(textfile_dir))
    path = textfile_dir / METRICS_FILE
    # A file left from when the directory was looser, owned by the user, who keeps it open
    # and writes lies into it after our write.
    path.write_text("")
    os.chown(path, NOBODY, NOBODY)
    liar = subprocess.Popen(
        [*AS_NOBODY, "/bin/sh", "-c", f"exec 3>>{path}; read go; echo scratch_stage_lie 1 >&3"],
        stdin=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert node.cli("rebalance").returncode == 0
        liar.communicate("go\n", timeout=30)
    finally:
        if liar.poll() is None:
            liar.kill()
            liar.wait()
    st = path.stat()
    assert st.st_uid == 0 and "scratch_stage_lie" not in path.read_text()
    assert "scratch_stage_rebalance_passes_total 1" in path.read_text()

    # The user cannot add a file, nor swap ours for a link to theirs.
    for argv in (["/bin/sh", "-c", f"echo scratch_stage_lie 1 > {textfile_dir}/x.prom"],
                 ["/bin/ln", "-sf", "/dev/null", str(path)]):  # fmt: skip
        tried = subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=30)
        assert tried.returncode != 0 and "Permission denied" in tried.stderr
    # Run by the user with the node's configuration: nothing is written.
    before = path.read_bytes()
    tried = subprocess.run(
        [*AS_NOBODY, str(CLI), "metrics", "--write"], capture_output=True, text=True,
        env=node.admin_environ(), cwd="/", timeout=60,
    )  # fmt: skip
    assert tried.returncode != 0 and len(tried.stderr.strip().splitlines()) == 1, tried.stderr
    assert path.read_bytes() == before and path.stat().st_uid == 0


def test_a_directory_others_may_write_is_refused_and_the_pass_goes_on(
    node_env: NodeEnv, textfile_dir: Path
) -> None:
    node = node_env
    textfile_dir.chmod(0o1777)
    planted = subprocess.run(
        [*AS_NOBODY, "/bin/ln", "-s", "/etc/shadow", str(textfile_dir / METRICS_FILE)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert planted.returncode == 0, planted.stderr
    node.configure(demand={"source": "none"}, metrics_dir=str(textfile_dir))
    done = node.cli("rebalance")
    assert done.returncode == 0, done.stderr
    assert "metrics not written" in done.stderr and "writable by group or others" in done.stderr
    assert (textfile_dir / METRICS_FILE).is_symlink()  # untouched, and /etc/shadow too
    refused = node.cli("metrics", "--write")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1


def test_hostile_file_names_in_datadir_cannot_inject_series(
    node_env: NodeEnv, textfile_dir: Path
) -> None:
    node = node_env
    node.datadir.chmod(0o1777)  # open to data owners, sticky
    node.configure(demand={"source": "none"}, metrics_dir=str(textfile_dir))
    node.add_image("a+b.c-d_e")
    hostile = ['x"} 1\nscratch_stage_lie{a="b.sqfs', "evil\\\\.sqfs", 'q"uote.sqfs',
               "new\nline.sqfs"]  # fmt: skip
    for name in hostile:
        made = subprocess.run(
            [*AS_NOBODY, "/bin/cp", "a+b.c-d_e.sqfs", name],
            cwd=node.datadir, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    done = node.prolog(5, comment='datasets:q"uote,a+b.c-d_e', user="nobody", uid=NOBODY,
                       gid=NOBODY)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert node.cli("rebalance").returncode == 0
    text = (textfile_dir / METRICS_FILE).read_text()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "scratch_stage_lie" not in families and "scratch_stage_lie" not in text
    labels = {v for s in parse(text) for k, v in s[1] if k == "dataset"}
    assert labels == {"a+b.c-d_e"}  # only the valid name; the others never became datasets
    assert value(parse(text), "scratch_stage_refusals_total", reason="invalid_name") == 1
