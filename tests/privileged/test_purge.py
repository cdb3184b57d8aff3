"""`purge`: drop cached copies, never under a running job unless forced (docs/design.md)."""

from __future__ import annotations

import hashlib

from nodetree import NodeEnv, blob_of, hello_of, loops_under, one_line, wait_for


def cached_node(node_env: NodeEnv, *names: str, holder: int | None = None) -> None:
    """NAMES in datadir, held by job HOLDER if given, each cached and mounted over."""
    for name in names:
        node_env.add_image(name)
    if holder is not None:
        done = node_env.prolog(holder, comment="datasets:" + ",".join(names))
        assert done.returncode == 0, done.stderr
    done = node_env.cli("prestage", *names)
    assert done.returncode == 0, done.stderr


def nothing_from_cachedir(node_env: NodeEnv) -> bool:
    return not loops_under(node_env.cachedir)


def test_purge_refuses_held_dataset(node_env: NodeEnv) -> None:
    cached_node(node_env, "alpha", holder=11)
    layers = node_env.backings("alpha")

    done = node_env.cli("purge", "alpha")

    assert done.returncode == 1
    message = one_line(done.stderr)
    assert "held by job(s) 11" in message and "--force" in message
    assert (node_env.cachedir / "alpha.sqfs").exists()
    assert node_env.backings("alpha") == layers
    assert node_env.holders() == {"alpha": ["11"]}


def test_purge_removes_idle_cached_copy(node_env: NodeEnv) -> None:
    cached_node(node_env, "alpha", holder=11)
    assert node_env.epilog(11).returncode == 0

    done = node_env.cli("purge", "alpha")

    assert done.returncode == 0, done.stderr
    assert not (node_env.cachedir / "alpha.sqfs").exists()
    assert nothing_from_cachedir(node_env)
    assert str(node_env.cachedir) not in str(node_env.backings("alpha"))
    row = next(d for d in node_env.status()["datasets"] if d["name"] == "alpha")
    assert row["cached"] is False
    assert [e["dataset"] for e in node_env.events("evict")] == ["alpha"]


def test_purge_of_uncached_dataset_is_an_error(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")

    done = node_env.cli("purge", "alpha")

    assert done.returncode == 1
    assert "no cached copy" in one_line(done.stderr)


def test_forced_purge_keeps_open_file_working_and_serves_slow_image(node_env: NodeEnv) -> None:
    cached_node(node_env, "alpha", holder=11)
    blob = node_env.mountdir / "alpha" / "blob.bin"
    with open(blob, "rb") as opened:  # opened on the cached layer
        head = opened.read(4096)

        done = node_env.cli("purge", "--force", "alpha")

        assert done.returncode == 0, done.stderr
        assert "purged" in one_line(done.stdout)
        rest = opened.read()
    assert hashlib.sha256(head + rest).digest() == hashlib.sha256(blob_of("alpha")).digest()
    assert not (node_env.cachedir / "alpha.sqfs").exists()
    assert node_env.backings("alpha") == [str(node_env.datadir / "alpha.sqfs")]
    assert (node_env.mountdir / "alpha" / "hello.txt").read_text() == hello_of("alpha")
    assert node_env.holders() == {"alpha": ["11"]}
    # Once the open file is closed, the detached cached layer lets go of its loop device.
    wait_for(lambda: nothing_from_cachedir(node_env), timeout=10)


def test_purge_all_keeps_held_ones(node_env: NodeEnv) -> None:
    cached_node(node_env, "alpha", holder=11)
    cached_node(node_env, "beta", holder=12)
    assert node_env.epilog(12).returncode == 0

    done = node_env.cli("purge", "--all")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alpha: kept, held by job(s) 11", "beta: purged"]
    assert (node_env.cachedir / "alpha.sqfs").exists()
    assert not (node_env.cachedir / "beta.sqfs").exists()
    assert node_env.backings("alpha")[-1] == str(node_env.cachedir / "alpha.sqfs")
    assert str(node_env.cachedir) not in str(node_env.backings("beta"))


def test_purge_needs_names_or_all(node_env: NodeEnv) -> None:
    neither = node_env.cli("purge")
    both = node_env.cli("purge", "--all", "alpha")

    assert (neither.returncode, both.returncode) == (2, 2)
    assert "--all" in neither.stderr
