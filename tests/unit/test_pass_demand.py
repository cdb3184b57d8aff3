"""The rebalance's demand: queued jobs, and what the jobs running here will read after a
copy lands (their time limits from the snapshot, their starts from the state)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratch_stage.agent.node import Node
from scratch_stage.agent.rebalance import pass_demand
from scratch_stage.core.expected import running_read
from scratch_stage.host.config import Config
from scratch_stage.host.state import Hold, NodeState
from scratch_stage.slurm.demand import Snapshot

NOW = 1_800_000_000.0
GB = 10**9


def test_jobs_running_here_count_their_reads_after_a_copy_lands(tmp_path: Path) -> None:
    config = Config(datadir=tmp_path, cachedir=tmp_path, statedir=tmp_path, node="n1")
    node = Node(config, root=tmp_path, clock=lambda: NOW)
    state = NodeState()
    state.jobs["7"] = Hold(("big",), "alice", NOW - 3600)
    state.jobs["8"] = Hold(("big",), "bob", NOW - 60)  # no limit known: counts nothing
    snapshot = Snapshot((), {}, NOW, {"7": 5 * 3600.0})
    sizes = {"big": 4000 * GB, "small": 10 * GB}
    heat = {"big": 1.0 * GB}
    demand, _, params = pass_demand(node, snapshot, state, NOW, sizes, heat)
    land = 4000 * GB / params.copy_rate
    # the heat is shared by its two jobs; job 7 has 4 h of its limit left
    assert demand["big"] == pytest.approx(running_read(0.5 * GB, NOW, NOW - 3600, 5 * 3600, land))
    assert demand["big"] > 0
    assert pass_demand(node, snapshot, state, NOW, sizes)[0] == {}  # without heat: queued only
    older = Snapshot((), {}, NOW)  # a source that knows no running job
    assert pass_demand(node, older, state, NOW, sizes, heat)[0] == {}
