"""Prolog and epilog with real images and loop mounts (docs/design.md)."""

from __future__ import annotations

import json

from nodetree import NodeEnv, blob_of, hello_of, loops_under, stack_at


def test_prolog_mounts_slow_image_readable(node_env: NodeEnv) -> None:
    image = node_env.add_image("alpha")

    done = node_env.prolog(11, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    mountpoint = node_env.mountdir / "alpha"
    assert (mountpoint / "hello.txt").read_text() == hello_of("alpha")
    assert (mountpoint / "blob.bin").read_bytes() == blob_of("alpha")
    assert node_env.backings("alpha") == [str(image)]
    options = node_env.stack("alpha")[0].options.split(",")
    assert "ro" in options


def test_prolog_with_minimal_slurm_environment_and_no_path(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    environ = {
        "SLURM_JOB_ID": "12",
        "SLURM_JOB_USER": "root",
        "SLURM_JOB_UID": "0",
        "SLURM_JOB_GID": "0",
        "SLURM_JOB_COMMENT": "datasets:alpha",
        "SCRATCH_STAGE_CONFIG": str(node_env.config_path),
    }

    done = node_env.run(["prolog"], environ)

    assert done.returncode == 0, done.stderr
    assert (node_env.mountdir / "alpha" / "hello.txt").read_text() == hello_of("alpha")
    assert node_env.holders() == {"alpha": ["12"]}


def test_second_job_shares_the_mount(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.add_image("beta")

    first = node_env.prolog(11, comment="run=7 datasets:alpha,beta note")
    second = node_env.prolog(12, spank="alpha")

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert len(node_env.stack("alpha")) == 1
    assert len(node_env.stack("beta")) == 1
    status = node_env.status()
    assert {"capacity_bytes", "used_bytes", "datasets"} <= set(status)
    rows = {d["name"]: d for d in status["datasets"]}
    assert {"name", "size", "state", "cached", "holders", "pinned"} <= set(rows["alpha"])
    assert rows["alpha"]["holders"] == ["11", "12"]
    assert rows["beta"]["holders"] == ["11"]
    assert rows["alpha"]["state"] == "mounted"
    assert rows["alpha"]["cached"] is False


def test_comment_and_spank_requests_are_united_and_deduplicated(node_env: NodeEnv) -> None:
    for name in ("alpha", "beta", "gamma"):
        node_env.add_image(name)

    done = node_env.prolog(5, comment="datasets:alpha,beta,alpha", spank="beta, gamma")

    assert done.returncode == 0, done.stderr
    assert node_env.holders() == {"alpha": ["5"], "beta": ["5"], "gamma": ["5"]}
    assert node_env.state()["jobs"]["5"][0] == ["alpha", "beta", "gamma"]
    assert all(len(node_env.stack(n)) == 1 for n in ("alpha", "beta", "gamma"))


def test_prolog_of_job_without_datasets_needs_no_config(node_env: NodeEnv) -> None:
    environ = {"SLURM_JOB_ID": "3", "SLURM_JOB_COMMENT": "just a comment"}
    environ["SCRATCH_STAGE_CONFIG"] = str(node_env.root / "no-such-config.yaml")

    done = node_env.run(["prolog"], environ)

    assert done.returncode == 0, done.stderr
    assert not (node_env.statedir / "state.json").exists()


def test_prolog_again_for_same_job_keeps_one_hold(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.add_image("beta")

    node_env.prolog(7, comment="datasets:alpha")
    done = node_env.prolog(7, comment="datasets:alpha,beta")

    assert done.returncode == 0, done.stderr
    assert node_env.holders() == {"alpha": ["7"], "beta": ["7"]}
    assert len(node_env.stack("alpha")) == 1


def test_epilogs_leave_zero_holders_and_keep_mounts(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.add_image("beta")
    node_env.prolog(11, comment="datasets:alpha,beta")
    node_env.prolog(12, comment="datasets:alpha")

    results = [node_env.epilog(11), node_env.epilog(12)]

    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert node_env.holders() == {}
    assert node_env.state()["jobs"] == {}
    # Mounts stay for the next job; only the rebalance unmounts idle ones.
    assert len(node_env.stack("alpha")) == 1
    released = sorted((e["job"], e["dataset"]) for e in node_env.events("release"))
    assert released == [("11", "alpha"), ("11", "beta"), ("12", "alpha")]


def test_epilog_is_idempotent(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.prolog(11, comment="datasets:alpha")
    assert node_env.epilog(11).returncode == 0

    again = node_env.epilog(11)

    assert again.returncode == 0, again.stderr
    assert node_env.holders() == {}
    assert len(node_env.events("release")) == 1


def test_epilog_of_job_that_held_nothing_exits_0(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.prolog(11, comment="datasets:alpha")

    never_seen = node_env.epilog(99, comment="datasets:alpha")
    no_datasets = node_env.epilog(100)

    assert (never_seen.returncode, no_datasets.returncode) == (0, 0)
    assert node_env.holders() == {"alpha": ["11"]}


def test_epilog_on_fresh_node_exits_0(node_env: NodeEnv) -> None:
    done = node_env.epilog(1, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") <= 1


def test_prolog_stage_budget_serves_cached_copy(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.configure(prolog_stage_budget="60s")

    done = node_env.prolog(11, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    top = node_env.backings("alpha")[-1]
    assert top == str(node_env.cachedir / "alpha.sqfs")
    assert (node_env.mountdir / "alpha" / "blob.bin").read_bytes() == blob_of("alpha")
    assert node_env.holders() == {"alpha": ["11"]}


def test_directories_reached_through_symlinks_mount_once(node_env: NodeEnv) -> None:
    links = node_env.root / "links"
    links.mkdir()
    for key in ("datadir", "cachedir", "mountdir"):
        (links / key).symlink_to(getattr(node_env, key))
    node_env.configure(**{key: str(links / key) for key in ("datadir", "cachedir", "mountdir")})
    node_env.add_image("alpha")

    first = node_env.prolog(11, comment="datasets:alpha")
    second = node_env.prolog(12, comment="datasets:alpha")

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert len(node_env.stack("alpha")) == 1
    assert node_env.holders() == {"alpha": ["11", "12"]}
    assert node_env.cli("prestage", "alpha").returncode == 0
    assert node_env.prolog(13, comment="datasets:alpha").returncode == 0
    assert node_env.backings("alpha") == [
        str(node_env.datadir / "alpha.sqfs"), str(node_env.cachedir / "alpha.sqfs"),
    ]  # fmt: skip
    assert all(node_env.epilog(job).returncode == 0 for job in (11, 12, 13))
    assert node_env.cli("purge", "alpha").returncode == 0
    assert loops_under(node_env.cachedir) == {}  # never deleted while still mounted


def test_dots_are_part_of_the_name_and_squashfs_suffix_works(node_env: NodeEnv) -> None:
    node_env.add_image("imagenet")
    node_env.add_image("imagenet.v2")
    squashfs = node_env.store.get("coco")
    (node_env.datadir / "coco.squashfs").write_bytes(squashfs.read_bytes())

    done = node_env.prolog(11, comment="datasets:imagenet.v2,coco")

    assert done.returncode == 0, done.stderr
    assert sorted(node_env.holders()) == ["coco", "imagenet.v2"]
    assert (node_env.mountdir / "imagenet.v2" / "hello.txt").read_text() == hello_of("imagenet.v2")
    assert node_env.stack("imagenet") == []
    assert node_env.cli("prestage", "coco").returncode == 0
    assert node_env.backings("coco")[-1] == str(node_env.cachedir / "coco.sqfs")


def test_stage_budget_falls_back_to_slow_mount_when_copy_fails(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.configure(prolog_stage_budget="60s", capacity="4KiB")

    done = node_env.prolog(11, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    assert node_env.backings("alpha") == [str(node_env.datadir / "alpha.sqfs")]
    assert node_env.holders() == {"alpha": ["11"]}


def test_directories_with_spaces_mount_once(node_env: NodeEnv) -> None:
    spaced = node_env.root / "with space\tand tab"
    for key in ("datadir", "cachedir", "mountdir"):
        (spaced / key).mkdir(parents=True)
    node_env.configure(**{key: str(spaced / key) for key in ("datadir", "cachedir", "mountdir")})
    (spaced / "datadir" / "alpha.sqfs").write_bytes(node_env.store.get("alpha").read_bytes())

    results = [node_env.prolog(job, comment="datasets:alpha") for job in (11, 12)]
    results.append(node_env.cli("prestage", "alpha"))
    results.append(node_env.prolog(13, comment="datasets:alpha"))

    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    assert [m.backing for m in stack_at(spaced / "mountdir" / "alpha")] == [
        str(spaced / "datadir" / "alpha.sqfs"), str(spaced / "cachedir" / "alpha.sqfs"),
    ]  # fmt: skip
    info = json.loads(node_env.cli("info", "alpha", "--json").stdout)
    assert [layer["backing"] for layer in info["mount_stack"]] == [
        m.backing for m in stack_at(spaced / "mountdir" / "alpha")
    ]
    assert node_env.holders() == {"alpha": ["11", "12", "13"]}
