"""Node-to-node messages: what crosses the RPC port, as msgspec Structs.

Every message is a tagged ``msgspec.Struct`` (``array_like`` on the hot ones)
so frames are small and decoding validates types; nothing is ever unpickled.
A request gets exactly one reply: its own reply type or ``ErrorReply``.
Adding a message: add the Struct, add it to ``Message``, bump nothing (tags
are stable strings); changing a field: bump ``net.codec.WIRE_VERSION``.
"""

from __future__ import annotations

import msgspec

from dynakv.core.antientropy import (
    MerkleKeysReply,
    MerkleKeysRequest,
    MerkleNodesReply,
    MerkleNodesRequest,
)
from dynakv.core.claimant import (
    RcAck,
    RcBeat,
    RcDrop,
    RcDropped,
    RcHello,
    RcPrepare,
    RcPromise,
    RcReject,
    RcState,
    RcWrite,
)
from dynakv.core.gossip_messages import (
    Ack as GossipAck,
)
from dynakv.core.gossip_messages import (
    Gossip,
    IndirectPing,
    Nack,
    RingReply,
    RingRequest,
    SyncDelta,
    SyncDigest,
    SyncHello,
)
from dynakv.core.gossip_messages import (
    Ping as GossipPing,
)
from dynakv.core.paxos import PxCommit, PxMessage, PxPrepare, PxPropose, PxRead
from dynakv.core.record import Context, Record
from dynakv.core.transfer import XfAssign, XfPage, XfPageRequest, XfRefused, XfReport
from dynakv.node.antientropy import (
    ANTI_ENTROPY_REQUESTS,
    RepairPull,
    RepairPullReply,
    RepairPush,
    RepairPushReply,
)
from dynakv.node.ranges import RangeRead, RangeReadReply

# Replica and coordination messages carry the sender's ring epoch (0: not said):
# a receiver that is behind fetches the newer ring through membership.


class ReadRequest(msgspec.Struct, frozen=True, array_like=True, tag="rd"):
    """Ask a replica for its stored record of one key."""

    partition: int
    key: bytes
    epoch: int = 0


class ReadReply(msgspec.Struct, frozen=True, array_like=True, tag="rdr"):
    record: Record | None
    epoch: int = 0


class WriteRequest(msgspec.Struct, frozen=True, array_like=True, tag="wr"):
    """Merge ``record`` into the replica's copy of the key, durably, then ack. With
    ``hint_for``, the receiver is a fallback: it keeps the record with a durable
    hint naming that home replica, and hands it over when the owner is back."""

    partition: int
    key: bytes
    record: Record
    hint_for: str = ""
    epoch: int = 0


class WriteReply(msgspec.Struct, frozen=True, array_like=True, tag="wrr"):
    epoch: int = 0


class CoordinateWrite(msgspec.Struct, frozen=True, array_like=True, tag="cw"):
    """Forwarded from a node outside the key's preference list to a replica,
    which coordinates the write (it alone may mint the write's dot)."""

    key: bytes
    value: bytes | None  # None = delete
    consistency: str
    context: Context
    ttl_s: int  # 0 = no expiry
    idempotency_hash: int = 0  # the client's Idempotency-Key, hashed (0: none)
    epoch: int = 0


class CoordinateWriteReply(msgspec.Struct, frozen=True, array_like=True, tag="cwr"):
    context: Context


class Ping(msgspec.Struct, frozen=True, array_like=True, tag="ping"):
    sender: str


class Pong(msgspec.Struct, frozen=True, array_like=True, tag="pong"):
    sender: str


class GossipReceived(msgspec.Struct, frozen=True, array_like=True, tag="mok"):
    """The RPC answer to a gossip message (membership's own answers are new messages)."""


class RingFetch(msgspec.Struct, frozen=True, array_like=True, tag="ringq"):
    """A starting node that is not yet a member asks a seed for its ring."""

    sender: str


class RingFetchReply(msgspec.Struct, frozen=True, array_like=True, tag="ringr"):
    epoch: int
    ring_bytes: bytes


class ErrorReply(msgspec.Struct, frozen=True, array_like=True, tag="err"):
    """The handler failed; ``code`` is a ``DynakvError.code`` and ``facts`` its facts."""

    code: str
    message: str
    facts: dict[str, str | int | bool | None] = {}


Message = (
    ReadRequest
    | ReadReply
    | WriteRequest
    | WriteReply
    | CoordinateWrite
    | CoordinateWriteReply
    | Ping
    | Pong
    | ErrorReply
    | GossipPing
    | GossipAck
    | Nack
    | IndirectPing
    | Gossip
    | SyncHello
    | SyncDigest
    | SyncDelta
    | RingRequest
    | RingReply
    | GossipReceived
    | RingFetch
    | RingFetchReply
    | PxMessage
    | MerkleNodesRequest
    | MerkleNodesReply
    | MerkleKeysRequest
    | MerkleKeysReply
    | RepairPull
    | RepairPullReply
    | RepairPush
    | RepairPushReply
    | RcPrepare
    | RcPromise
    | RcWrite
    | RcAck
    | RcReject
    | RcBeat
    | RcDrop
    | RcDropped
    | RcHello
    | RcState
    | XfAssign
    | XfReport
    | XfPageRequest
    | XfPage
    | XfRefused
    | RangeRead
    | RangeReadReply
)
# Anti-entropy (``core.antientropy``, ``node.antientropy``): requests a replica answers.
__all__ = ["ANTI_ENTROPY_REQUESTS"]
# Per-key Paxos (``core.paxos``): requests a replica's acceptor answers.
PAXOS_REQUESTS = (PxPrepare, PxPropose, PxCommit, PxRead)
# Ring changes (``core.claimant``, ``core.transfer``): one-way messages, answered
# with ``GossipReceived`` (the protocol's answers are messages of their own).
CLAIMANT_MESSAGES = (
    RcPrepare,
    RcPromise,
    RcWrite,
    RcAck,
    RcReject,
    RcBeat,
    RcDrop,
    RcDropped,
    RcHello,
    RcState,
    XfAssign,
    XfReport,
    XfPageRequest,
    XfPage,
    XfRefused,
)
# Gossip (``core.gossip_messages``): membership's one-way messages, answered
# with ``GossipReceived``.
GOSSIP_MESSAGES = (
    GossipPing,
    GossipAck,
    Nack,
    IndirectPing,
    Gossip,
    SyncHello,
    SyncDigest,
    SyncDelta,
    RingRequest,
    RingReply,
)
