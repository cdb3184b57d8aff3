"""The replay: exact numbers on a hand-computed trace, capacity, holds, the real planner."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.core.expected import UNPLACED_CAP, after_landing
from scratch_stage.host import interrupts
from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.state import CachedCopy, Copy, Hold, NodeState
from scratch_stage.policy import planner
from scratch_stage.policy.plan_input import plan_input
from scratch_stage.simulate import policies
from scratch_stage.simulate import run as run_module
from scratch_stage.simulate.inputs import (
    UNKNOWN_START_FACTOR,
    NodeJob,
    SimConfig,
    UnplacedDemand,
    split_by_node,
    unplaced_demand,
)
from scratch_stage.simulate.metrics import PolicyResult
from scratch_stage.simulate.node import Action, Costs, PolicyError, SimNode
from scratch_stage.simulate.policies import POLICIES, Ours, ScratchManager
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Job, Trace
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes
from scratch_stage.slurm.demand import (
    PendingJob,
    Snapshot,
    node_demand,
    unplaced_scale,
)
from tests.unit.sim_helpers import GB, SIZES, random_trace, tiny_trace

CONFIG = SimConfig(capacity=150 * GB, interval=100.0, bandwidth=1e9)
RATE1 = 200 * GB / 3600  # job 1 reads 200 GB over an hour


@pytest.mark.parametrize(
    ("policy", "slow_read"),
    [
        ("none", 300 * GB),
        # Copied at job 1's start (100 s at 1 GB/s): job 1 reads slow meanwhile.
        ("lru", 100 * RATE1),
        ("lfu-da", 100 * RATE1),
        ("gdsf", 100 * RATE1),
        # Its own 5 s loop: heat is zero at the tick of the start (1000), positive at 1005:
        # the copy mounted at 1105.
        ("scratch_manager", 105 * RATE1),
        # Job 1 is queued (and placed here) from t=0: prefetched before it starts.
        ("ours", 0.0),
        ("aged-uses", 0.0),
        ("belady", 0.0),
        ("future-bytes", 0.0),
        # Both jobs are submitted at t=0: it knows they will read a 300 GB.
        ("queue-oracle", 0.0),
        # Job 1 is placed here from t=0: the blind one knows it then.
        ("queue-oracle-blind", 0.0),
        # Its programme copies a to land at job 1's start.
        ("mip-schedule", 0.0),
    ],
)
def test_hand_computed_trace(policy: str, slow_read: float) -> None:
    report = simulate(tiny_trace(), CONFIG, [policy])
    result = report.results[policy]
    copied = 0 if policy == "none" else 100 * GB
    assert result.copied_bytes == copied
    assert result.slow_read_bytes == pytest.approx(slow_read, rel=1e-9)
    assert result.slow_bytes == pytest.approx(slow_read + copied, rel=1e-9)
    assert result.read_bytes == 300 * GB
    assert report.bound is not None
    assert report.bound.lower == pytest.approx(100 * GB, rel=1e-6)  # copy a once, read free


class Audited(SimNode):
    """A SimNode whose every change is checked against the trace, independently.

    Holds are counted here from the jobs the replay starts and ends (at their trace
    times), not from the executor's own counters; the bytes in use are summed from what is
    cached and in flight, not taken from the executor's running total or its peak.
    """

    problems: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.readers: dict[str, int] = {}
        self.present: set[str] = set()

    def audit(self, now: float) -> None:
        inflight = {self.inflight[0]} if self.inflight is not None else set()
        used = sum(self.sizes[n] for n in set(self.cached) | inflight)
        if used > self.capacity:
            self.problems.append(f"{self.work.name} at {now}: {used} bytes in use")
        for name in self.present - set(self.cached):  # a copy left the cache: evicted
            if self.readers.get(name):
                self.problems.append(f"{self.work.name} at {now}: evicted {name}, held")
        self.present = set(self.cached)

    def apply(self, action: Action, now: float) -> None:
        super().apply(action, now)
        self.audit(now)

    def finish_copy(self, now: float) -> None:
        super().finish_copy(now)
        self.audit(now)

    def start_job(self, job: NodeJob, now: float) -> None:
        assert now == job.start
        for name, _ in job.reads:
            self.readers[name] = self.readers.get(name, 0) + 1
        super().start_job(job, now)
        self.audit(now)

    def end_job(self, job: NodeJob, now: float) -> None:
        assert now == job.end
        super().end_job(job, now)
        for name, _ in job.reads:
            self.readers[name] -= 1
        self.audit(now)


def audited_problems(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replay random traces under every policy on Audited nodes; what the audit found."""
    problems: list[str] = []
    monkeypatch.setattr(Audited, "problems", problems)
    monkeypatch.setattr(run_module, "SimNode", Audited)
    for seed in range(6):
        trace = random_trace(seed, datasets=5, jobs=12, nodes=2)
        config = SimConfig(capacity=45 * GB, interval=60.0, bandwidth=2e8)
        report = simulate(trace, config, bound=False)
        assert all(r.decisions > 0 for r in report.results.values() if r.policy != "none")
    return problems


def test_every_policy_respects_capacity_and_holds_at_every_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert audited_problems(monkeypatch) == []


def test_the_audit_catches_an_executor_that_evicts_held_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Proof the audit above can fail: an executor that forgets holds is caught.
    monkeypatch.setattr(SimNode, "evictable", lambda self, name: name in self.cached)
    assert any("held" in p for p in audited_problems(monkeypatch))


def test_executor_refuses_to_evict_a_held_copy() -> None:
    trace = tiny_trace()
    work = split_by_node(trace, CONFIG)["n1"]
    node = SimNode(work, trace.datasets, CONFIG, unplaced_demand(trace, CONFIG))
    node.apply(Action(stage=("a",)), 0.0)
    node.finish_copy(100.0)
    node.start_job(work.jobs[0], 1000.0)
    with pytest.raises(PolicyError):
        node.apply(Action(evict=("a",)), 1001.0)


def test_executor_never_reserves_past_capacity() -> None:
    trace = tiny_trace()
    work = split_by_node(trace, CONFIG)["n1"]
    node = SimNode(work, trace.datasets, CONFIG, unplaced_demand(trace, CONFIG))
    node.apply(Action(stage=("big", "a")), 0.0)  # big does not fit: refused, a is copied
    assert node.inflight is not None and node.inflight[0] == "a"
    assert node.costs.refused_copies == 1


def test_simulator_calls_the_production_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs: list[planner.PlanInput] = []
    real = planner.plan

    def spy(node: planner.PlanInput, *args: Any, **kwargs: Any) -> planner.Plan:
        inputs.append(node)
        return real(node, *args, **kwargs)

    monkeypatch.setattr(planner, "plan", spy)
    report = simulate(tiny_trace(), CONFIG, ["ours"], bound=False)
    assert inputs and report.results["ours"].decisions == len(inputs)
    assert any(i.held and i.cached for i in inputs)  # planned while job 1 read the copy
    # A planner that never caches changes the outcome: the simulator has no copy of its own.
    monkeypatch.setattr(planner, "plan", lambda *a, **k: planner.Plan((), (), {}))
    assert simulate(tiny_trace(), CONFIG, ["ours"], bound=False).results["ours"].copies == 0


def test_simulator_builds_the_input_the_rebalance_builds_from_state() -> None:
    trace = tiny_trace()
    work = split_by_node(trace, CONFIG)["n1"]
    node = SimNode(work, trace.datasets, CONFIG, unplaced_demand(trace, CONFIG))
    catalog = {n: Fingerprint(size, 1, 2) for n, size in trace.datasets.items()}
    state = NodeState()
    assert node.plan_input() == plan_input(state, catalog, 0.0)
    node.apply(Action(stage=("a",)), 0.0)  # a copy in flight
    state.staging["a"] = Copy(4242, "99", catalog["a"], 0.0)
    assert node.plan_input() == plan_input(state, catalog, 0.0)
    node.finish_copy(100.0)
    node.start_job(work.jobs[0], 1000.0)  # a running job holds the cached copy
    del state.staging["a"]
    state.cached["a"] = CachedCopy(catalog["a"], 100.0)
    state.jobs[work.jobs[0].id] = Hold(("a",), "alice", 1000.0)
    got = node.plan_input()
    assert got == plan_input(state, catalog, 1000.0)
    assert got.held == got.fresh == frozenset({"a"}) and not got.inflight


@pytest.mark.parametrize(("wide", "cap"), [(0.0, UNPLACED_CAP), (0.5, UNPLACED_CAP), (0.5, 0.5)])
def test_demand_matches_node_demand_of_the_live_system(wide: float, cap: float) -> None:
    """The replay's demand is node_demand's for the same queue, the cap on unplaced jobs
    included (WIDE: many-node jobs, which wait for their nodes: their queued jobs exceed
    the cap at some times), and placed jobs' waits counted from when a copy must start
    (none is cached: every copy takes 50-900 s, and placed jobs are due within 30 min)."""
    sizes = {"x": 50 * GB, "y": 200 * GB, "z": 900 * GB}
    spec = WorkloadSpec(jobs=120, nodes=4, sweep_share=0.6, seed=5, wide_share=wide, wide_max=4)
    trace = generate(spec, sizes)
    assert wide == 0 or any(len(job.nodes) > 1 for job in trace.jobs)
    config = SimConfig(capacity=300 * GB, interval=60.0, backfill_window=1800.0,
                       unplaced_cap=cap)  # fmt: skip
    work = split_by_node(trace, config)
    unplaced = unplaced_demand(trace, config)
    partitions = {"all": trace.nodes}
    histories = capped = shifted = 0
    for t in [600.0 * k for k in range(1, 40, 3)]:
        pending = []
        for job in trace.jobs:
            if job.submit <= t < job.start:
                placed = job.start - config.backfill_window <= t
                shifted += placed  # due after t, on an image not cached: its wait shifts
                pending.append(PendingJob(
                    job.id, ("all",), 1, len(job.nodes), job.start if placed else None,
                    job.nodes if placed else (), tuple(sorted(job.reads)), job.limit,
                ))  # fmt: skip
        snapshot = Snapshot(tuple(pending), partitions, t)
        capped += bool(unplaced_scale(snapshot, "n0000", cap))
        for name, node_work in work.items():
            node = SimNode(node_work, trace.datasets, config, unplaced)
            for done in node_work.jobs:  # the history of the jobs finished here by t
                if done.end <= t:
                    node.start_job(done, done.start)
                    node.end_job(done, done.end)
            histories += bool(node.jobs_done)
            history = {n: node.read_done[n] / node.jobs_done[n] for n in node.jobs_done}
            ours = node.demand(t)
            copy = {n: s / config.bandwidth for n, s in trace.datasets.items()}  # none cached
            live = node_demand(
                snapshot, name, now=t, horizon=config.horizon, sizes=trace.datasets,
                history=history, read_rate=config.read_rate, copy_seconds=copy,
                unplaced_cap=cap,
            )  # fmt: skip
            assert set(ours) == {k for k, v in live.items() if v > 1e-9}
            for k, v in live.items():
                assert math.isclose(ours.get(k, 0.0), v, rel_tol=1e-9, abs_tol=1e-9)
    assert histories  # some nodes had a history of finished jobs to go by
    assert shifted  # some placed jobs' waits were counted from their copies' start
    assert capped or not wide  # the cap on unplaced jobs applied at some of the times


def test_all_policies_are_registered() -> None:
    assert set(POLICIES) == {"ours", "none", "lru", "lfu-da", "gdsf", "scratch_manager",
                             "aged-uses", "belady", "future-bytes", "queue-oracle",
                             "queue-oracle-blind", "mip-schedule"}  # fmt: skip


def _costs(result: PolicyResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(Costs) if f.name != "decisions"}


def test_passes_proven_to_repeat_are_skipped_and_change_nothing() -> None:
    # Ours with the built-in value skips ticks whose plan it proves would repeat the last
    # one; the same value under another name plans at every tick: same replay, fewer plans.
    sizes = load_sizes(SIZES)
    every_tick = {
        "every": lambda: Ours(value=lambda v, p: planner.default_value(v, p)),
        "manager every": EveryTickManager,
    }
    fewer = {"ours": 0, "scratch_manager": 0}
    for seed, share, noise in ((1, 0.05, 0.0), (2, 0.1, 600.0), (3, 0.2, 0.0)):
        trace = generate(WorkloadSpec(jobs=150, nodes=3, datasets=25, seed=seed), sizes)
        config = SimConfig(capacity=int(trace.catalog_bytes() * share), estimate_noise=noise)
        policies = {"ours": Ours, "scratch_manager": ScratchManager, **every_tick}
        report = simulate(trace, config, policies, bound=False)
        for name, every in (("ours", "every"), ("scratch_manager", "manager every")):
            proven, all_ticks = report.results[name], report.results[every]
            assert _costs(proven) == _costs(all_ticks)
            assert proven.copies > 0
            fewer[name] += all_ticks.decisions - proven.decisions
    assert fewer["ours"] > 0 and fewer["scratch_manager"] > 0


class EveryTickManager(ScratchManager):
    repeats = None  # type: ignore[assignment]


def test_workers_replay_the_same_as_one_process() -> None:
    trace = random_trace(4, datasets=5, jobs=30, nodes=4)
    config = SimConfig(capacity=45 * GB, interval=60.0, bandwidth=2e8)
    one = simulate(trace, config, ["ours", "lru", "belady"], workers=1)
    two = simulate(trace, config, ["ours", "lru", "belady"], workers=2)
    for name, result in one.results.items():
        assert _costs(result) == _costs(two.results[name])
        assert result.decisions == two.results[name].decisions
    assert one.bound == two.bound


def test_scratch_manager_overfills_then_blacklists_what_failed() -> None:
    # capacity/1000 units of 150 MB: a (666 units) and b (334) fill the 1000 units, but
    # their true 150.1 GB do not fit in 150 GB: b's copy fails and b is never copied again,
    # not even when a is no longer read.
    sizes = {"a": 100 * GB, "b": 50_100_000_000}
    jobs = (
        Job("1", 0.0, 0.0, 20_000.0, ("n1",), {"a": 900 * GB}),
        Job("2", 0.0, 0.0, 20_000.0, ("n1",), {"b": 300 * GB}),
        Job("3", 0.0, 30_000.0, 50_000.0, ("n1",), {"b": 300 * GB}),
    )
    config = SimConfig(capacity=150 * GB)
    report = simulate(Trace(sizes, jobs), config, ["scratch_manager", "lru"], bound=False)
    manager = report.results["scratch_manager"]
    assert manager.refused_copies == 1 and manager.copies == 1
    assert manager.copied_bytes == 100 * GB
    assert manager.slow_read_bytes >= 600 * GB  # b: every byte from slow storage
    assert report.results["lru"].copies == 2  # b is copied when a no longer fits beside it


def test_scratch_manager_loops_every_5_seconds_whatever_the_interval() -> None:
    config = SimConfig(capacity=150 * GB, interval=600.0)
    report = simulate(tiny_trace(), config, ["scratch_manager", "lru"], bound=False)
    assert report.results["scratch_manager"].slow_read_bytes == pytest.approx(105 * RATE1)


def test_unplaced_demand_seen_lists_every_value_over_a_stretch() -> None:
    a1, a2 = {"a": {math.inf: 0.5}}, {"a": {math.inf: 0.2}, "b": {3600.0: 1.0}}
    demand = UnplacedDemand((60.0, 120.0, 180.0), (a1, a2, {}))
    assert demand.seen(0.0, 30.0) == [{}]
    assert demand.seen(0.0, 60.0) == [a1, {}]
    assert demand.seen(60.0, 150.0) == [a1, a2]
    assert demand.seen(120.0, 130.0) == [a2]


def reference_bytes(
    node: SimNode, values: Any, landing: bool, true_reads: bool
) -> dict[str, float]:
    """VALUES (an unplaced demand's value) in bytes, computed afresh as the node did."""
    out = {}
    for name, by_limit in values.items():
        land = node.land(name) if landing else 0.0
        total = 0.0
        for limit, w in by_limit.items():
            amount = w if true_reads else w * node.expected(name, limit)
            if land > 0:
                amount *= after_landing(node.config.horizon, None if limit == math.inf else limit,
                                        land)  # fmt: skip
            total += amount
        out[name] = total
    return out


def reference_unplaced(
    node: SimNode, start: float, end: float
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """The unplaced demand's lowest and highest after a landing, and highest prospect,
    over START..END as the node computed them before (every value taken, in bytes)."""
    reads = node.config.true_queued
    seen = node.unplaced.seen(start, end, reads=reads)
    landed = [reference_bytes(node, v, True, reads) for v in seen]
    high: dict[str, float] = {}
    for values in landed:
        for name, v in values.items():
            if v > high.get(name, 0.0):
                high[name] = v
    low = {n: min(values.get(n, 0.0) for values in landed) for n in high}
    prospect: dict[str, float] = {}
    for values in seen:
        for name, v in reference_bytes(node, values, False, reads).items():
            prospect[name] = max(prospect.get(name, 0.0), v / UNKNOWN_START_FACTOR)
    return low, high, prospect


@pytest.mark.parametrize("true_queued", [False, True])
def test_unplaced_bounds_are_every_value_taken(
    monkeypatch: pytest.MonkeyPatch, true_queued: bool
) -> None:
    # The proofs take each dataset's unplaced demand from the value at a stretch's start
    # and the entries that change in it (entries kept as one object while unchanged);
    # at every proof of a replay, and over stretches of every length up to two days from
    # it, they are those of every value taken, to the bit.
    sizes = load_sizes(SIZES)
    trace = generate(WorkloadSpec(jobs=300, nodes=4, datasets=25, seed=4, wide_share=0.5), sizes)
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.1), backfill_window=600.0,
                       true_queued=true_queued)  # fmt: skip
    checked = []
    real = SimNode.input_bounds

    def checking(node: SimNode, start: float, end: float) -> Any:
        for last in (end, start + 60.0, start + 3600.0, start + 172_800.0, start):
            low, high, prospect = reference_unplaced(node, start, last)
            assert node.unplaced_bounds(start, last) == (low, high)
            assert node.unplaced_prospect(start, last) == prospect
            for landing in (False, True):
                values = node.unplaced.reads_at(last) if true_queued else node.unplaced.at(last)
                fresh = reference_bytes(node, values, landing, true_queued)
                assert node._unplaced_bytes(values, landing, true_queued) == fresh
            checked.append((len(high), sum(1 for n in high if low[n] < high[n])))
        return real(node, start, end)

    monkeypatch.setattr(SimNode, "input_bounds", checking)
    report = simulate(trace, config, ["ours"], bound=False)
    assert report.results["ours"].copies > 0
    assert len(checked) > 100 and sum(h for h, _ in checked) > 100
    assert sum(moved for _, moved in checked) > 10  # stretches over which values change


def _worker_dies_on_sigterm(index: int) -> bool:
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_workers_die_on_sigterm_even_when_the_parent_turned_it_into_a_flag() -> None:
    # A command run in-process before (rebalance, prestage) leaves SIGTERM as a flag
    # (tests/conftest.py puts it back after the test). Workers that inherited it ignored
    # Pool.terminate(), and a replay could hang for ever on one still waiting on its queue.
    interrupts.install()
    assert list(run_module._each_node(_worker_dies_on_sigterm, 4, workers=2)) == [True] * 4


_LATE_WORKER = """
import multiprocessing, time
from scratch_stage.host import interrupts
from scratch_stage.simulate import run
initializer = run._default_signals
started = multiprocessing.get_context("fork").Value("i", 0)
def late() -> None:  # the second worker is slow to start: the first does all the work
    with started.get_lock():
        started.value += 1
        second = started.value == 2
    if second:
        time.sleep(1.0)  # Pool.terminate() signals it here
    initializer()
run._default_signals = late
interrupts.install()
print(list(run._each_node(abs, 2, workers=2)))
"""


def test_a_worker_signalled_before_its_initializer_still_dies() -> None:
    """A worker slow to start while the other does all the work: the replay ends (a
    terminate() at the pool's end used to SIGTERM it before its initializer ran, and with
    the parent's flag-setting handler it never exited: a unit run hung on it). In a fresh
    interpreter in its own session, with a time limit: a hang fails the test, and the
    whole session (its workers too) is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LATE_WORKER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=Path(__file__).resolve().parents[2], start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the replay's pool hung on a worker signalled before its initializer")
    assert proc.returncode == 0 and out == "[0, 1]\n", (out, err)


def reference_knapsack(items: Sequence[tuple[str, int, float]], capacity: int) -> set[str]:
    """scratch_manager's knapsack before the unique-optimum shortcut (its search and DP)."""
    if sum(weight for _, weight, value in items if value > 0) <= capacity:
        return {name for name, _, value in items if value > 0}
    views = [planner.View(name, weight, 0.0, 0.0, False) for name, weight, _ in items]
    values = {name: value for name, _, value in items}
    order = sorted(views, key=lambda v: (-values[v.name] / max(v.size, 1), v.name))
    return policies.search_then_dp(items, order, values, capacity)


def test_scratch_manager_replays_as_with_its_old_knapsack_at_every_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Over-full knapsacks (small cached copies piling up) are where its passes are proven
    # to repeat by unique_optimum and where its knapsack answers by the unique optimum:
    # the replay must be the one the old knapsack, asked at every tick, gives.
    sizes = load_sizes(SIZES)
    trace = generate(
        WorkloadSpec(jobs=240, nodes=2, datasets=60, seed=1, max_duration=21600), sizes
    )
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.05))
    proofs = []
    real = policies.unique_optimum

    def counted(*args: Any, **kwargs: Any) -> bool:
        proofs.append(real(*args, **kwargs))
        return proofs[-1]

    monkeypatch.setattr(policies, "unique_optimum", counted)
    new = simulate(trace, config, {"new": ScratchManager}, bound=False).results["new"]
    assert sum(proofs) > 20 and not all(proofs)
    monkeypatch.setattr(policies, "knapsack", reference_knapsack)
    old = simulate(trace, config, {"old": EveryTickManager}, bound=False).results["old"]
    assert _costs(new) == _costs(old)
    assert new.copies > 0 and new.decisions < old.decisions / 2


knapsack_items = st.lists(
    st.tuples(st.integers(0, 60), st.sampled_from([1.0, 2.0, 3.0, 0.5, 7.25])),
    min_size=1, max_size=9,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(knapsack_items, st.integers(1, 150))
def test_knapsack_answers_as_before_and_unique_optimum_is_exact(
    raw: list[tuple[int, float]], capacity: int
) -> None:
    # Few distinct values: ties are everywhere, so the answer must come from the same
    # search as before whenever the optimum is not the only one.
    items = [(f"d{i}", w, v) for i, (w, v) in enumerate(raw)]
    assert policies.knapsack(items, capacity) == reference_knapsack(items, capacity)
    worth = {}
    for k in range(len(items) + 1):
        for subset in itertools.combinations(items, k):
            if sum(w for _, w, _ in subset) <= capacity:
                worth[frozenset(n for n, _, _ in subset)] = sum(v for _, _, v in subset)
    top = max(worth.values())
    best = [s for s, v in worth.items() if v == top]
    for chosen in worth:
        expected = len(best) == 1 and chosen == best[0]
        assert policies.unique_optimum(items, set(chosen), capacity) == expected


def dense_best_by_weight(
    items: Sequence[tuple[str, int, float]], capacity: int
) -> list[list[float]]:
    """The dynamic programme's full table (what `_best_by_weight` kept before its rows
    became step functions): best[j][c], ITEMS[:j] within weight c."""
    best = [[0.0] * (capacity + 1)]
    for _, w, v in items:
        row = best[-1]
        if w > capacity:
            best.append(row)
            continue
        best.append(row[:w] + [a if a >= b else b for a, b in zip(row[w:], map(v.__add__, row))])
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 70), st.one_of(
            st.sampled_from([1.0, 2.0, 0.5, 7.25, 1e-7]), st.floats(1e-3, 1e6),
        )),
        min_size=0, max_size=12,
    ),
    st.integers(0, 150),
)  # fmt: skip
def test_knapsack_rows_as_steps_hold_the_dense_tables_values(
    raw: list[tuple[int, float]], capacity: int
) -> None:
    # Every value of every row, to the bit, and the best with and without each item as
    # unique_optimum combined the dense rows (max over c of before[c] + after[room - c]).
    items = [(f"d{i}", w, v) for i, (w, v) in enumerate(raw)]
    rows = policies._best_by_weight(items, capacity)
    dense = dense_best_by_weight(items, capacity)
    assert len(rows) == len(dense) == len(items) + 1
    for steps, row in zip(rows, dense):
        assert [policies._at(steps, c) for c in range(capacity + 1)] == row
        assert len(steps[0]) == len(set(row))  # only where it rises
    back_rows = policies._best_by_weight(items[::-1], capacity)
    back = dense_best_by_weight(items[::-1], capacity)
    for j in range(len(items)):
        before, after = dense[j], back[len(items) - 1 - j]
        for room in {0, capacity // 2, capacity}:
            expected = max(map(float.__add__, before[: room + 1], reversed(after[: room + 1])))
            found = policies._combined(rows[j], back_rows[len(items) - 1 - j], room)
            assert found == expected
    chosen = policies._optimum(items, rows, capacity)
    assert sum(w for n, w, _ in items if n in chosen) <= capacity
    assert sum(v for n, _, v in items if n in chosen) == pytest.approx(dense[-1][capacity])


def test_ours_with_other_knobs_skips_passes_and_changes_nothing() -> None:
    # The knob sweep (bench/knob_sweep.py) replays ours with other horizons and
    # hysteresis: its proofs hold for any knobs of the built-in value.
    sizes = load_sizes(SIZES)
    trace = generate(WorkloadSpec(jobs=150, nodes=3, datasets=25, seed=3), sizes)
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.05), horizon=7200.0)
    params = planner.PlanParams(horizon=7200.0, hysteresis=0.4)
    policies = {
        "proven": lambda: Ours(params=params),
        "every": lambda: Ours(params, value=lambda v, p: planner.default_value(v, p)),
        "default": Ours,
    }
    report = simulate(trace, config, policies, bound=False)
    proven, every = report.results["proven"], report.results["every"]
    assert _costs(proven) == _costs(every)
    assert proven.decisions < every.decisions
    assert _costs(proven) != _costs(report.results["default"])  # the knob took effect


class _EveryTick:
    """Asked at every tick, whatever heat and demand do (`own_inputs`), never skipping."""

    steady_until = None
    own_inputs = True

    def next_pass(self, node: Any, now: float, step: float) -> float:
        return now + step


class EveryTickBelady(_EveryTick, policies.Belady):  # type: ignore[misc]
    pass


class EveryTickFutureBytes(_EveryTick, policies.FutureBytes):  # type: ignore[misc]
    """Also weighs every dataset at every pass, not only those read by a running job or
    one starting within the lookahead."""

    def _gaining(self, node: SimNode, now: float) -> set[str]:
        return set(self._future(node))


def test_offline_policies_skip_steady_ticks_and_change_nothing() -> None:
    # Belady and future-bytes read neither heat nor demand: between events their answer
    # moves only when running jobs' remaining reads cross a threshold or reorder, or (for
    # future-bytes) when its 12 h look-ahead reaches another job's start, which it must see
    # even while heat and demand stay still (the replay once jumped to the next placement).
    # After a pass that changed nothing the replay skips every tick before that, whatever
    # heat and demand do; future-bytes weighs only the datasets that can gain (the
    # every-tick one weighs them all).
    sizes = load_sizes(SIZES)
    fewer = {"belady": 0, "future-bytes": 0}
    cases = [
        (generate(WorkloadSpec(jobs=150, nodes=3, datasets=25, seed=seed), sizes), share)
        for seed, share in ((1, 0.05), (2, 0.1), (3, 0.2))
    ]
    cases.append((random_trace(5, datasets=5, jobs=40, nodes=2), 0.4))
    for trace, share in cases:
        config = SimConfig(capacity=int(trace.catalog_bytes() * share))
        replayed: dict[str, Any] = {
            "belady every": EveryTickBelady, "future-bytes every": EveryTickFutureBytes,
            "belady": policies.Belady, "future-bytes": policies.FutureBytes,
        }  # fmt: skip
        report = simulate(trace, config, replayed, bound=False)
        for name in fewer:
            steady, all_ticks = report.results[name], report.results[f"{name} every"]
            assert _costs(steady) == _costs(all_ticks), name
            fewer[name] += all_ticks.decisions - steady.decisions
    assert fewer["belady"] > 0 and fewer["future-bytes"] > 0


class OldAgedUses(policies.AgedUses):
    """aged-uses scoring every dataset at every pass, as it did before its scores were
    kept per node version (the reference)."""

    def decide(
        self, node: SimNode, now: float, trigger: str, job: Any, inputs: Any
    ) -> Action | None:
        scores = {}
        for name in node.sizes:
            age = now - node.last_use.get(name, now)
            uses = node.uses.get(name, 0) + self.stickiness * inputs.demand.get(name, 0.0)
            if uses > 0:
                scores[name] = uses / (1.0 + age / self.age_scale)
        ranked = sorted(scores, key=lambda n: (-scores[n], node.sizes[n], n))
        return policies.reconcile(node, policies.fill(node, ranked))


def test_aged_uses_replays_as_with_its_old_scores() -> None:
    sizes = load_sizes(SIZES)
    for seed, share in ((1, 0.05), (2, 0.1), (3, 0.2)):
        trace = generate(WorkloadSpec(jobs=200, nodes=3, datasets=25, seed=seed), sizes)
        config = SimConfig(capacity=int(trace.catalog_bytes() * share))
        replayed = {"new": policies.AgedUses, "old": OldAgedUses}
        report = simulate(trace, config, replayed, bound=False)  # type: ignore[arg-type]
        new, old = report.results["new"], report.results["old"]
        assert _costs(new) == _costs(old) and new.copies > 0 and new.evictions > 0


def test_a_long_running_job_on_an_image_slower_to_copy_than_the_horizon_gets_a_copy() -> None:
    """A job reading a 4 TB image for 6 h (limit 8 h), never queued where a node could see
    it: its copy takes longer than the horizon, so its heat alone is worth nothing; what
    it will read after the copy lands (`running_demand`, from its time limit) pays."""
    hour = 3600.0
    trace = Trace(
        {"big": 4000 * GB},
        (Job("1", 0.0, 0.0, 6 * hour, ("n1",), {"big": int(0.8 * GB * 6 * hour)}, 8 * hour),),
    )
    config = SimConfig(capacity=5000 * GB, bandwidth=1e9)
    report = simulate(trace, config, ["ours", "none"], bound=False)
    ours, none = report.results["ours"], report.results["none"]
    assert ours.copies == 1
    assert ours.slow_bytes < 0.5 * none.slow_bytes
    without_limit = Trace(trace.datasets, (replace_limit(trace.jobs[0], None),))
    report = simulate(without_limit, config, ["ours"], bound=False)
    assert report.results["ours"].copies == 0  # no limit: nothing known of its end


def replace_limit(job: Job, limit: float | None) -> Job:
    return Job(job.id, job.submit, job.start, job.end, job.nodes, job.reads, limit)


def test_running_demand_matches_the_live_systems() -> None:
    from scratch_stage.slurm.demand import running_demand

    trace = generate(WorkloadSpec(jobs=120, nodes=4, sweep_share=0.6, seed=5),
                     {"x": 50 * GB, "y": 2000 * GB, "z": 9000 * GB})  # fmt: skip
    config = SimConfig(capacity=300 * GB, interval=60.0)
    work = split_by_node(trace, config)
    limits = {j.id: j.limit for j in trace.jobs}
    compared = 0
    for t in [600.0 * k for k in range(1, 40, 3)]:
        for node_work in work.values():
            node = SimNode(node_work, trace.datasets, config, unplaced_demand(trace, config))
            for job in node_work.jobs:
                if job.start <= t:
                    node.start_job(job, job.start)
                if job.end <= t:
                    node.end_job(job, job.end)
            node.cached = {"x": 0.0}  # a cached copy: nothing to count for it
            heat = node.heat(t)
            ours = node.running_demand(t, heat)
            holds = {j.id: (tuple(n for n, _ in j.reads), j.start) for j in node.running.values()}
            copy = {n: s / config.bandwidth for n, s in trace.datasets.items() if n != "x"}
            live = running_demand(holds, limits, heat, copy, t)
            assert set(ours) == set(live) and "x" not in live
            for k, v in live.items():
                assert math.isclose(ours[k], v, rel_tol=1e-9)
            compared += len(live)
    assert compared
