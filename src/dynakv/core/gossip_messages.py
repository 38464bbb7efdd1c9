"""Membership's vocabulary: the member record, its merge order, messages, actions.

A ``MemberState`` is what one node believes about one member. Two parts of it
merge independently, each by a total order, so a table merged from any set of
records is the same whatever order they arrived in (a join-semilattice):

- liveness, ordered by ``(incarnation, status, zone, http, rpc)``: a higher
  incarnation always wins (only the member itself raises it, to refute a
  suspicion or announce new addresses); within one incarnation ``alive <
  suspect < dead < left``. This is SWIM's precedence (memberlist's
  ``aliveNode``/``suspectNode``/``deadNode``). Addresses only break ties
  between two lives of one node that restarted at the same incarnation.
- lifecycle, ordered by ``(lifecycle_version, lifecycle)``: driven by the
  ring-change machinery (whoever changes it raises the version), so a
  removed node can join again under a higher version.

A ``DigestEntry`` is a record's versions plus 32 bits of hash over its
addresses, so a sync also notices two lives of one node at one incarnation.

``accuser`` names who suspected or declared the member; it does not order
records (ties keep the smallest name so merge stays commutative) and serves
only to count independent confirmations of a suspicion.

Messages are tagged, frozen, ``array_like`` msgspec Structs: every one names
its ``sender``; those that need an answer from a node that may not know the
sender yet also carry ``sender_address``. All are one-way: an answer is a new
message. ``updates`` piggyback recent member records (at most
``updates_per_message_max``); ``ring_epoch`` is the sender's ring version.

The actions a ``Membership`` returns (``Send``, ``MemberChanged``,
``RingLearned``) and the status page's word for a member (``state_name``)
close the module.

Must never: order records by arrival, or let a record's reporter decide a merge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import msgspec
import xxhash

NODE_ID_BYTES_MAX = 128
ADDRESS_BYTES_MAX = 256
INCARNATION_MAX = 2**62


class Status(enum.IntEnum):
    """Liveness, in merge precedence within one incarnation."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class Lifecycle(enum.IntEnum):
    """Place in the ring's life, in merge precedence within one lifecycle version."""

    JOINING = 0
    MEMBER = 1
    LEAVING = 2
    REMOVED = 3


class MemberState(msgspec.Struct, frozen=True, array_like=True):
    node_id: str
    zone: str
    http: str
    rpc: str
    incarnation: int = 0
    status: Status = Status.ALIVE
    lifecycle_version: int = 0
    lifecycle: Lifecycle = Lifecycle.JOINING
    accuser: str = ""


class DigestEntry(msgspec.Struct, frozen=True, array_like=True):
    """A record's versions and a 32-bit hash of its addresses: what a sync compares."""

    node_id: str
    incarnation: int
    status: Status
    lifecycle_version: int
    lifecycle: Lifecycle
    address_hash: int


def liveness_key(state: MemberState | DigestEntry) -> tuple[int, int]:
    return (state.incarnation, state.status)


def lifecycle_key(state: MemberState | DigestEntry) -> tuple[int, int]:
    return (state.lifecycle_version, state.lifecycle)


def liveness_order(state: MemberState) -> tuple[int, int, str, str, str]:
    return (state.incarnation, state.status, state.zone, state.http, state.rpc)


def merge_member(current: MemberState, incoming: MemberState) -> MemberState:
    """The least record that is at least both: commutative, associative, idempotent."""
    assert current.node_id == incoming.node_id, (current.node_id, incoming.node_id)
    current_order, incoming_order = liveness_order(current), liveness_order(incoming)
    if current_order == incoming_order:
        live = current if current.accuser <= incoming.accuser else incoming
    else:
        live = current if current_order > incoming_order else incoming
    cycle = current if lifecycle_key(current) >= lifecycle_key(incoming) else incoming
    if live is cycle:
        return live
    return msgspec.structs.replace(
        live, lifecycle_version=cycle.lifecycle_version, lifecycle=cycle.lifecycle
    )


def address_hash(state: MemberState) -> int:
    """32 bits of xxh3 over zone and addresses: tells two lives at one incarnation apart."""
    value: int = xxhash.xxh3_64_intdigest(f"{state.zone}\x00{state.http}\x00{state.rpc}".encode())
    return value & 0xFFFF_FFFF


def digest_of(state: MemberState) -> DigestEntry:
    return DigestEntry(
        state.node_id,
        state.incarnation,
        state.status,
        state.lifecycle_version,
        state.lifecycle,
        address_hash(state),
    )


def entry_hash(state: MemberState) -> int:
    """A stable 64-bit hash of a digest entry: XORed into a table hash."""
    canonical = (
        f"{state.node_id}\x00{state.incarnation}\x00{int(state.status)}"
        f"\x00{state.lifecycle_version}\x00{int(state.lifecycle)}\x00{address_hash(state)}"
    )
    value: int = xxhash.xxh3_64_intdigest(canonical.encode())
    return value


def record_is_valid(state: MemberState | DigestEntry) -> bool:
    """Bounds a record from the network must meet before it is merged."""
    if not 0 < len(state.node_id.encode()) <= NODE_ID_BYTES_MAX:
        return False
    if not 0 <= state.incarnation <= INCARNATION_MAX:
        return False
    if not 0 <= state.lifecycle_version <= INCARNATION_MAX:
        return False
    if isinstance(state, MemberState):
        return all(
            len(text.encode()) <= ADDRESS_BYTES_MAX
            for text in (state.zone, state.http, state.rpc, state.accuser)
        )
    return True


Updates = tuple[MemberState, ...]


class Ping(msgspec.Struct, frozen=True, array_like=True, tag="mping"):
    """SWIM probe: answer ``Ack(seq)`` to ``sender_address`` if you are ``target``."""

    sender: str
    sender_address: str
    seq: int
    target: str
    ring_epoch: int = 0
    updates: Updates = ()


class Ack(msgspec.Struct, frozen=True, array_like=True, tag="mack"):
    """The probe ``seq`` succeeded (sent by the target, or relayed by a helper)."""

    sender: str
    seq: int
    ring_epoch: int = 0
    updates: Updates = ()


class Nack(msgspec.Struct, frozen=True, array_like=True, tag="mnack"):
    """Lifeguard: a helper is alive but heard nothing from ``seq``'s target in time."""

    sender: str
    seq: int


class IndirectPing(msgspec.Struct, frozen=True, array_like=True, tag="mindirect"):
    """Probe ``target`` for me; relay its ack for ``seq``, or nack."""

    sender: str
    sender_address: str
    seq: int
    target: str
    target_address: str
    ring_epoch: int = 0
    updates: Updates = ()


class Gossip(msgspec.Struct, frozen=True, array_like=True, tag="mgossip"):
    sender: str
    ring_epoch: int = 0
    updates: Updates = ()


class SyncHello(msgspec.Struct, frozen=True, array_like=True, tag="msync"):
    """Push-pull round 1: my record and the hash of my live table (join = this to a seed)."""

    sender_state: MemberState
    table_hash: int
    ring_epoch: int = 0


class SyncDigest(msgspec.Struct, frozen=True, array_like=True, tag="mdigest"):
    """Round 2 (only when the hashes differ): the versions of every live member I know."""

    sender: str
    sender_address: str
    entries: tuple[DigestEntry, ...]
    ring_epoch: int = 0


class SyncDelta(msgspec.Struct, frozen=True, array_like=True, tag="mdelta"):
    """Rounds 3 and 4: records the peer lacks, and the ids whose records I want."""

    sender: str
    sender_address: str
    updates: Updates
    wants: tuple[str, ...] = ()
    ring_epoch: int = 0
    final: bool = False  # the answer to a delta: never answered again


class RingRequest(msgspec.Struct, frozen=True, array_like=True, tag="mringq"):
    sender: str
    sender_address: str
    epoch: int


class RingReply(msgspec.Struct, frozen=True, array_like=True, tag="mring"):
    """The sender's ring: ``ring_bytes`` is opaque here (the ring module encodes it)."""

    sender: str
    epoch: int
    ring_bytes: bytes


GossipMessage = (
    Ping
    | Ack
    | Nack
    | IndirectPing
    | Gossip
    | SyncHello
    | SyncDigest
    | SyncDelta
    | RingRequest
    | RingReply
)


def sender_of(message: GossipMessage) -> str:
    if isinstance(message, SyncHello):
        return message.sender_state.node_id
    return message.sender


def message_is_valid(message: GossipMessage, updates_max: int, members_max: int) -> bool:
    """Bounds a message from the network must meet (list lengths, every record's fields)."""
    records: tuple[MemberState | DigestEntry, ...]
    if isinstance(message, SyncHello):
        records = (message.sender_state,)
    elif isinstance(message, SyncDigest):
        records = message.entries
        if len(records) > members_max:
            return False
    elif isinstance(message, SyncDelta):
        records = message.updates
        if len(records) > members_max or len(message.wants) > members_max:
            return False
    elif isinstance(message, Ping | Ack | IndirectPing | Gossip):
        records = message.updates
        if len(records) > updates_max:
            return False
    else:
        records = ()
    if not 0 < len(sender_of(message).encode()) <= NODE_ID_BYTES_MAX:
        return False
    return all(record_is_valid(record) for record in records)


StateName = Literal["up", "suspect", "down", "joining", "leaving"]


def state_name(state: MemberState) -> StateName:
    """The status page's one word for a member (issue 6: up/suspect/down/joining/leaving)."""
    if state.status in (Status.DEAD, Status.LEFT) or state.lifecycle is Lifecycle.REMOVED:
        return "down"
    if state.status is Status.SUSPECT:
        return "suspect"
    if state.lifecycle is Lifecycle.JOINING:
        return "joining"
    if state.lifecycle is Lifecycle.LEAVING:
        return "leaving"
    return "up"


@dataclass(frozen=True, slots=True)
class Send:
    to_address: str
    message: GossipMessage


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """``node_id``'s state went from ``old`` to ``new`` (None: not in the table)."""

    node_id: str
    old: StateName | None
    new: StateName | None


@dataclass(frozen=True, slots=True)
class RingLearned:
    epoch: int
    ring_bytes: bytes


Action = Send | MemberChanged | RingLearned
