"""The ring: Q fixed partitions and, for each, the nodes that replicate it.

Riak-style fixed partitioning (Dynamo's "strategy 3"): a key hashes
(``xxh3_64``) to one of Q equal partitions, Q a power of two, by the top
log2(Q) bits of the hash. Partitioning never changes; placement does.
DynamoDB item keys hash only their table id and partition key value
(``placement_part``), so the items of one partition key share a partition,
in sort-key order, and a Query is a range read of one partition.

A ``Ring`` is pure, versioned data: an ``epoch``, the members (node id, zone,
host), Q, N and the placement, one explicit preference list per partition
(owner first). Lists are stored, not walked, so a claim can balance replica
load within every zone even when zones are unevenly populated (a walk
cannot). ``dynakv.core.claim`` plans placements; this module only holds and
checks them. The rest of the nodes, in a fixed zone-interleaved order rotated
by the partition number, are the partition's fallbacks for sloppy quorum.

The zone rule (``zone_limits``): a list holds N' = min(N, node count) distinct
nodes; with at least N' zones they are in N' distinct zones; with fewer, every
zone is in every list and no zone holds more than the least possible maximum
``m`` (the smallest m with sum(min(zone size, m)) >= N'), so a zone loss costs
as few replicas as the cluster's shape allows.

Invariants (``ring_problem``, checked on every construction and on every ring
decoded from a peer): Q is a power of two in 1..PARTITION_COUNT_MAX; 1 <= N <=
REPLICAS_MAX; 1 <= node count <= min(Q, NODE_COUNT_MAX); ``nodes`` sorted by
id, ids unique; names non-empty and at most NAME_BYTES_MAX bytes; every list
holds N' distinct members and obeys the zone rule. Equal rings encode to equal
bytes in any process (``encode_ring``; ``checksum`` is xxh3_64 of them):
nothing here depends on ``set`` order or ``str`` hashing.

This module never does I/O, reads no clock, draws no random numbers and knows
nothing of gossip, streaming or storage: membership owns and gossips a ring,
handoff moves the data.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import xxhash

from dynakv.errors import RemoteProtocolError

PARTITION_COUNT_DEFAULT: Final = 1024
PARTITION_COUNT_MAX: Final = 65536
REPLICAS_MAX: Final = 9
NODE_COUNT_MAX: Final = 4096
NAME_BYTES_MAX: Final = 128
EPOCH_MAX: Final = 2**63 - 1
HASH_BITS: Final = 64
RING_FORMAT: Final = 1
# A ring at every maximum encodes to about 9 MiB (placement) + 1.6 MiB (names).
RING_BYTES_MAX: Final = 16 * 1024 * 1024
# DynamoDB item keys (``dynamo.items``): placed by table id + partition key value alone.
ITEM_PLACEMENT_PREFIX: Final = b"\x00dynakv\x00i"
_TABLE_ID_BYTES: Final = 8
_TAG_B: Final = 0x42
_TAG_N: Final = 0x4E
_TAG_S: Final = 0x53
_N_NEGATIVE: Final = 0x01
_N_ZERO: Final = 0x02
_N_POSITIVE: Final = 0x03


def placement_part(key: bytes) -> bytes:
    """The bytes of ``key`` that place it: for a DynamoDB item key
    (``ITEM_PLACEMENT_PREFIX`` + 8-byte table id + the encoded partition key value +
    the encoded sort key value, ``dynamo.encoding``) the part up to the end of the
    partition key value, so one partition key's items share a partition; for any
    other key, or an item key that does not parse, the whole key.

    The partition key value's end is found from the bytes alone (the encoding is
    prefix-free): S and B (tag, escaped bytes) end at the first 0x00 not followed
    by 0xFF; N is a tag, a class byte and, unless zero, an exponent byte and digit
    pairs (1..100; complemented for a negative number, 155..254) up to a 0x00
    terminator (0xFF for a negative number)."""
    start = len(ITEM_PLACEMENT_PREFIX) + _TABLE_ID_BYTES
    if len(key) <= start + 1 or not key.startswith(ITEM_PLACEMENT_PREFIX):
        return key
    tag = key[start]
    if tag == _TAG_N:
        number_class = key[start + 1]
        if number_class == _N_ZERO:
            return key[: start + 2]
        if number_class not in (_N_POSITIVE, _N_NEGATIVE):
            return key
        terminator = b"\x00" if number_class == _N_POSITIVE else b"\xff"
        end = key.find(terminator, start + 3)  # after tag, class and exponent bytes
        return key if end < 0 else key[: end + 1]
    if tag not in (_TAG_S, _TAG_B):
        return key
    index = start + 1
    while (end := key.find(b"\x00", index)) >= 0:
        if key[end + 1 : end + 2] != b"\xff":
            return key[: end + 1]
        index = end + 2  # an escaped 0x00 inside the value
    return key


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def partition_of(key: bytes, partition_count: int) -> int:
    """The partition of ``key``: the top log2(partition_count) bits of the xxh3_64 hash
    of its placement part (``placement_part``: the whole key but for DynamoDB items)."""
    assert _is_power_of_two(partition_count), partition_count
    partition_bits = partition_count.bit_length() - 1
    if key[:1] == b"\x00" and key.startswith(ITEM_PLACEMENT_PREFIX):
        key = placement_part(key)
    digest: int = xxhash.xxh3_64_intdigest(key)
    partition = digest >> (HASH_BITS - partition_bits)
    assert 0 <= partition < partition_count, (partition, partition_count)
    return partition


@dataclass(frozen=True, slots=True)
class RingNode:
    """A member: its id, its zone, and its host (the id unless several share a machine)."""

    node_id: str
    zone: str
    host: str = ""

    def __post_init__(self) -> None:
        if not self.host:
            object.__setattr__(self, "host", self.node_id)


def zone_limits(zone_sizes: Mapping[str, int], replicas_wanted: int) -> dict[str, tuple[int, int]]:
    """Per zone, the fewest and the most members one preference list may have there."""
    assert zone_sizes and 1 <= replicas_wanted <= sum(zone_sizes.values())
    per_zone_max = 1
    while sum(min(size, per_zone_max) for size in zone_sizes.values()) < replicas_wanted:
        per_zone_max += 1
    lowest = 1 if len(zone_sizes) <= replicas_wanted else 0
    return {zone: (lowest, min(size, per_zone_max)) for zone, size in zone_sizes.items()}


def _name_problem(name: object, what: str) -> str | None:
    if not isinstance(name, str) or not name:
        return f"{what} is not a non-empty string"
    if len(name.encode()) > NAME_BYTES_MAX:
        return f"{what} {name[:16]!r}... is longer than {NAME_BYTES_MAX} bytes"
    return None


def _nodes_problem(nodes: Sequence[RingNode], partition_count: int) -> str | None:
    if not 1 <= len(nodes) <= min(partition_count, NODE_COUNT_MAX):
        return f"{len(nodes)} nodes; need 1..min(Q={partition_count}, {NODE_COUNT_MAX})"
    for node in nodes:
        for name, what in ((node.node_id, "node id"), (node.zone, "zone"), (node.host, "host")):
            problem = _name_problem(name, what)
            if problem is not None:
                return problem
    node_ids = [node.node_id for node in nodes]
    if any(first >= second for first, second in itertools.pairwise(node_ids)):
        return "nodes are not sorted by id with unique ids"
    return None


def ring_problem(
    partition_count: int,
    replicas: int,
    nodes: Sequence[RingNode],
    preference_lists: Sequence[Sequence[str]],
    epoch: int,
) -> str | None:
    """Why these fields do not make a ring (see the module docstring), or None."""
    if not (_is_power_of_two(partition_count) and partition_count <= PARTITION_COUNT_MAX):
        return f"Q={partition_count} is not a power of two in 1..{PARTITION_COUNT_MAX}"
    if not 1 <= replicas <= REPLICAS_MAX:
        return f"N={replicas} is not in 1..{REPLICAS_MAX}"
    if not 1 <= epoch <= EPOCH_MAX:
        return f"epoch {epoch} is not in 1..{EPOCH_MAX}"
    problem = _nodes_problem(nodes, partition_count)
    if problem is not None:
        return problem
    if len(preference_lists) != partition_count:
        return f"{len(preference_lists)} preference lists for Q={partition_count}"
    zone_of = {node.node_id: node.zone for node in nodes}
    replicas_wanted = min(replicas, len(nodes))
    limits = zone_limits(Counter(zone_of.values()), replicas_wanted)
    every_zone = next(iter(limits.values()))[0] == 1
    one_per_zone = all(highest == 1 for _, highest in limits.values())
    for partition, preference_list in enumerate(preference_lists):
        if len(preference_list) != replicas_wanted or len(set(preference_list)) != len(
            preference_list
        ):
            return f"partition {partition}: not {replicas_wanted} distinct nodes"
        if any(node_id not in zone_of for node_id in preference_list):
            return f"partition {partition}: a replica is not a member"
        if one_per_zone and len({zone_of[n] for n in preference_list}) == replicas_wanted:
            continue  # the common case, without counting
        counts = Counter(zone_of[node_id] for node_id in preference_list)
        if every_zone and len(counts) < len(limits):
            return f"partition {partition}: a zone has no replica"
        for zone, count in counts.items():
            if count > limits[zone][1]:
                return f"partition {partition}: {count} replicas in zone {zone!r}"
    return None


@dataclass(frozen=True, slots=True)
class Ring:
    """An immutable placement of ``partition_count`` partitions on ``nodes``.

    Only the five public fields are the ring (compared, hashed, gossiped); the
    private ones are derived from them at construction.
    """

    partition_count: int
    replicas: int
    nodes: tuple[RingNode, ...]
    preference_lists: tuple[tuple[str, ...], ...]
    epoch: int = 1
    _nodes_by_id: dict[str, RingNode] = field(init=False, repr=False, compare=False)
    _walk_order: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _primary_partitions: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _replica_partitions: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _checksum: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = ring_problem(
            self.partition_count, self.replicas, self.nodes, self.preference_lists, self.epoch
        )
        assert problem is None, problem
        primary: dict[str, list[int]] = {node.node_id: [] for node in self.nodes}
        replica: dict[str, list[int]] = {node.node_id: [] for node in self.nodes}
        for partition, preference_list in enumerate(self.preference_lists):
            primary[preference_list[0]].append(partition)
            for node_id in preference_list:
                replica[node_id].append(partition)
        object.__setattr__(self, "_nodes_by_id", {node.node_id: node for node in self.nodes})
        object.__setattr__(self, "_walk_order", _interleave_zones(self.nodes))
        object.__setattr__(self, "_primary_partitions", {n: tuple(p) for n, p in primary.items()})
        object.__setattr__(self, "_replica_partitions", {n: tuple(p) for n, p in replica.items()})
        object.__setattr__(self, "_checksum", xxhash.xxh3_64_intdigest(encode_ring(self)))

    @classmethod
    def build(
        cls,
        nodes: Sequence[RingNode],
        partition_count: int = PARTITION_COUNT_DEFAULT,
        replicas: int = 3,
    ) -> Ring:
        """The initial claim (epoch 1): balanced, zone-spread; input order does not matter."""
        from dynakv.core.claim import build_ring

        return build_ring(nodes, partition_count, replicas)

    @property
    def replicas_wanted(self) -> int:
        """N' = min(N, node count): the length of every preference list."""
        return min(self.replicas, len(self.nodes))

    @property
    def owners(self) -> tuple[str, ...]:
        """Each partition's owner (first in its preference list)."""
        return tuple(preference_list[0] for preference_list in self.preference_lists)

    @property
    def checksum(self) -> int:
        """xxh3_64 of ``encode_ring(self)``: equal rings, equal checksums, in any process."""
        return self._checksum

    def preference_list(self, partition: int) -> tuple[str, ...]:
        """The N' nodes that hold ``partition``, owner first (O(1))."""
        assert 0 <= partition < self.partition_count, partition
        return self.preference_lists[partition]

    def preference_list_for_key(self, key: bytes) -> tuple[str, ...]:
        return self.preference_lists[partition_of(key, self.partition_count)]

    def fallbacks(self, partition: int) -> tuple[str, ...]:
        """Every node outside the preference list: the zone-interleaved order from ``partition``."""
        assert 0 <= partition < self.partition_count, partition
        preference_list = self.preference_lists[partition]
        count = len(self._walk_order)
        start = partition % count
        found = tuple(
            node_id
            for step in range(count)
            if (node_id := self._walk_order[(start + step) % count]) not in preference_list
        )
        assert len(found) + len(preference_list) == count, (partition, found)
        return found

    def partitions_of(self, node_id: str) -> tuple[int, ...]:
        """The partitions ``node_id`` owns (is first in the preference list of); () if unknown."""
        return self._primary_partitions.get(node_id, ())

    def replica_partitions(self, node_id: str) -> tuple[int, ...]:
        """The partitions whose preference list includes ``node_id``; () if unknown."""
        return self._replica_partitions.get(node_id, ())

    def has_node(self, node_id: str) -> bool:
        return node_id in self._nodes_by_id

    def node(self, node_id: str) -> RingNode:
        if node_id not in self._nodes_by_id:
            raise KeyError(f"node {node_id!r} is not in ring epoch {self.epoch}")
        return self._nodes_by_id[node_id]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description for ``/v1/status`` (keys in a stable order)."""
        zones: dict[str, list[str]] = {}
        for node in sorted(self.nodes, key=lambda n: (n.zone, n.node_id)):
            zones.setdefault(node.zone, []).append(node.node_id)
        return {
            "epoch": self.epoch,
            "checksum": f"{self._checksum:016x}",
            "partition_count": self.partition_count,
            "replicas": self.replicas,
            "zones": zones,
            "nodes": {
                node.node_id: {
                    "zone": node.zone,
                    "host": node.host,
                    "primary_partitions": len(self._primary_partitions[node.node_id]),
                    "replica_partitions": len(self._replica_partitions[node.node_id]),
                }
                for node in self.nodes
            },
        }


def _interleave_zones(nodes: Sequence[RingNode]) -> tuple[str, ...]:
    """Round-robin across zones (sorted by name), nodes within a zone sorted by id."""
    by_zone: dict[str, list[str]] = {}
    for node in sorted(nodes, key=lambda n: (n.zone, n.node_id)):
        by_zone.setdefault(node.zone, []).append(node.node_id)
    ordered: list[str] = []
    for round_index in range(max(len(members) for members in by_zone.values())):
        for members in by_zone.values():
            if round_index < len(members):
                ordered.append(members[round_index])
    assert len(ordered) == len(nodes)
    return tuple(ordered)


# --- the wire form ----------------------------------------------------------------------


class _RingWire(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Members as (id, zone, host), sorted by id; placement as indexes into them."""

    epoch: int
    partition_count: int
    replicas: int
    members: list[tuple[str, str, str]]
    placement: list[list[int]]


_ring_encoder: Final = msgspec.msgpack.Encoder()
_ring_decoder: Final = msgspec.msgpack.Decoder(_RingWire)


def encode_ring(ring: Ring) -> bytes:
    """Deterministic bytes: a format byte, then msgpack of ``_RingWire``."""
    index_of = {node.node_id: index for index, node in enumerate(ring.nodes)}
    wire = _RingWire(
        epoch=ring.epoch,
        partition_count=ring.partition_count,
        replicas=ring.replicas,
        members=[(node.node_id, node.zone, node.host) for node in ring.nodes],
        placement=[[index_of[node_id] for node_id in pl] for pl in ring.preference_lists],
    )
    encoded = bytes((RING_FORMAT,)) + _ring_encoder.encode(wire)
    assert len(encoded) <= RING_BYTES_MAX, len(encoded)
    return encoded


def decode_ring(data: bytes) -> Ring:
    """A ring from a peer or disk: untrusted, so every invariant is checked.

    Raises ``RemoteProtocolError`` (fact ``problem``) on anything malformed,
    oversized or invalid; never an ``AssertionError``.
    """
    if len(data) > RING_BYTES_MAX:
        raise _refuse(f"{len(data)} bytes; the limit is {RING_BYTES_MAX}")
    if not data or data[0] != RING_FORMAT:
        raise _refuse(f"unknown ring format byte {data[:1]!r}")
    try:
        wire = _ring_decoder.decode(data[1:])
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: bad UTF-8 in a name
        raise _refuse(f"malformed: {exc}") from exc
    if not 1 <= len(wire.members) <= NODE_COUNT_MAX:
        raise _refuse(f"{len(wire.members)} members")
    if any(not host for _, _, host in wire.members):
        raise _refuse("a member has an empty host")
    nodes = tuple(RingNode(node_id, zone, host) for node_id, zone, host in wire.members)
    if len(wire.placement) != wire.partition_count:
        raise _refuse(f"{len(wire.placement)} preference lists for Q={wire.partition_count}")
    preference_lists: list[tuple[str, ...]] = []
    for partition, indexes in enumerate(wire.placement):
        if len(indexes) > REPLICAS_MAX or not all(0 <= i < len(nodes) for i in indexes):
            raise _refuse(f"partition {partition}: bad member indexes")
        preference_lists.append(tuple(nodes[index].node_id for index in indexes))
    problem = ring_problem(wire.partition_count, wire.replicas, nodes, preference_lists, wire.epoch)
    if problem is not None:
        raise _refuse(problem)
    return Ring(wire.partition_count, wire.replicas, nodes, tuple(preference_lists), wire.epoch)


def is_valid_ring(epoch: int, data: bytes) -> bool:
    """Membership's ``RingCheck``: ``data`` decodes to a valid ring of ``epoch``."""
    try:
        return decode_ring(data).epoch == epoch
    except RemoteProtocolError:
        return False


def _refuse(problem: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"invalid ring: {problem}", problem=problem)
