"""`coop prepare`: an image version's digest published ahead of any copy (agent/coop.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scratch_stage.agent.coop import prepare
from scratch_stage.host import torrent
from scratch_stage.host.catalog import lookup_image
from scratch_stage.host.lease import entry_key
from tests.unit.cli_tree import CliTree, open_tree

lt = torrent.load()
pytestmark = pytest.mark.skipif(lt is None, reason="libtorrent is not installed")


@pytest.fixture
def tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliTree]:
    yield from open_tree(tmp_path, capsys, monkeypatch)


def meta_path(tree: CliTree, name: str) -> Path:
    node = tree.node()
    image = lookup_image(node.config.datadir, name, trust=node.trust)
    coop = Path(node.config.datadir) / ".scratch-stage-coop"
    return coop / entry_key(image.name, image.fingerprint) / "meta.json"


def test_prepare_publishes_the_digest_of_what_it_read(tree: CliTree) -> None:
    code, out, err = tree.run("coop", "prepare", "alpha")
    assert (code, err) == (0, ""), err
    assert out.startswith("alpha: digest published (4.0 MiB read in ")
    path = meta_path(tree, "alpha")
    assert path.stat().st_mode & 0o777 == 0o600  # root's only, like every coordination file
    meta = json.loads(path.read_text())
    data = (Path(tree.node().config.datadir) / "alpha.sqfs").read_bytes()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["size"] == len(data)
    assert lt is not None
    info = lt.torrent_info(lt.bdecode(base64.b64decode(meta["torrent"])))
    length = info.piece_length()
    for index in range(info.num_pieces()):
        piece = data[index * length : (index + 1) * length]
        assert bytes(info.hash_for_piece(index)) == hashlib.sha1(piece).digest()
    [event] = [
        json.loads(line)
        for line in (tree.root / "state" / "events.log").read_text().splitlines()
        if '"coop-prepared"' in line
    ]
    assert event["dataset"] == "alpha" and event["bytes"] == len(data) and event["published"]


def test_a_version_is_prepared_once_and_never_replaced(tree: CliTree) -> None:
    assert tree.run("coop", "prepare", "alpha")[0] == 0
    first = meta_path(tree, "alpha").read_bytes()
    again = prepare(tree.node(), "alpha")
    assert not again.published and again.read == 0  # nothing read the second time
    assert meta_path(tree, "alpha").read_bytes() == first  # the secret stays the same too
    code, out, _ = tree.run("coop", "prepare", "alpha", "--json")
    assert code == 0 and json.loads(out)[0]["published"] is False


def test_a_changed_image_is_a_new_version_with_a_digest_of_its_own(tree: CliTree) -> None:
    assert tree.run("coop", "prepare", "alpha")[0] == 0
    old = meta_path(tree, "alpha")
    image = Path(tree.node().config.datadir) / "alpha.sqfs"
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))
    assert tree.run("coop", "prepare", "alpha")[0] == 0
    new = meta_path(tree, "alpha")
    assert new != old and old.exists()
    assert json.loads(new.read_text())["sha256"] == hashlib.sha256(data).hexdigest()


def test_only_root_prepares(tree: CliTree) -> None:
    code, out, err = tree.run("coop", "prepare", "alpha", euid=65534)
    assert code == 1 and out == ""
    assert err == "scratch-stage: error: coop prepare: only root publishes digests\n"
    assert not (Path(tree.node().config.datadir) / ".scratch-stage-coop").exists()


def test_an_unknown_or_bad_image_is_one_line(tree: CliTree) -> None:
    code, _, err = tree.run("coop", "prepare", "nosuch")
    assert code != 0 and err.count("\n") == 1 and "nosuch" in err
    code, _, err = tree.run("coop", "prepare", "junk")
    assert code != 0 and err.count("\n") == 1 and "junk" in err


def test_coop_without_a_command_names_its_commands(tree: CliTree) -> None:
    code, _, err = tree.run("coop")
    assert code == 2 and "prepare" in err
