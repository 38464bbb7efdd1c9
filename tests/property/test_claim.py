"""Properties of planned changes: contract, balance, movement, determinism.

The reference model is arithmetic. A change must move at least the slots its
gainers gain (sum over nodes of max(0, new load - old load)); where the zone
rule leaves nothing to re-plan (one zone, or exactly N zones) it moves exactly
that, all to the joiner, and the joiner's share is ~1/(n+1) of the slots. The
transfers are exactly the (partition, node) pairs new to a preference list.

A plan is not a fresh build of the new member list (placement depends on the
path taken); what holds for both is the zone rule and the balance guarantee,
and a plan never moves more than adopting a fresh build would.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.claim import RingChange, plan_join, plan_leave, plan_remove
from dynakv.core.ring import Ring, RingNode
from tests.property.test_ring import assert_balanced, clusters

partition_counts = st.sampled_from([64, 128, 256])


def gained_slots(change: RingChange) -> int:
    old, new = change.old, change.new
    return sum(
        max(0, len(new.replica_partitions(n.node_id)) - len(old.replica_partitions(n.node_id)))
        for n in new.nodes
    )


def moved_between(before: Ring, after: Ring) -> int:
    return sum(
        len(set(b) - set(a))
        for a, b in zip(before.preference_lists, after.preference_lists, strict=True)
    )


def assert_change_contract(change: RingChange) -> None:
    """Transfers are the new (partition, node) pairs; targets follow the old and new lists."""
    old, new = change.old, change.new
    dead = change.node_id if change.kind == "remove" else None
    assert new.epoch == old.epoch + 1
    assert new.has_node(change.node_id) == (change.kind == "join")
    expected = [
        (partition, node_id)
        for partition in range(old.partition_count)
        for node_id in new.preference_list(partition)
        if node_id not in old.preference_list(partition)
    ]
    assert [(t.partition, t.to_node) for t in change.transfers] == expected
    for transfer in change.transfers:
        before = old.preference_list(transfer.partition)
        assert sorted(transfer.from_nodes) == sorted(set(before) - {dead})
        leaving = set(before) - set(new.preference_list(transfer.partition)) - {dead}
        if leaving:  # the node giving up the slot streams it
            assert transfer.from_nodes[0] in leaving
    moving = set(change.moving_partitions())
    assert moving == {t.partition for t in change.transfers}
    for partition in range(old.partition_count):
        before, after = set(old.preference_list(partition)), set(new.preference_list(partition))
        reads, writes = change.read_targets(partition), change.write_targets(partition)
        assert set(reads) == before - {dead} and len(reads) == len(set(reads))
        assert set(writes) == (before | after) - {dead} and len(writes) == len(set(writes))
        assert set(change.pending_targets(partition)) == after - before
        if partition not in moving:
            assert writes == reads


def assert_movement_bounded(change: RingChange) -> None:
    gained = gained_slots(change)
    moved = len(change.transfers)
    assert gained <= moved <= 2 * gained + 4, (moved, gained)
    fresh = Ring.build(change.new.nodes, change.new.partition_count, change.new.replicas)
    assert moved <= moved_between(change.old, fresh)


@st.composite
def changes(draw: st.DrawFn, node_count_max: int = 40) -> RingChange:
    """A random cluster and one random join, leave or remove on it."""
    nodes = draw(clusters(node_count_max=node_count_max))
    ring = Ring.build(nodes, draw(partition_counts), draw(st.integers(1, 5)))
    kinds = ["join", "leave", "remove"] if len(nodes) > 1 else ["join"]
    kind = draw(st.sampled_from(kinds))
    if kind == "join":
        zones = sorted({n.zone for n in nodes})
        zone = draw(st.sampled_from([*zones, "new-zone"]))
        return plan_join(ring, RingNode("joiner", zone))
    node_id = draw(st.sampled_from([n.node_id for n in ring.nodes]))
    return (plan_leave if kind == "leave" else plan_remove)(ring, node_id)


@settings(max_examples=60, deadline=None)
@given(change=changes())
def test_a_change_keeps_the_contract_the_zone_rule_and_the_balance(change: RingChange) -> None:
    assert_change_contract(change)
    assert_balanced(change.new)
    assert_movement_bounded(change)


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    zone_count=st.sampled_from([1, 3]),
    zone_sizes=st.lists(st.integers(1, 12), min_size=3, max_size=3),
    partition_count=partition_counts,
)
def test_joins_move_exactly_the_joiners_share_when_the_zone_rule_is_unchanged(
    data: st.DataObject, zone_count: int, zone_sizes: list[int], partition_count: int
) -> None:
    """One zone, or three zones with N = 3: only the joiner gains, and only it receives."""
    sizes = zone_sizes[:zone_count]
    nodes = [RingNode(f"z{z}-{i}", f"z{z}") for z, size in enumerate(sizes) for i in range(size)]
    ring = Ring.build(nodes, partition_count, 3)
    zone = data.draw(st.sampled_from(sorted({n.zone for n in nodes})))
    change = plan_join(ring, RingNode("joiner", zone))
    assert {t.to_node for t in change.transfers} <= {"joiner"}
    assert len(change.transfers) == gained_slots(change)
    assert len(change.transfers) == len(change.new.replica_partitions("joiner"))


@settings(max_examples=25, deadline=None)
@given(
    nodes=clusters(node_count_max=12),
    operations=st.lists(
        st.tuples(st.sampled_from(["join", "leave", "remove"]), st.integers(0, 5)), max_size=6
    ),
    replicas=st.integers(1, 4),
)
def test_sequences_of_changes_stay_valid_and_balanced(
    nodes: list[RingNode], operations: list[tuple[str, int]], replicas: int
) -> None:
    ring = Ring.build(nodes, 128, replicas)
    for step, (kind, pick) in enumerate(operations):
        if kind == "join" or len(ring.nodes) == 1:
            change = plan_join(ring, RingNode(f"joiner-{step}", f"zone-{pick % 4}"))
        else:
            node_id = ring.nodes[pick % len(ring.nodes)].node_id
            change = (plan_leave if kind == "leave" else plan_remove)(ring, node_id)
        assert_change_contract(change)
        assert_balanced(change.new)
        assert change.new.epoch == step + 2
        ring = change.new


@settings(max_examples=20, deadline=None)
@given(data=st.data(), change=changes(node_count_max=15))
def test_plans_are_deterministic(data: st.DataObject, change: RingChange) -> None:
    old = change.old
    # Rebuilt from the same members in another order: the same ring, the same plan.
    shuffled = data.draw(st.permutations(old.nodes))
    assert Ring.build(shuffled, old.partition_count, old.replicas) == old
    if change.kind == "join":
        again = plan_join(old, change.new.node(change.node_id))
    else:
        again = (plan_leave if change.kind == "leave" else plan_remove)(old, change.node_id)
    assert again == change
    assert again.new.checksum == change.new.checksum


# --- the scenarios ----------------------------------------------------------------


def round_robin(node_count: int, zone_count: int = 3) -> list[RingNode]:
    return [RingNode(f"n{i:04d}", f"z{i % zone_count}") for i in range(node_count)]


def test_a_sixth_node_takes_a_sixth_and_a_decommission_moves_as_little() -> None:
    ring = Ring.build(round_robin(5), 1024, 3)  # zones 2/2/1
    joined = plan_join(ring, RingNode("n0005", "z2"))
    new = joined.new
    assert len(new.replica_partitions("n0005")) == 1024 * 3 // 6  # 1/6 of the slots
    assert abs(len(new.partitions_of("n0005")) - 1024 / 6) <= 2  # 1/6 of the owners
    assert joined.moved_fraction() < 0.25
    assert all("n0005" in joined.write_targets(p) for p in joined.moving_partitions())
    assert all("n0005" not in joined.read_targets(p) for p in joined.moving_partitions())
    assert_balanced(new)

    decommissioned = plan_leave(new, "n0001")
    assert decommissioned.moved_fraction() < 0.25
    assert len(decommissioned.transfers) == len(new.replica_partitions("n0001"))
    assert all("n0001" in t.from_nodes for t in decommissioned.transfers)
    assert_balanced(decommissioned.new)


@pytest.mark.parametrize("node_count", range(3, 51))
def test_one_join_moves_about_one_nth(node_count: int) -> None:
    """Three zones filled round-robin, N = 3, Q = 1024; the joiner goes to the smallest zone.

    Its zone must hold one replica of every list, so it takes Q/(s+1) slots
    (s = that zone's size): between 1/(n+3) and 1/(n+1) of all of them.
    """
    ring = Ring.build(round_robin(node_count), 1024, 3)
    change = plan_join(ring, RingNode("joiner", f"z{node_count % 3}"))
    slots = 1024 * 3
    moved = len(change.transfers)
    assert moved == gained_slots(change)
    assert slots / (node_count + 3) - 1 <= moved <= slots / (node_count + 1) + 1


@pytest.mark.parametrize("node_count", [2, 5, 17, 40])
def test_one_join_in_one_zone_moves_one_nth(node_count: int) -> None:
    nodes = [RingNode(f"n{i}", "z") for i in range(node_count)]
    change = plan_join(Ring.build(nodes, 1024, 3), RingNode("joiner", "z"))
    wanted_before, wanted_after = min(3, node_count), min(3, node_count + 1)
    if wanted_before == wanted_after:
        assert abs(len(change.transfers) - 1024 * 3 / (node_count + 1)) <= 1


def test_removing_a_dead_node_streams_from_the_survivors_only() -> None:
    ring = Ring.build(round_robin(6), 256, 3)
    change = plan_remove(ring, "n0002")
    dead_partitions = set(ring.replica_partitions("n0002"))
    assert {t.partition for t in change.transfers} == dead_partitions
    assert all("n0002" not in t.from_nodes and len(t.from_nodes) == 2 for t in change.transfers)
    assert all("n0002" not in change.write_targets(p) for p in range(256))
    # With one replica, what only the dead node held has no source left.
    single = Ring.build(round_robin(4), 64, 1)
    lost = plan_remove(single, "n0000")
    assert {t.partition for t in lost.transfers} == set(single.partitions_of("n0000"))
    assert all(t.from_nodes == () for t in lost.transfers)


@pytest.mark.parametrize(
    ("node_count", "partition_count"), [(100, 1024), (300, 1024), (1000, 1024), (1000, 4096)]
)
def test_joins_at_scale_move_one_nth(node_count: int, partition_count: int) -> None:
    started = time.perf_counter()
    ring = Ring.build(round_robin(node_count), partition_count, 3)
    built = time.perf_counter()
    change = plan_join(ring, RingNode("joiner", f"z{node_count % 3}"))
    planned = time.perf_counter()
    slots = partition_count * 3
    print(
        f"n={node_count} Q={partition_count}: build {1000 * (built - started):.0f} ms,"
        f" join {1000 * (planned - built):.0f} ms, moved {change.moved_fraction():.5f}"
        f" (1/(n+1) = {1 / (node_count + 1):.5f})"
    )
    assert len(change.transfers) == gained_slots(change)
    assert abs(len(change.transfers) - slots / (node_count + 1)) <= 0.1 * slots / node_count + 1
    assert_balanced(change.new)
    primaries = Counter(change.new.owners)
    assert primaries["joiner"] >= partition_count // (node_count + 1) - 1
