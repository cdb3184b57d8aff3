"""Job arrays in traces, and the array-history experiment (`SimConfig.array_history`): a
job backfill has placed on a node is expected to read what its array's finished elements
read (on this node, or on any node), never what an element not yet ended reads."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from typing import Any

import pytest

from scratch_stage.simulate.engine import Inputs
from scratch_stage.simulate.inputs import (
    ArrayHistory,
    NodeJob,
    SimConfig,
    split_by_node,
    unplaced_demand,
)
from scratch_stage.simulate.node import Action, SimNode
from scratch_stage.simulate.policies import Ours
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Job, Trace, TraceError, parse_trace, write_trace
from scratch_stage.simulate.workload import WorkloadSpec, convert_swf, generate, load_sizes
from tests.unit.sim_helpers import GB, SIZES, replay_recorded
from tests.unit.test_sim_true_inputs import EveryTick, _cases, _costs

HEADER = '{"format": "scratch-stage-trace", "version": 1, "datasets": {"a": 100}}'
NODE = {"array_history": "node"}
FLEET = {"array_history": "fleet"}
ORACLE = {"array_history": "oracle"}


# --- the trace field -------------------------------------------------------------------


def test_array_round_trips_and_old_traces_load() -> None:
    job = '"submit": 0, "start": 5, "end": 9, "nodes": ["n"], "bytes": {"a": 5}'
    trace = parse_trace([HEADER, '{"id": 7, ' + job + ', "array": "3"}', '{"id": 8, ' + job + "}"])
    assert [j.array for j in trace.jobs] == ["3", None]  # the field is optional
    out = io.StringIO()
    write_trace(trace, out)
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0])["version"] == 1
    assert [json.loads(line).get("array") for line in lines[1:]] == ["3", None]
    assert "array" not in json.loads(lines[2])  # not written as null
    assert parse_trace(lines) == trace


@pytest.mark.parametrize("value", ['""', "3", "null", '["1"]', '" "'])
def test_a_bad_array_is_refused_in_one_line_naming_the_line(value: str) -> None:
    line = ('{"id": 1, "submit": 0, "start": 5, "end": 9, "nodes": ["n"], '
            f'"array": {value}}}')  # fmt: skip
    if value == "null":  # JSON null: no array, as if absent
        assert parse_trace(["# a comment", HEADER, line]).jobs[0].array is None
        return
    with pytest.raises(TraceError, match=r"^trace line 3: 'array' must be a non-empty string"):
        parse_trace(["# a comment", HEADER, line])


def test_the_generator_writes_an_array_for_each_sweep_and_none_for_single_jobs() -> None:
    sizes = load_sizes(SIZES)
    for knobs in ({}, {"burst": 3, "sweep_share": 0.6}, {"wide_share": 0.5, "wide_max": 4}):
        trace = generate(WorkloadSpec(jobs=400, nodes=8, datasets=20, seed=5, **knobs), sizes)
        elements: dict[str, list[Job]] = {}
        for job in trace.jobs:
            if job.array is not None:
                elements.setdefault(job.array, []).append(job)
        assert len(elements) >= 3
        for array, jobs in elements.items():
            assert len(jobs) > 1  # a sweep, not a single job
            assert min(int(j.id) for j in jobs) == int(array)  # the first element's id
            # the generator's elements are alike: dataset, bytes, time limit, width, submit
            assert len({(tuple(j.reads.items()), j.limit, len(j.nodes),
                         j.submit) for j in jobs}) == 1  # fmt: skip
        single = [j for j in trace.jobs if j.array is None]
        assert single  # a single job (batch of one) has none
        # ids of different arrays' elements never collide with another array's id
        ids = {j.id for j in trace.jobs}
        assert all(array in ids for array in elements)


def test_convert_swf_leaves_the_array_out() -> None:
    swf = ["1 0 10 3600 64 -1 -1 64 3600 -1 1 5 1 3 1 -1 -1 -1"]
    trace = convert_swf(swf, {"a": GB}, nodes=4, cores_per_node=32)
    assert trace.jobs[0].array is None and "array" not in trace.jobs[0].to_json()


def test_the_array_field_alone_changes_no_replay() -> None:
    # The same trace without its arrays replays the same with the switch off (`ours` and
    # the baselines read no array): regenerated traces keep the docs' tables comparable.
    trace = generate(WorkloadSpec(jobs=150, nodes=4, datasets=25, seed=2, sweep_share=0.6),
                     load_sizes(SIZES))  # fmt: skip
    bare = Trace(trace.datasets, tuple(replace(j, array=None) for j in trace.jobs))
    assert bare != trace
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.1))
    policies = ("ours", "lru", "aged-uses")
    with_arrays = simulate(trace, config, policies, bound=False)
    without = simulate(bare, config, policies, bound=False)
    for name in policies:
        assert _costs(with_arrays.results[name]) == _costs(without.results[name])


# --- the estimate ----------------------------------------------------------------------


def _array_trace(*late: Job) -> Trace:
    """Array "1" on dataset a (100 GB): e1 (300 GB) on n2 ends at 1000 s, e2 (250 GB) on
    n1 at 2000 s; p (an element, 400 GB) and q (no array) placed on n1 from 1400 s, start
    5000 s; r (array "9") on n2 ends at 1500 s reading 10 GB."""
    return Trace(
        {"a": 100 * GB},
        (
            Job("1", 0.0, 0.0, 1000.0, ("n2",), {"a": 300 * GB}, 7200.0, "1"),
            Job("2", 0.0, 0.0, 2000.0, ("n1",), {"a": 250 * GB}, 7200.0, "1"),
            Job("3", 0.0, 5000.0, 6000.0, ("n1",), {"a": 400 * GB}, 7200.0, "1"),
            Job("4", 0.0, 5000.0, 6000.0, ("n1",), {"a": 400 * GB}, 7200.0),
            Job("5", 0.0, 0.0, 1500.0, ("n2",), {"a": 10 * GB}, 7200.0, "9"),
            *late,
        ),
    )


def _node(trace: Trace, config: SimConfig, name: str = "n1") -> SimNode:
    work = split_by_node(trace, config)
    arrays = ArrayHistory.of(work.values())
    return SimNode(work[name], trace.datasets, config, unplaced_demand(trace, config), None,
                   arrays)  # fmt: skip


def _estimates(node: SimNode) -> dict[str | None, float]:
    """What the node takes each placed job (by array) to read from a."""
    return {p.array: node.queued("a", p, 0) for p in node.work.pending}


def _run_until(node: SimNode, now: float) -> None:
    """Start and end n1's jobs up to NOW (what the replay does)."""
    for job in node.work.jobs:
        if job.start <= now:
            node.start_job(job, job.start)
            if job.end <= now:
                node.end_job(job, job.end)


def test_node_array_history_counts_the_elements_finished_here() -> None:
    config = SimConfig(capacity=150 * GB, **NODE)
    off, node = _node(_array_trace(), SimConfig(capacity=150 * GB)), _node(_array_trace(), config)
    assert _estimates(node) == _estimates(off) == {"1": 100 * GB, None: 100 * GB}  # one pass
    for n in (off, node):
        _run_until(n, 2000.0)
    # e2 (250 GB) ended here: p, its sibling, expects 250 GB; q, no array, the node's mean
    # of every job of a (250 GB too, one job), as without the switch
    assert _estimates(node) == {"1": 250 * GB, None: 250 * GB} == {**_estimates(off), "1": 250 * GB}
    # e1 ended on n2: not counted here; nor r, of another array
    assert node.array_per_job("1", "a") == 250 * GB and node.array_per_job("9", "a") is None


def test_the_time_limit_still_caps_an_arrays_mean() -> None:
    config = SimConfig(capacity=150 * GB, read_rate=1e6, **NODE)  # 7200 s x 1 MB/s = 7.2 GB
    node = _node(_array_trace(), config)
    _run_until(node, 2000.0)
    assert _estimates(node)["1"] == pytest.approx(7.2 * GB)


def test_fleet_array_history_counts_every_nodes_elements_by_their_end() -> None:
    config = SimConfig(capacity=150 * GB, **FLEET)
    node = _node(_array_trace(), config)
    assert node.history_times() == (1000.0, 2000.0)  # array "9" has no job placed on n1
    for now, want in ((999.0, 100 * GB), (1000.0, 300 * GB), (1999.0, 300 * GB),
                      (2000.0, 275 * GB)):  # fmt: skip
        node.see_history(now)
        assert _estimates(node)["1"] == want, now
    # the fleet's array history needs its ArrayHistory
    work = split_by_node(_array_trace(), config)
    with pytest.raises(ValueError, match="ArrayHistory"):
        SimNode(work["n1"], {"a": 100 * GB}, config, unplaced_demand(_array_trace(), config))
    with pytest.raises(ValueError, match="array_history"):
        SimConfig(capacity=1, array_history="yes")


def test_an_element_ending_after_now_never_changes_the_estimate_at_now() -> None:
    late = Job("6", 0.0, 500.0, 3000.0, ("n3",), {"a": 10**15}, 7200.0, "1")
    config = SimConfig(capacity=150 * GB, **FLEET)
    before, after = _node(_array_trace(), config), _node(_array_trace(late), config)
    for now in (999.0, 1000.0, 2000.0, 2999.999):
        before.see_history(now)
        after.see_history(now)
        assert _estimates(after) == _estimates(before), now
    # ... and it counts from its end: the test could fail.
    before.see_history(3000.0)
    after.see_history(3000.0)
    assert _estimates(after)["1"] == 7200 * GB > _estimates(before)["1"]  # capped by the limit
    assert 3000.0 in after.history_times()


# --- the replay ------------------------------------------------------------------------


class Recording(Ours):
    """Ours that records, at every pass, each placed job's array estimate."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, str, str, float | None, frozenset[str]]] = []

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        for p in node.work.pending:
            if p.array is not None and p.visible <= now < p.start:
                for name in p.datasets:
                    got = node.array_per_job(p.array, name)
                    self.seen.append((now, p.array, name, got, frozenset(node.running)))
        return super().decide(node, now, trigger, job, inputs)


def _truth(trace: Trace, array: str, name: str, now: float) -> float | None:
    """The mean bytes of NAME read by the node jobs of ARRAY ended by NOW (brute force)."""
    done = [job.reads[name] for job in trace.jobs for _ in job.nodes
            if job.array == array and name in job.reads and job.end <= now]  # fmt: skip
    return sum(done) / len(done) if done else None


def _arrays_trace(seed: int) -> Trace:
    spec = WorkloadSpec(jobs=150, nodes=4, datasets=12, seed=seed, sweep_share=0.7,
                        wide_share=0.5, wide_max=4, partial_share=0.5)  # fmt: skip
    return generate(spec, load_sizes(SIZES))


def test_every_pass_sees_the_fleet_array_history_of_its_instant() -> None:
    trace = _arrays_trace(3)
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.1), **FLEET)
    passes = [e for policy in replay_recorded(trace, config, Recording) for e in policy.seen]
    assert len(passes) > 100
    for now, array, name, got, _ in passes:
        want = _truth(trace, array, name, now)
        assert got == want or math.isclose(got or -1.0, want or -2.0, rel_tol=1e-12)
    assert sum(got is not None for _, _, _, got, _ in passes) > 20


def _spared_copy_trace() -> Trace:
    """On n1 (cache 150 GB): y holds b (120 GB) until 5000 s, so a (100 GB) does not fit
    while x reads 3 passes of a and the first two elements of array "10" 5 GB each; then
    three more elements (5 GB each) are placed. a's mean is 103 GB a job, the array's 5."""
    jobs = [Job("y", 0.0, 0.0, 5000.0, ("n1",), {"b": 600 * GB}, 7200.0),
            Job("x", 0.0, 200.0, 800.0, ("n1",), {"a": 300 * GB}, 3600.0)]  # fmt: skip
    for i, start in enumerate((1000.0, 1400.0, 5500.0, 6100.0, 6700.0)):
        jobs.append(Job(str(10 + i), 0.0, start, start + 300.0, ("n1",), {"a": 5 * GB},
                        3600.0, "10"))  # fmt: skip
    jobs.sort(key=lambda j: (j.start, j.id))
    return Trace({"a": 100 * GB, "b": 120 * GB}, tuple(jobs))


@pytest.mark.parametrize("switch", [NODE, FLEET])
def test_an_arrays_history_spares_a_copy_the_datasets_mean_asks_for(
    switch: dict[str, Any],
) -> None:
    trace = _spared_copy_trace()
    config = SimConfig(capacity=150 * GB)
    off = simulate(trace, config, ("ours",), bound=False).results["ours"]
    on = simulate(trace, replace(config, **switch), ("ours",), bound=False).results["ours"]
    # without it a is copied for the last three elements (3 x 103 GB expected); with it
    # not (3 x 5 GB): they read 15 GB slow in place of a 100 GB copy
    assert (off.copies, on.copies) == (3, 2)
    assert off.slow_bytes - on.slow_bytes == pytest.approx(85 * GB)


@pytest.mark.parametrize("switch", [NODE, FLEET, ORACLE])
def test_skipped_passes_change_nothing_with_array_history_and_workers_agree(
    switch: dict[str, Any],
) -> None:
    fewer = changed = 0
    cases = [(trace, int(trace.catalog_bytes() * share)) for trace, share in _cases()]
    cases += [(_arrays_trace(4), int(_arrays_trace(4).catalog_bytes() * 0.2)),
              (_spared_copy_trace(), 150 * GB)]  # fmt: skip
    for trace, capacity in cases:
        config = SimConfig(capacity=capacity, **switch)
        report = simulate(trace, config, {"ours": Ours, "every": EveryTick}, bound=False)
        proven, every = report.results["ours"], report.results["every"]
        assert _costs(proven) == _costs(every) and proven.copies > 0
        fewer += every.decisions - proven.decisions
        off = simulate(trace, SimConfig(capacity), ("ours",), bound=False).results["ours"]
        changed += _costs(off) != _costs(proven)
    assert fewer > 0 and changed  # proofs still skip passes; the switch takes effect
    trace = _arrays_trace(4)
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.2), **switch)
    one = simulate(trace, config, ("ours",), bound=False).results["ours"]
    two = simulate(trace, config, ("ours",), bound=False, workers=2).results["ours"]
    assert _costs(two) == _costs(one)


def test_the_array_oracle_counts_each_placed_elements_true_bytes() -> None:
    node = _node(_array_trace(), SimConfig(capacity=150 * GB, **ORACLE))
    # p (array "1") reads 400 GB: told from the start, with no sibling ended; q (no array)
    # keeps the estimate (one pass, no history)
    assert _estimates(node) == {"1": 400 * GB, None: 100 * GB}
    _run_until(node, 2000.0)
    assert _estimates(node) == {"1": 400 * GB, None: 250 * GB}


def test_array_history_is_off_by_default() -> None:
    assert SimConfig(capacity=1).array_history == ""
