"""`prestage`: copy into the cache and mount over, with files already open (docs/design.md)."""

from __future__ import annotations

import hashlib
import os

import pytest
from nodetree import NodeEnv, blob_of, hello_of, one_line


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("verify", ["size", "sha256"])
def test_prestage_mounts_over_while_open_file_keeps_reading(node_env: NodeEnv, verify: str) -> None:
    image = node_env.add_image("alpha")
    node_env.configure(verify=verify)
    assert node_env.prolog(11, comment="datasets:alpha").returncode == 0
    blob = node_env.mountdir / "alpha" / "blob.bin"
    with open(blob, "rb") as before:
        head = before.read(100_000)

        done = node_env.cli("prestage", "alpha")

        assert done.returncode == 0, done.stderr
        rest = before.read()
        slow_dev = os.fstat(before.fileno()).st_dev
    assert sha256(head + rest) == sha256(blob_of("alpha"))
    cached = node_env.cachedir / "alpha.sqfs"
    assert node_env.backings("alpha") == [str(image), str(cached)]
    top = node_env.stack("alpha")[-1]
    # A new open is served by the top layer's loop device, backed by the cached copy.
    assert os.stat(blob).st_dev == os.stat(top.source).st_rdev != slow_dev
    assert sha256(blob.read_bytes()) == sha256(blob_of("alpha"))
    row = next(d for d in node_env.status()["datasets"] if d["name"] == "alpha")
    assert (row["state"], row["cached"], row["holders"]) == ("cached", True, ["11"])
    assert not list((node_env.cachedir / ".partial").iterdir())


def test_prestage_of_unmounted_dataset_mounts_cached_copy(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")

    done = node_env.cli("prestage", "alpha")

    assert done.returncode == 0, done.stderr
    assert node_env.backings("alpha") == [str(node_env.cachedir / "alpha.sqfs")]
    assert node_env.prolog(4, comment="datasets:alpha").returncode == 0
    assert len(node_env.stack("alpha")) == 1


def test_prestage_twice_changes_nothing(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.prolog(11, comment="datasets:alpha")
    assert node_env.cli("prestage", "alpha").returncode == 0
    layers = node_env.backings("alpha")

    again = node_env.cli("prestage", "alpha")

    assert again.returncode == 0, again.stderr
    assert "already cached" in again.stdout
    assert node_env.backings("alpha") == layers
    assert len(node_env.events("stage-done")) == 1


def test_prestage_that_does_not_fit_keeps_nothing(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.configure(capacity="4KiB")

    done = node_env.cli("prestage", "alpha")

    assert done.returncode == 1
    assert "does not fit" in one_line(done.stderr)
    assert not (node_env.cachedir / "alpha.sqfs").exists()
    row = next(d for d in node_env.status()["datasets"] if d["name"] == "alpha")
    assert (row["state"], row["cached"]) == ("cold", False)
    assert node_env.state()["staging"] == {}
    assert node_env.stack("alpha") == []


def test_stale_cached_copy_is_not_served_after_image_replaced(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.prolog(11, comment="datasets:alpha")
    assert node_env.cli("prestage", "alpha").returncode == 0
    hello = node_env.mountdir / "alpha" / "hello.txt"
    assert hello.read_text() == hello_of("alpha")

    node_env.replace_image("alpha", "alpha-v2")
    done = node_env.prolog(12, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    assert hello.read_text() == hello_of("alpha-v2")
    assert (node_env.mountdir / "alpha" / "blob.bin").read_bytes() == blob_of("alpha-v2")
    top = node_env.stack("alpha")[-1]
    assert top.backing == str(node_env.datadir / "alpha.sqfs")
    row = next(d for d in node_env.status()["datasets"] if d["name"] == "alpha")
    assert row["cached"] is False
    assert row["holders"] == ["11", "12"]


def test_stale_cached_copy_is_not_served_to_a_job_on_an_idle_node(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    assert node_env.cli("prestage", "alpha").returncode == 0
    node_env.replace_image("alpha", "alpha-v2")

    done = node_env.prolog(12, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    assert (node_env.mountdir / "alpha" / "hello.txt").read_text() == hello_of("alpha-v2")
    assert node_env.backings("alpha")[-1] == str(node_env.datadir / "alpha.sqfs")
    row = next(d for d in node_env.status()["datasets"] if d["name"] == "alpha")
    assert (row["cached"], row["holders"]) == (False, ["12"])


def test_prestage_after_image_replaced_caches_the_new_version(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.prolog(11, comment="datasets:alpha")
    assert node_env.cli("prestage", "alpha").returncode == 0
    node_env.replace_image("alpha", "alpha-v2")

    done = node_env.cli("prestage", "alpha")

    assert done.returncode == 0, done.stderr
    assert node_env.stack("alpha")[-1].backing == str(node_env.cachedir / "alpha.sqfs")
    assert (node_env.mountdir / "alpha" / "hello.txt").read_text() == hello_of("alpha-v2")
    assert (node_env.cachedir / "alpha.sqfs").read_bytes() == (
        node_env.datadir / "alpha.sqfs"
    ).read_bytes()


@pytest.mark.parametrize("name", ["../escape", "a b", "nope"])
def test_prestage_of_bad_or_unknown_name_fails_with_one_line(node_env: NodeEnv, name: str) -> None:
    node_env.add_image("alpha")
    outside = node_env.root / "escape.sqfs"
    outside.write_bytes((node_env.datadir / "alpha.sqfs").read_bytes())

    done = node_env.cli("prestage", name)

    assert done.returncode == 1
    assert one_line(done.stderr).startswith("scratch-stage: error:")
    assert not (node_env.root / "escape.sqfs.sqfs").exists()
    assert sorted(p.name for p in node_env.cachedir.iterdir() if p.name != ".partial") == []
    assert os.listdir(node_env.mountdir) == []


def test_cached_copy_of_removed_image_is_not_served(node_env: NodeEnv) -> None:
    node_env.add_image("alpha")
    node_env.prolog(11, comment="datasets:alpha")
    assert node_env.cli("prestage", "alpha").returncode == 0
    (node_env.datadir / "alpha.sqfs").unlink()

    done = node_env.prolog(12, comment="datasets:alpha")

    assert done.returncode == 0, done.stderr
    assert node_env.holders() == {"alpha": ["11"]}
    assert [e["job"] for e in node_env.events("refused")] == ["12"]
