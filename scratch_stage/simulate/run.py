"""Replay a trace under several policies, node by node, and compute the lower bound.

Nodes are independent: with `workers` > 1 they are replayed by that many forked
processes (each node's costs come back in node order, so the sums are the same as in
one process); where fork is unavailable they run in this process.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

from scratch_stage.simulate.bound import Bound, Relaxation, copy_time_bound
from scratch_stage.simulate.engine import Policy, replay_node
from scratch_stage.simulate.inputs import (
    ArrayHistory,
    FleetHistory,
    NodeWorkload,
    SimConfig,
    replay_start,
    split_by_node,
    unplaced_demand,
)
from scratch_stage.simulate.metrics import PolicyResult, Report
from scratch_stage.simulate.node import Costs, SimNode
from scratch_stage.simulate.policies import DEFAULT_POLICIES, POLICIES
from scratch_stage.simulate.trace import Trace

PolicyFactory = Callable[[], Policy]

# What forked workers read (set before the pool forks; a worker only reads it).
_TASK: dict[str, Any] = {}


def simulate(
    trace: Trace,
    config: SimConfig,
    policies: Sequence[str] | Mapping[str, PolicyFactory] = DEFAULT_POLICIES,
    *,
    bound: bool = True,
    bound_iterations: int = 80,
    workers: int = 1,
) -> Report:
    """Every policy's costs on TRACE (a fresh policy per node), and the offline bound."""
    factories = (
        dict(policies) if isinstance(policies, Mapping) else {p: POLICIES[p] for p in policies}
    )
    work = list(split_by_node(trace, config).values())
    # the unplaced jobs' true reads only for a policy that reads them (the blind oracle)
    # or the true-queued experiment
    reads = config.true_unplaced_reads or any(
        getattr(factory(), "true_unplaced", False) for factory in factories.values()
    )
    unplaced = unplaced_demand(trace, config, reads=reads)
    fleet = FleetHistory.of(work) if config.fleet_history else None
    arrays = ArrayHistory.of(work) if config.array_history == "fleet" else None
    _TASK.update(work=work, sizes=trace.datasets, config=config, unplaced=unplaced,
                 iterations=bound_iterations, fleet=fleet, arrays=arrays)  # fmt: skip
    results: dict[str, PolicyResult] = {}
    try:
        for name, factory in factories.items():
            started = time.perf_counter()
            result = PolicyResult(policy=name)
            _TASK["factory"] = factory
            for costs in _each_node(_replay_one, len(work), workers):
                result.add(costs)
            result.seconds = time.perf_counter() - started
            results[name] = result
        report = Report(results, None, len(trace.jobs), len(work), config.capacity,
                        trace.catalog_bytes())  # fmt: skip
        if bound:
            started = time.perf_counter()
            total, instant = Bound(0.0, 0.0, 0), Bound(0.0, 0.0, 0)
            for part, old in _each_node(_bound_one, len(work), workers):
                total, instant = total + part, instant + old
            report.bound, report.instant_bound = total, instant
            report.bound_seconds = time.perf_counter() - started
    finally:
        _TASK.clear()
    return report


def _replay_one(index: int) -> Costs:
    work: NodeWorkload = _TASK["work"][index]
    node = SimNode(work, _TASK["sizes"], _TASK["config"], _TASK["unplaced"], _TASK["fleet"],
                   _TASK["arrays"])  # fmt: skip
    return replay_node(node, _TASK["factory"]())


def _bound_one(index: int) -> tuple[Bound, Bound]:
    """The node's bound with copy time, and with instant copies."""
    work: NodeWorkload = _TASK["work"][index]
    config: SimConfig = _TASK["config"]
    start = replay_start(work, _TASK["unplaced"])
    relax = Relaxation.of(work.jobs, _TASK["sizes"], config.capacity, start)
    return copy_time_bound(relax, config.bandwidth, iterations=_TASK["iterations"])


def _default_signals() -> None:
    """A worker dies on SIGTERM whatever handler it inherited: Pool.terminate() relies on it
    (a forked worker that kept a flag-setting handler waits on its queue for ever)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides on Ctrl-C


def _each_node(func: Callable[[int], Any], count: int, workers: int) -> Iterator[Any]:
    """FUNC(i) for every node index, in order; by forked workers if asked and possible."""
    if workers <= 1 or count <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(func, range(count))
        return
    context = multiprocessing.get_context("fork")
    # Fork the workers with SIGTERM at its default too: Pool.terminate() (an error, Ctrl-C)
    # may signal a worker before it ran its initializer, and a worker that caught it with
    # the parent's flag-setting handler would never exit: the replay would hang.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main else None
    try:
        pool = context.Pool(min(workers, count), initializer=_default_signals)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    with pool:
        results = list(pool.imap(func, range(count)))
        # Let the workers leave on their own before the pool goes: terminate() (what
        # leaving the `with` does) kills them wherever they are, and a pool left open in a
        # suspended generator is terminated only at exit, where a child was once seen
        # waiting for ever on one of multiprocessing's locks.
        pool.close()
        pool.join()
    yield from results
