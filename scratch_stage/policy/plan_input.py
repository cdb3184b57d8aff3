"""The planner's input built from the node state (the state side of the planner's contract).

`planner.py` knows nothing of `state.json`: this module turns the persistence record and
the catalog into a `PlanInput` (docs/planner.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.state import NodeState
from scratch_stage.policy.planner import PlanInput


def plan_input(
    state: NodeState,
    catalog: Mapping[str, Fingerprint],
    now: float,
    *,
    blocked: Mapping[str, str] | None = None,
) -> PlanInput:
    """What the planner needs from STATE and CATALOG at NOW; BLOCKED: name -> why not now.

    A cached copy is fresh when the image in datadir still has the fingerprint it copied;
    a pin counts while it is active at NOW.
    """
    return PlanInput(
        sizes={name: fp.size for name, fp in catalog.items()},
        cached={name: copy.size for name, copy in state.cached.items()},
        fresh=frozenset(n for n, c in state.cached.items() if catalog.get(n) == c.fingerprint),
        held=frozenset(n for hold in state.jobs.values() for n in hold.datasets),
        inflight={name: copy.size for name, copy in state.staging.items()},
        pins=frozenset(n for n, pin in state.pins.items() if pin.active(now)),
        blocked=dict(blocked or {}),
    )
