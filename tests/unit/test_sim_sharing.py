"""Shared storage across the replayed nodes (simulate/sharing.py): hand-computed spans,
and a replayed many-node job whose copies a cooperative fleet reads once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.cli import run_cli
from scratch_stage.simulate.inputs import SimConfig
from scratch_stage.simulate.node import CopySpan
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.sharing import shared_load
from scratch_stage.simulate.trace import Job, Trace, write_trace

GB = 10**9
SIZES = {"a": 10 * GB, "b": 5 * GB}


def test_simultaneous_copies_of_one_image_are_read_once_cooperatively() -> None:
    spans = [CopySpan(n, "a", 0.0, 10.0) for n in ("n1", "n2", "n3")]
    load = shared_load(spans, SIZES, bandwidth=GB)
    assert (load.copies, load.copied_bytes) == (3, 30 * GB)
    assert (load.cooperative_copies, load.cooperative_bytes) == (1, 10 * GB)
    assert (load.peak_copies, load.peak_same_image, load.peak_cooperative_readers) == (3, 3, 1)


def test_a_holder_serves_until_it_is_evicted() -> None:
    spans = [
        CopySpan("x", "a", 0.0, 10.0, left=50.0),
        CopySpan("z", "a", 40.0, 50.0),  # x still holds a: a peer copy
        CopySpan("y", "a", 60.0, 70.0),  # z holds it too (never evicted): a peer copy
        CopySpan("w", "b", 60.0, 65.0, left=66.0),
        CopySpan("v", "b", 66.0, 71.0),  # w evicted b at 66: shared storage again
        CopySpan("w", "b", 80.0, 85.0),  # v holds b: a peer copy
    ]
    load = shared_load(spans, SIZES, bandwidth=GB)
    assert load.cooperative_copies == 3
    assert load.cooperative_bytes == 10 * GB + 2 * 5 * GB
    assert load.peak_copies == 2  # y and w from 60 to 65 (z's copy ended at 50)
    assert load.peak_same_image == 1


def test_a_node_is_not_its_own_peer() -> None:
    # The same node copies a again after evicting it (left at 20): nobody else has it.
    spans = [CopySpan("x", "a", 0.0, 10.0, left=20.0), CopySpan("x", "a", 20.0, 30.0)]
    assert shared_load(spans, SIZES, bandwidth=GB).cooperative_copies == 2


def test_oversubscription_of_shared_storage_is_timed() -> None:
    # Three 1 GB/s copies against 2 GB/s: two at once fit; all three (5 s to 10 s) do not.
    spans = [CopySpan("n1", "a", 0.0, 10.0), CopySpan("n2", "b", 0.0, 10.0),
             CopySpan("n3", "a", 5.0, 15.0)]  # fmt: skip
    load = shared_load(spans, SIZES, bandwidth=GB, shared_bandwidth=2 * GB)
    assert load.oversubscribed_seconds == pytest.approx(5.0)
    assert load.peak_demand_ratio == pytest.approx(1.5)
    assert shared_load(spans, SIZES, bandwidth=GB).oversubscribed_seconds == 0.0


# Each copy on its own node (one node never has two copies of an image at once).
spans_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.floats(0, 100),
        st.floats(0.5, 20),
        st.one_of(st.just(math.inf), st.floats(0.1, 50)),
    ),
    max_size=30,
).map(
    lambda rows: [
        CopySpan(f"n{i}", name, start, start + length, start + length + stay)
        for i, (name, start, length, stay) in enumerate(rows)
    ]
)


@settings(max_examples=300, deadline=None)
@given(spans_strategy)
def test_cooperative_never_reads_more_and_reads_each_image_at_least_once(
    spans: list[CopySpan],
) -> None:
    load = shared_load(spans, SIZES, bandwidth=GB)
    assert load.cooperative_bytes <= load.copied_bytes
    assert load.cooperative_copies >= len({s.name for s in spans})
    # A cooperative reader of an image is alone: the next copy finds it in flight.
    assert load.peak_cooperative_readers <= min(load.peak_copies, len(SIZES))
    assert load.peak_same_image <= load.peak_copies <= len(spans)


def many_node_trace() -> Trace:
    # A 4-node job reads a at 1 GB/s per node; later a 2-node job reads b.
    jobs = [
        Job("1", 0.0, 0.0, 100.0, ("n1", "n2", "n3", "n4"), {"a": 50 * GB}),
        Job("2", 500.0, 500.0, 600.0, ("n1", "n2"), {"b": 20 * GB}),
    ]
    return Trace(dict(SIZES), tuple(jobs))


def test_a_replayed_many_node_job_is_copied_by_every_node_and_read_once_cooperatively() -> None:
    trace = many_node_trace()
    config = SimConfig(capacity=20 * GB, bandwidth=GB)
    result = simulate(trace, config, ["lru"], bound=False).results["lru"]
    load = shared_load(result.spans, trace.datasets, config.bandwidth, 2 * GB)
    assert load.copies == 6 and load.copied_bytes == 4 * 10 * GB + 2 * 5 * GB
    assert load.cooperative_copies == 2 and load.cooperative_bytes == 15 * GB
    assert load.peak_same_image == 4
    # four 1 GB/s copies of a for 10 s against 2 GB/s; then two of b fit
    assert load.oversubscribed_seconds == pytest.approx(10.0)
    assert load.peak_demand_ratio == pytest.approx(2.0)


def test_simulate_reports_shared_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trace.jsonl"
    with path.open("w") as f:
        write_trace(many_node_trace(), f)
    args = ["simulate", str(path), "--capacity", "20GB", "--policy", "lru", "--no-bound",
            "--shared-bandwidth", "2GB/s"]  # fmt: skip
    assert run_cli([*args, "--json"]) == 0
    shared = json.loads(capsys.readouterr().out)["policies"][0]["shared_storage"]
    assert shared["cooperative_bytes"] == 15 * GB and shared["copied_bytes"] == 50 * GB
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert "Shared storage, all nodes together" in out and "coop TB" in out
    assert run_cli([*args[:-1], "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["scratch-stage: error: --shared-bandwidth: must be more than zero: '0'"]
