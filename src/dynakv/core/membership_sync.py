"""Membership's anti-entropy and its copy of the ring: push-pull and epoch following.

Push-pull (Scuttlebutt reconciliation, with a hash in front so an idle
cluster pays one small message per sync):

1. A -> B ``SyncHello``: A's own record, the hash of A's live table.
2. B -> A ``SyncDigest`` only if the hashes differ: the versions of B's live records.
3. A -> B ``SyncDelta``: A's records that B lacks or holds older, and the ids
   of the records A wants (B's are newer, or A has none).
4. B -> A ``SyncDelta(final=True)``: the wanted records, and B's records that
   are newer than what A just sent (e.g. "you are dead": A refutes). A final
   delta is never answered, so an exchange is at most four messages.

Tombstones (dead, left) are in no digest, so a node that forgot one is never
handed it back by a sync; a tombstone crosses only to correct a peer's stale
live record of the same node.

``SyncSchedule`` decides when and with whom to start one (a seed while
alone: that is the join). ``RingCopy`` keeps this node's ring as an opaque ``(epoch, bytes)``; the
highest epoch wins. Seeing a higher epoch in any message, it asks that
sender for the ring (``RingRequest``), one fetch at a time, again after
``ring_fetch_timeout_ms``; a reply is adopted only if ``check`` accepts it.

Must never: send a record in an order that depends on dict or set order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dynakv.core.failure_detector import MembershipTiming, RandomSource
from dynakv.core.gossip_messages import (
    DigestEntry,
    MemberState,
    RingReply,
    RingRequest,
    SyncDelta,
    SyncDigest,
    SyncHello,
    address_hash,
    lifecycle_key,
    liveness_key,
    liveness_order,
    merge_member,
)
from dynakv.core.member_table import MemberTable


def _ahead(mine: MemberState | DigestEntry, theirs: MemberState | DigestEntry) -> bool:
    """``mine`` is ahead of ``theirs`` in either merged part (versions only)."""
    return liveness_key(mine) > liveness_key(theirs) or lifecycle_key(mine) > lifecycle_key(theirs)


def _other_life(mine: MemberState, theirs: DigestEntry) -> bool:
    # Two lives of one node at one incarnation (a restart at a new address): the
    # digest cannot say whose addresses win the merge, so both sides send theirs.
    return liveness_key(mine) == liveness_key(theirs) and address_hash(mine) != theirs.address_hash


def _teaches(mine: MemberState, theirs: MemberState) -> bool:
    """Merging ``mine`` into ``theirs`` changes more than the accuser."""
    merged = merge_member(theirs, mine)
    return liveness_order(merged) != liveness_order(theirs) or _ahead(mine, theirs)


def reconcile(
    table: MemberTable, entries: Sequence[DigestEntry]
) -> tuple[list[MemberState], list[str]]:
    """Scuttlebutt against a peer's digest of its live members: the records it lacks
    or holds older (our live records it has never heard of included), and the ids
    whose records it holds newer or we lack. Both in node id order."""
    theirs = {entry.node_id: entry for entry in entries}
    updates: list[MemberState] = []
    wants: list[str] = []
    for node_id in sorted(theirs):
        mine = table.get(node_id)
        if mine is None:
            wants.append(node_id)
            continue
        other_life = _other_life(mine, theirs[node_id])
        if other_life or _ahead(mine, theirs[node_id]):
            updates.append(mine)
        if other_life or _ahead(theirs[node_id], mine):
            wants.append(node_id)
    updates.extend(
        state
        for node_id in table.live_ids()
        if node_id not in theirs and (state := table.get(node_id)) is not None
    )
    updates.sort(key=lambda state: state.node_id)
    return updates, wants


def corrections(table: MemberTable, received: Sequence[MemberState]) -> list[MemberState]:
    """After merging ``received``: our records that are newer than what the peer sent."""
    found: dict[str, MemberState] = {}
    for state in received:
        mine = table.get(state.node_id)
        if mine is not None and _teaches(mine, state):
            found[state.node_id] = mine
    return [found[node_id] for node_id in sorted(found)]


def hello(table: MemberTable, me: MemberState, ring_epoch: int) -> SyncHello:
    return SyncHello(me, table.live_hash, ring_epoch)


def answer_hello(
    table: MemberTable, message: SyncHello, me: MemberState, ring_epoch: int
) -> SyncDigest | None:
    """Round 2 (after merging the greeter's record): a digest, unless the tables agree."""
    if message.table_hash == table.live_hash:
        return None
    return SyncDigest(me.node_id, me.rpc, table.live_digest(), ring_epoch)


def answer_digest(
    table: MemberTable, message: SyncDigest, me: MemberState, ring_epoch: int
) -> SyncDelta | None:
    """Round 3: what the peer lacks, and what we want."""
    updates, wants = reconcile(table, message.entries)
    if not updates and not wants:
        return None
    return SyncDelta(me.node_id, me.rpc, tuple(updates), tuple(wants), ring_epoch)


def answer_delta(
    table: MemberTable, message: SyncDelta, me: MemberState, ring_epoch: int
) -> SyncDelta | None:
    """Round 4 (after merging the delta's records): the wanted, and our corrections."""
    if message.final:
        return None
    answer = {state.node_id: state for state in corrections(table, message.updates)}
    for node_id in message.wants:
        state = table.get(node_id)
        if state is not None:
            answer[node_id] = state
    if not answer:
        return None
    updates = tuple(answer[node_id] for node_id in sorted(answer))
    return SyncDelta(me.node_id, me.rpc, updates, (), ring_epoch, final=True)


RingCheck = Callable[[int, bytes], bool]


class RingCopy:
    __slots__ = (
        "_check",
        "_fetch_deadline_ms",
        "_fetch_epoch",
        "epoch",
        "ring_bytes",
        "timeout_ms",
    )

    def __init__(
        self, epoch: int, ring_bytes: bytes, timeout_ms: int, check: RingCheck | None
    ) -> None:
        assert epoch >= 0, epoch
        self.epoch = epoch
        self.ring_bytes = ring_bytes
        self.timeout_ms = timeout_ms
        self._check = check
        self._fetch_epoch = 0
        self._fetch_deadline_ms = 0

    def install(self, epoch: int, ring_bytes: bytes) -> bool:
        if epoch <= self.epoch:
            return False
        self.epoch, self.ring_bytes = epoch, ring_bytes
        return True

    def observe(self, epoch: int, now_ms: int, me: MemberState) -> RingRequest | None:
        """A peer holds ``epoch``: the request to send it, if we should fetch now."""
        if epoch <= self.epoch:
            return None
        if epoch <= self._fetch_epoch and now_ms < self._fetch_deadline_ms:
            return None
        self._fetch_epoch = epoch
        self._fetch_deadline_ms = now_ms + self.timeout_ms
        return RingRequest(me.node_id, me.rpc, epoch)

    def answer(self, me: MemberState) -> RingReply | None:
        return RingReply(me.node_id, self.epoch, self.ring_bytes) if self.epoch > 0 else None

    def on_reply(self, reply: RingReply) -> bool | None:
        """True: adopted; False: refused by the check; None: not newer, ignored."""
        if reply.epoch <= self.epoch:
            return None
        if self._check is not None and not self._check(reply.epoch, reply.ring_bytes):
            return False
        self.epoch, self.ring_bytes = reply.epoch, reply.ring_bytes
        return True


SEEDS_MAX = 64
PUSH_PULL_SCALE_THRESHOLD = 32


def sync_interval_ms(timing: MembershipTiming, cluster_size: int) -> int:
    """The push-pull period, lengthened beyond 32 members (memberlist's ``pushPullScale``)."""
    if cluster_size <= PUSH_PULL_SCALE_THRESHOLD:
        return timing.sync_interval_ms
    steps = math.ceil(math.log2(cluster_size) - math.log2(PUSH_PULL_SCALE_THRESHOLD))
    return timing.sync_interval_ms * (steps + 1)


class SyncSchedule:
    """When, and with whom, this node starts a push-pull: a seed (round robin) while it
    knows no live peer, which is joining, and then each seed that is still no member
    it knows (nodes started together may first find only some seeds up: two groups
    that never heard of each other would otherwise stay apart); a random live member
    every sync period; a random dead member every ``reconnect_interval_ms``, so that
    the two sides of a healed partition that declared each other dead find each other
    again."""

    __slots__ = (
        "_next_reconnect_ms",
        "_next_sync_ms",
        "_rng",
        "_seed_index",
        "next_join_ms",
        "seeds",
        "timing",
    )

    def __init__(self, timing: MembershipTiming, rng: RandomSource, now_ms: int) -> None:
        self.timing = timing
        self._rng = rng
        self.seeds: tuple[str, ...] = ()
        self._seed_index = 0
        self.next_join_ms = now_ms
        # Spread out so that nodes started together do not sync in lockstep.
        self._next_sync_ms = now_ms + rng.randrange(timing.sync_interval_ms)
        self._next_reconnect_ms = now_ms + rng.randrange(timing.reconnect_interval_ms)

    def set_seeds(self, seeds: Sequence[str], own_address: str) -> tuple[str, ...]:
        self.seeds = tuple(dict.fromkeys(s for s in seeds if s != own_address))[:SEEDS_MAX]
        return self.seeds

    def due(
        self,
        now_ms: int,
        peers: Sequence[str],
        tombstones: Callable[[], list[str]],
        address_of: Callable[[str], str],
        known_addresses: Callable[[], frozenset[str]] = frozenset,
    ) -> list[str]:
        """The addresses to greet with a ``SyncHello`` now (``peers``: live, sorted;
        ``known_addresses``: the RPC addresses of every member in the table)."""
        addresses: list[str] = []
        if now_ms >= self.next_join_ms and self.seeds:
            known = known_addresses() if peers else frozenset()
            unknown = [seed for seed in self.seeds if seed not in known]
            if unknown:
                self.next_join_ms = now_ms + self.timing.join_retry_interval_ms
                addresses.append(unknown[self._seed_index % len(unknown)])
                self._seed_index += 1
        if now_ms >= self._next_sync_ms:
            self._next_sync_ms = now_ms + sync_interval_ms(self.timing, len(peers) + 1)
            if peers:
                addresses.append(address_of(peers[self._rng.randrange(len(peers))]))
        if now_ms >= self._next_reconnect_ms:
            self._next_reconnect_ms = now_ms + self.timing.reconnect_interval_ms
            dead = tombstones()
            if dead:
                addresses.append(address_of(dead[self._rng.randrange(len(dead))]))
        return addresses
