"""Which registered peers a node counts as alive (agent/coop.py `live_peers`)."""

from __future__ import annotations

from pathlib import Path

from scratch_stage.agent.coop import live_peers
from scratch_stage.host.catalog import Trust
from scratch_stage.host.lease import Peer, open_entry


def test_only_other_nodes_heard_from_lately_are_live(tmp_path: Path) -> None:
    e = open_entry(str(tmp_path / "coop"), "img.1", Trust(), 60.0)
    now = 1_000_000.0
    e.register_peer(Peer("me", "127.0.0.1", 6881, False, now))
    e.register_peer(Peer("fresh", "127.0.0.2", 6881, False, now - 1))
    e.register_peer(Peer("seeding", "127.0.0.3", 6881, True, now - 9))
    e.register_peer(Peer("dead", "127.0.0.4", 6881, True, now - 60))
    e.register_peer(Peer("gone", "127.0.0.5", 6881, False, 0.0))  # a fetch given up
    assert sorted(p.node for p in live_peers(e, "me", now)) == ["fresh", "seeding"]
