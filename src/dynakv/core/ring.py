"""The ring: Q fixed partitions, who owns each, and who replicates it.

Riak-style fixed partitioning (Dynamo's "strategy 3"): a key hashes
(``xxh3_64``) to one of Q equal partitions, Q a power of two, by the top
log2(Q) bits of the hash. Partitioning never changes; placement does. A
``Ring`` is pure, versioned data: ``owners[p]`` is the node that owns
partition p. A partition's preference list is found by walking the ring
clockwise from p and taking the first N distinct owners in distinct zones
(then, if the cluster has fewer than N zones, distinct owners in any zone);
the rest of that walk are the partition's fallbacks for sloppy quorum.

``plan_join`` and ``plan_leave`` plan a new placement (``version + 1``) that
moves as few partitions as possible while keeping every node within one
partition of its fair share: a join moves exactly the joiner's share
(~Q/(n+1)), a leave moves only the leaver's partitions.

Invariants: Q is a power of two in 1..PARTITION_COUNT_MAX; ``nodes`` is sorted
by id with unique ids; every owner is a node and every node owns at least one
partition (so Q >= node count); preference lists hold min(replicas, node
count) distinct nodes. The same inputs always give the same ring, in any
process: nothing here depends on ``set`` order or ``str`` hashing.

This module never does I/O, reads no clock, draws no random numbers and knows
nothing of gossip, streaming or storage: membership owns and gossips a ring,
handoff moves the data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

PARTITION_COUNT_DEFAULT = 1024
PARTITION_COUNT_MAX = 65536
HASH_BITS = 64
# How far a placement looks for crowding, each way; keeps planning O(Q).
REPEAT_SCAN_STEPS_MAX = 64


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def partition_of(key: bytes, partition_count: int) -> int:
    """The partition of ``key``: the top log2(partition_count) bits of its xxh3_64 hash."""
    assert _is_power_of_two(partition_count), partition_count
    partition_bits = partition_count.bit_length() - 1
    digest: int = xxhash.xxh3_64_intdigest(key)
    partition = digest >> (HASH_BITS - partition_bits)
    assert 0 <= partition < partition_count, (partition, partition_count)
    return partition


@dataclass(frozen=True, slots=True)
class RingNode:
    node_id: str
    zone: str


@dataclass(frozen=True, slots=True)
class Ring:
    """An immutable placement of ``partition_count`` partitions on ``nodes``.

    Only the five public fields are the ring (compared, hashed, gossiped); the
    private ones are derived from them at construction.
    """

    partition_count: int
    replicas: int
    nodes: tuple[RingNode, ...]
    owners: tuple[str, ...]
    version: int = 1
    _zone_of: dict[str, str] = field(init=False, repr=False, compare=False)
    _preference_lists: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    _primary_partitions: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _replica_partitions: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    # Memo of fallbacks(); at most partition_count entries. Mutating it does
    # not change the ring, which is a function of the public fields.
    _fallbacks: dict[int, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert _is_power_of_two(self.partition_count), self.partition_count
        assert self.partition_count <= PARTITION_COUNT_MAX, self.partition_count
        assert self.replicas >= 1, self.replicas
        assert self.version >= 1, self.version
        assert self.nodes, "a ring has at least one node"
        node_ids = [node.node_id for node in self.nodes]
        assert node_ids == sorted(set(node_ids)), (
            f"nodes must be sorted with unique ids: {node_ids}"
        )
        assert len(self.owners) == self.partition_count, (len(self.owners), self.partition_count)
        assert set(self.owners) == set(node_ids), "every owner is a node; every node owns"
        zone_of = {node.node_id: node.zone for node in self.nodes}
        replicas_wanted = min(self.replicas, len(self.nodes))
        zone_count = len(set(zone_of.values()))
        preference_lists = tuple(
            _walk_preference_list(self.owners, zone_of, partition, replicas_wanted, zone_count)
            for partition in range(self.partition_count)
        )
        primary: dict[str, list[int]] = {node_id: [] for node_id in node_ids}
        replica: dict[str, list[int]] = {node_id: [] for node_id in node_ids}
        for partition, preference_list in enumerate(preference_lists):
            assert len(preference_list) == replicas_wanted, (partition, preference_list)
            assert preference_list[0] == self.owners[partition]
            primary[self.owners[partition]].append(partition)
            for node_id in preference_list:
                replica[node_id].append(partition)
        object.__setattr__(self, "_zone_of", zone_of)
        object.__setattr__(self, "_preference_lists", preference_lists)
        object.__setattr__(self, "_primary_partitions", {n: tuple(p) for n, p in primary.items()})
        object.__setattr__(self, "_replica_partitions", {n: tuple(p) for n, p in replica.items()})
        object.__setattr__(self, "_fallbacks", {})

    @classmethod
    def build(
        cls,
        nodes: Sequence[RingNode],
        partition_count: int = PARTITION_COUNT_DEFAULT,
        replicas: int = 3,
    ) -> Ring:
        """The initial claim: zones interleaved round-robin, then owners[p] = ordered[p % n].

        Zones are taken in name order and nodes within a zone in id order, so
        the input order does not matter.
        """
        assert nodes, "a ring has at least one node"
        assert len(nodes) <= partition_count, "every node must own at least one partition"
        ordered = _interleave_zones(nodes)
        owners = tuple(ordered[p % len(ordered)].node_id for p in range(partition_count))
        sorted_nodes = tuple(sorted(nodes, key=lambda node: node.node_id))
        return cls(partition_count, replicas, sorted_nodes, owners)

    def preference_list(self, partition: int) -> tuple[str, ...]:
        """The N = min(replicas, node count) nodes that hold ``partition``, owner first."""
        assert 0 <= partition < self.partition_count, partition
        return self._preference_lists[partition]

    def preference_list_for_key(self, key: bytes) -> tuple[str, ...]:
        return self._preference_lists[partition_of(key, self.partition_count)]

    def fallbacks(self, partition: int) -> tuple[str, ...]:
        """Every node outside the preference list, in walk order from ``partition``."""
        assert 0 <= partition < self.partition_count, partition
        cached = self._fallbacks.get(partition)
        if cached is None:
            preference_list = self._preference_lists[partition]
            cached = tuple(
                owner
                for owner in _distinct_owners_from(self.owners, partition, len(self.nodes))
                if owner not in preference_list
            )
            assert len(cached) + len(preference_list) == len(self.nodes), (partition, cached)
            self._fallbacks[partition] = cached
        return cached

    def partitions_of(self, node_id: str) -> tuple[int, ...]:
        """The partitions ``node_id`` owns (is first in the preference list of); () if unknown."""
        return self._primary_partitions.get(node_id, ())

    def replica_partitions(self, node_id: str) -> tuple[int, ...]:
        """The partitions whose preference list includes ``node_id``; () if unknown."""
        return self._replica_partitions.get(node_id, ())

    def has_node(self, node_id: str) -> bool:
        return node_id in self._zone_of

    def node(self, node_id: str) -> RingNode:
        if node_id not in self._zone_of:
            raise KeyError(f"node {node_id!r} is not in ring version {self.version}")
        return RingNode(node_id, self._zone_of[node_id])

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description for ``/v1/status`` (keys in a stable order)."""
        zones: dict[str, list[str]] = {}
        for node in sorted(self.nodes, key=lambda n: (n.zone, n.node_id)):
            zones.setdefault(node.zone, []).append(node.node_id)
        return {
            "version": self.version,
            "partition_count": self.partition_count,
            "replicas": self.replicas,
            "zones": zones,
            "nodes": {
                node.node_id: {
                    "zone": node.zone,
                    "primary_partitions": len(self._primary_partitions[node.node_id]),
                    "replica_partitions": len(self._replica_partitions[node.node_id]),
                }
                for node in self.nodes
            },
        }


def _interleave_zones(nodes: Sequence[RingNode]) -> list[RingNode]:
    """Round-robin across zones (sorted by name), nodes within a zone sorted by id."""
    by_zone: dict[str, list[RingNode]] = {}
    for node in sorted(nodes, key=lambda n: (n.zone, n.node_id)):
        by_zone.setdefault(node.zone, []).append(node)
    ordered: list[RingNode] = []
    for round_index in range(max(len(members) for members in by_zone.values())):
        for members in by_zone.values():
            if round_index < len(members):
                ordered.append(members[round_index])
    ids = [node.node_id for node in ordered]
    assert len(set(ids)) == len(ids) == len(nodes), f"node ids must be unique: {sorted(ids)}"
    return ordered


def _walk_preference_list(
    owners: Sequence[str],
    zone_of: Mapping[str, str],
    partition: int,
    replicas_wanted: int,
    zone_count: int,
) -> tuple[str, ...]:
    """One partition's preference list: distinct zones first, then distinct nodes."""
    partition_count = len(owners)
    chosen: list[str] = []
    zones_used: set[str] = set()
    zones_wanted = min(replicas_wanted, zone_count)
    # First walk: one owner per zone. Stops once it has every zone it can get,
    # so a one-zone cluster does not walk the whole ring.
    for step in range(partition_count):
        if len(zones_used) == zones_wanted:
            break
        owner = owners[(partition + step) % partition_count]
        if zone_of[owner] not in zones_used:
            chosen.append(owner)
            zones_used.add(zone_of[owner])
    # Second walk: too few zones, so fill up with distinct nodes in any zone.
    if len(chosen) < replicas_wanted:
        for owner in _distinct_owners_from(owners, partition, len(zone_of)):
            if owner not in chosen:
                chosen.append(owner)
                if len(chosen) == replicas_wanted:
                    break
    return tuple(chosen)


def _distinct_owners_from(owners: Sequence[str], partition: int, owner_count: int) -> Iterator[str]:
    """Each of the ``owner_count`` owners once, in walk order from ``partition``."""
    partition_count = len(owners)
    seen: set[str] = set()
    for step in range(partition_count):
        owner = owners[(partition + step) % partition_count]
        if owner not in seen:
            seen.add(owner)
            yield owner
            if len(seen) == owner_count:
                return


# --- planning a change ------------------------------------------------------


def plan_join(ring: Ring, new_node: RingNode) -> Ring:
    """The ring after ``new_node`` joins: it takes its fair share, nothing else moves."""
    assert not ring.has_node(new_node.node_id), new_node
    assert len(ring.nodes) + 1 <= ring.partition_count, "every node must own a partition"
    nodes = tuple(sorted((*ring.nodes, new_node), key=lambda node: node.node_id))
    owners = _Claim(ring.owners, nodes, ring.nodes, ring.replicas).plan()
    planned = Ring(ring.partition_count, ring.replicas, nodes, owners, ring.version + 1)
    assert all(
        new in (old, new_node.node_id) for old, new in zip(ring.owners, owners, strict=True)
    ), "a join moves partitions only to the joining node"
    return planned


def plan_leave(ring: Ring, node_id: str) -> Ring:
    """The ring after ``node_id`` leaves: only its partitions move, spread over the rest."""
    assert ring.has_node(node_id), node_id
    assert len(ring.nodes) >= 2, "the last node cannot leave"
    nodes = tuple(node for node in ring.nodes if node.node_id != node_id)
    owners = _Claim(ring.owners, nodes, ring.nodes, ring.replicas).plan()
    planned = Ring(ring.partition_count, ring.replicas, nodes, owners, ring.version + 1)
    assert all(old in (new, node_id) for old, new in zip(ring.owners, owners, strict=True)), (
        "a leave moves only the leaving node's partitions"
    )
    return planned


class _Claim:
    """One planned placement change: from ``owners`` to a balanced placement on ``nodes``.

    Every node ends at its fair target (Q // n, the remainder to the nodes
    that hold most now, which keeps movement minimal). Partitions of nodes no
    longer in ``nodes`` move first; then nodes under target take from nodes
    over target. Nothing else moves. Where to put each moved partition is
    chosen to keep preference lists short and spread (``_cost``).
    """

    def __init__(
        self,
        owners: Sequence[str],
        nodes: Sequence[RingNode],
        previous_nodes: Sequence[RingNode],
        replicas: int,
    ) -> None:
        self.placement = list(owners)
        self.partition_count = len(owners)
        self.node_ids = [node.node_id for node in nodes]
        self.zone_of = {node.node_id: node.zone for node in (*previous_nodes, *nodes)}
        counts = Counter(owners)
        base, extra = divmod(self.partition_count, len(nodes))
        by_holdings = sorted(self.node_ids, key=lambda node_id: (-counts[node_id], node_id))
        self.targets = {
            node_id: base + (1 if rank < extra else 0) for rank, node_id in enumerate(by_holdings)
        }
        self.need = {n: max(0, self.targets[n] - counts[n]) for n in self.node_ids}
        self.excess = {n: max(0, counts[n] - self.targets[n]) for n in self.node_ids}
        # A preference list spans `replicas` node runs and min(replicas, zones)
        # zone runs: crowding further away does not matter.
        zone_count = len({node.zone for node in nodes})
        self.node_runs_max = replicas - 1
        self.zone_runs_max = min(replicas, zone_count) - 1

    def plan(self) -> tuple[str, ...]:
        for partition, owner in enumerate(tuple(self.placement)):
            if owner not in self.targets:
                receiver = min(
                    (node_id for node_id in self.node_ids if self.need[node_id] > 0),
                    key=lambda node_id: (self._cost(partition, node_id), -self.need[node_id]),
                )
                self.placement[partition] = receiver
                self.need[receiver] -= 1
        for receiver in self.node_ids:
            if self.need[receiver] > 0:
                self._take(receiver, self.need[receiver])
        assert Counter(self.placement) == Counter(self.targets), "every node ends at its target"
        return tuple(self.placement)

    def _take(self, receiver: str, wanted: int) -> None:
        """Move ``wanted`` partitions from over-target nodes to ``receiver``, spread evenly.

        Near each of ``wanted`` evenly spaced ideal positions, take the
        cheapest partition whose owner has excess, preferring the donor with
        the most excess, then the one closest to the ideal. What cannot be
        placed near an ideal position is taken from anywhere.
        """
        radius = max(1, self.partition_count // (2 * wanted))
        taken = 0
        for index in range(wanted):
            ideal = (2 * index + 1) * self.partition_count // (2 * wanted)
            nearby = [
                (ideal + offset) % self.partition_count
                for distance in range(radius + 1)
                for offset in ((distance, -distance) if distance else (0,))
            ]
            taken += self._take_best(receiver, nearby)
        while taken < wanted:
            taken += self._take_best(receiver, range(self.partition_count))
        assert taken == wanted, (taken, wanted)

    def _take_best(self, receiver: str, candidates: Sequence[int]) -> int:
        """Give ``receiver`` the best candidate owned by a node with excess; 1 if there was one."""
        best_key: tuple[tuple[int, int], int, int] | None = None
        best_partition = -1
        for rank, partition in enumerate(candidates):
            donor = self.placement[partition]
            if self.excess.get(donor, 0) > 0:
                key = (self._cost(partition, receiver), -self.excess[donor], rank)
                if best_key is None or key < best_key:
                    best_key, best_partition = key, partition
        if best_key is None:
            return 0
        self.excess[self.placement[best_partition]] -= 1
        self.placement[best_partition] = receiver
        return 1

    def _cost(self, partition: int, node_id: str) -> tuple[int, int]:
        """How much putting ``node_id`` at ``partition`` would crowd nearby preference lists.

        A preference list is the owner's run plus the next runs of other
        owners, so what hurts is meeting ``node_id`` again within a list's
        reach either side (the walk then skips it and reaches further), not
        extending a run it already has next door. Zones count the same way.
        """
        same_node = self._repeats_nearby(partition, node_id, self.node_runs_max, None)
        zone = self.zone_of[node_id]
        same_zone = self._repeats_nearby(partition, zone, self.zone_runs_max, self.zone_of)
        return (same_node, same_zone)

    def _repeats_nearby(
        self, partition: int, label: str, runs_max: int, label_of: Mapping[str, str] | None
    ) -> int:
        """How often ``label`` recurs within ``runs_max`` runs either side of ``partition``."""
        if runs_max <= 0:
            return 0
        steps_max = min(self.partition_count - 1, REPEAT_SCAN_STEPS_MAX)
        repeats = 0
        for direction in (-1, 1):
            runs_seen = 0
            previous = label
            for step in range(1, steps_max + 1):
                owner = self.placement[(partition + direction * step) % self.partition_count]
                current = owner if label_of is None else label_of[owner]
                if current == previous:
                    continue
                if runs_seen == runs_max:
                    break
                runs_seen += 1
                previous = current
                repeats += current == label
        return repeats
