"""decide_unmounts: a pass's evictions, idle unmounts and remounts as a value, like plan()."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.mountinfo import Layer
from scratch_stage.host.state import CachedCopy, Hold, Intent, NodeState
from scratch_stage.policy.planner import Decision, Plan
from scratch_stage.policy.unmounts import Unmount, decide_unmounts

FP = Fingerprint(100, 1, 1)
SLOW = "/data/{}.sqfs"
FAST = "/cache/{}.sqfs"


def stack(name: str, *where: str, deleted: bool = False) -> list[Layer]:
    suffix = " (deleted)" if deleted else ""
    paths = {"slow": SLOW, "fast": FAST}
    return [
        Layer(i, "/dev/loop0", "squashfs", paths[w].format(name) + suffix)
        for i, w in enumerate(where)
    ]


def evicting(*names: str) -> Plan:
    decisions = {n: Decision("evict", -1.0, "not worth its room") for n in names}
    return Plan(evict=names, stage=(), decisions=decisions)


def decide(state: NodeState, plan: Plan, stacks: dict[str, list[Layer]], images: set[str],
           idle: float = 600.0, now: float = 1000.0):  # fmt: skip
    backing = {n: FAST.format(n) for n in stacks}
    return decide_unmounts(state, plan, stacks, dict.fromkeys(images), backing,
                           idle_unmount=idle, now=now)  # fmt: skip


def test_a_planned_eviction_of_an_unheld_cached_copy() -> None:
    state = NodeState(cached={"a": CachedCopy(FP, 0.0)}, last_used={"a": 999.0})
    got = decide(state, evicting("a"), {"a": stack("a", "slow", "fast")}, {"a"})
    assert got.unmounts == (Unmount("a", True, "not worth its room"),)


def test_held_busy_or_uncached_datasets_are_never_evicted() -> None:
    state = NodeState(
        jobs={"7": Hold(("a",), "u", 0.0)},
        cached={n: CachedCopy(FP, 0.0) for n in "abc"},
        intents={"b": Intent("mount", 1, "s", 0.0)},
        last_used=dict.fromkeys("abcd", 999.0),
    )
    stacks = {n: stack(n, "slow", "fast") for n in "abc"}
    got = decide(state, evicting("a", "b", "d"), stacks, set("abcd"))
    assert got.unmounts == ()


def test_idle_removed_and_replaced_stacks() -> None:
    state = NodeState(last_used={"idle": 100.0, "fresh": 900.0, "gone": 999.0, "new": 999.0})
    stacks = {
        "idle": stack("idle", "slow"),
        "fresh": stack("fresh", "slow"),
        "gone": stack("gone", "slow"),
        "new": stack("new", "slow", deleted=True),
    }
    got = decide(state, evicting(), stacks, {"idle", "fresh", "new"})
    assert got.unmounts == (
        Unmount("gone", False, "image removed from datadir"),
        Unmount("idle", False, "idle for 900s"),
        Unmount("new", False, "image replaced in datadir"),
    )


def test_a_mounted_cached_copy_is_left_to_eviction_and_idle_zero_never_unmounts() -> None:
    state = NodeState(cached={"a": CachedCopy(FP, 0.0)}, last_used={"a": 0.0, "b": 0.0})
    stacks = {"a": stack("a", "slow", "fast"), "b": stack("b", "slow")}
    assert decide(state, evicting(), stacks, {"a", "b"}, idle=600).unmounts == (
        Unmount("b", False, "idle for 1000s"),
    )
    assert decide(state, evicting(), stacks, {"a", "b"}, idle=0).unmounts == ()


def test_first_seen_stacks_start_their_idle_timer_and_stay() -> None:
    got = decide(NodeState(), evicting(), {"a": stack("a", "slow")}, {"a"}, idle=1)
    assert got.unmounts == () and got.idle_since_now == ("a",)


def test_held_datasets_without_a_mount_are_mounted_again() -> None:
    state = NodeState(jobs={"7": Hold(("a", "b", "c", "gone"), "u", 0.0)},
                      intents={"c": Intent("mount", 1, "s", 0.0)})  # fmt: skip
    got = decide(state, evicting(), {"b": stack("b", "slow")}, {"a", "b", "c"})
    assert got.remounts == ("a",)


@settings(max_examples=300, deadline=None)
@given(
    held=st.sets(st.sampled_from("abcde")),
    busy=st.sets(st.sampled_from("abcde")),
    cached=st.sets(st.sampled_from("abcde")),
    evict=st.sets(st.sampled_from("abcde")),
    mounted=st.sets(st.sampled_from("abcde")),
    images=st.sets(st.sampled_from("abcde")),
    idle=st.sampled_from([0.0, 1.0, 1e9]),
)
def test_never_touches_what_a_job_holds_or_another_process_acts_on(
    held: set[str], busy: set[str], cached: set[str], evict: set[str], mounted: set[str],
    images: set[str], idle: float,
) -> None:  # fmt: skip
    state = NodeState(
        jobs={"1": Hold(tuple(sorted(held)), "u", 0.0)} if held else {},
        intents={n: Intent("mount", 1, "s", 0.0) for n in busy},
        cached={n: CachedCopy(FP, 0.0) for n in cached},
        last_used=dict.fromkeys(mounted, 0.0),
    )
    stacks = {n: stack(n, "slow", *(["fast"] if n in cached else [])) for n in mounted}
    got = decide(state, evicting(*sorted(evict)), stacks, images, idle=idle)
    names = [u.name for u in got.unmounts]
    assert len(names) == len(set(names))  # at most once per pass
    assert not set(names) & (held | busy)
    assert all(u.name in cached for u in got.unmounts if u.evict)
    assert set(got.remounts) <= held - busy - mounted
    assert set(got.remounts) == (held & images) - busy - mounted
