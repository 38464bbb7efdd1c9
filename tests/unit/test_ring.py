"""Concrete ring examples: small enough to check by hand."""

from __future__ import annotations

import json

import pytest

from dynakv.core.ring import Ring, RingNode, partition_of, plan_join, plan_leave

A, B, C = RingNode("a", "z1"), RingNode("b", "z2"), RingNode("c", "z3")


def test_three_nodes_in_three_zones_replicate_every_partition_everywhere() -> None:
    ring = Ring.build([C, A, B], partition_count=8, replicas=3)
    assert ring.owners == ("a", "b", "c", "a", "b", "c", "a", "b")
    assert ring.nodes == (A, B, C)
    for partition in range(8):
        assert sorted(ring.preference_list(partition)) == ["a", "b", "c"]
        assert ring.fallbacks(partition) == ()
    assert ring.preference_list(0) == ("a", "b", "c")
    # Partition 7 wraps: b, then a at 0, then b again (skipped), then c.
    assert ring.preference_list(7) == ("b", "a", "c")
    assert ring.partitions_of("a") == (0, 3, 6)
    assert ring.replica_partitions("a") == tuple(range(8))


def test_one_node_with_three_replicas_has_a_one_node_preference_list() -> None:
    ring = Ring.build([RingNode("solo", "z1")], partition_count=16, replicas=3)
    assert all(ring.preference_list(p) == ("solo",) for p in range(16))
    assert ring.fallbacks(5) == ()
    assert ring.summary()["nodes"]["solo"]["replica_partitions"] == 16


def test_zones_interleave_round_robin_in_name_order() -> None:
    nodes = [RingNode("d", "z2"), RingNode("b", "z1"), RingNode("c", "z1"), RingNode("a", "z3")]
    ring = Ring.build(nodes, partition_count=8, replicas=2)
    # z1: b, c; z2: d; z3: a  ->  b d a c, repeated.
    assert ring.owners == ("b", "d", "a", "c", "b", "d", "a", "c")


def test_same_zone_neighbours_are_skipped_then_fallbacks_follow_the_walk() -> None:
    nodes = [RingNode("a", "z1"), RingNode("b", "z1"), RingNode("c", "z2"), RingNode("d", "z3")]
    ring = Ring.build(nodes, partition_count=8, replicas=3)
    # Interleaved: a c d b (z1 z2 z3 z1).
    assert ring.owners == ("a", "c", "d", "b", "a", "c", "d", "b")
    assert ring.preference_list(0) == ("a", "c", "d")
    assert ring.fallbacks(0) == ("b",)
    # From b (z1): a is z1 too, so the walk skips it and takes c and d.
    assert ring.preference_list(3) == ("b", "c", "d")
    assert ring.fallbacks(3) == ("a",)


def test_fewer_zones_than_replicas_fill_up_with_distinct_nodes() -> None:
    nodes = [RingNode(f"n{i}", "z1" if i < 3 else "z2") for i in range(5)]
    ring = Ring.build(nodes, partition_count=16, replicas=3)
    # Interleaved: n0 n3 n1 n4 n2.
    assert ring.owners[:5] == ("n0", "n3", "n1", "n4", "n2")
    assert ring.preference_list(0) == ("n0", "n3", "n1")
    assert ring.fallbacks(0) == ("n4", "n2")
    # From n2 (z1): n0 is z1 (skipped), n3 is z2; then the fill-up walk takes n0.
    assert ring.preference_list(4) == ("n2", "n3", "n0")


def test_partition_of_takes_the_top_bits_of_xxh3() -> None:
    # xxh3_64(b"hello") = 0x9555e8555c62dcfd; its top 10 bits are 0b1001010101 = 597.
    assert partition_of(b"hello", 1024) == 597
    assert partition_of(b"hello", 65536) == 0x9555
    assert partition_of(b"", 1024) == 180
    assert partition_of(b"anything", 1) == 0
    ring = Ring.build([A, B, C], partition_count=1024, replicas=2)
    assert ring.preference_list_for_key(b"hello") == ring.preference_list(597)


def test_summary_is_json_ready() -> None:
    ring = Ring.build([A, B, C, RingNode("d", "z1")], partition_count=16, replicas=3)
    summary = ring.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["partition_count"] == 16
    assert summary["replicas"] == 3
    assert summary["version"] == 1
    assert summary["zones"] == {"z1": ["a", "d"], "z2": ["b"], "z3": ["c"]}
    # Owners a b c d (z1 z2 z3 z1): every list needs one z1 node, and the
    # walk from c or d reaches d first, so d carries 12 of z1's 16 slots.
    assert summary["nodes"]["a"] == {"zone": "z1", "primary_partitions": 4, "replica_partitions": 4}
    assert summary["nodes"]["d"] == {
        "zone": "z1",
        "primary_partitions": 4,
        "replica_partitions": 12,
    }
    assert sum(row["replica_partitions"] for row in summary["nodes"].values()) == 16 * 3


def test_node_lookup() -> None:
    ring = Ring.build([A, B], partition_count=4, replicas=2)
    assert ring.node("b") == B
    assert ring.has_node("a") and not ring.has_node("zz")
    assert ring.partitions_of("zz") == ()
    with pytest.raises(KeyError, match="zz"):
        ring.node("zz")


def test_join_then_leave_by_hand() -> None:
    ring = Ring.build([A, B, C], partition_count=16, replicas=3)
    joined = plan_join(ring, RingNode("d", "z1"))
    assert joined.version == 2
    assert len(joined.partitions_of("d")) == 4
    assert sorted(len(joined.partitions_of(n)) for n in "abcd") == [4, 4, 4, 4]
    moved = [p for p in range(16) if ring.owners[p] != joined.owners[p]]
    assert moved == list(joined.partitions_of("d"))
    left = plan_leave(joined, "d")
    assert left.version == 3
    assert "d" not in left.owners
    assert [p for p in range(16) if left.owners[p] != joined.owners[p]] == moved


def test_rings_compare_by_their_data_only() -> None:
    first = Ring.build([A, B, C], partition_count=16, replicas=3)
    second = Ring.build([A, B, C], partition_count=16, replicas=3)
    first.fallbacks(3)  # fills a memo in one of them
    assert first == second
    assert hash(first) == hash(second)
    assert "preference" not in repr(first)
    assert Ring(16, 3, first.nodes, first.owners, version=7).version == 7


@pytest.mark.parametrize(
    ("nodes", "partition_count", "replicas"),
    [
        ([], 16, 3),
        ([A, B, C], 12, 3),  # not a power of two
        ([A, B, C], 2, 3),  # fewer partitions than nodes
        ([A, RingNode("a", "z9")], 16, 3),  # duplicate id
        ([A, B], 16, 0),
    ],
)
def test_build_rejects_bad_input(
    nodes: list[RingNode], partition_count: int, replicas: int
) -> None:
    with pytest.raises(AssertionError):
        Ring.build(nodes, partition_count, replicas)
