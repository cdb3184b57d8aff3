"""The queue oracle (the planner told the truth about submitted jobs only), the blind one
(told it only where and when `ours` is), and what the bound proves about issue 12's
targets."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from scratch_stage.agent.rebalance import load_value_function
from scratch_stage.core.errors import ConfigError
from scratch_stage.simulate.command import simulate as simulate_command
from scratch_stage.simulate.inputs import (
    NodeJob,
    SimConfig,
    split_by_node,
    unplaced_demand,
    visible_from,
)
from scratch_stage.simulate.metrics import PolicyResult
from scratch_stage.simulate.node import Costs, SimNode
from scratch_stage.simulate.policies import POLICIES, BlindQueueOracle, QueueOracle
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.targets import attainability, format_attainability, optimum_range
from scratch_stage.simulate.trace import Job, Trace, write_trace
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes
from tests.unit.sim_helpers import GB, SIZES, random_trace

ORACLE = "queue-oracle"
BLIND = "queue-oracle-blind"


def _costs(result: PolicyResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(Costs) if f.name != "decisions"}


def _visibility_trace(submit: float) -> Trace:
    """Job x reads b (10 GB) 4 times from 0 to 500 s; job y, submitted at SUBMIT, reads a
    (100 GB) twice from 1000 s to 4600 s."""
    return Trace(
        {"a": 100 * GB, "b": 10 * GB},
        (
            Job("x", 0.0, 0.0, 500.0, ("n1",), {"b": 40 * GB}),
            Job("y", submit, 1000.0, 4600.0, ("n1",), {"a": 200 * GB}),
        ),
    )


RATE_Y = 200 * GB / 3600


@pytest.mark.parametrize(
    ("submit", "oracle_slow"),
    [
        # Submitted at its start: seen at the tick of 1000 s, the copy lands at 1100 s.
        (1000.0, 100 * RATE_Y),
        # Submitted at 800 s: copied from the tick of 800 s, in place before the start.
        (800.0, 0.0),
    ],
)
def test_the_oracle_learns_of_a_job_when_it_is_submitted(submit: float, oracle_slow: float) -> None:
    config = SimConfig(capacity=150 * GB, interval=100.0, bandwidth=1e9, backfill_window=0.0)
    report = simulate(_visibility_trace(submit), config, [ORACLE, "future-bytes"], bound=False)
    oracle, offline = report.results[ORACLE], report.results["future-bytes"]
    # y's reads of a missed: only those during a's copy (x's reads of b: slow during b's
    # own 10 s copy, the first for both)
    slow_b = 10 * 40 * GB / 500
    assert oracle.slow_read_bytes == pytest.approx(slow_b + oracle_slow, rel=1e-9)
    assert offline.slow_read_bytes == pytest.approx(slow_b, rel=1e-9)  # knows y from the start


def _before(result: PolicyResult, cut: float) -> tuple[list[Any], list[Any]]:
    """The copies started and the copies evicted before CUT, per node."""
    started = sorted((s.node, s.name, s.start, s.landed) for s in result.spans if s.start < cut)
    left = sorted((s.node, s.name, s.left) for s in result.spans if s.left < cut)
    return started, left


class PeekingOracle(QueueOracle):
    """A queue oracle that sees every job of its node from the start."""

    def seen(self, node: SimNode, now: float) -> list[NodeJob]:
        return [j for j in node.work.jobs if j.end > now]

    def next_submit(self) -> float:
        return float("inf")


def whole_future() -> QueueOracle:
    """The bench's reference: the same planner told every job from the start."""
    return QueueOracle(submitted_only=False)


def _history_changes_with_later_jobs(factory: Any) -> list[tuple[int, float]]:
    """Cases (seed, cut) where removing the jobs submitted after CUT changes what the
    policy did before CUT: it read something it could not have known."""

    def known_by(trace: Trace, config: SimConfig, cut: float) -> Trace:
        return Trace(trace.datasets, tuple(j for j in trace.jobs if j.submit <= cut))

    return _changes_before(factory, known_by)


def _changes_before(
    factory: Any, alter: Any, window: float = 3600.0, delay: float = 120.0
) -> list[tuple[int, float]]:
    """Cases (seed, cut) where ALTER(trace, config, cut), a change to what no node can
    know before CUT, changes what the policy did before CUT (backfill places jobs
    WINDOW seconds ahead; jobs wait DELAY seconds on average to start)."""
    sizes = load_sizes(SIZES)
    found = []
    for seed in range(1, 5):
        spec = WorkloadSpec(jobs=120, nodes=3, datasets=25, sched_delay=delay, seed=seed)
        trace = generate(spec, sizes)
        config = SimConfig(capacity=int(trace.catalog_bytes() * 0.1), backfill_window=window)
        span = max(j.end for j in trace.jobs)
        for cut in (span * 0.25, span * 0.5, span * 0.75):
            full = simulate(trace, config, {"o": factory}, bound=False).results["o"]
            altered = alter(trace, config, cut)
            other = simulate(altered, config, {"o": factory}, bound=False).results["o"]
            if _before(full, cut) != _before(other, cut):
                found.append((seed, cut))
            assert _before(full, cut)[0]  # something was copied before the cut
    return found


@pytest.mark.parametrize("oracle", [QueueOracle, BlindQueueOracle])
def test_the_oracle_never_sees_a_job_before_its_submit_time(oracle: Any) -> None:
    # Whatever is submitted after a moment cannot change what it did before that moment.
    assert _history_changes_with_later_jobs(oracle) == []


def _moved_before_placement(trace: Trace, config: SimConfig, cut: float) -> Trace:
    """TRACE with every job that backfill has not placed by CUT sent to other nodes (each
    of its nodes the next one, as many as before: its share of the nodes is the same)."""
    names = sorted(trace.nodes)
    after = {n: names[(i + 1) % len(names)] for i, n in enumerate(names)}
    jobs = tuple(
        j if visible_from(j, config) <= cut else replace(j, nodes=tuple(after[n] for n in j.nodes))
        for j in trace.jobs
    )
    return Trace(trace.datasets, jobs)


# Jobs wait an hour on average, placed by backfill only when they start (0) or an hour
# ahead: many are submitted and not placed at each cut.
@pytest.mark.parametrize("window", [0.0, 3600.0])
def test_the_blind_oracle_never_sees_where_a_job_runs_before_it_is_placed(window: float) -> None:
    # Where a job not placed yet will run cannot change what it did before then.
    assert _changes_before(BlindQueueOracle, _moved_before_placement, window, 3600.0) == []


class BlindButPeeking(BlindQueueOracle):
    """The blind oracle told where a job will run when it is submitted."""

    def _known(self, node: SimNode, job: NodeJob) -> float:
        return QueueOracle._known(self, node, job)


@pytest.mark.parametrize("peeking", [QueueOracle, BlindButPeeking])
def test_the_no_placement_peeking_check_catches_an_oracle_that_peeks(peeking: Any) -> None:
    # The queue oracle knows where a submitted job will run: the check sees that.
    assert _changes_before(peeking, _moved_before_placement, 0.0, 3600.0) != []


@pytest.mark.parametrize("peeking", [PeekingOracle, whole_future])
def test_the_no_peeking_check_catches_an_oracle_that_peeks(peeking: Any) -> None:
    assert _history_changes_with_later_jobs(peeking) != []


@pytest.mark.parametrize("name", [ORACLE, BLIND])
def test_the_oracle_is_deterministic_and_the_same_with_workers(name: str) -> None:
    trace = random_trace(7, datasets=5, jobs=40, nodes=3)
    config = SimConfig(capacity=45 * GB, interval=60.0, bandwidth=2e8)
    runs = [simulate(trace, config, [name], bound=False, workers=w).results[name]
            for w in (1, 1, 2)]  # fmt: skip
    assert runs[0].copies > 0
    for other in runs[1:]:
        assert _costs(other) == _costs(runs[0]) and other.decisions == runs[0].decisions


@pytest.mark.parametrize("oracle", [QueueOracle, BlindQueueOracle])
def test_the_oracle_skips_ticks_proven_to_repeat_and_changes_nothing(oracle: Any) -> None:
    sizes = load_sizes(SIZES)
    fewer = 0
    cases = [
        (generate(WorkloadSpec(jobs=150, nodes=3, datasets=25, seed=seed, **knobs), sizes), share)
        for seed, share, knobs in (
            (1, 0.05, {"drift": 1.0}), (2, 0.2, {"sweep_share": 0.6, "burst": 3}),
            (3, 0.1, {"partial_share": 0.5}),
        )
    ]  # fmt: skip
    cases.append((random_trace(5, datasets=5, jobs=40, nodes=2), 0.4))
    for trace, share in cases:
        config = SimConfig(capacity=int(trace.catalog_bytes() * share))
        replayed: dict[str, Any] = {"proven": oracle, "every": lambda: oracle(prove=False)}
        report = simulate(trace, config, replayed, bound=False)
        proven, every = report.results["proven"], report.results["every"]
        assert _costs(proven) == _costs(every)
        assert proven.copies > 0
        fewer += every.decisions - proven.decisions
    assert fewer > 0


@pytest.mark.parametrize("name", [ORACLE, BLIND])
def test_the_oracle_calls_the_production_planner(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from scratch_stage.policy import planner

    calls: list[int] = []
    real = planner.plan

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        assert args[1] == {}  # no heat
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "plan", spy)
    simulate(_visibility_trace(800.0), SimConfig(capacity=150 * GB, interval=100.0), [name])
    assert calls


def test_the_oracle_is_registered_for_replays_only() -> None:
    assert POLICIES[ORACLE] is QueueOracle
    assert POLICIES[BLIND] is BlindQueueOracle


def test_the_blind_oracle_is_replayed_when_asked_for_only() -> None:
    from scratch_stage.simulate.command import DEFAULT_NAMES, POLICY_NAMES
    from scratch_stage.simulate.policies import DEFAULT_POLICIES

    assert tuple(POLICIES) == POLICY_NAMES and DEFAULT_NAMES == DEFAULT_POLICIES
    report = simulate(_visibility_trace(800.0), SimConfig(capacity=150 * GB), bound=False)
    assert BLIND not in report.results and ORACLE in report.results
    assert set(report.results) == set(POLICIES) - {BLIND, "mip-schedule"}


def _unplaced_trace() -> Trace:
    """Jobs u1 (a once) and u2 (a 3 times) on n1, submitted at 0, starting at 20 000 s:
    not placed before 16 400 s (backfill one hour ahead); v keeps n2 busy."""
    return Trace(
        {"a": 100 * GB, "b": 10 * GB},
        (
            Job("u1", 0.0, 20_000.0, 23_600.0, ("n1",), {"a": 100 * GB}),
            Job("u2", 0.0, 20_000.0, 23_600.0, ("n1",), {"a": 300 * GB}),
            Job("v", 0.0, 0.0, 30_000.0, ("n2",), {"b": 10 * GB}),
        ),
    )


@pytest.mark.parametrize("cap", [float("inf"), 0.25])
def test_the_blind_oracle_weighs_unplaced_jobs_as_ours_with_their_true_reads(cap: float) -> None:
    trace = _unplaced_trace()
    config = SimConfig(capacity=150 * GB, interval=100.0, unplaced_cap=cap)
    unplaced = unplaced_demand(trace, config, reads=True)
    for name in ("n1", "n2"):  # the same on both nodes: where they will run is not known
        node = SimNode(split_by_node(trace, config)[name], trace.datasets, config, unplaced)
        ours_demand, ours_prospect = node.demand_parts(100.0)
        true_demand, true_prospect = node.unplaced_reads(100.0)
        # Without history `ours` expects a pass each (200 GB); they read 400 GB: twice that.
        assert true_demand["a"] == pytest.approx(2 * ours_demand["a"], rel=1e-12)
        assert true_prospect["a"] == pytest.approx(2 * ours_prospect["a"], rel=1e-12)
        # each half of the nodes; capped at 0.25 jobs, a quarter of their weight (1 job)
        scale = 1.0 if cap == float("inf") else 0.25
        assert true_prospect["a"] == pytest.approx(scale * 0.5 * 400 * GB, rel=1e-12)
        assert "b" not in true_demand  # v is running, not queued
        # placed at 16 400 s: from then on, nothing is unplaced
        assert node.unplaced_reads(16_400.0) == ({}, {})
    with pytest.raises(ValueError, match="reads=True"):
        unplaced_demand(trace, config).reads_at(100.0)


@pytest.mark.parametrize(
    "spec",
    ["scratch_stage.simulate.policies:QueueOracle", "scratch_stage.simulate.policies:Ours",
     "scratch_stage.simulate.policies:BlindQueueOracle",
     " scratch_stage.simulate:x"],
)  # fmt: skip
def test_no_simulator_policy_can_be_a_nodes_valuation(tmp_path: Path, spec: str) -> None:
    from scratch_stage.host.config import validate_config

    raw = {"datadir": str(tmp_path), "cachedir": str(tmp_path), "statedir": str(tmp_path),
           "mountdir": str(tmp_path), "capacity": "1GiB", "value_function": spec}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        validate_config(raw, "test")
    message = str(caught.value)
    assert "value_function" in message and "simulator" in message and "\n" not in message
    with pytest.raises(ConfigError, match="only run in replays"):
        load_value_function(spec)


# --- what the bound proves about the targets ---------------------------------------------


def _one_read() -> Trace:
    """One job reading a (100 GB) once, over an hour: any policy reads it or copies it."""
    return Trace({"a": 100 * GB}, (Job("1", 0.0, 0.0, 3600.0, ("n1",), {"a": 100 * GB}),))


def _alternating() -> Trace:
    """a and b (100 GB each) read a pass each by turns, a cache for one: LRU copies every
    time; keeping a and reading b from slow storage costs far less."""
    jobs = tuple(
        Job(str(i), 2000.0 * i, 2000.0 * i, 2000.0 * i + 1000, ("n1",),
            {"a" if i % 2 == 0 else "b": 100 * GB})
        for i in range(8)
    )  # fmt: skip
    return Trace({"a": 100 * GB, "b": 100 * GB}, jobs)


def test_the_bound_proves_a_target_out_of_reach_on_a_single_read() -> None:
    config = SimConfig(capacity=150 * GB, interval=100.0, bandwidth=1e9)
    report = simulate(_one_read(), config, ["lru", "scratch_manager", "none", ORACLE])
    assert report.bound is not None
    # No schedule reads fewer than 100 GB; LRU copies (100 GB) and reads meanwhile.
    assert report.bound.lower == pytest.approx(100 * GB, rel=1e-6)
    lru = report.results["lru"].slow_bytes
    assert lru == pytest.approx(100 * GB + 100 * 100 * GB / 3600, rel=1e-9)
    by = {a.baseline: a for a in attainability(report)}
    assert by["lru"].best == pytest.approx((report.bound.lower - lru) / lru)
    assert -0.03 < by["lru"].best < 0 and by["lru"].out_of_reach and not by["lru"].met_by
    assert by["scratch_manager"].out_of_reach
    text = format_attainability(report)
    assert "vs lru: best possible -2.7%; target -25%: out of reach for every policy" in text
    # reading it once from slow storage (none) is optimal: the range closes on the bound
    name, ratio = optimum_range(report) or ("", 0.0)
    assert name == "none" and ratio == pytest.approx(1.0, rel=1e-6)
    assert (
        "the optimum lies between the bound and 1.00x it (the cheapest schedule replayed: none)"
        in text
    )


def test_the_bound_leaves_a_target_open_where_lru_thrashes() -> None:
    config = SimConfig(capacity=150 * GB, interval=100.0, bandwidth=1e9)
    report = simulate(_alternating(), config, ["lru", "scratch_manager", "future-bytes"])
    assert report.bound is not None
    lru = report.results["lru"]
    assert lru.copies == 8  # copies at every job: a, b, a, b, ...
    by = {a.baseline: a for a in attainability(report)}
    assert by["lru"].best < -0.25 and not by["lru"].out_of_reach
    assert by["lru"].best == pytest.approx((report.bound.lower - lru.slow_bytes) / lru.slow_bytes)
    # future-bytes meets it, which proves it attainable (offline)
    assert report.results["future-bytes"].slow_bytes <= 0.75 * lru.slow_bytes
    assert "future-bytes" in by["lru"].met_by


def test_the_simulate_command_reports_what_the_bound_allows(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    with path.open("w") as f:
        write_trace(_one_read(), f)
    runner = CliRunner()
    args = [str(path), "--capacity", "150GB", "--policy", "lru", "--policy", "scratch_manager"]
    result = runner.invoke(simulate_command, args)
    assert result.exit_code == 0, result.output
    assert "vs lru: best possible -2.7%; target -25%: out of reach" in result.output
    assert "vs scratch_manager: best possible" in result.output
    data = json.loads(runner.invoke(simulate_command, [*args, "--json"]).output)
    [lru] = [t for t in data["targets"] if t["baseline"] == "lru"]
    assert lru["out_of_reach"] is True and lru["target_fewer"] == 0.25
    # without LRU or scratch_manager, or without the bound, nothing to say
    alone = runner.invoke(simulate_command, [str(path), "--capacity", "150GB", "--policy", "ours"])
    assert "best possible" not in alone.output
