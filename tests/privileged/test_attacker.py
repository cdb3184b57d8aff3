"""A real unprivileged user with write access to datadir tries to get what is not theirs.

The datadir is world-writable and sticky (mode 1777), as a site might open it to data
owners; the attacker is `nobody` (uid/gid 65534), running real commands through setpriv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodetree import NodeEnv, hello_of

from scratch_stage.core.errors import DatasetError
from scratch_stage.host.catalog import image_access_problem, lookup_image, opened_image

NOBODY = 65534
AS_NOBODY = ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def as_nobody(
    node_env: NodeEnv, *argv: str, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ARGV as nobody in datadir (entered as root: pytest's parents are 0700)."""
    return subprocess.run(
        [*AS_NOBODY, *argv], cwd=node_env.datadir, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=30, stdin=stdin,
    )  # fmt: skip


@pytest.fixture
def node(node_env: NodeEnv) -> NodeEnv:
    node_env.datadir.chmod(0o1777)
    node_env.configure(demand={"source": "none"})
    node_env.add_image("secret")
    node_env.add_image("public")
    return node_env


def prolog_as_nobody(node: NodeEnv, job: int, datasets: str) -> subprocess.CompletedProcess[str]:
    done = node.prolog(job, comment=f"datasets:{datasets}", user="nobody", uid=NOBODY, gid=NOBODY)
    assert done.returncode == 0, done.stderr
    return done


def test_alias_symlink_does_not_get_around_a_group_restriction(node: NodeEnv) -> None:
    node.configure(access={"secret": ["root"]})
    made = as_nobody(node, "/bin/ln", "-s", "secret.sqfs", "alias.sqfs")
    assert made.returncode == 0, made.stderr

    prolog_as_nobody(node, 21, "alias,public")

    assert node.stack("alias") == []
    assert node.holders() == {"public": ["21"]}
    refused = node.events("refused")
    assert [e["dataset"] for e in refused] == ["alias"]
    assert "'secret'" in refused[0]["reason"] and "restricted" in refused[0]["reason"]


@pytest.mark.parametrize(
    ("access", "mounted"),
    [
        ({"secret": ["nogroup"], "alias": ["nogroup"]}, True),  # both names permit it
        # an open alias of a restricted dataset would put it under an open mountpoint
        ({"secret": ["nogroup"]}, False),
        ({"secret": ["nogroup"], "alias": ["root"]}, False),  # the name itself forbids it
        ({"alias": ["nogroup"], "secret": ["root"]}, False),  # the target forbids it
    ],
)
def test_alias_is_served_only_when_both_names_permit_it(
    node: NodeEnv, access: dict[str, list[str]], mounted: bool
) -> None:
    node.configure(access=access)
    assert as_nobody(node, "/bin/ln", "-s", "secret.sqfs", "alias.sqfs").returncode == 0

    prolog_as_nobody(node, 22, "alias")

    if mounted:
        assert (node.mountdir / "alias" / "hello.txt").read_text() == hello_of("secret")
        assert node.holders() == {"alias": ["22"]}
    else:
        assert node.stack("alias") == []
        assert [e["dataset"] for e in node.events("refused")] == ["alias"]


def test_image_written_by_a_user_is_not_mounted_by_root(node: NodeEnv) -> None:
    with open(node.store.get("public"), "rb") as image:
        made = as_nobody(
            node, "/bin/sh", "-c", "cat > mine.sqfs && chmod 0644 mine.sqfs", stdin=image.fileno()
        )
    assert made.returncode == 0, made.stderr
    assert (node.datadir / "mine.sqfs").stat().st_uid == NOBODY

    prolog_as_nobody(node, 23, "mine,public")

    assert node.stack("mine") == []
    assert node.holders() == {"public": ["23"]}
    refused = node.events("refused")
    assert [e["dataset"] for e in refused] == ["mine"]
    assert "owned by uid 65534" in refused[0]["reason"]
    catalog = node.cli("catalog")
    assert catalog.returncode == 0
    assert "mine.sqfs" in catalog.stderr and "owned by uid 65534" in catalog.stderr


def test_sticky_datadir_stops_renaming_an_image_over_another_name(node: NodeEnv) -> None:
    moved = as_nobody(node, "/bin/mv", "-f", "secret.sqfs", "public.sqfs")
    assert moved.returncode != 0  # the sticky bit: only the owner may rename or unlink
    assert (node.datadir / "secret.sqfs").exists()


def test_non_sticky_writable_datadir_serves_nothing(node: NodeEnv) -> None:
    """Without the sticky bit anyone can rename secret over public: no name can be trusted."""
    node.datadir.chmod(0o777)
    node.configure(access={"secret": ["root"]})
    moved = as_nobody(node, "/bin/mv", "-f", "secret.sqfs", "public.sqfs")
    assert moved.returncode == 0, moved.stderr  # the attack works on the filesystem...

    prolog_as_nobody(node, 24, "public")

    assert node.stack("public") == []  # ...but the renamed image is not served
    refused = node.events("refused")
    assert [e["dataset"] for e in refused] == ["public"]
    assert "sticky" in refused[0]["reason"]
    assert node.cli("status").returncode == 0


def test_fifo_made_by_a_user_neither_blocks_nor_fails_the_prolog(node: NodeEnv) -> None:
    assert as_nobody(node, "/usr/bin/mkfifo", "pipe.sqfs").returncode == 0

    prolog_as_nobody(node, 25, "pipe,public")

    assert node.holders() == {"public": ["25"]}
    assert [e["dataset"] for e in node.events("refused")] == ["pipe"]


def test_escape_sequences_in_a_users_file_name_stay_escaped(node: NodeEnv) -> None:
    name = "\x1b]0;owned\x07\x1b[2Jx.sqfs"
    assert as_nobody(node, "/bin/ln", "-s", "public.sqfs", name).returncode == 0

    for args in (["status"], ["catalog"], ["rebalance", "--dry-run", "--explain"]):
        done = node.cli(*args)
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout + done.stderr
        assert "\x07" not in done.stdout + done.stderr
    assert "\\x1b]0;owned\\x07" in node.cli("catalog").stderr


# --- racing a symlink swap against the lookup ---


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads as often as possible, so the swap lands inside lookups."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def swapper(datadir: Path, stop: threading.Event, swaps: list[int]) -> None:
    """Swap mine.sqfs between a real image and a symlink to the private image, atomically."""
    mine, link, copy = datadir / "mine.sqfs", datadir / ".link", datadir / ".copy"
    while not stop.is_set():
        os.symlink("private.sqfs", link)
        os.replace(link, mine)
        time.sleep(0)  # let a lookup run in this state, or in the middle of the next swap
        os.link(datadir / ".mine-real", copy)
        os.replace(copy, mine)
        time.sleep(0)
        swaps[0] += 1


def swap_setup(node: NodeEnv) -> tuple[Path, Path]:
    """A root-only private image, and mine.sqfs linked to a public one (.mine-real)."""
    private = node.add_image("private", "secret", mode=0o600)
    real = node.datadir / ".mine-real"
    real.write_bytes(node.store.get("public").read_bytes())
    real.chmod(0o644)
    os.link(real, node.datadir / "mine.sqfs")
    return private, real


def test_symlink_swap_never_yields_the_private_image_under_the_public_name(
    node: NodeEnv, fast_switching: None
) -> None:
    datadir = node.datadir
    private, real = swap_setup(node)
    private_inode, real_inode = private.stat().st_ino, real.stat().st_ino
    stop, swaps = threading.Event(), [0]
    thread = threading.Thread(target=swapper, args=(datadir, stop, swaps))
    direct, aliased, refused = 0, 0, 0
    thread.start()
    try:
        deadline = time.monotonic() + 30
        i = -1
        while True:  # at least 400 lookups, and until the swapper has really raced them
            i += 1
            enough = i >= 400 and swaps[0] > 10 and direct > 0 and aliased > 0
            if enough or time.monotonic() > deadline:
                break
            try:
                if i % 2:
                    image = lookup_image(datadir, "mine")
                else:
                    with opened_image(datadir, "mine") as opened:
                        image = opened.image
                        st = os.fstat(opened.fd)
                        assert (st.st_ino, st.st_size) == (image.fingerprint.inode, image.size)
                        assert os.pread(opened.fd, 4, 0) == b"hsqs"
            except DatasetError:
                refused += 1
                continue
            if image.target is None:
                direct += 1
                assert image.fingerprint.inode == real_inode != private_inode
            else:
                aliased += 1
                assert (image.target, image.fingerprint.inode) == ("private", private_inode)
                problem = image_access_problem(image, NOBODY, frozenset([NOBODY]), {})
                assert problem is not None and "not readable by uid 65534" in problem
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 10
    assert direct > 0 and aliased > 0, (direct, aliased, refused)


def test_symlink_swap_racing_the_prolog_never_mounts_the_private_image(node: NodeEnv) -> None:
    # The prolog itself, run again and again as nobody for `mine` while a thread swaps
    # mine.sqfs between a public image and a symlink to a root-only 0600 image: whatever
    # each run mounts, it is never the private image.
    datadir = node.datadir
    private, _ = swap_setup(node)
    stop, swaps = threading.Event(), [0]
    thread = threading.Thread(target=swapper, args=(datadir, stop, swaps))
    mounted = runs = 0
    thread.start()
    try:
        deadline = time.monotonic() + 40
        while runs < 200 and time.monotonic() < deadline:
            runs += 1
            done = prolog_as_nobody(node, 1000 + runs, "mine")
            assert done.returncode == 0, done.stderr
            backings = node.backings("mine")
            assert not any(b and b.startswith(str(private)) for b in backings), backings
            mounted += bool(backings)
            node.epilog(1000 + runs)
            while node.stack("mine"):
                subprocess.run(["umount", "-l", str(node.mountdir / "mine")], check=False)
    finally:
        stop.set()
        thread.join()
    assert runs >= 50 and swaps[0] > runs // 2
    # The race was real: runs were refused at the check (the private image) or at the
    # mount (the file changed since it was checked), and some may have mounted the public
    # image; none mounted the private one.
    reasons = [e["reason"] for e in node.events("refused") if e["dataset"] == "mine"]
    assert len(reasons) + mounted >= runs - 5
    assert any("changed since it was checked" in r or "not readable" in r for r in reasons)
