"""The pure reconcile function over random interleavings of intents and kernel states."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.agent.reconcile import Cleanup, FileId, World, reconcile
from scratch_stage.core.layout import partial_name
from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.state import CachedCopy, Copy, Hold, Intent, NodeState

NAMES = ["a", "b", "c", "d"]
PIDS = [10, 11, 12, 13]
names = st.sampled_from(NAMES)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[NodeState, World, frozenset[int]]:
    """A state as some interleaving of processes left it, and what the node shows."""
    alive = frozenset(draw(st.sets(st.sampled_from(PIDS))))
    state = NodeState()
    for job in draw(st.lists(st.sampled_from(["1", "2", "3"]), unique=True)):
        state.jobs[job] = Hold(tuple(draw(st.sets(names, min_size=1))), "u", 0.0)
    for name in draw(st.sets(names)):
        kind = draw(st.sampled_from(["mount", "unmount", "evict"]))
        state.intents[name] = Intent(kind, draw(st.sampled_from(PIDS)), "s", 0.0)
    for name in draw(st.sets(names)):
        state.staging[name] = Copy(draw(st.sampled_from(PIDS)), "s", Fingerprint(100, 1, 1), 0)
    for name in draw(st.sets(names)):
        state.cached[name] = CachedCopy(Fingerprint(100, 1, 1), 0.0, draw(st.sampled_from([0, 7])))
    for name in draw(st.sets(names)):
        state.last_used[name] = 5.0
    files = {
        n: FileId(draw(st.sampled_from([7, 8])), draw(st.sampled_from([100, 50])))
        for n in draw(st.sets(names))
    }
    partials = frozenset(
        partial_name(n, p)
        for n in draw(st.sets(names))
        for p in draw(st.sets(st.sampled_from(PIDS)))
    )
    world = World(mounted=frozenset(draw(st.sets(names))), cached_files=files, partials=partials)
    return state, world, alive


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_reconcile_invariants(scenario: tuple[NodeState, World, frozenset[int]]) -> None:
    before, world, alive = scenario
    state = copy.deepcopy(before)

    cleanups, _ = reconcile(state, world, lambda pid, start: pid in alive, now=100.0)

    # Holds and pins are never touched: no holder lost.
    assert state.jobs == before.jobs and state.pins == before.pins
    # Only dead processes' intents and copies go; live ones stay exactly.
    assert {n: i for n, i in before.intents.items() if i.pid in alive} == state.intents
    assert {n: c for n, c in before.staging.items() if c.pid in alive} == state.staging
    deleted = {c.filename for c in cleanups if c.where == "cache"}
    # No cached record without its file (unless a live process is acting on it and will
    # finish the record), and never a record of a file being deleted.
    for name, cached in state.cached.items():
        assert name not in deleted
        if name in state.intents:
            continue
        found = world.cached_files.get(name)
        assert found is not None and found.size == cached.size
        assert not cached.inode or found.inode == cached.inode
    # A cached file is deleted only when nothing records it and no live copy will.
    for name in deleted:
        assert name not in state.cached and name not in state.staging
        assert name not in state.intents
    # A live copy's partial file is never deleted; every dead one's is.
    live = {partial_name(n, c.pid) for n, c in state.staging.items()}
    removed = {c.filename for c in cleanups if c.where == "partial"}
    assert not (removed & live) and removed == world.partials - live
    # Every mounted dataset is held, being acted on, or has an idle timer.
    held = {n for h in state.jobs.values() for n in h.datasets}
    for name in world.mounted:
        assert name in held or name in state.intents or name in state.last_used
    # Reconcile is idempotent: a second run over the settled world changes nothing.
    settled_world = World(
        world.mounted,
        {n: f for n, f in world.cached_files.items() if n not in deleted},
        world.partials - removed,
    )
    again = copy.deepcopy(state)
    more, _ = reconcile(again, settled_world, lambda pid, start: pid in alive, now=200.0)
    assert again == state and more == []


def test_an_eviction_killed_after_unlink_drops_the_record() -> None:
    state = NodeState(
        cached={"a": CachedCopy(Fingerprint(100, 1, 1), 0.0, 7)},
        intents={"a": Intent("evict", 10, "s", 0.0, "/cache/a.sqfs")},
    )
    cleanups, notes = reconcile(state, World(), lambda pid, start: False, now=1.0)
    assert state.cached == {} and state.intents == {} and cleanups == []
    assert notes == [
        "a: evict by dead process 10 settled",
        "a: cached copy is gone from disk; record dropped",
    ]


def test_a_copy_renamed_but_never_recorded_is_removed() -> None:
    state = NodeState(staging={"a": Copy(10, "s", Fingerprint(100, 1, 1), 0)})
    world = World(cached_files={"a": FileId(9, 100)})
    cleanups, _ = reconcile(state, world, lambda pid, start: False, now=1.0)
    assert cleanups == [Cleanup("cache", "a")] and state.staging == {}
