"""The read-estimate experiments (`SimConfig.true_queued`, `SimConfig.true_running`):
`ours` told the true value of one input, everything else unchanged (docs/benchmarks.md,
"Which read estimate costs what")."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

import pytest

from scratch_stage.core.expected import running_read
from scratch_stage.policy import planner
from scratch_stage.simulate.engine import Inputs
from scratch_stage.simulate.inputs import NodeJob, SimConfig, split_by_node, unplaced_demand
from scratch_stage.simulate.metrics import PolicyResult
from scratch_stage.simulate.node import Action, Costs, SimNode
from scratch_stage.simulate.policies import Ours
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Job, Trace
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes
from tests.unit.sim_helpers import GB, SIZES

TRUE_QUEUED = {"true_queued": True}
TRUE_RUNNING = {"true_running": True}
BOTH = {"true_queued": True, "true_running": True}
TRUE_PLACED = {"true_placed": True}
TRUE_UNPLACED = {"true_unplaced": True}
LIMIT_HISTORY = {"limit_history": True}


def _costs(result: PolicyResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(Costs) if f.name != "decisions"}


def _node(trace: Trace, config: SimConfig, name: str = "n1") -> SimNode:
    unplaced = unplaced_demand(trace, config, reads=config.true_unplaced_reads)
    return SimNode(split_by_node(trace, config)[name], trace.datasets, config, unplaced)


def _queued_trace() -> Trace:
    """On n1: p (3 passes of a, 100 GB) placed from 0 (starts at 2000 s); u1 and u2 (a once
    and 3 times) submitted at 0, starting at 20 000 s, not placed before 16 400 s."""
    return Trace(
        {"a": 100 * GB, "b": 10 * GB},
        (
            Job("p", 0.0, 2000.0, 5600.0, ("n1",), {"a": 300 * GB}, 7200.0),
            Job("u1", 0.0, 20_000.0, 23_600.0, ("n1",), {"a": 100 * GB}, 7200.0),
            Job("u2", 0.0, 20_000.0, 23_600.0, ("n1",), {"a": 300 * GB}, 7200.0),
            Job("v", 0.0, 0.0, 30_000.0, ("n2",), {"b": 10 * GB}),
        ),
    )


def test_true_queued_counts_each_queued_jobs_true_bytes_in_place_of_the_estimate() -> None:
    trace = _queued_trace()
    config = SimConfig(capacity=150 * GB, interval=100.0)
    told = replace(config, **TRUE_QUEUED)
    ours, true = _node(trace, config), _node(trace, told)
    # At 1000 s: p is placed (3 passes; `ours`, with no history, expects one), u1 and u2
    # are not (4 passes together; `ours` expects 2).
    ours_demand, ours_prospect = ours.demand_parts(1000.0)
    true_demand, true_prospect = true.demand_parts(1000.0)
    unplaced_demand_, unplaced_prospect = true.unplaced_reads(1000.0)
    assert true_prospect["a"] == pytest.approx(300 * GB + unplaced_prospect["a"], rel=1e-12)
    assert ours_prospect["a"] == pytest.approx(100 * GB + unplaced_prospect["a"] / 2, rel=1e-12)
    # the demand: the placed part 3x, the unplaced part 2x (same discounts)
    placed_true = true_demand["a"] - unplaced_demand_["a"]
    placed_est = ours_demand["a"] - unplaced_demand_["a"] / 2
    assert placed_true == pytest.approx(3 * placed_est, rel=1e-9) and placed_est > 0
    # At 17 000 s everything is placed: 400 GB against the estimate's 200 GB.
    assert true.demand_parts(17_000.0)[1]["a"] == pytest.approx(400 * GB, rel=1e-12)
    assert ours.demand_parts(17_000.0)[1]["a"] == pytest.approx(200 * GB, rel=1e-12)
    assert "b" not in true_demand  # v runs on n2


def test_true_placed_and_true_unplaced_split_true_queued_in_two() -> None:
    trace = _queued_trace()
    config = SimConfig(capacity=150 * GB, interval=100.0)
    parts = {}
    for label, switch in (("off", {}), ("placed", TRUE_PLACED), ("unplaced", TRUE_UNPLACED),
                          ("both", TRUE_QUEUED)):  # fmt: skip
        parts[label] = _node(trace, replace(config, **switch)).demand_parts(1000.0)
    true_unplaced = _node(trace, replace(config, **TRUE_QUEUED)).unplaced_reads(1000.0)
    for k in (0, 1):  # demand, prospect
        unplaced = true_unplaced[k]["a"]
        placed_est = parts["off"][k]["a"] - unplaced / 2  # one pass each of 2 passes' worth
        assert placed_est > 0
        assert parts["placed"][k]["a"] == pytest.approx(3 * placed_est + unplaced / 2, rel=1e-9)
        assert parts["unplaced"][k]["a"] == pytest.approx(placed_est + unplaced, rel=1e-9)
        assert parts["both"][k]["a"] == pytest.approx(3 * placed_est + unplaced, rel=1e-9)


def test_limit_history_expects_this_nodes_bytes_per_second_of_time_limit() -> None:
    trace = _queued_trace()
    config = SimConfig(capacity=150 * GB, interval=100.0)
    ours, scaled = _node(trace, config), _node(trace, replace(config, **LIMIT_HISTORY))
    for node in (ours, scaled):
        assert node.expected("a", 3600.0) == 100 * GB  # no history: one pass
        job = node.work.jobs[0]  # p: 300 GB of a within a limit of 7200 s
        node.start_job(job, job.start)
        node.end_job(job, job.end)
    assert scaled.expected("a", 3600.0) == pytest.approx(150 * GB)  # half the limit
    assert scaled.expected("a", 14_400.0) == pytest.approx(600 * GB)
    assert scaled.expected("a", math.inf) == ours.expected("a", 3600.0) == 300 * GB  # the mean
    # still capped by the prior read rate over the limit
    slow = _node(trace, replace(config, read_rate=1e6, **LIMIT_HISTORY))
    job = slow.work.jobs[0]
    slow.start_job(job, job.start)
    slow.end_job(job, job.end)
    assert slow.expected("a", 3600.0) == pytest.approx(3.6 * GB)


def _running_node(config: SimConfig, limit: float | None) -> tuple[SimNode, Job]:
    """n1 runs x: 4 passes of a (400 GB) from 0 to 4000 s, seen at 1000 s."""
    x = Job("x", 0.0, 0.0, 4000.0, ("n1",), {"a": 400 * GB}, limit)
    trace = Trace({"a": 100 * GB, "c": 50 * GB}, (x,))
    node = _node(trace, config)
    node.start_job(node.work.jobs[0], 0.0)
    return node, x


@pytest.mark.parametrize("limit", [8000.0, None])
def test_true_running_counts_a_running_jobs_true_reads_after_the_landing(
    limit: float | None,
) -> None:
    config = SimConfig(capacity=150 * GB, interval=100.0)
    ours, _ = _running_node(config, limit)
    true, _ = _running_node(replace(config, **TRUE_RUNNING), limit)
    heat = ours.heat(1000.0)
    assert heat["a"] == pytest.approx(0.1 * GB)  # 400 GB over 4000 s
    # a lands 100 s after now: 2900 of the job's 4000 s are left then
    assert true.running_demand(1000.0, heat)["a"] == pytest.approx(290 * GB, rel=1e-12)
    assert true.running_demand(1000.0, {})["a"] == pytest.approx(290 * GB, rel=1e-12)  # no heat
    got = ours.running_demand(1000.0, heat).get("a", 0.0)
    assert got == pytest.approx(running_read(0.1 * GB, 1000.0, 0.0, limit, 100.0), rel=1e-12)
    assert got != pytest.approx(290 * GB)  # the estimate (a uniform end: 340 GB; no limit: 0)
    # Past its end nothing; a cached copy counts nothing either way (its heat does).
    assert true.running_demand(3950.0, heat) == {}
    true.cached["a"] = 0.0
    assert true.running_demand(1000.0, heat) == {}
    # The queued jobs' estimates are untouched.
    assert true.expected("a", 7200.0) == ours.expected("a", 7200.0) == 100 * GB


def test_the_switches_are_off_by_default() -> None:
    config = SimConfig(capacity=1)
    assert not config.true_queued and not config.true_running
    assert not config.true_placed and not config.true_unplaced and not config.limit_history


def _one_pass_trace(seed: int) -> Trace:
    spec = WorkloadSpec(jobs=120, nodes=4, datasets=12, seed=seed, max_passes=1,
                        max_duration=1e9, wide_share=0.5, wide_max=4, sweep_share=0.5)  # fmt: skip
    return generate(spec, load_sizes(SIZES))


def test_true_queued_changes_nothing_where_the_estimate_is_the_truth() -> None:
    # Every job reads exactly one pass and no time limit caps the estimate: the estimate
    # (one pass without history, the mean per job with it) is each job's true bytes, so
    # the switch replaces the estimate and nothing else.
    checked = 0
    for seed in (1, 2):
        trace = _one_pass_trace(seed)
        config = SimConfig(capacity=int(trace.catalog_bytes() * 0.2), read_rate=1e15)
        base = simulate(trace, config, ("ours",), bound=False).results["ours"]
        told = replace(config, **TRUE_QUEUED)
        same = simulate(trace, told, ("ours",), bound=False).results["ours"]
        assert _costs(same) == _costs(base) and base.copies > 0
        checked += 1
        # ... and it takes effect where it is not: the prior's time-limit cap binds
        # (1 GB/s x the limit is less than a pass of many datasets here).
        capped = replace(config, read_rate=1e6)
        assert _costs(simulate(trace, replace(capped, **TRUE_QUEUED), ("ours",), bound=False)
                      .results["ours"]) != _costs(
            simulate(trace, capped, ("ours",), bound=False).results["ours"])  # fmt: skip
    assert checked == 2


class EveryTick(Ours):
    """`ours` asked at every tick, whatever its inputs did (no proof, no jump): it reads
    heat and demand itself, as the replay would give them."""

    own_inputs = True

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        heat = node.heat(now)
        return super().decide(node, now, trigger, job, Inputs(heat, *node.demand_parts(now, heat)))

    def next_pass(self, node: SimNode, now: float, step: float) -> float:
        return now + step


def _cases() -> list[tuple[Trace, float]]:
    sizes = load_sizes(SIZES)
    return [
        (generate(WorkloadSpec(jobs=150, nodes=4, datasets=25, seed=seed, **knobs), sizes), share)
        for seed, share, knobs in (
            (1, 0.05, {"drift": 1.0}),
            (2, 0.2, {"sweep_share": 0.6, "burst": 3}),
            (3, 0.1, {"partial_share": 0.5, "wide_share": 0.5, "wide_max": 4}),
            # a proof of the running jobs' true reads that took the low end for the high
            # one, or a replay that jumped ahead while they still fell, differs here
            (8, 0.2, {"drift": 1.0}),
        )
    ]


@pytest.mark.parametrize(
    "switch", [{}, TRUE_QUEUED, TRUE_RUNNING, BOTH, TRUE_PLACED, TRUE_UNPLACED, LIMIT_HISTORY]
)
def test_skipped_passes_change_nothing_with_each_switch_and_workers_agree(
    switch: dict[str, bool],
) -> None:
    fewer = changed = 0
    for trace, share in _cases():
        config = SimConfig(capacity=int(trace.catalog_bytes() * share), **switch)
        policies = {
            "ours": Ours,
            "every": EveryTick,
        }
        report = simulate(trace, config, policies, bound=False)
        proven, every = report.results["ours"], report.results["every"]
        assert _costs(proven) == _costs(every) and proven.copies > 0
        fewer += every.decisions - proven.decisions
        # the switch takes effect (somewhere)
        off = simulate(trace, SimConfig(config.capacity), ("ours",), bound=False).results["ours"]
        changed += _costs(off) != _costs(proven)
    assert fewer > 0
    assert bool(changed) == bool(switch)
    trace, share = _cases()[2]
    config = SimConfig(capacity=int(trace.catalog_bytes() * share), **switch)
    one = simulate(trace, config, ("ours",), bound=False).results["ours"]
    two = simulate(trace, config, ("ours",), bound=False, workers=2).results["ours"]
    assert _costs(two) == _costs(one)


def test_the_switches_call_the_production_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = planner.plan

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "plan", spy)
    trace = _queued_trace()
    simulate(trace, SimConfig(capacity=150 * GB, interval=100.0, **BOTH), ["ours"], bound=False)
    assert calls


def test_running_moves_until_the_landing_passes_the_true_end() -> None:
    # With the true remainder a job without a time limit still moves the demand (the
    # replay must keep proving passes, not jump to the next placement).
    config = replace(SimConfig(capacity=150 * GB, interval=100.0), **TRUE_RUNNING)
    node, _ = _running_node(config, None)
    assert node.running_moves(1000.0)
    assert not node.running_moves(3950.0)  # a copy of a would land after x ends
    assert not _running_node(SimConfig(capacity=150 * GB), None)[0].running_moves(1000.0)
    assert math.isinf(node.work.jobs[0].limit)
