"""Claim: plan a placement, and plan each change of membership as data.

Owns who should hold which partition. ``build_ring`` places an initial ring;
``plan_join``, ``plan_leave`` and ``plan_remove`` turn a ring and one change
into a ``RingChange``: the next ring (epoch + 1) and the transfers that get
it there. Riak's claimant shape: plan, then commit; one change at a time.

Targets. A zone's share of the Q*N' replica slots is proportional to its size,
clamped to what the zone rule allows (``zone_limits``: at most Q*highest,
at least Q*lowest), found exactly by water-filling; each node's target is
its zone's share split evenly (the one-slot remainders go to the nodes that
hold most now, which keeps movement minimal). So within a zone replica loads
differ by at most one slot, whatever the zones look like. A node in a tiny
zone carries more than a node in a big one: every list needs that zone (with
3 zones and N = 3, the single node of a 4/1/1 cluster is in every list).
Primaries (who is first) are spread Q/n each (one apart; two where a node's
few lists cannot hand it its last one); reordering a list moves no data.
Hosts: a list avoids two nodes of one host wherever balance and the zone
rule leave a choice (a preference, not a guarantee).

Changes move only what the targets require: departed nodes' slots, slots
that break the zone rule after the change, and slots of nodes above their
new target, each to a node below its target. A join into one zone, or into
N zones with N replicas, moves exactly the joiner's share (~1/n of the
slots) and only to it. When no direct move fits, the cheapest chain of moves
(a 0-1 breadth-first search, like an augmenting path) does; where the zone
rule forces restructuring, a plan moves more than the gainers gain (at most
2x + 4 in the property tests, never more than adopting a fresh build).

Invariants: every plan's ring satisfies ``ring_problem``, reaches every
node's replica target exactly, and is a pure function of its inputs (lists
and dicts built in sorted order; no ``set`` iteration reaches the output).
Never does I/O, reads no clock, draws no random numbers; never moves data
itself (handoff streams the transfers; membership commits the ring).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import xxhash

from dynakv.core.ring import Ring, RingNode, zone_limits

ChangeKind = Literal["join", "leave", "remove"]
CANDIDATE_WINDOW = 8  # how many needy nodes a hole compares for spread (bounds the scan)


def zone_targets(
    zone_sizes: Mapping[str, int], partition_count: int, replicas_wanted: int
) -> dict[str, int]:
    """Each zone's replica slots: size * level clamped to the zone rule, summing to Q*N'."""
    limits = zone_limits(zone_sizes, replicas_wanted)
    total = partition_count * replicas_wanted
    bounds = {
        z: (partition_count * low, partition_count * high) for z, (low, high) in limits.items()
    }

    def shares(level: Fraction) -> dict[str, Fraction]:
        return {z: _clamp(zone_sizes[z] * level, *bounds[z]) for z in bounds}

    # sum(shares()) is piecewise linear between these points: find the piece holding `total`.
    points = sorted({Fraction(b, zone_sizes[z]) for z, pair in bounds.items() for b in pair})
    previous = point = Fraction(0)
    for point in points:
        if sum(shares(point).values()) >= total:
            break
        previous = point
    low_fill, high_fill = sum(shares(previous).values()), sum(shares(point).values())
    level = point
    if high_fill != low_fill:
        level = previous + (point - previous) * (total - low_fill) / (high_fill - low_fill)
    exact = shares(level)
    assert sum(exact.values()) == total, (exact, total)
    targets = {z: math.floor(share) for z, share in exact.items()}
    by_remainder = sorted(exact, key=lambda z: (targets[z] - exact[z], z))
    for zone in by_remainder[: total - sum(targets.values())]:
        targets[zone] += 1
    assert all(bounds[z][0] <= targets[z] <= bounds[z][1] for z in targets), targets
    return targets


def _clamp(value: Fraction, low: int, high: int) -> Fraction:
    return max(Fraction(low), min(Fraction(high), value))


def node_targets(
    nodes: Sequence[RingNode],
    partition_count: int,
    replicas_wanted: int,
    loads: Mapping[str, int],
) -> dict[str, int]:
    """Each node's replica slots: its zone's share split evenly, remainders to the fullest."""
    by_zone: dict[str, list[str]] = {}
    for node in sorted(nodes, key=lambda n: (n.zone, n.node_id)):
        by_zone.setdefault(node.zone, []).append(node.node_id)
    sizes = {zone: len(members) for zone, members in by_zone.items()}
    zone_totals = zone_targets(sizes, partition_count, replicas_wanted)
    targets: dict[str, int] = {}
    for zone, members in by_zone.items():
        base, extra = divmod(zone_totals[zone], len(members))
        ranked = sorted(members, key=lambda n: (-loads.get(n, 0), n))
        for rank, node_id in enumerate(ranked):
            targets[node_id] = base + (rank < extra)
    return targets


def primary_targets(
    replica_targets: Mapping[str, int], partition_count: int, primaries: Mapping[str, int]
) -> dict[str, int]:
    """Q/n primaries each (the remainder to those that own most now), never above replica load."""
    node_ids = sorted(replica_targets)
    base = partition_count // len(node_ids)
    targets = {n: min(base, replica_targets[n]) for n in node_ids}
    ranked = sorted(node_ids, key=lambda n: (-primaries.get(n, 0), n))
    left = partition_count - sum(targets.values())
    for cap in range(base + 1, partition_count + 1):
        for node_id in ranked:
            if left and targets[node_id] < min(cap, replica_targets[node_id]):
                targets[node_id] += 1
                left -= 1
        if not left:
            break
    assert sum(targets.values()) == partition_count, (targets, partition_count)
    return targets


def _shuffled(node_ids: Sequence[str], zone: str, round_index: int) -> list[str]:
    """A fixed pseudo-random order per (zone, round): the same in every process."""
    salt = f"{zone}\0{round_index}\0"
    return sorted(node_ids, key=lambda n: (xxhash.xxh3_64_intdigest(f"{salt}{n}".encode()), n))


def _pair(first: str, second: str) -> tuple[str, str]:
    return (first, second) if first < second else (second, first)


class _Placement:
    """A placement being changed in place: lists with holes (None), loads against targets."""

    def __init__(self, lists: list[list[str | None]], nodes: Sequence[RingNode], wanted: int):
        self.lists = lists
        self.node_ids = sorted(node.node_id for node in nodes)
        self.zone_of = {node.node_id: node.zone for node in nodes}
        self.host_of = {node.node_id: node.host for node in nodes}
        self.zone_nodes: dict[str, list[str]] = {}
        for node in sorted(nodes, key=lambda n: (n.zone, n.node_id)):
            self.zone_nodes.setdefault(node.zone, []).append(node.node_id)
        self.limits = zone_limits({z: len(m) for z, m in self.zone_nodes.items()}, wanted)
        self.every_zone = len(self.zone_nodes) <= wanted
        # Each zone is visited round-robin, in a fresh hash-shuffled order each round,
        # so lists mix nodes like random claims do (no bands of fixed partners).
        self.rounds = dict.fromkeys(self.zone_nodes, 0)
        self.order = {z: _shuffled(members, z, 0) for z, members in self.zone_nodes.items()}
        self.cursor = dict.fromkeys(self.zone_nodes, 0)
        self.scan_from = 0
        # What each slot held before this plan, and the slots it changes (in order).
        self.original = [tuple(members) for members in lists]
        self.fresh_of: dict[str, dict[tuple[int, int], None]] = {n: {} for n in self.node_ids}
        load = Counter(n for members in lists for n in members if n is not None)
        self.target = node_targets(nodes, len(lists), wanted, load)
        self.need = {n: self.target[n] - load[n] for n in self.node_ids}
        self.zone_need = {
            zone: sum(max(0, self.need[n]) for n in members)
            for zone, members in self.zone_nodes.items()
        }
        # How often two nodes share a list: holes prefer unfamiliar company, so a
        # node's partners (and a dead node's re-replication sources) spread out.
        self.pairs: Counter[tuple[str, str]] = Counter()
        for members in lists:
            present = [n for n in members if n is not None]
            for index, first in enumerate(present):
                self.pairs.update(_pair(first, second) for second in present[index + 1 :])

    # -- state --------------------------------------------------------------------------

    def _set(self, partition: int, slot: int, node_id: str | None) -> None:
        members = self.lists[partition]
        others = [n for i, n in enumerate(members) if i != slot and n is not None]
        leaving = members[slot]
        if leaving is not None:
            self.fresh_of[leaving].pop((partition, slot), None)
        if node_id is not None and node_id != self.original[partition][slot]:
            self.fresh_of[node_id][partition, slot] = None
        for present, delta in ((leaving, -1), (node_id, 1)):
            if present is not None:
                before = max(0, self.need[present])
                self.need[present] -= delta
                self.zone_need[self.zone_of[present]] += max(0, self.need[present]) - before
                self.pairs.update({_pair(present, other): delta for other in others})
        members[slot] = node_id

    def _zone_counts(self, partition: int) -> Counter[str]:
        return Counter(self.zone_of[n] for n in self.lists[partition] if n is not None)

    def _missing(self, counts: Counter[str]) -> int:
        """How many zones the list must still gain to obey the zone rule's lower bound."""
        return sum(counts[zone] == 0 for zone in self.zone_nodes) if self.every_zone else 0

    def _fits(self, partition: int, slot: int, node_id: str) -> bool:
        """Whether ``node_id`` may take ``slot`` of ``partition`` under the zone rule."""
        members = self.lists[partition]
        if node_id in members:
            return False
        zone, leaving = self.zone_of[node_id], members[slot]
        if leaving is not None and self.zone_of[leaving] == zone:
            return True
        counts = self._zone_counts(partition)
        if counts[zone] >= self.limits[zone][1]:
            return False
        counts[zone] += 1
        if leaving is not None:
            counts[self.zone_of[leaving]] -= 1
        return self._missing(counts) <= members.count(None) - (leaving is None)

    def _clash(self, partition: int, node_id: str, slot: int = -1) -> bool:
        """Whether another member of the list (``slot`` aside) shares ``node_id``'s host."""
        host = self.host_of[node_id]
        members = self.lists[partition]
        return any(
            n is not None and i != slot and self.host_of[n] == host for i, n in enumerate(members)
        )

    # -- the phases ---------------------------------------------------------------------

    def vacate_violations(self) -> None:
        """Empty the slots that break the zone rule of the new membership."""
        for partition, members in enumerate(self.lists):
            for zone, count in sorted(self._zone_counts(partition).items()):
                for _ in range(count - self.limits[zone][1]):
                    self._vacate_most_over(partition, {zone})
            while self._missing(self._zone_counts(partition)) > members.count(None):
                counts = self._zone_counts(partition)
                self._vacate_most_over(partition, {z for z, c in counts.items() if c > 1})

    def _vacate_most_over(self, partition: int, zones: set[str]) -> None:
        # Most over first; a secondary slot before the primary's, so primaries stay put.
        _, _, _, slot = min(
            (self.need[n], i == 0, n, i)
            for i, n in enumerate(self.lists[partition])
            if n is not None and self.zone_of[n] in zones
        )
        self._set(partition, slot, None)

    def fill_holes(self) -> None:
        """Give every empty slot a node, in partition order."""
        for partition, members in enumerate(self.lists):
            for slot in range(len(members)):
                if members[slot] is None:
                    self._set(partition, slot, self._choose_for_hole(partition))

    def _choose_for_hole(self, partition: int) -> str:
        """A node below target, from the zones that need most; else the least over.

        Zones within an eighth of the neediest count as equally needy, and
        among them the candidate that has shared fewest lists with this
        list's members wins: lists mix zones as well as nodes.
        """
        members = self.lists[partition]
        counts = self._zone_counts(partition)
        zones = [z for z in self.zone_nodes if counts[z] < self.limits[z][1]]
        missing = [z for z in zones if counts[z] < self.limits[z][0]]
        if len(missing) >= members.count(None):
            zones = missing
        zones.sort(key=lambda z: (-self.zone_need[z], z))
        needy = [z for z in zones if self.zone_need[z] > 0]
        while needy:
            top = self.zone_need[needy[0]]
            near = [z for z in needy if 8 * self.zone_need[z] >= 7 * top]
            probes = [(probe, z) for z in near if (probe := self._probe(partition, z))]
            if probes:
                (_, node_id, step), zone = min(probes)
                self._advance(zone, step)
                return node_id
            needy = needy[len(near) :]
        # Nobody below target fits: settle() moves the surplus on along a chain.
        return min(
            (n for n in self.zone_nodes[zones[0]] if n not in members),
            key=lambda n: (self._clash(partition, n), -self.need[n], n),
        )

    def _probe(self, partition: int, zone: str) -> tuple[tuple[bool, int, int], str, int] | None:
        """Of the next few nodes below target in the zone's round, the best company.

        Returns (host clash, familiarity, steps from the cursor), the node and
        its steps, or None if no node of the zone below target fits the list.
        """
        members = self.lists[partition]
        present = [n for n in members if n is not None]
        hosts = {self.host_of[n] for n in present}
        order, pairs = self.order[zone], self.pairs
        best: tuple[tuple[bool, int, int], str, int] | None = None
        seen = 0
        for step in range(len(order)):
            node_id = order[(self.cursor[zone] + step) % len(order)]
            if self.need[node_id] <= 0 or node_id in members:
                continue
            familiarity = sum(pairs[_pair(node_id, other)] for other in present)
            key = (self.host_of[node_id] in hosts, familiarity, step)
            if best is None or key < best[0]:
                best = (key, node_id, step)
            seen += 1
            if seen == CANDIDATE_WINDOW or key[:2] == (False, 0):  # none can do better
                break
        return best

    def _advance(self, zone: str, step: int) -> None:
        """Move the zone's cursor past the node chosen ``step`` places on."""
        self.cursor[zone] += step + 1
        if self.cursor[zone] >= len(self.order[zone]):  # a round is over: new order
            self.rounds[zone] += 1
            self.order[zone] = _shuffled(self.zone_nodes[zone], zone, self.rounds[zone])
            self.cursor[zone] = 0

    def settle(self) -> None:
        """Move slots from nodes above target to nodes below it until every node is on target."""
        for node_id in self.node_ids:
            while self.need[node_id] > 0:
                moved = (
                    self._take_fresh(node_id)
                    or self._take_directly(node_id)
                    or self._take_by_chain(node_id)
                )
                assert moved, f"no placement reaches {node_id}'s target"
        assert all(need == 0 for need in self.need.values()), self.need

    def _take_fresh(self, taker: str) -> bool:
        """Re-aim a slot this plan already moves to a node above target: costs no extra move."""
        for giver in self.node_ids:
            if self.need[giver] < 0:
                for partition, slot in self.fresh_of[giver]:
                    if self._fits(partition, slot, taker):
                        self._set(partition, slot, taker)
                        return True
        return False

    def _take_directly(self, taker: str) -> bool:
        """Give ``taker`` a slot of a node above target (another host's list first)."""
        partition_count = len(self.lists)
        fallback: tuple[int, int] | None = None
        for step in range(partition_count):
            partition = (self.scan_from + step) % partition_count
            members = self.lists[partition]
            if taker in members:
                continue
            for slot in (*range(1, len(members)), 0):  # the primary's slot last
                giver = members[slot]
                if giver is None or self.need[giver] >= 0 or not self._fits(partition, slot, taker):
                    continue
                if not self._clash(partition, taker, slot):
                    self._set(partition, slot, taker)
                    self.scan_from = partition + 1
                    return True
                fallback = fallback or (partition, slot)
        if fallback is not None:
            self._set(fallback[0], fallback[1], taker)
        return fallback is not None

    def _take_by_chain(self, taker: str) -> bool:
        """Cheapest chain: taker takes x's slot, x takes y's, ..., y is above target.

        A 0-1 breadth-first search: re-aiming a slot this plan already moves
        costs nothing, moving one more slot costs one. A chain that would use
        a partition twice is skipped, so its moves are independent.
        """
        parent: dict[str, tuple[str, int, int] | None] = {taker: None}
        cost_of = {taker: 0}
        queue = deque([(0, taker)])
        while queue:
            cost, current = queue.popleft()
            if cost > cost_of[current]:
                continue  # reached more cheaply since
            if self.need[current] < 0 and self._apply_chain(parent, current):
                return True
            for partition, members in enumerate(self.lists):
                if current in members or _on_path(parent, current, partition):
                    continue
                for slot, giver in enumerate(members):
                    step_cost = cost + (giver == self.original[partition][slot])
                    if giver is None or step_cost >= cost_of.get(giver, step_cost + 1):
                        continue
                    if giver == taker or not self._fits(partition, slot, current):
                        continue
                    cost_of[giver] = step_cost
                    parent[giver] = (current, partition, slot)
                    if step_cost == cost:
                        queue.appendleft((step_cost, giver))
                    else:
                        queue.append((step_cost, giver))
        return False

    def _apply_chain(self, parent: Mapping[str, tuple[str, int, int] | None], giver: str) -> bool:
        """Carry out the chain that ends at ``giver``, unless it uses a partition twice."""
        steps: list[tuple[str, int, int]] = []
        while (step := parent[giver]) is not None and len(steps) < len(parent):
            steps.append(step)
            giver = step[0]
        if step is not None or len({partition for _, partition, _ in steps}) < len(steps):
            return False
        for taker, partition, slot in steps:
            self._set(partition, slot, taker)
        return True

    def complete(self) -> list[list[str]]:
        """The lists, now that every hole is filled."""
        lists = [[n for n in members if n is not None] for members in self.lists]
        assert all(len(a) == len(b) for a, b in zip(lists, self.lists, strict=True)), "a hole"
        return lists


def _on_path(
    parent: Mapping[str, tuple[str, int, int] | None], node_id: str, partition: int
) -> bool:
    """Whether the chain that reached ``node_id`` already moves a slot of ``partition``."""
    for _ in range(len(parent)):
        step = parent[node_id]
        if step is None:
            return False
        if step[1] == partition:
            return True
        node_id = step[0]
    return True  # a chain longer than the nodes it holds: refuse to extend it


def order_primaries(lists: list[list[str]], targets: Mapping[str, int], reassign: bool) -> None:
    """Put each list's primary first so every node owns its target (best effort).

    Reordering a list moves no data. ``reassign`` picks every primary afresh
    (a new ring); otherwise the current primaries stay unless a node needs one.
    """
    targets = dict(targets)
    base = len(lists) // len(targets)
    member_of: dict[str, list[int]] = {n: [] for n in sorted(targets)}
    for partition, members in enumerate(lists):
        for node_id in members:
            member_of[node_id].append(partition)
    if reassign:
        owned_so_far: Counter[str] = Counter()
        for members in lists:
            room = [targets[n] - owned_so_far[n] for n in members]
            _promote(members, members[room.index(max(room))])
            owned_so_far[members[0]] += 1
    owned = Counter(members[0] for members in lists)
    for node_id in member_of:
        while owned[node_id] < targets[node_id]:
            chain = _primary_chain(lists, node_id, owned, targets, member_of)
            if chain is None:
                # No list this node can reach hands it one more (too few lists
                # around it). Pass its share of the remainder to a node that
                # holds one too many, if it has one; else it stays one short.
                over = [n for n in member_of if owned[n] > targets[n]]
                if not over or targets[node_id] <= base:
                    break
                targets[node_id] -= 1
                targets[over[0]] += 1
                continue
            for taker, partition in chain:
                owned[lists[partition][0]] -= 1
                owned[taker] += 1
                _promote(lists[partition], taker)


def _primary_chain(
    lists: Sequence[Sequence[str]],
    taker: str,
    owned: Mapping[str, int],
    targets: Mapping[str, int],
    member_of: Mapping[str, list[int]],
) -> list[tuple[str, int]] | None:
    """Breadth-first: taker becomes primary where x was, x where y was, ..., y above target."""
    parent: dict[str, tuple[str, int] | None] = {taker: None}
    queue = deque([taker])
    while queue:
        current = queue.popleft()
        for partition in member_of[current]:
            giver = lists[partition][0]
            if giver in parent:
                continue
            parent[giver] = (current, partition)
            if owned[giver] > targets[giver]:
                chain = []
                while (step := parent[giver]) is not None:
                    chain.append(step)
                    giver = step[0]
                return chain
            queue.append(giver)
    return None


def _promote(members: list[str], node_id: str) -> None:
    slot = members.index(node_id)
    members[0], members[slot] = members[slot], members[0]


# --- rings and changes ------------------------------------------------------------------


def build_ring(nodes: Sequence[RingNode], partition_count: int, replicas: int) -> Ring:
    """The initial placement (epoch 1) of ``nodes``, in any order."""
    ordered = tuple(sorted(nodes, key=lambda node: node.node_id))
    assert ordered and len(ordered) <= partition_count, (len(ordered), partition_count)
    assert len({node.node_id for node in ordered}) == len(ordered), "node ids must be unique"
    wanted = min(replicas, len(ordered))
    placement = _Placement([[None] * wanted for _ in range(partition_count)], ordered, wanted)
    placement.fill_holes()
    placement.settle()
    lists = placement.complete()
    order_primaries(lists, primary_targets(placement.target, partition_count, {}), reassign=True)
    return Ring(partition_count, replicas, ordered, tuple(map(tuple, lists)), epoch=1)


@dataclass(frozen=True, slots=True)
class Transfer:
    """Stream ``partition`` to ``to_node`` from one of ``from_nodes`` (best source first)."""

    partition: int
    from_nodes: tuple[str, ...]
    to_node: str


@dataclass(frozen=True, slots=True)
class RingChange:
    """One planned membership change: ``old`` -> ``new`` and the transfers between.

    Until the switch, a moving partition is written to the old preference list
    and the new members (``write_targets``) and read from the old list
    (``read_targets``); a removed (dead) node is left out of both. A partition
    whose data was only on a removed node has a transfer with no sources.
    """

    kind: ChangeKind
    node_id: str
    old: Ring
    new: Ring
    transfers: tuple[Transfer, ...]

    def __post_init__(self) -> None:
        assert self.new.epoch == self.old.epoch + 1, (self.old.epoch, self.new.epoch)
        assert self.new.partition_count == self.old.partition_count

    def moving_partitions(self) -> tuple[int, ...]:
        return tuple(sorted({transfer.partition for transfer in self.transfers}))

    def pending_targets(self, partition: int) -> tuple[str, ...]:
        """The new members of ``partition``'s list, which hold nothing until streamed."""
        before = self.old.preference_list(partition)
        return tuple(n for n in self.new.preference_list(partition) if n not in before)

    def read_targets(self, partition: int) -> tuple[str, ...]:
        return tuple(n for n in self.old.preference_list(partition) if n != self._dead())

    def write_targets(self, partition: int) -> tuple[str, ...]:
        return self.read_targets(partition) + self.pending_targets(partition)

    def moved_fraction(self) -> float:
        """Transferred replica slots over all of the new ring's (Q * N')."""
        return len(self.transfers) / (self.new.partition_count * self.new.replicas_wanted)

    def _dead(self) -> str | None:
        return self.node_id if self.kind == "remove" else None


def plan_join(ring: Ring, new_node: RingNode) -> RingChange:
    """``new_node`` joins: it takes its share from the nodes now above their targets."""
    assert not ring.has_node(new_node.node_id), new_node
    return _plan(ring, (*ring.nodes, new_node), "join", new_node.node_id)


def plan_leave(ring: Ring, node_id: str) -> RingChange:
    """``node_id`` leaves in good order: it streams its partitions to the others first."""
    assert ring.has_node(node_id) and len(ring.nodes) >= 2, node_id
    return _plan(ring, [n for n in ring.nodes if n.node_id != node_id], "leave", node_id)


def plan_remove(ring: Ring, node_id: str) -> RingChange:
    """``node_id`` is dead: its partitions are re-replicated from the surviving replicas."""
    assert ring.has_node(node_id) and len(ring.nodes) >= 2, node_id
    return _plan(ring, [n for n in ring.nodes if n.node_id != node_id], "remove", node_id)


def _plan(ring: Ring, nodes: Sequence[RingNode], kind: ChangeKind, node_id: str) -> RingChange:
    ordered = tuple(sorted(nodes, key=lambda node: node.node_id))
    assert len(ordered) <= ring.partition_count, "every node must be able to own a partition"
    wanted = min(ring.replicas, len(ordered))
    staying = {node.node_id for node in ordered}
    lists: list[list[str | None]] = []
    for preference_list in ring.preference_lists:
        members: list[str | None] = [n if n in staying else None for n in preference_list]
        while len(members) > wanted:  # only when every node is in every list
            members.remove(None)
        lists.append(members + [None] * (wanted - len(members)))
    placement = _Placement(lists, ordered, wanted)
    placement.vacate_violations()
    placement.fill_holes()
    placement.settle()
    lists_done = placement.complete()
    primaries = primary_targets(placement.target, ring.partition_count, Counter(ring.owners))
    order_primaries(lists_done, primaries, reassign=False)
    new = Ring(
        ring.partition_count, ring.replicas, ordered, tuple(map(tuple, lists_done)), ring.epoch + 1
    )
    dead = node_id if kind == "remove" else None
    transfers: list[Transfer] = []
    for partition, (before, after) in enumerate(
        zip(ring.preference_lists, new.preference_lists, strict=True)
    ):
        leaving = [n for n in before if n not in after and n != dead]
        sources = (*leaving, *(n for n in before if n in after and n != dead))
        transfers.extend(Transfer(partition, sources, n) for n in after if n not in before)
    return RingChange(kind, node_id, ring, new, tuple(transfers))
