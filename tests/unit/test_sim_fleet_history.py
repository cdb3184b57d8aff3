"""The fleet-wide read history experiment (`SimConfig.fleet_history`): every node estimates
a job's reads from what every node's finished jobs read, never from a job not yet ended."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

from scratch_stage.policy import planner
from scratch_stage.simulate.engine import Inputs
from scratch_stage.simulate.inputs import FleetHistory, NodeJob, SimConfig, split_by_node
from scratch_stage.simulate.metrics import PolicyResult
from scratch_stage.simulate.node import Action, Costs, SimNode
from scratch_stage.simulate.policies import Ours
from scratch_stage.simulate.run import simulate
from scratch_stage.simulate.trace import Job, Trace
from scratch_stage.simulate.workload import WorkloadSpec, generate, load_sizes
from tests.unit.sim_helpers import SIZES as CATALOG
from tests.unit.sim_helpers import replay_recorded

SIZES = load_sizes(CATALOG)


def _trace(seed: int = 2) -> Trace:
    spec = WorkloadSpec(jobs=120, nodes=4, datasets=12, seed=seed, wide_share=0.5, wide_max=4,
                        partial_share=0.5)  # fmt: skip
    return generate(spec, SIZES)


def _node_jobs(trace: Trace, config: SimConfig) -> list[NodeJob]:
    return [job for work in split_by_node(trace, config).values() for job in work.jobs]


def _truth(jobs: list[NodeJob], name: str, now: float) -> float | None:
    """The mean bytes read from NAME by the node jobs ended at or before NOW (brute force)."""
    done = [size for job in jobs if job.end <= now for n, size in job.reads if n == name]
    return sum(done) / len(done) if done else None


def test_fleet_history_is_the_mean_over_every_node_of_the_jobs_ended_by_now() -> None:
    trace = _trace()
    config = SimConfig(capacity=1)
    work = split_by_node(trace, config).values()
    history = FleetHistory.of(work)
    jobs = _node_jobs(trace, config)
    assert any(len(job.nodes) > 1 for job in trace.jobs)
    ends = sorted({job.end for job in jobs})
    times = [-math.inf, ends[0] - 1, *ends[::7], *(e - 1e-6 for e in ends[::11]), math.inf]
    seen = 0
    for name in trace.datasets:
        for now in times:
            want, got = _truth(jobs, name, now), history.per_job(name, now)
            assert (got is None) == (want is None), (name, now)
            if want is not None:
                assert math.isclose(got or 0.0, want, rel_tol=1e-12)
                seen += 1
    assert seen > 50


def test_a_job_ending_after_now_never_changes_the_estimate_at_now() -> None:
    trace = _trace()
    config = SimConfig(capacity=1)
    name = max(trace.datasets, key=lambda n: sum(n in j.reads for j in trace.jobs))
    start = trace.jobs[len(trace.jobs) // 2].start
    late = Job("late", start, start, start + 7200.0, (trace.nodes[-1],), {name: 10**15})
    more = Trace(trace.datasets, (*trace.jobs, late))
    before = FleetHistory.of(split_by_node(trace, config).values())
    after = FleetHistory.of(split_by_node(more, config).values())
    for now in (start, start + 3600.0, late.end - 1e-3):
        assert after.per_job(name, now) == before.per_job(name, now)
    # ... and it counts from its end: the test could fail.
    assert after.per_job(name, late.end) != before.per_job(name, late.end)


class Recording(Ours):
    """Ours that records, at every pass, the estimate it saw for every dataset."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, dict[str, float | None], set[str]]] = []

    def decide(
        self, node: SimNode, now: float, trigger: str, job: NodeJob | None, inputs: Inputs | None
    ) -> Action | None:
        self.seen.append((now, {n: node.per_job(n) for n in node.sizes}, set(node.jobs_done)))
        return super().decide(node, now, trigger, job, inputs)


def test_every_pass_sees_the_fleet_history_of_its_instant(monkeypatch: Any) -> None:
    trace = _trace(3)
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.1), fleet_history=True)
    jobs = _node_jobs(trace, config)
    passes = [e for policy in replay_recorded(trace, config, Recording) for e in policy.seen]
    assert len(passes) > 100
    for now, estimates, _ in passes:
        for name, got in estimates.items():
            assert got == _truth(jobs, name, now) or math.isclose(
                got or -1.0, _truth(jobs, name, now) or -2.0, rel_tol=1e-12
            ), (name, now)
    # Other nodes' jobs count: some pass has an estimate its own node's jobs did not make.
    assert any(
        got is not None and name not in own for _, est, own in passes for name, got in est.items()
    )


def _costs(result: PolicyResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(Costs) if f.name != "decisions"}


def test_skipped_passes_change_nothing_with_the_fleet_history_and_workers_agree() -> None:
    # Seed 4 at 20 %: a replay that skipped the passes after another node's job ended
    # (history changed, no tick forced) differs from planning at every tick here.
    trace = _trace(4)
    config = SimConfig(capacity=int(trace.catalog_bytes() * 0.2), fleet_history=True)
    policies = {
        "ours": Ours,
        "every": lambda: Ours(value=lambda v, p: planner.default_value(v, p)),
    }
    report = simulate(trace, config, policies, bound=False)
    proven, every = report.results["ours"], report.results["every"]
    assert _costs(proven) == _costs(every)
    assert proven.decisions < every.decisions and proven.copies > 0
    two = simulate(trace, config, ("ours",), bound=False, workers=2).results["ours"]
    assert _costs(two) == _costs(proven)
    # The option takes effect, and is off by default.
    assert not SimConfig(capacity=1).fleet_history
    own = simulate(trace, replace(config, fleet_history=False), ("ours",), bound=False)
    assert _costs(own.results["ours"]) != _costs(proven)
