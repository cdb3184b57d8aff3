"""Fleet staging (simulate/fleet.py): hand-computed cases, and properties that could fail."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_stage.simulate.fleet import (
    Fleet,
    FleetError,
    cooperative,
    independent,
    lease_only,
    outcomes,
)

GB = 10**9
MIB = 1024**2


def fleet(**kw: object) -> Fleet:
    params: dict[str, object] = {"nodes": 4, "size": GB, "shared_bandwidth": 1e9,
                                 "node_bandwidth": 1e9, "peer_bandwidth": 1e9}  # fmt: skip
    params.update(kw)
    return Fleet(**params)  # type: ignore[arg-type]


def test_the_issue_case_by_hand() -> None:
    # 512 nodes, 150 GB, 10 GB/s shared, 2 GB/s per node: independent nodes get 10/512 GB/s
    # each, 7680 s, 76.8 TB; one lease holder reads at 2 GB/s and peers keep up: 75 s plus
    # ceil(log2 512) = 9 piece times of 16 MiB at 2 GB/s.
    f = Fleet(nodes=512, size=150 * GB, shared_bandwidth=10e9, node_bandwidth=2e9,
              peer_bandwidth=2e9, readers=1, piece=16 * MIB)  # fmt: skip
    ind, lease, coop = outcomes(f)
    assert ind.shared_bytes == 512 * 150 * GB
    assert ind.seconds == pytest.approx(512 * 150 / 10)
    assert ind.limit == "shared storage"
    assert lease.shared_bytes == 512 * 150 * GB
    assert lease.seconds == pytest.approx(512 * 75)
    assert coop.shared_bytes == 150 * GB
    assert coop.seconds == pytest.approx(75 + 9 * 16 * MIB / 2e9)
    assert coop.limit == "node link"


def test_three_nodes_two_readers_by_hand() -> None:
    # Lease of 2 on 1 GB/s: two nodes at 0.5 GB/s (2 s), then the third alone at 1 GB/s
    # (1 s). Cooperative: 2 holders read half each; peers send 0.5 GB/s each, so the rate
    # is min(1, 1, 2 x 0.5, 3/2 x 0.5) = 0.75 GB/s; ceil(log2 3) = 2 pieces of 16 MiB at
    # 0.5 GB/s follow.
    f = fleet(nodes=3, readers=2, peer_bandwidth=0.5e9, piece=16 * MIB)
    assert independent(f).seconds == pytest.approx(3.0)
    assert lease_only(f).seconds == pytest.approx(3.0)
    assert lease_only(f).first_seconds == pytest.approx(2.0)
    coop = cooperative(f)
    assert coop.seconds == pytest.approx(1 / 0.75 + 2 * 16 * MIB / 0.5e9)
    assert coop.limit == "peer upload"
    assert coop.shared_bytes == GB


def test_one_reader_is_limited_by_its_own_upload() -> None:
    # Every byte must leave the only holder: 2 nodes, peers at 0.25 GB/s -> 4 s + 1 piece.
    coop = cooperative(fleet(nodes=2, peer_bandwidth=0.25e9, piece=GB // 100))
    assert coop.seconds == pytest.approx(4.0 + 0.01 / 0.25)
    assert coop.limit == "peer upload"


def test_a_node_link_slower_than_shared_storage_limits_independent() -> None:
    f = fleet(nodes=4, shared_bandwidth=10e9, node_bandwidth=1e9)
    assert independent(f).seconds == pytest.approx(1.0)
    assert independent(f).limit == "node link"


def test_a_piece_larger_than_the_image_is_the_image() -> None:
    coop = cooperative(fleet(nodes=2, piece=10 * GB))
    assert coop.seconds == pytest.approx(1.0 + 1.0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"nodes": 0}, "nodes must be a positive integer: 0"),
        ({"size": -1}, "size must be a positive integer: -1"),
        ({"readers": 0}, "readers must be a positive integer: 0"),
        ({"shared_bandwidth": 0.0}, "shared-bandwidth must be more than zero: 0.0"),
        ({"node_bandwidth": math.inf}, "node-bandwidth must be more than zero: inf"),
        ({"peer_bandwidth": -1.0}, "peer-bandwidth must be zero or more: -1.0"),
        ({"peer_bandwidth": math.nan}, "peer-bandwidth must be zero or more: nan"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(kw: dict[str, object], message: str) -> None:
    with pytest.raises(FleetError) as e:
        fleet(**kw)
    assert str(e.value) == message


rates = st.floats(min_value=1e6, max_value=1e11)
fleets = st.builds(
    Fleet,
    nodes=st.integers(1, 2000),
    size=st.integers(1, 10**12),
    shared_bandwidth=rates,
    node_bandwidth=rates,
    peer_bandwidth=st.one_of(st.just(0.0), rates),
    readers=st.integers(1, 8),
    piece=st.integers(1, 64 * MIB),
)


@settings(max_examples=300, deadline=None)
@given(fleets)
def test_cooperative_never_reads_more_than_independent(f: Fleet) -> None:
    ind, lease, coop = outcomes(f)
    assert coop.shared_bytes <= ind.shared_bytes
    assert lease.shared_bytes == ind.shared_bytes == f.nodes * f.size
    assert coop.shared_bytes == (f.size if f.peer_bandwidth > 0 else f.nodes * f.size)


@settings(max_examples=300, deadline=None)
@given(fleets)
def test_one_node_is_the_same_in_every_mode(f: Fleet) -> None:
    alone = Fleet(1, f.size, f.shared_bandwidth, f.node_bandwidth, f.peer_bandwidth,
                  f.readers, f.piece)  # fmt: skip
    ind, lease, coop = outcomes(alone)
    assert ind.shared_bytes == lease.shared_bytes == coop.shared_bytes == f.size
    assert ind.seconds == pytest.approx(lease.seconds) == pytest.approx(coop.seconds)
    assert ind.seconds == pytest.approx(f.size / min(f.shared_bandwidth, f.node_bandwidth))


@settings(max_examples=300, deadline=None)
@given(fleets)
def test_independent_bottlenecked_on_shared_storage_takes_n_times_size_over_bandwidth(
    f: Fleet,
) -> None:
    ind = independent(f)
    if f.shared_bandwidth / f.nodes <= f.node_bandwidth:
        assert ind.seconds == pytest.approx(f.nodes * f.size / f.shared_bandwidth)
    else:
        assert ind.seconds == pytest.approx(f.size / f.node_bandwidth)
    # Never faster than shared storage can deliver N copies, nor a node can take one.
    assert ind.seconds >= max(f.nodes * f.size / f.shared_bandwidth,
                              f.size / f.node_bandwidth) * (1 - 1e-12)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(fleets)
def test_no_peer_bandwidth_degrades_to_the_lease(f: Fleet) -> None:
    without = Fleet(f.nodes, f.size, f.shared_bandwidth, f.node_bandwidth, 0.0, f.readers,
                    f.piece)  # fmt: skip
    lease, coop = lease_only(without), cooperative(without)
    assert (coop.shared_bytes, coop.seconds) == (lease.shared_bytes, lease.seconds)
    # The lease serialises: never faster than ceil(N / readers) rounds of one copy at the
    # fastest a node reads, never slower than that many rounds at the slowest share.
    rounds = math.ceil(f.nodes / min(f.readers, f.nodes))
    fastest = f.size / min(f.node_bandwidth, f.shared_bandwidth)
    slowest = f.size / min(f.node_bandwidth, f.shared_bandwidth / min(f.readers, f.nodes))
    assert rounds * fastest * (1 - 1e-9) <= lease.seconds <= rounds * slowest * (1 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(fleets, st.integers(1, 64))
def test_time_and_bytes_are_monotone_in_the_number_of_nodes(f: Fleet, more: int) -> None:
    bigger = Fleet(f.nodes + more, f.size, f.shared_bandwidth, f.node_bandwidth,
                   f.peer_bandwidth, f.readers, f.piece)  # fmt: skip
    for small, large in zip(outcomes(f), outcomes(bigger)):
        assert large.shared_bytes >= small.shared_bytes, small.mode
        assert large.seconds >= small.seconds * (1 - 1e-12), small.mode


@settings(max_examples=300, deadline=None)
@given(fleets)
def test_cooperative_is_never_faster_than_a_node_can_receive_or_shared_storage_send(
    f: Fleet,
) -> None:
    coop = cooperative(f)
    assert coop.seconds >= f.size / min(f.node_bandwidth, f.shared_bandwidth) * (1 - 1e-12)
    assert coop.first_seconds <= coop.seconds


def swarm_slots(nodes: int, pieces: int) -> int:
    """A concrete schedule, in slots of one piece time: node 0 (the only lease holder)
    reads piece t from shared storage in slot t; in every slot each node sends at most
    one piece and receives at most one; the rarest pieces go first, to the nodes that
    have least. Slots until every node has every piece."""
    have: list[set[int]] = [set() for _ in range(nodes)]
    slot = 0
    while any(len(h) < pieces for h in have):
        count: dict[int, int] = {}
        for h in have:
            for p in h:
                count[p] = count.get(p, 0) + 1
        senders = {i for i in range(nodes) if have[i]}
        receivers = set(range(1, nodes))  # node 0 is busy reading shared storage
        moves = [(0, slot)] if slot < pieces else []
        for p in sorted(count, key=lambda p: (count[p], -p)):
            holders = sorted(u for u in senders if p in have[u])
            lacking = sorted((d for d in receivers if p not in have[d]),
                             key=lambda d: (len(have[d]), d))  # fmt: skip
            for u, d in zip(holders, lacking):
                senders.discard(u)
                receivers.discard(d)
                moves.append((d, p))
        for d, p in moves:
            have[d].add(p)
        slot += 1
    return slot


@pytest.mark.parametrize("nodes", [2, 3, 4, 5, 8, 13, 16, 32])
@pytest.mark.parametrize("pieces", [1, 2, 4, 7, 16, 64])
def test_cooperative_time_is_a_bound_a_simple_schedule_comes_close_to(
    nodes: int, pieces: int
) -> None:
    # Equal rates of one piece per second everywhere: the model says pieces + ceil(log2 N)
    # seconds. No schedule does better (the last piece leaves shared storage after
    # `pieces` seconds and its holders at most double every second), and the greedy
    # swarm above is within 20 %.
    f = Fleet(nodes=nodes, size=pieces * 1000, shared_bandwidth=1000.0, node_bandwidth=1000.0,
              peer_bandwidth=1000.0, readers=1, piece=1000)  # fmt: skip
    model = cooperative(f).seconds
    assert model == pytest.approx(pieces + math.ceil(math.log2(nodes)))
    slots = swarm_slots(nodes, pieces)
    assert model <= slots <= 1.2 * model
    if pieces == 1 or nodes == 2:
        assert slots == model  # a binomial tree, or a chain of two: the bound is met
