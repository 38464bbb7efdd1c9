"""Concrete ring examples: small enough to check by hand."""

from __future__ import annotations

import json
from collections import Counter

import msgspec
import pytest

from dynakv.core.claim import zone_targets
from dynakv.core.ring import (
    RING_BYTES_MAX,
    Ring,
    RingNode,
    decode_ring,
    encode_ring,
    is_valid_ring,
    partition_of,
    zone_limits,
)
from dynakv.errors import RemoteProtocolError

A, B, C = RingNode("a", "z1"), RingNode("b", "z2"), RingNode("c", "z3")


def test_three_nodes_in_three_zones_replicate_every_partition_everywhere() -> None:
    ring = Ring.build([C, A, B], partition_count=8, replicas=3)
    assert ring.nodes == (A, B, C)
    for partition in range(8):
        assert sorted(ring.preference_list(partition)) == ["a", "b", "c"]
        assert ring.fallbacks(partition) == ()
    assert ring.replica_partitions("a") == tuple(range(8))
    assert sorted(len(ring.partitions_of(n)) for n in "abc") == [2, 3, 3]
    assert ring.owners == tuple(ring.preference_list(p)[0] for p in range(8))


def test_one_node_with_three_replicas_has_a_one_node_preference_list() -> None:
    ring = Ring.build([RingNode("solo", "z1")], partition_count=16, replicas=3)
    assert ring.replicas_wanted == 1
    assert all(ring.preference_list(p) == ("solo",) for p in range(16))
    assert ring.fallbacks(5) == ()
    assert ring.summary()["nodes"]["solo"]["replica_partitions"] == 16


def test_host_defaults_to_the_node_id() -> None:
    assert RingNode("a", "z1") == RingNode("a", "z1", "a")
    assert RingNode("a", "z1", "box").host == "box"


@pytest.mark.parametrize(
    ("sizes", "replicas", "expected"),
    [
        ({"z1": 4, "z2": 3, "z3": 3}, 3, {"z1": (1, 1), "z2": (1, 1), "z3": (1, 1)}),
        (
            {"z1": 2, "z2": 2, "z3": 2, "z4": 1},
            3,
            {"z1": (0, 1), "z2": (0, 1), "z3": (0, 1), "z4": (0, 1)},
        ),
        ({"z1": 5, "z2": 1}, 3, {"z1": (1, 2), "z2": (1, 1)}),  # the lone node in every list
        ({"z1": 3, "z2": 3}, 5, {"z1": (1, 3), "z2": (1, 3)}),
        ({"z1": 4}, 3, {"z1": (1, 3)}),
    ],
)
def test_zone_limits(
    sizes: dict[str, int], replicas: int, expected: dict[str, tuple[int, int]]
) -> None:
    assert zone_limits(sizes, replicas) == expected


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        # Three zones, N = 3: each zone is in every list, whatever its size.
        ({"z1": 4, "z2": 3, "z3": 3}, {"z1": 1024, "z2": 1024, "z3": 1024}),
        # Five zones: proportional to size (384 per node) ...
        (
            {"z1": 2, "z2": 2, "z3": 2, "z4": 1, "z5": 1},
            {"z1": 768, "z2": 768, "z3": 768, "z4": 384, "z5": 384},
        ),
        # ... until a zone hits Q (one replica per list): the rest share what is left.
        (
            {"z1": 10, "z2": 1, "z3": 1, "z4": 1, "z5": 1},
            {"z1": 1024, "z2": 512, "z3": 512, "z4": 512, "z5": 512},
        ),
        # Two zones, N = 3: each at least Q, at most 2Q; 5 + 1 forces 2Q and Q.
        ({"z1": 5, "z2": 1}, {"z1": 2048, "z2": 1024}),
        ({"z1": 3, "z2": 3}, {"z1": 1536, "z2": 1536}),
    ],
)
def test_zone_targets(sizes: dict[str, int], expected: dict[str, int]) -> None:
    assert zone_targets(sizes, 1024, 3) == expected


def test_ten_nodes_as_4_3_3_are_balanced_within_zones() -> None:
    """The issue's example: it used to be 103 to 412 lists per node."""
    nodes = [RingNode(f"n{i}", "z1" if i < 4 else "z2" if i < 7 else "z3") for i in range(10)]
    ring = Ring.build(nodes, 1024, 3)
    loads = {n: len(ring.replica_partitions(n)) for n in (x.node_id for x in nodes)}
    assert [loads[f"n{i}"] for i in range(4)] == [256] * 4
    assert sorted(loads[f"n{i}"] for i in range(4, 10)) == [341, 341, 341, 341, 342, 342]
    primaries = sorted(len(ring.partitions_of(x.node_id)) for x in nodes)
    assert primaries == [102] * 6 + [103] * 4


def test_a_host_never_holds_two_replicas_when_hosts_are_even() -> None:
    # One zone, four hosts of two nodes: every list can and does use 3 hosts.
    nodes = [RingNode(f"n{i}", "z1", f"h{i // 2}") for i in range(8)]
    ring = Ring.build(nodes, 256, 3)
    host = {n.node_id: n.host for n in ring.nodes}
    assert all(len({host[n] for n in pl}) == 3 for pl in ring.preference_lists)
    assert ring.summary()["nodes"]["n3"]["host"] == "h1"


def test_fallbacks_follow_the_zone_interleaved_order_from_the_partition() -> None:
    nodes = [RingNode("a", "z1"), RingNode("b", "z1"), RingNode("c", "z2"), RingNode("d", "z3")]
    ring = Ring.build(nodes, partition_count=8, replicas=2)
    walk = ["a", "c", "d", "b"]  # z1 z2 z3 z1
    for partition in range(8):
        rotated = walk[partition % 4 :] + walk[: partition % 4]
        expected = tuple(n for n in rotated if n not in ring.preference_list(partition))
        assert ring.fallbacks(partition) == expected


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
    assert summary["epoch"] == 1
    assert summary["checksum"] == f"{ring.checksum:016x}"
    assert summary["partition_count"] == 16
    assert summary["replicas"] == 3
    assert summary["zones"] == {"z1": ["a", "d"], "z2": ["b"], "z3": ["c"]}
    # Every list needs one z1 node: a and d share z1's 16 slots evenly.
    assert summary["nodes"]["a"] == {
        "zone": "z1",
        "host": "a",
        "primary_partitions": 4,
        "replica_partitions": 8,
    }
    assert summary["nodes"]["b"]["replica_partitions"] == 16
    assert sum(row["replica_partitions"] for row in summary["nodes"].values()) == 16 * 3


def test_node_lookup() -> None:
    ring = Ring.build([A, B], partition_count=4, replicas=2)
    assert ring.node("b") == B
    assert ring.has_node("a") and not ring.has_node("zz")
    assert ring.partitions_of("zz") == ()
    with pytest.raises(KeyError, match="zz"):
        ring.node("zz")


def test_rings_compare_by_their_data_only() -> None:
    first = Ring.build([A, B, C], partition_count=16, replicas=3)
    second = Ring.build([A, B, C], partition_count=16, replicas=3)
    assert first == second
    assert hash(first) == hash(second)
    assert "replica_partitions" not in repr(first)
    later = Ring(16, 3, first.nodes, first.preference_lists, epoch=7)
    assert later.epoch == 7 and later != first
    assert later.checksum != first.checksum


@pytest.mark.parametrize(
    ("nodes", "partition_count", "replicas"),
    [
        ([], 16, 3),
        ([A, B, C], 12, 3),  # not a power of two
        ([A, B, C], 2, 3),  # fewer partitions than nodes
        ([A, RingNode("a", "z9")], 16, 3),  # duplicate id
        ([A, B], 16, 0),
        ([A, B], 16, 10),  # more replicas than REPLICAS_MAX
        ([A, RingNode("b", "")], 16, 3),  # empty zone
    ],
)
def test_build_rejects_bad_input(
    nodes: list[RingNode], partition_count: int, replicas: int
) -> None:
    with pytest.raises(AssertionError):
        Ring.build(nodes, partition_count, replicas)


def test_constructing_a_ring_that_breaks_the_zone_rule_is_a_bug() -> None:
    nodes = (A, RingNode("b", "z1"), C)
    with pytest.raises(AssertionError, match="zone"):
        Ring(4, 2, nodes, (("a", "b"),) * 4)  # two z1 replicas while z3 is free


# --- the wire form ------------------------------------------------------------------------

Wire = tuple[int, int, int, list[tuple[str, str, str]], list[list[int]]]


def wire_of(ring: Ring) -> Wire:
    fields = msgspec.msgpack.decode(encode_ring(ring)[1:])
    epoch, partition_count, replicas, members, placement = fields
    return epoch, partition_count, replicas, [tuple(m) for m in members], placement


def encode_wire(wire: Wire) -> bytes:
    return b"\x01" + msgspec.msgpack.encode(list(wire))


def test_the_wire_form_is_members_and_indexes() -> None:
    ring = Ring.build([A, B, C], partition_count=4, replicas=2)
    epoch, partition_count, replicas, members, placement = wire_of(ring)
    assert (epoch, partition_count, replicas) == (1, 4, 2)
    assert members == [("a", "z1", "a"), ("b", "z2", "b"), ("c", "z3", "c")]
    assert [tuple("abc"[i] for i in row) for row in placement] == list(ring.preference_lists)
    assert decode_ring(encode_wire(wire_of(ring))) == ring


def corruptions(ring: Ring) -> list[tuple[str, bytes]]:
    epoch, partition_count, replicas, members, placement = wire_of(ring)
    same_zone = [(m[0], "z1", m[2]) for m in members]
    return [
        ("format", b"\x02" + encode_ring(ring)[1:]),
        ("empty", b""),
        ("truncated", encode_ring(ring)[:-3]),
        ("not a power of two", encode_wire((epoch, 3, replicas, members, placement[:3]))),
        ("Q too large", encode_wire((epoch, 1 << 17, replicas, members, placement))),
        ("zero epoch", encode_wire((0, partition_count, replicas, members, placement))),
        ("no replicas", encode_wire((epoch, partition_count, 0, members, placement))),
        ("too few lists", encode_wire((epoch, partition_count, replicas, members, placement[:-1]))),
        (
            "index out of range",
            encode_wire((epoch, partition_count, replicas, members, [[0, 9]] * 4)),
        ),
        ("repeated node", encode_wire((epoch, partition_count, replicas, members, [[0, 0]] * 4))),
        ("short list", encode_wire((epoch, partition_count, replicas, members, [[0]] * 4))),
        (
            "unsorted members",
            encode_wire((epoch, partition_count, replicas, members[::-1], placement)),
        ),
        (
            "zone rule",
            encode_wire(
                (epoch, partition_count, replicas, [*members[:2], ("c", "z1", "c")], placement)
            ),
        ),
        (
            "empty host",
            encode_wire(
                (epoch, partition_count, replicas, [("a", "z1", ""), *members[1:]], placement)
            ),
        ),
        (
            "long name",
            encode_wire(
                (
                    epoch,
                    partition_count,
                    replicas,
                    [("a" * 200, "z1", "a"), *members[1:]],
                    placement,
                )
            ),
        ),
        ("no members", encode_wire((epoch, partition_count, replicas, [], placement))),
        ("one zone for all", encode_wire((epoch, partition_count, 3, same_zone, placement))),
        ("oversized", b"\x01" + b"\x00" * RING_BYTES_MAX),
    ]


def test_decode_refuses_every_kind_of_invalid_ring() -> None:
    ring = Ring.build([A, B, C], partition_count=4, replicas=2)
    for name, data in corruptions(ring):
        with pytest.raises(RemoteProtocolError) as caught:
            decode_ring(data)
        assert caught.value.facts()["problem"], name
        assert not is_valid_ring(1, data)
    assert is_valid_ring(1, encode_ring(ring))
    assert not is_valid_ring(2, encode_ring(ring))  # bytes of another epoch


def test_checksum_tracks_the_bytes() -> None:
    ring = Ring.build([A, B, C], partition_count=16, replicas=2)
    assert ring.checksum == decode_ring(encode_ring(ring)).checksum
    moved = list(ring.preference_lists)
    moved[0] = moved[0][::-1]  # the same replicas, another primary
    other = Ring(16, 2, ring.nodes, tuple(moved))
    assert other.checksum != ring.checksum
    assert Counter(other.preference_list(0)) == Counter(ring.preference_list(0))
