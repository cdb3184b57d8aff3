"""Replay a trace under several policies, node by node, and compute the lower bound."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Callable

from scratch_stage.simulate.bound import Bound, Relaxation, lower_bound
from scratch_stage.simulate.engine import Policy, replay_node
from scratch_stage.simulate.inputs import SimConfig, split_by_node, unplaced_demand
from scratch_stage.simulate.metrics import PolicyResult, Report
from scratch_stage.simulate.node import SimNode
from scratch_stage.simulate.policies import POLICIES
from scratch_stage.simulate.trace import Trace

PolicyFactory = Callable[[], Policy]


def simulate(
    trace: Trace,
    config: SimConfig,
    policies: Sequence[str] | Mapping[str, PolicyFactory] = tuple(POLICIES),
    *,
    bound: bool = True,
    bound_iterations: int = 80,
) -> Report:
    """Every policy's costs on TRACE (a fresh policy per node), and the offline bound."""
    factories = (
        dict(policies) if isinstance(policies, Mapping) else {p: POLICIES[p] for p in policies}
    )
    work = split_by_node(trace, config)
    unplaced = unplaced_demand(trace, config)
    results: dict[str, PolicyResult] = {}
    for name, factory in factories.items():
        started = time.perf_counter()
        result = PolicyResult(name)
        for node_work in work.values():
            node = SimNode(node_work, trace.datasets, config, unplaced)
            result.add(replay_node(node, factory()))
        result.seconds = time.perf_counter() - started
        results[name] = result
    report = Report(results, None, len(trace.jobs), len(work), config.capacity,
                    trace.catalog_bytes())  # fmt: skip
    if bound:
        started = time.perf_counter()
        total = Bound(0.0, 0.0, 0)
        for node_work in work.values():
            relax = Relaxation.of(node_work.jobs, trace.datasets, config.capacity)
            total = total + lower_bound(relax, iterations=bound_iterations)
        report.bound = total
        report.bound_seconds = time.perf_counter() - started
    return report
