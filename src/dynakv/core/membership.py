"""Membership: who is in the cluster and the ring's epoch, gossiped; a pure state machine.

The shell (the node, or ``sim.membership_sim``) builds one ``Membership`` per
node, calls ``tick(now_ms)`` every few tens of ms and ``on_message`` for every
gossip message, and carries out the actions returned: ``Send`` (one-way; an
answer is a new message), ``MemberChanged`` (a member's status-page state
moved), ``RingLearned`` (install this newer ring). Failure detection is
``core.failure_detector`` (SWIM + Lifeguard); the table and the gossip queue
are ``core.member_table``; records and messages are ``core.gossip_messages``.

Dissemination, as in memberlist: every record that changes this node's
table is queued and piggybacked on probes and acks, and gossiped every
``gossip_interval_ms`` to ``gossip_fanout`` random members (and to members
dead for under ``gossip_to_dead_ms``, so a paused node learns its death and
refutes it), each up to ``retransmit_mult * ceil(log10(n + 1))`` times.
Anti-entropy is a Scuttlebutt-style push-pull with one random member every
``sync_interval_ms``: ``SyncHello`` carries a hash of the live table; only
if it differs does the peer answer with a digest of versions, and then only
the records one side lacks cross (``SyncDelta``). Joining is a push-pull
with a seed, retried while this node knows no live peer.

Lifeguard's buddy system works both ways here: a message to a member we
doubt carries that doubt first (it can refute at once), and a member that
hears a doubt older than its refutation queues its record again, so the
ack it is about to send carries the refutation back.

The ring is an opaque ``(ring_epoch, ring_bytes)``: every message carries the
sender's epoch, and a node that sees a higher one asks that sender for it
(one fetch at a time); the highest epoch wins, checked by ``ring_check``.

Invariants: only this node raises its own incarnation (to refute, or to
leave); records merge by version (``merge_member``), never by arrival; the
table holds at most ``members_max`` records, a message at most
``updates_per_message_max`` piggybacked records. Must never: read a clock,
draw randomness but from the passed-in source, or emit anything in an order
that depends on dict or set order of str.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import assert_never

import msgspec

from dynakv.core import membership_sync
from dynakv.core.failure_detector import (
    FailureDetector,
    MembershipTiming,
    Output,
    ProbeFailed,
    ProbeSend,
    RandomSource,
    SuspicionExpired,
    detection_bound_ms,
)
from dynakv.core.gossip_messages import (
    Ack,
    Action,
    Gossip,
    GossipMessage,
    IndirectPing,
    Lifecycle,
    MemberChanged,
    MemberState,
    Nack,
    Ping,
    RingLearned,
    RingReply,
    RingRequest,
    Send,
    StateName,
    Status,
    SyncDelta,
    SyncDigest,
    SyncHello,
    lifecycle_key,
    liveness_order,
    message_is_valid,
    sender_of,
    state_name,
)
from dynakv.core.member_table import BroadcastQueue, Change, MemberTable, is_live
from dynakv.core.membership_sync import RingCheck, RingCopy, SyncSchedule

__all__ = [
    "Action",
    "MemberChanged",
    "Membership",
    "MembershipTiming",
    "RingLearned",
    "Send",
    "StateName",
    "detection_bound_ms",
    "state_name",
]

MAINTENANCE_INTERVAL_MS = 1000


class Membership:
    def __init__(
        self,
        self_member: MemberState,
        seeds: Sequence[str],
        timing: MembershipTiming,
        rng: RandomSource,
        *,
        now_ms: int = 0,
        ring_epoch: int = 0,
        ring_bytes: bytes = b"",
        known: Sequence[MemberState] = (),
        ring_check: RingCheck | None = None,
    ) -> None:
        """``known``: a saved table to start from (a restart); it is not gossiped as news."""
        assert self_member.status is Status.ALIVE, self_member
        self.timing = timing
        self.self_id = self_member.node_id
        self.self_address = self_member.rpc
        self._me = self_member
        self._rng = rng
        self._table = MemberTable(self_member, timing.members_max, now_ms)
        self._queue = BroadcastQueue(timing.members_max)
        self._detector = FailureDetector(self.self_id, self.self_address, timing, rng)
        self._schedule = SyncSchedule(timing, rng, now_ms)
        self._schedule.set_seeds(seeds, self.self_address)
        self._peers: list[str] = []
        self._peers_source: list[str] | None = None
        self._dead_recent: list[str] = []
        self._next_gossip_ms = now_ms
        self._next_maintenance_ms = now_ms
        self.ring = RingCopy(ring_epoch, ring_bytes, timing.ring_fetch_timeout_ms, ring_check)
        self.left = False
        self.rejected = 0  # messages dropped as invalid or spoofed
        self.refutations = 0
        for state in sorted(known, key=lambda s: s.node_id):
            if state.node_id != self.self_id:
                self._table.apply(state, now_ms)  # probed from the first round on

    # -- queries --------------------------------------------------------------

    @property
    def me(self) -> MemberState:
        return self._me

    @property
    def awareness(self) -> int:
        return self._detector.awareness

    def members(self) -> tuple[MemberState, ...]:
        """Every known member (tombstones included), by node id."""
        return tuple(self._table.states())

    def member(self, node_id: str) -> MemberState | None:
        return self._table.get(node_id)

    def state_of(self, node_id: str) -> StateName | None:
        state = self._table.get(node_id)
        return None if state is None else state_name(state)

    def live_nodes(self) -> tuple[str, ...]:
        """Members that are alive or merely suspected (this node included), sorted."""
        return tuple(self._table.live_ids())

    @property
    def live_hash(self) -> int:
        """Equal on two nodes that agree on every live member's versions."""
        return self._table.live_hash

    def suspicion_count(self) -> int:
        return len(self._detector.suspicions)

    # -- MemberView, for the failure detector ---------------------------------

    def probe_address(self, node_id: str) -> str | None:
        state = self._table.get(node_id)
        if state is None or node_id == self.self_id or not is_live(state):
            return None
        return state.rpc

    def live_peer_ids(self) -> Sequence[str]:
        live = self._table.live_ids()
        if live is not self._peers_source:
            self._peers_source = live
            self._peers = [node_id for node_id in live if node_id != self.self_id]
        return self._peers

    def cluster_size(self) -> int:
        return len(self._table.live_ids())

    # -- commands -------------------------------------------------------------

    def join(self, seeds: Sequence[str], now_ms: int) -> list[Action]:
        """Replace the seeds and greet each at once (``tick`` retries while alone)."""
        seeds = self._schedule.set_seeds(seeds, self.self_address)
        self._schedule.next_join_ms = now_ms + self.timing.join_retry_interval_ms
        return [Send(seed, self._hello()) for seed in seeds]

    def leave(self, now_ms: int) -> list[Action]:
        """Announce that this node leaves; it stops probing and keeps gossiping the news."""
        if self.left:
            return []
        self.left = True
        self._detector.probing = False
        me = msgspec.structs.replace(
            self._me, incarnation=self._me.incarnation + 1, status=Status.LEFT, accuser=""
        )
        actions = self._set_me(me, now_ms)
        actions.extend(self._gossip())
        return actions

    def set_lifecycle(self, node_id: str, lifecycle: Lifecycle, now_ms: int) -> list[Action]:
        """Move a member's lifecycle (the ring-change machinery's call); gossiped as news."""
        current = self._table.get(node_id)
        if current is None:
            return []
        changed = msgspec.structs.replace(
            current, lifecycle_version=current.lifecycle_version + 1, lifecycle=lifecycle
        )
        if node_id == self.self_id:
            return self._set_me(changed, now_ms)
        change = self._table.apply(changed, now_ms)
        return [] if change is None else self._changed(change, now_ms)

    def install_ring(self, epoch: int, ring_bytes: bytes) -> bool:
        """A ring committed here (the claimant); False if a newer one is already known."""
        return self.ring.install(epoch, ring_bytes)

    def observe_ring_epoch(self, epoch: int, from_address: str, now_ms: int) -> list[Action]:
        """A replica or coordination message showed the sender's epoch: fetch if newer."""
        return self._observe_epoch(epoch, from_address, now_ms)

    # -- time -----------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        for output in self._detector.tick(now_ms, self):
            actions.extend(self._on_detector(output, now_ms))
        if now_ms >= self._next_maintenance_ms:
            self._next_maintenance_ms = now_ms + MAINTENANCE_INTERVAL_MS
            actions.extend(self._maintain(now_ms))
        if now_ms >= self._next_gossip_ms:
            self._next_gossip_ms = now_ms + self.timing.gossip_interval_ms
            actions.extend(self._gossip())
        if self.left:
            return actions
        greet = self._schedule.due(
            now_ms,
            self.live_peer_ids(),
            self._table.tombstone_ids,
            self._address_of_member,
            self._member_addresses,
        )
        actions.extend(Send(address, self._hello()) for address in greet)
        return actions

    def incarnation_of(self, node_id: str) -> int:
        state = self._table.get(node_id)
        return 0 if state is None else state.incarnation

    def _member_addresses(self) -> frozenset[str]:
        return frozenset(state.rpc for state in self._table.states())

    def _address_of_member(self, node_id: str) -> str:
        state = self._table.get(node_id)
        assert state is not None, node_id
        return state.rpc

    def _maintain(self, now_ms: int) -> list[Action]:
        forgotten = self._table.forget_expired(
            now_ms, self.timing.dead_member_ttl_ms, keep=self.self_id
        )
        self._dead_recent = self._table.tombstone_ids(
            since_ms=now_ms - self.timing.gossip_to_dead_ms
        )
        return [MemberChanged(state.node_id, state_name(state), None) for state in forgotten]

    def _gossip(self) -> list[Action]:
        if not len(self._queue):
            return []
        pool = list(self.live_peer_ids()) + self._dead_recent
        targets = self._rng.sample(pool, min(self.timing.gossip_fanout, len(pool)))
        actions: list[Action] = []
        for target in sorted(targets):
            state = self._table.get(target)
            updates = self._updates_for(target)
            if state is not None and updates:
                actions.append(Send(state.rpc, Gossip(self.self_id, self.ring.epoch, updates)))
        return actions

    def _transmit_limit(self) -> int:
        return self.timing.retransmit_mult * math.ceil(math.log10(self.cluster_size() + 1))

    def _updates_for(self, node_id: str) -> tuple[MemberState, ...]:
        limit = self.timing.updates_per_message_max
        return self._queue.piggyback(self._table.get(node_id), limit, self._transmit_limit())

    # -- messages -------------------------------------------------------------

    def on_message(self, sender: str, message: GossipMessage, now_ms: int) -> list[Action]:
        """A gossip message; ``sender`` is the transport's authenticated node id ("" if none)."""
        claimed = sender_of(message)
        valid = message_is_valid(
            message, self.timing.updates_per_message_max, self.timing.members_max
        )
        if not valid or (sender and sender != claimed):
            self.rejected += 1
            return []
        if claimed == self.self_id:
            return []  # a seed list that names this node's own address
        actions: list[Action] = []
        if isinstance(message, Ping | Ack | IndirectPing | Gossip):
            for state in message.updates:
                actions.extend(self._apply(state, now_ms))
            actions.extend(
                self._observe_epoch(message.ring_epoch, self._address_of(message), now_ms)
            )
        match message:
            case Ping():
                outputs = self._detector.on_ping(message)
            case Ack():
                outputs = self._detector.on_ack(message)
            case IndirectPing():
                outputs = self._detector.on_indirect_ping(message, now_ms)
            case Nack():
                self._detector.on_nack(message)
                outputs = []
            case Gossip():
                outputs = []
            case SyncHello() | SyncDigest() | SyncDelta():
                actions.extend(self._on_sync(message, now_ms))
                outputs = []
            case RingRequest():
                outputs = []
                reply = self.ring.answer(self._me)
                if reply is not None:
                    actions.append(Send(message.sender_address, reply))
            case RingReply():
                outputs = []
                actions.extend(self._on_ring(message))
            case _:
                assert_never(message)
        for output in outputs:
            actions.extend(self._on_detector(output, now_ms))
        return actions

    def _address_of(self, message: Ping | Ack | IndirectPing | Gossip) -> str:
        if isinstance(message, Ping | IndirectPing):
            return message.sender_address
        state = self._table.get(message.sender)
        return "" if state is None else state.rpc

    def _hello(self) -> SyncHello:
        return membership_sync.hello(self._table, self._me, self.ring.epoch)

    def _on_sync(self, message: SyncHello | SyncDigest | SyncDelta, now_ms: int) -> list[Action]:
        """Push-pull (``core.membership_sync``): merge what came, answer what is due."""
        epoch = self.ring.epoch
        answer: SyncDigest | SyncDelta | None
        if isinstance(message, SyncHello):
            peer = message.sender_state
            actions = self._apply(peer, now_ms)
            actions.extend(self._observe_epoch(message.ring_epoch, peer.rpc, now_ms))
            answer = membership_sync.answer_hello(self._table, message, self._me, epoch)
            return actions + ([] if answer is None else [Send(peer.rpc, answer)])
        actions = self._observe_epoch(message.ring_epoch, message.sender_address, now_ms)
        if isinstance(message, SyncDigest):
            answer = membership_sync.answer_digest(self._table, message, self._me, epoch)
        else:
            for state in message.updates:
                actions.extend(self._apply(state, now_ms))
            answer = membership_sync.answer_delta(self._table, message, self._me, epoch)
        return actions + ([] if answer is None else [Send(message.sender_address, answer)])

    def _observe_epoch(self, epoch: int, address: str, now_ms: int) -> list[Action]:
        request = self.ring.observe(epoch, now_ms, self._me) if address else None
        return [] if request is None else [Send(address, request)]

    def _on_ring(self, reply: RingReply) -> list[Action]:
        adopted = self.ring.on_reply(reply)
        if adopted is False:
            self.rejected += 1
        return [RingLearned(reply.epoch, reply.ring_bytes)] if adopted else []

    # -- the failure detector's verdicts --------------------------------------

    def _on_detector(self, output: Output, now_ms: int) -> list[Action]:
        if isinstance(output, ProbeSend):
            message = output.message
            if isinstance(message, Ping | Ack | IndirectPing):
                message = msgspec.structs.replace(
                    message, ring_epoch=self.ring.epoch, updates=self._updates_for(output.node_id)
                )
            return [Send(output.address, message)]
        if isinstance(output, ProbeFailed):
            state = self._table.get(output.node_id)
            if state is None or not is_live(state) or state.incarnation > output.incarnation:
                return []  # gone, or alive at an incarnation newer than the probe
            suspect = msgspec.structs.replace(state, status=Status.SUSPECT, accuser=self.self_id)
            return self._apply(suspect, now_ms)
        if isinstance(output, SuspicionExpired):
            state = self._table.get(output.node_id)
            if state is None or state.status is not Status.SUSPECT:
                return []
            if state.incarnation != output.incarnation:
                return []
            dead = msgspec.structs.replace(state, status=Status.DEAD, accuser=self.self_id)
            return self._apply(dead, now_ms)
        assert_never(output)

    # -- merging records ------------------------------------------------------

    def _apply(self, incoming: MemberState, now_ms: int) -> list[Action]:
        if incoming.node_id == self.self_id:
            return self._about_me(incoming, now_ms)
        before = self._table.get(incoming.node_id)
        change = self._table.apply(incoming, now_ms)
        if change is not None:
            return self._changed(change, now_ms, incoming.accuser)
        if (
            before is not None
            and before.status is Status.SUSPECT
            and incoming.status is Status.SUSPECT
            and before.incarnation == incoming.incarnation
        ):
            size = self.cluster_size()
            node_id, incarnation = incoming.node_id, incoming.incarnation
            if self._detector.suspect(node_id, incarnation, incoming.accuser, now_ms, size):
                self._queue.push(incoming)  # a new accuser shortens the others' timers too
        return []

    def _changed(self, change: Change, now_ms: int, accuser: str = "") -> list[Action]:
        new = change.new
        self._queue.push(new)
        if change.old is None:
            self._detector.add_member(new.node_id)
        if new.status is Status.SUSPECT:
            size = self.cluster_size()
            who = accuser or new.accuser
            self._detector.suspect(new.node_id, new.incarnation, who, now_ms, size)
        else:
            self._detector.clear_suspicion(new.node_id)
        old_name = None if change.old is None else state_name(change.old)
        new_name = state_name(new)
        return [] if old_name == new_name else [MemberChanged(new.node_id, old_name, new_name)]

    def _about_me(self, incoming: MemberState, now_ms: int) -> list[Action]:
        """Others' news about this node: adopt a lifecycle move, refute any doubt."""
        me = self._me
        if lifecycle_key(incoming) > lifecycle_key(me):
            me = msgspec.structs.replace(
                me, lifecycle_version=incoming.lifecycle_version, lifecycle=incoming.lifecycle
            )
        if liveness_order(incoming) > liveness_order(me):
            # SWIM's refutation: only this node raises its incarnation.
            status = Status.LEFT if self.left else Status.ALIVE
            me = msgspec.structs.replace(
                me, incarnation=incoming.incarnation + 1, status=status, accuser=""
            )
            self.refutations += 1
            if not self.left:
                self._detector.add_awareness(1)
        elif incoming.status is not Status.ALIVE and liveness_order(incoming) < liveness_order(me):
            # A stale doubt (the peer missed our refutation): say it again, so the
            # ack or gossip being built right now carries it back.
            self._queue.push(me)
        return self._set_me(me, now_ms) if me != self._me else []

    def _set_me(self, me: MemberState, now_ms: int) -> list[Action]:
        assert me.node_id == self.self_id, me
        old = self._me
        self._me = me
        self._table.put(me, now_ms)
        self._queue.push(me)
        old_name, new_name = state_name(old), state_name(me)
        return [] if old_name == new_name else [MemberChanged(me.node_id, old_name, new_name)]
