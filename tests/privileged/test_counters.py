"""Counters in the node state after a real workload: reads by layer from the loop devices'
diskstats, job starts by layer, a copy, an eviction, refusals, the rebalance's outcome."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from nodetree import BLOB_SIZE, NodeEnv, loops_under
from test_rebalance import drop_caches, read_all

IMAGE_BYTES = 400_000


def counters(node: NodeEnv) -> dict[str, Any]:
    return node.state()["counters"]  # type: ignore[no-any-return]


def dataset(node: NodeEnv, name: str) -> dict[str, float]:
    data = counters(node)
    return dict(zip(data["fields"], data["datasets"].get(name, [0] * len(data["fields"]))))


def ok(done: Any) -> None:
    assert done.returncode == 0, done.stderr


def test_workload_counts_reads_by_layer_copies_evictions_and_refusals(node_env: NodeEnv) -> None:
    node = node_env
    node.configure(capacity=2 * IMAGE_BYTES, demand={"source": "none"}, idle_unmount=0)
    node.add_image("a")
    node.add_image("b")

    ok(node.prolog(1, comment="datasets:a"))  # slow mount, attached by the prolog
    assert dataset(node, "a")["jobs_slow"] == 1
    drop_caches()
    read_all(node.mountdir / "a")
    ok(node.cli("rebalance"))  # its first sample counts from the prolog's attach mark
    slow = dataset(node, "a")["read_slow_bytes"]
    assert BLOB_SIZE <= slow <= 2 * BLOB_SIZE, slow
    assert dataset(node, "a").get("read_cached_bytes", 0) == 0
    assert counters(node)["rebalance"]["outcome"] == "ok"
    assert counters(node)["rebalance"]["passes"] == 1

    ok(node.cli("prestage", "a"))
    a = dataset(node, "a")
    size = (node.datadir / "a.sqfs").stat().st_size
    assert (a["copies_started"], a["copies_finished"], a["copied_bytes"]) == (1, 1, size)
    assert a["copy_seconds"] >= 0 and a.get("copies_failed", 0) == 0

    ok(node.prolog(2, comment="datasets:a"))  # served by the cached copy now
    assert dataset(node, "a")["jobs_cached"] == 1
    drop_caches()
    read_all(node.mountdir / "a")
    ok(node.cli("rebalance"))
    a = dataset(node, "a")
    assert BLOB_SIZE <= a["read_cached_bytes"] <= 2 * BLOB_SIZE, a
    assert a["read_slow_bytes"] == slow  # the slow layer below was not read again
    assert counters(node)["rebalance"]["passes"] == 2

    ok(node.epilog(1))
    ok(node.epilog(2))
    ok(node.cli("purge", "a"))
    assert dataset(node, "a")["evictions"] == 1

    # hostile and impossible requests: counted by reason, never by the user's text
    ok(node.prolog(3, comment="datasets:nope,../etc,a"))
    assert counters(node)["refusals"] == {"unavailable": 1, "invalid_name": 1}
    refused = node.events("refused")[-1]  # fit for log shipping: node and RFC 3339 time
    assert refused["node"] == os.uname().nodename.split(".")[0]
    assert refused["time"].endswith("Z") and refused["time"][:2] == "20"
    assert set(counters(node)["datasets"]) == {"a"}


def test_a_reused_loop_device_does_not_carry_its_old_count(node_env: NodeEnv) -> None:
    node = node_env
    # a cache too small for any copy: a stays a slow mount, unmounted once idle
    node.configure(capacity=4096, demand={"source": "none"}, idle_unmount=1, period=1)
    node.add_image("a")
    node.add_image("b")
    ok(node.prolog(1, comment="datasets:a"))
    drop_caches()
    read_all(node.mountdir / "a")
    ok(node.cli("rebalance"))
    first = set(loops_under(node.root))
    ok(node.epilog(1))
    time.sleep(1.2)  # a's slow mount goes idle: unmounted, its loop device freed (autoclear)
    ok(node.cli("rebalance"))
    assert not node.stack("a")
    ok(node.prolog(2, comment="datasets:b"))  # most likely a's old device number
    reused = set(loops_under(node.root)) & first
    drop_caches()
    read_all(node.mountdir / "b")
    ok(node.cli("rebalance"))
    read_a = dataset(node, "a")["read_slow_bytes"]
    read_b = dataset(node, "b")["read_slow_bytes"]
    assert BLOB_SIZE <= read_b <= 2 * BLOB_SIZE, (read_b, reused)
    assert BLOB_SIZE <= read_a <= 2 * BLOB_SIZE
    state = json.loads((node.statedir / "state.json").read_text())
    backings = {m[1] for m in state["counters"]["devices"].values()}
    assert backings == {os.path.realpath(node.datadir / "b.sqfs")}
