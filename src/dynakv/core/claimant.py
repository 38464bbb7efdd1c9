"""The claimant: one ring change at a time, carried from plan to commit; a pure state machine.

Riak's shape: plan, then commit; one change at a time; stream, verify, then
switch. Every node runs one ``Claimant``. The shell feeds it admin requests
(``request``), messages (``on_message``), rings membership learned
(``on_ring``), stored pages (``on_page_stored``) and ticks, and carries out
the actions it returns in order (``PersistRegister`` durably before anything
after it). Streaming one partition is ``core.transfer``.

The change record. A ``ClusterChange`` (kind, node, the old ring's epoch, the
planned new ring's bytes, the transfers with their status, the state OPEN |
COMMITTED | CANCELLED) lives in a register, one per *slot*: the epoch of the
ring it changes. Only a commit ends a slot (the new ring's epoch is the next
slot); a cancelled change leaves the slot open for the next request.

Who may change it (the claimant role): whoever holds a ballot promised by a
majority of the slot's ring members, the acceptors. Any node may run for it
(``RcPrepare``) when a request reaches it and it knows no change in
progress, or to take over when the leader of an unfinished change has been
silent (no ``RcBeat``) for ``takeover_after_ms`` times (1 + its rank among
the live members by id). The register is Paxos with a stable leader writing
a sequence: a write carries a ``Stamp`` (ballot, version); an acceptor
accepts it unless it promised a higher ballot and keeps the highest stamp;
a write is *chosen* once a majority accepted it; a new leader adopts the
highest-stamped record a majority of promises report and writes it again
before acting. So a chosen record is never lost, a new leader resumes an
OPEN change from it (receivers keep what they verified and report it again),
and no leader plans a change while a chosen OPEN one exists: it answers
``Busy`` (HTTP 409, naming the change). Two changes are never in progress at
once because a change is OPEN from its chosen OPEN write until its chosen
COMMITTED or CANCELLED one, and all of them are writes to one register.

Learning: the leader announces each chosen record that changes routing (a
change's OPEN, COMMITTED, CANCELLED) to every live node (``RcWrite`` with
``chosen``). A node routes by its latest *chosen* record only: writes to the
old and new lists while it is OPEN (``routing()``), the new ring once it is
COMMITTED (``InstallRing``). A record a node merely accepted never moves its
routing, so dual writes never pause while a change might still commit. A
node that starts (or restarts) asks the members what they know chosen
(``RcHello`` / ``RcState``) and is ``ready()`` to coordinate only once a
majority answered, so it never writes around a stream that began while it
was away. ``Busy`` is answered from chosen knowledge only (a record merely
accepted here is settled by a prepare round first), and a request for the
very change in progress (a retry) is answered ``Accepted``.

The steps of a change: (1) chosen OPEN; (2) barrier: every live node has
learned it (so every coordinator dual-writes), then ``write_drain_ms`` for
writes started before; (3) receivers stream (``XfAssign``), report verified
(``XfReport``); progress is written at most every ``progress_interval_ms``;
(4) every transfer verified: COMMITTED is written; once chosen the leader
installs the new ring and announces it; (5) once every live node holds the
new ring, plus ``drop_grace_ms`` for reads in flight, old owners drop the
partitions they no longer replicate (``RcDrop``); a leaving node retires.
Reads stay correct: until a node learns the commit it reads the old lists
(complete: nothing is dropped before every live node has the new ring); after,
the new lists, which are complete (verified streams plus dual writes).

Cancel: a failed transfer, or a receiver down for ``down_cancel_ms``: the
leader writes CANCELLED; once every live node learned it, receivers drop the
partial partitions. Failure modes: a leader dead after a commit but before
the drops leaves extra copies on old owners (harmless; not yet collected); a
node down through a whole change is not waited for and may keep stale data;
a request whose change was written but not acknowledged (leader died) may
still be carried out by the next leader.

Must never: do I/O, read a clock, draw randomness but from the passed-in
source, install a ring before its commit is chosen, or drop a partition the
node still replicates.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Final, assert_never

import msgspec

from dynakv.core.claim import ChangeKind, RingChange, Transfer, plan_join, plan_leave, plan_remove
from dynakv.core.failure_detector import RandomSource
from dynakv.core.gossip_messages import Lifecycle
from dynakv.core.homes import majority
from dynakv.core.ring import (
    NAME_BYTES_MAX,
    NODE_COUNT_MAX,
    Ring,
    RingNode,
    decode_ring,
    encode_ring,
)
from dynakv.core.transfer import (
    IngestPage,
    Receiver,
    Send,
    TransferPlan,
    TransferTiming,
    XfAssign,
    XfPage,
    XfPageRequest,
    XfRefused,
    XfReport,
)
from dynakv.errors import RemoteProtocolError

LOCAL_STEPS_MAX: Final = 10_000  # messages to this node itself, handled per call


class ChangeState(enum.IntEnum):
    OPEN = 0
    COMMITTED = 1
    CANCELLED = 2


class TransferStatus(enum.IntEnum):
    PENDING = 0
    STREAMING = 1
    VERIFIED = 2


class Ballot(msgspec.Struct, frozen=True, array_like=True, order=True):
    round: int
    node: str


ZERO_BALLOT: Final = Ballot(0, "")


class Stamp(msgspec.Struct, frozen=True, array_like=True, order=True):
    """A write's place: the leader's ballot, then its version under that ballot."""

    round: int
    node: str
    version: int

    def ballot(self) -> Ballot:
        return Ballot(self.round, self.node)


class ClusterChange(msgspec.Struct, frozen=True, array_like=True):
    change_id: str
    kind: ChangeKind
    node_id: str
    zone: str
    host: str
    old_epoch: int
    new_ring: bytes  # encode_ring of the planned ring, epoch old_epoch + 1
    transfers: tuple[TransferPlan, ...]
    statuses: tuple[TransferStatus, ...]
    state: ChangeState
    started_ms: int
    reason: str = ""  # why it was cancelled
    lost: tuple[int, ...] = ()  # partitions only the removed node held: nothing to stream

    def describe(self) -> str:
        verified = sum(s is TransferStatus.VERIFIED for s in self.statuses)
        return (
            f"{self.kind} of {self.node_id} (change {self.change_id}, ring epoch "
            f"{self.old_epoch} -> {self.old_epoch + 1}, {verified}/{len(self.transfers)} "
            f"transfers verified, {self.state.name.lower()})"
        )


class RegisterState(msgspec.Struct, frozen=True, array_like=True):
    """One node's register for one slot: persist before replying or routing by it."""

    slot: int = 0
    promised: Ballot = ZERO_BALLOT
    stamp: Stamp | None = None  # the accepted record's
    change: ClusterChange | None = None
    learned_stamp: Stamp | None = None  # the latest record known chosen
    learned: ClusterChange | None = None


# -- messages ----------------------------------------------------------------------------


class RcPrepare(msgspec.Struct, frozen=True, array_like=True, tag="rcprepare"):
    sender: str
    slot: int
    ballot: Ballot


class RcPromise(msgspec.Struct, frozen=True, array_like=True, tag="rcpromise"):
    sender: str
    slot: int
    ballot: Ballot
    stamp: Stamp | None
    change: ClusterChange | None


class RcWrite(msgspec.Struct, frozen=True, array_like=True, tag="rcwrite"):
    """Accept ``change`` at ``stamp``; with ``chosen``, it is known chosen: learn it."""

    sender: str
    slot: int
    stamp: Stamp
    change: ClusterChange
    chosen: bool = False


class RcAck(msgspec.Struct, frozen=True, array_like=True, tag="rcack"):
    """``stamp`` accepted (or already superseded here); what the node has learned."""

    sender: str
    slot: int
    stamp: Stamp
    ring_epoch: int
    learned_id: str
    learned_state: ChangeState


class RcReject(msgspec.Struct, frozen=True, array_like=True, tag="rcreject"):
    """A prepare or write at ``ballot`` refused: a higher ballot promised, or a later slot."""

    sender: str
    slot: int
    ballot: Ballot
    promised: Ballot
    node_slot: int


class RcBeat(msgspec.Struct, frozen=True, array_like=True, tag="rcbeat"):
    sender: str
    slot: int
    ballot: Ballot


class RcDrop(msgspec.Struct, frozen=True, array_like=True, tag="rcdrop"):
    """Drop these partitions unless you replicate them now; ``retire``: you left the ring."""

    sender: str
    change_id: str
    partitions: tuple[int, ...]
    retire: bool = False


class RcDropped(msgspec.Struct, frozen=True, array_like=True, tag="rcdropped"):
    sender: str
    change_id: str


class RcHello(msgspec.Struct, frozen=True, array_like=True, tag="rchello"):
    """A node that (re)started asks what its peers know chosen in ``slot``."""

    sender: str
    slot: int


class RcState(msgspec.Struct, frozen=True, array_like=True, tag="rcstate"):
    """The answer: the sender's slot, and the latest record it knows chosen there."""

    sender: str
    slot: int
    stamp: Stamp | None
    change: ClusterChange | None


ClaimantMessage = (
    RcPrepare
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
)


# -- outcomes and actions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    change: ClusterChange


@dataclass(frozen=True, slots=True)
class Busy:
    """Another change is in progress (HTTP 409 naming it)."""

    change: ClusterChange


@dataclass(frozen=True, slots=True)
class Refused:
    """The request cannot be carried out as asked (HTTP 400/422)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No quorum of ring members could be reached in time, or the ring is behind (503)."""

    reason: str


Outcome = Accepted | Busy | Refused | Unavailable


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: int
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class PersistRegister:
    state: RegisterState


@dataclass(frozen=True, slots=True)
class InstallRing:
    """A commit is chosen: install (persist, route by, gossip) this ring."""

    epoch: int
    ring_bytes: bytes


@dataclass(frozen=True, slots=True)
class SetLifecycle:
    node_id: str
    lifecycle: Lifecycle


@dataclass(frozen=True, slots=True)
class ServePage:
    """Read ``scan_raw(request.partition, after=request.after, limit=request.items_max)``
    and send ``transfer.page_reply(self, request, items)`` to ``request.sender``."""

    request: XfPageRequest


@dataclass(frozen=True, slots=True)
class DropPartitions:
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Retire:
    """This node left the ring and dropped its data: stop (membership ``leave``)."""


Action = (
    Send
    | PersistRegister
    | InstallRing
    | Answer
    | SetLifecycle
    | ServePage
    | IngestPage
    | DropPartitions
    | Retire
)


@dataclass(frozen=True, slots=True)
class ClaimantTiming:
    retry_interval_ms: int = 500
    heartbeat_ms: int = 1000
    takeover_after_ms: int = 5000
    prepare_timeout_ms: int = 2000
    prepare_backoff_ms: int = 300
    write_drain_ms: int = 3000  # longer than a coordinator's write timeout
    progress_interval_ms: int = 1000
    drop_grace_ms: int = 5000  # longer than a coordinator's read timeout
    down_cancel_ms: int = 30_000
    request_timeout_ms: int = 15_000
    requests_max: int = 16
    assign_batch_max: int = 256
    transfer: TransferTiming = field(default_factory=TransferTiming)

    def __post_init__(self) -> None:
        assert 0 < self.retry_interval_ms <= self.heartbeat_ms < self.takeover_after_ms, self
        assert self.prepare_timeout_ms > 0 and self.prepare_backoff_ms > 0, self
        assert self.requests_max >= 1 and self.assign_batch_max >= 1, self


# -- the change and its checks -----------------------------------------------------------


def transfer_plans(change: RingChange) -> tuple[TransferPlan, ...]:
    """The plan's transfers, each receiver's sources rotated so that the j-th receiver of
    a partition starts with the j-th node leaving its list (Cassandra's consistent range
    movement: a moving replica's data comes from the replica it replaces)."""
    plans: list[TransferPlan] = []
    index_in_partition = 0
    for position, transfer in enumerate(change.transfers):
        previous = change.transfers[position - 1] if position else None
        same = previous is not None and previous.partition == transfer.partition
        index_in_partition = index_in_partition + 1 if same else 0
        sources = transfer.from_nodes
        if sources:
            turn = index_in_partition % len(sources)
            sources = sources[turn:] + sources[:turn]
        remove = change.kind == "remove"
        quorum = majority(len(change.old.preference_list(transfer.partition)))
        plans.append(TransferPlan(transfer.partition, sources, transfer.to_node, remove, quorum))
    return tuple(plans)


def change_problem(change: ClusterChange, slot: int, ring: Ring) -> str | None:
    """Why a change record from a peer cannot be true of ``slot`` (``ring``: its new
    ring, decoded), or None."""
    if change.old_epoch != slot or ring.epoch != slot + 1:
        return f"a change of epoch {change.old_epoch} -> {ring.epoch} in slot {slot}"
    if not 0 < len(change.change_id.encode()) <= 4 * NAME_BYTES_MAX:
        return "change id length"
    if len(change.statuses) != len(change.transfers):
        return "one status per transfer"
    if len(change.transfers) > ring.partition_count * ring.replicas_wanted:
        return "more transfers than replica slots"
    for plan in change.transfers:
        if not 0 <= plan.partition < ring.partition_count:
            return f"transfer of partition {plan.partition}"
        if plan.to_node not in ring.preference_list(plan.partition):
            return f"transfer to {plan.to_node}, not in the new list"
        if len(plan.from_nodes) > NODE_COUNT_MAX:
            return "too many sources"
    return None


def plan_change(
    ring: Ring, kind: ChangeKind, node: RingNode, change_id: str, now_ms: int
) -> ClusterChange:
    """The OPEN record of one change planned from ``ring``."""
    if kind == "join":
        change = plan_join(ring, node)
    else:
        change = (plan_leave if kind == "leave" else plan_remove)(ring, node.node_id)
    plans = transfer_plans(change)
    statuses = tuple(
        TransferStatus.PENDING if plan.from_nodes else TransferStatus.VERIFIED for plan in plans
    )
    lost = tuple(sorted({plan.partition for plan in plans if not plan.from_nodes}))
    return ClusterChange(
        change_id=change_id,
        kind=kind,
        node_id=node.node_id,
        zone=node.zone,
        host=node.host,
        old_epoch=ring.epoch,
        new_ring=encode_ring(change.new),
        transfers=plans,
        statuses=statuses,
        state=ChangeState.OPEN,
        started_ms=now_ms,
        lost=lost,
    )


def request_problem(
    ring: Ring, kind: ChangeKind, node: RingNode, live: frozenset[str]
) -> str | None:
    """Why ``ring`` cannot take this change, or None."""
    name = node.node_id
    if not name or len(name.encode()) > NAME_BYTES_MAX:
        return "a node id of 1..128 bytes"
    if kind == "join":
        if ring.has_node(name):
            return f"{name} is already a member of ring epoch {ring.epoch}"
        if not node.zone or len(node.zone.encode()) > NAME_BYTES_MAX:
            return "a zone of 1..128 bytes"
        if len(ring.nodes) + 1 > min(ring.partition_count, NODE_COUNT_MAX):
            return f"the ring holds at most {min(ring.partition_count, NODE_COUNT_MAX)} nodes"
        if name not in live:
            return f"{name} is not a live member: start it with its seeds first"
        return None
    if not ring.has_node(name):
        return f"{name} is not a member of ring epoch {ring.epoch}"
    if len(ring.nodes) < 2:
        return f"{name} is the last node of the ring"
    if kind == "remove" and name in live:
        return f"{name} is alive: use leave, which hands its partitions off"
    return None


def _busy(request_id: int, kind: ChangeKind, node_id: str, busy: ClusterChange) -> Answer:
    """``Busy`` naming the change in progress, unless it is this very request (a retry,
    or a request whose leader lost its role after writing it): then ``Accepted``."""
    same = (busy.kind, busy.node_id) == (kind, node_id)
    return Answer(request_id, Accepted(busy) if same else Busy(busy))


# -- the leader's working state ---------------------------------------------------------


@dataclass(slots=True)
class _Request:
    request_id: int
    kind: ChangeKind
    node: RingNode
    deadline_ms: int


@dataclass(slots=True)
class _Lead:
    slot: int
    ballot: Ballot
    old_ring: Ring
    started_ms: int
    promises: dict[str, RcPromise] = field(default_factory=dict)
    refusals: set[str] = field(default_factory=set)
    prepared: bool = False
    stamp: Stamp | None = None  # the latest write
    change: ClusterChange | None = None
    accepted_by: set[str] = field(default_factory=set)
    chosen: bool = False
    answer_to: int | None = None  # the request this write carries out
    announced: tuple[str, ChangeState] | None = None
    learned_by: dict[str, int] = field(default_factory=dict)  # node -> its ring epoch
    sent_ms: dict[str, int] = field(default_factory=dict)
    beat_ms: int = -(10**12)
    ready_ms: int | None = None  # transfers start at this time (barrier, then drain)
    assigned_ms: dict[str, int] = field(default_factory=dict)
    index: dict[tuple[int, str], int] = field(default_factory=dict)  # (partition, to) -> i
    failures: list[str] = field(default_factory=list)
    down_since: dict[str, int] = field(default_factory=dict)
    written_ms: int = 0
    statuses: list[TransferStatus] = field(default_factory=list)
    dirty: bool = False
    settled_ms: int | None = None  # every live node learned the final record
    drops: dict[str, RcDrop] | None = None
    done: bool = False

    @property
    def acceptors(self) -> tuple[str, ...]:
        return tuple(node.node_id for node in self.old_ring.nodes)

    @property
    def quorum(self) -> int:
        return len(self.old_ring.nodes) // 2 + 1

    def has_learned(self, node_id: str) -> bool:
        """``node_id`` acknowledged the announced record (and routes by it)."""
        epoch = self.learned_by.get(node_id)
        if epoch is None or self.announced is None:
            return False
        state = self.announced[1]
        if state is ChangeState.OPEN:
            return epoch >= self.slot  # it holds the ring the change starts from
        return epoch > self.slot if state is ChangeState.COMMITTED else True


# -- the state machine -------------------------------------------------------------------


class Claimant:
    """One node's part in ring changes: acceptor and learner always, leader when it must."""

    def __init__(
        self,
        node_id: str,
        timing: ClaimantTiming,
        rng: RandomSource,
        *,
        ring: Ring | None,
        register: RegisterState | None = None,
        now_ms: int = 0,
    ) -> None:
        """``register``: the last persisted state (a restart); ``ring``: the installed ring."""
        self.node_id = node_id
        self.timing = timing
        self._rng = rng
        self.ring = ring
        epoch = 0 if ring is None else ring.epoch
        if register is None or register.slot < epoch:
            register = RegisterState(slot=epoch)
        self.register = register
        self.receiver = Receiver(node_id, timing.transfer)
        # Until the first tick says who is up, take the ring's members to be.
        members = () if ring is None else (node.node_id for node in ring.nodes)
        self.live: frozenset[str] = frozenset({node_id, *members})
        self.rejected = 0  # messages dropped as invalid or spoofed
        self._lead: _Lead | None = None
        self._requests: deque[_Request] = deque()
        self._local: deque[ClaimantMessage] = deque()
        self._round = max(self.register.promised.round, 0)
        self._heard_ms = now_ms
        self._retry_ms = now_ms
        self._rings: dict[bytes, Ring] = {}
        self._routing: tuple[str, int, RingChange] | None = None
        self._sources: tuple[str, frozenset[tuple[int, str]]] | None = None
        self._told: set[str] = set()  # members that answered this node's hello
        self._hello_ms = -(10**12)

    # -- queries ------------------------------------------------------------------------

    @property
    def learned(self) -> ClusterChange | None:
        """The latest change record this node knows chosen, in its current slot."""
        return self.register.learned

    def in_progress(self) -> ClusterChange | None:
        """The change known chosen that makes a new request ``Busy``, if any. A record
        only accepted here is not enough: a prepare round finds out whether it counts."""
        lead = self._lead
        change = None if lead is None or not lead.chosen or lead.done else lead.change
        if change is not None and change.state is not ChangeState.CANCELLED:
            return change  # OPEN, or settling after its commit
        learned = self.register.learned
        return learned if learned is not None and learned.state is ChangeState.OPEN else None

    def routing(self) -> RingChange | None:
        """The OPEN change coordinators route by (dual writes), if this node learned one."""
        change, ring = self.register.learned, self.ring
        if change is None or change.state is not ChangeState.OPEN or ring is None:
            return None
        if ring.epoch != change.old_epoch:
            return None  # the ring it changes is not here yet: membership fetches it
        if self._routing is None or self._routing[:2] != (change.change_id, ring.epoch):
            transfers = tuple(
                Transfer(plan.partition, plan.from_nodes, plan.to_node) for plan in change.transfers
            )
            new = self._decode(change.new_ring)
            planned = RingChange(change.kind, change.node_id, ring, new, transfers)
            self._routing = (change.change_id, ring.epoch, planned)
        return self._routing[2]

    def is_leader(self) -> bool:
        return self._lead is not None and self._lead.prepared

    def status(self) -> dict[str, object]:
        """For the status page: the change in progress and this node's role."""
        change = self.in_progress() or self.register.learned
        summary: dict[str, object] = {"slot": self.register.slot, "leader": self.is_leader()}
        if change is not None:
            counts = {s.name.lower(): 0 for s in TransferStatus}
            for status in change.statuses:
                counts[status.name.lower()] += 1
            summary["change"] = {
                "id": change.change_id,
                "kind": change.kind,
                "node": change.node_id,
                "state": change.state.name.lower(),
                "transfers": counts,
                "started_ms": change.started_ms,
                "lost_partitions": len(change.lost),
            }
        return summary

    # -- inputs -------------------------------------------------------------------------

    def request(
        self,
        request_id: int,
        kind: ChangeKind,
        node_id: str,
        now_ms: int,
        *,
        zone: str = "",
        host: str = "",
    ) -> list[Action]:
        """An operator's join, leave or remove; answered now (``Busy``...) or later."""
        busy = self.in_progress()
        if busy is not None:
            return [_busy(request_id, kind, node_id, busy)]
        if self.ring is None:
            return [Answer(request_id, Unavailable("this node has no ring yet"))]
        if len(self._requests) >= self.timing.requests_max:
            return [Answer(request_id, Unavailable("too many change requests waiting"))]
        deadline_ms = now_ms + self.timing.request_timeout_ms
        self._requests.append(
            _Request(request_id, kind, RingNode(node_id, zone, host), deadline_ms)
        )
        return self._flush(self._advance(now_ms), now_ms)

    def on_ring(self, ring: Ring, now_ms: int) -> list[Action]:
        """Membership installed a newer ring (learned by gossip)."""
        if self.ring is not None and ring.epoch <= self.ring.epoch:
            return []
        self.ring = ring
        actions = self._follow_slot(ring.epoch)
        return self._flush(actions + self._advance(now_ms), now_ms)

    def on_message(self, sender: str, message: ClaimantMessage, now_ms: int) -> list[Action]:
        """A message; ``sender`` is the transport's authenticated node id."""
        if sender != message.sender:
            self.rejected += 1
            return []
        return self._flush(self._dispatch(message, now_ms), now_ms)

    def on_page_stored(self, partition: int, attempt: int, now_ms: int) -> list[Action]:
        """The shell stored an ``IngestPage`` durably."""
        actions = self.receiver.on_page_stored(partition, attempt, now_ms, self.live)
        return self._flush(list(actions), now_ms)

    def tick(self, now_ms: int, live: frozenset[str]) -> list[Action]:
        """Time passed; ``live``: the members membership holds up (alive or suspect)."""
        self.live = live | {self.node_id}
        actions = self._hello(now_ms)
        if self._learned_open():
            actions.extend(self.receiver.tick(now_ms, self.live))
        actions.extend(self._expire(now_ms))
        lead = self._lead
        if lead is not None and not lead.prepared:
            if now_ms - lead.started_ms >= self.timing.prepare_timeout_ms:
                actions.extend(self._give_up(now_ms))
        elif lead is None and self._should_take_over(now_ms):
            actions.extend(self._prepare(now_ms))
        actions.extend(self._advance(now_ms))
        return self._flush(actions, now_ms)

    def ready(self) -> bool:
        """Whether this node may coordinate: since it started, a majority of the ring's
        members told it what they know chosen (so it routes by any change in progress)."""
        ring = self.ring
        return ring is not None and len(self._told) > len(ring.nodes) // 2

    def _hello(self, now_ms: int) -> list[Action]:
        ring = self.ring
        if ring is None or self.ready() or now_ms - self._hello_ms < self.timing.retry_interval_ms:
            return []
        self._hello_ms = now_ms
        actions: list[Action] = []
        for node in ring.nodes:
            if node.node_id in self.live and node.node_id not in self._told:
                actions.extend(self._send(node.node_id, RcHello(self.node_id, ring.epoch)))
        return actions

    def _on_state(self, message: RcState, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        if message.change is not None and message.stamp is not None:
            learn = RcWrite(message.sender, message.slot, message.stamp, message.change, True)
            actions = [a for a in self._on_write(learn, now_ms) if not isinstance(a, Send)]
        if self.ring is not None and message.slot == self.ring.epoch:
            self._told.add(message.sender)
        return actions

    # -- plumbing -----------------------------------------------------------------------

    def _send(self, to_node: str, message: ClaimantMessage) -> list[Action]:
        if to_node == self.node_id:
            self._local.append(message)
            return []
        return [Send(to_node, message)]

    def _flush(self, actions: list[Action], now_ms: int) -> list[Action]:
        """Handle the messages this node sent itself, in order, within a bound."""
        for _ in range(LOCAL_STEPS_MAX):
            if not self._local:
                return actions
            actions.extend(self._dispatch(self._local.popleft(), now_ms))
        raise AssertionError("messages to self did not settle")

    def _decode(self, ring_bytes: bytes) -> Ring:
        ring = self._rings.get(ring_bytes)
        if ring is None:
            ring = decode_ring(ring_bytes)
            self._rings = {ring_bytes: ring}  # one entry: the change in flight
        return ring

    def _valid(self, change: ClusterChange, slot: int) -> bool:
        try:
            problem = change_problem(change, slot, self._decode(change.new_ring))
        except RemoteProtocolError:
            problem = "bad ring"
        if problem is not None:
            self.rejected += 1
        return problem is None

    def _served(self, change: ClusterChange) -> frozenset[tuple[int, str]]:
        """The (partition, receiver) pairs this node is a source of in ``change``."""
        if self._sources is None or self._sources[0] != change.change_id:
            pairs = frozenset(
                (plan.partition, plan.to_node)
                for plan in change.transfers
                if self.node_id in plan.from_nodes
            )
            self._sources = (change.change_id, pairs)
        return self._sources[1]

    def _epoch(self) -> int:
        return 0 if self.ring is None else self.ring.epoch

    def _learned_open(self) -> bool:
        learned = self.register.learned
        return learned is not None and learned.state is ChangeState.OPEN

    def _persist(self, state: RegisterState) -> list[Action]:
        self.register = state
        return [PersistRegister(state)]

    def _follow_slot(self, slot: int) -> list[Action]:
        """A later slot exists (so this one was committed): start it afresh."""
        if slot <= self.register.slot:
            return []
        self.receiver.reset()
        return self._persist(RegisterState(slot=slot, promised=ZERO_BALLOT))

    def _dispatch(self, message: ClaimantMessage, now_ms: int) -> list[Action]:
        match message:
            case RcPrepare():
                return self._on_prepare(message)
            case RcWrite():
                return self._on_write(message, now_ms)
            case RcBeat():
                if message.slot == self.register.slot and message.ballot >= self.register.promised:
                    self._heard_ms = now_ms
                return []
            case RcDrop():
                return self._on_drop(message)
            case RcHello():
                register = self.register
                known = register.learned if message.slot == register.slot else None
                stamp = register.learned_stamp if known is not None else None
                return self._send(
                    message.sender, RcState(self.node_id, register.slot, stamp, known)
                )
            case RcState():
                return self._on_state(message, now_ms)
            case RcPromise() | RcAck() | RcReject() | RcDropped() | XfReport():
                return self._on_leader_message(message, now_ms)
            case XfAssign():
                learned = self.register.learned
                if not self._learned_open() or learned is None:
                    return []
                if learned.change_id != message.change_id:
                    return []
                return list(self.receiver.assign(message, now_ms, self.live))
            case XfPageRequest():
                return self._on_page_request(message)
            case XfPage():
                return list(self.receiver.on_page(message, now_ms, self.live))
            case XfRefused():
                return list(self.receiver.on_refused(message, now_ms, self.live))
            case _:
                assert_never(message)

    # -- acceptor and learner -----------------------------------------------------------

    def _reject(self, to_node: str, slot: int, ballot: Ballot) -> list[Action]:
        register = self.register
        return self._send(
            to_node, RcReject(self.node_id, slot, ballot, register.promised, register.slot)
        )

    def _on_prepare(self, message: RcPrepare) -> list[Action]:
        actions = self._follow_slot(message.slot)
        register = self.register
        if message.slot < register.slot or message.ballot <= register.promised:
            return actions + self._reject(message.sender, message.slot, message.ballot)
        self._round = max(self._round, message.ballot.round)
        actions.extend(self._persist(msgspec.structs.replace(register, promised=message.ballot)))
        promise = RcPromise(
            self.node_id, message.slot, message.ballot, register.stamp, register.change
        )
        return actions + self._send(message.sender, promise)

    def _on_write(self, message: RcWrite, now_ms: int) -> list[Action]:
        if not self._valid(message.change, message.slot):
            return []
        actions = self._follow_slot(message.slot)
        register = self.register
        ballot = message.stamp.ballot()
        if message.slot < register.slot or (ballot < register.promised and not message.chosen):
            return actions + self._reject(message.sender, message.slot, ballot)
        self._round = max(self._round, message.stamp.round)
        state = register
        newer = register.stamp is None or message.stamp > register.stamp
        if ballot >= register.promised and newer:
            state = msgspec.structs.replace(
                state, promised=ballot, stamp=message.stamp, change=message.change
            )
        if message.chosen and (state.learned_stamp is None or message.stamp > state.learned_stamp):
            state = msgspec.structs.replace(
                state, learned_stamp=message.stamp, learned=message.change
            )
        if state != register:
            self._heard_ms = now_ms
            actions.extend(self._persist(state))
            actions.extend(self._learn(register.learned, state.learned))
        learned = self.register.learned
        ack = RcAck(
            self.node_id,
            message.slot,
            message.stamp,
            self._epoch(),
            "" if learned is None else learned.change_id,
            ChangeState.OPEN if learned is None else learned.state,
        )
        return actions + self._send(message.sender, ack)

    def _learn(self, before: ClusterChange | None, after: ClusterChange | None) -> list[Action]:
        """A newer chosen record: reset streams it ends, install the ring it commits."""
        if after is None or before == after:
            return []
        actions: list[Action] = []
        moved = before is None or (before.change_id, before.state) != (after.change_id, after.state)
        if after.node_id == self.node_id and moved:
            # The change's subject sets its own lifecycle too, as the leader does. Its
            # view of its own record is the newest (it adopts every higher one), so a
            # cancel it learns wins over a LEAVING that a leader with a stale view
            # wrote at the same version (lww on (version, lifecycle) would keep it).
            actions.extend(self._lifecycle(after))
        open_now = after.state is ChangeState.OPEN
        if not open_now or (before is not None and before.change_id != after.change_id):
            self.receiver.reset()
        if after.state is not ChangeState.COMMITTED or self._epoch() > after.old_epoch:
            return actions
        self.ring = self._decode(after.new_ring)
        actions.append(InstallRing(self.ring.epoch, after.new_ring))
        return actions + self._follow_slot(self.ring.epoch)

    def _on_drop(self, message: RcDrop) -> list[Action]:
        keep: set[int] = set()
        if self.ring is not None:
            keep.update(self.ring.replica_partitions(self.node_id))
        routing = self.routing()
        if routing is not None:
            keep.update(p for p in message.partitions if self.node_id in routing.write_targets(p))
        drop = tuple(sorted(set(message.partitions) - keep))
        actions: list[Action] = [DropPartitions(drop)] if drop else []
        in_ring = self.ring is not None and self.ring.has_node(self.node_id)
        if message.retire and not in_ring and routing is None:
            actions.append(Retire())
        return actions + self._send(message.sender, RcDropped(self.node_id, message.change_id))

    def _on_page_request(self, message: XfPageRequest) -> list[Action]:
        """Serve a page only of an OPEN change this node learned, to one of its receivers."""
        learned = self.register.learned
        reason = ""
        if (
            learned is None
            or self.routing() is None  # so this node's acceptor fences (``core.homes``)
            or learned.change_id != message.change_id
        ):
            reason = "this node knows no such change in progress"
        elif (message.partition, message.sender) not in self._served(learned):
            reason = f"{self.node_id} is no source of partition {message.partition} for it"
        if reason:
            refusal = XfRefused(
                self.node_id, message.change_id, message.partition, message.attempt, reason
            )
            return self._send(message.sender, refusal)
        return [ServePage(message)]

    # -- leading ------------------------------------------------------------------------

    def _prepare(self, now_ms: int) -> list[Action]:
        ring = self.ring
        assert ring is not None and self._lead is None
        self._round += 1
        lead = _Lead(ring.epoch, Ballot(self._round, self.node_id), ring, now_ms)
        self._lead = lead
        actions: list[Action] = []
        for node_id in lead.acceptors:
            actions.extend(self._send(node_id, RcPrepare(self.node_id, lead.slot, lead.ballot)))
        return actions

    def _give_up(self, now_ms: int) -> list[Action]:
        """Leadership lost or not won: back off, then run again if a request waits."""
        self._lead = None
        self._retry_ms = now_ms + int(self.timing.prepare_backoff_ms * (1 + self._rng.random()))
        return []

    def _expire(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        for request in list(self._requests):
            if now_ms >= request.deadline_ms:
                self._requests.remove(request)
                if self._lead is not None and self._lead.answer_to == request.request_id:
                    self._lead.answer_to = None  # its change may still be carried out
                reason = "no quorum of ring members settled the request in time"
                actions.append(Answer(request.request_id, Unavailable(reason)))
        return actions

    def _should_take_over(self, now_ms: int) -> bool:
        """An unfinished change, a silent leader, and this node's turn by rank."""
        ring, register = self.ring, self.register
        if ring is None or register.slot != ring.epoch or now_ms < self._retry_ms:
            return False
        accepted, learned = register.change, register.learned
        unfinished = learned is not None and learned.state is ChangeState.OPEN
        if accepted is not None and (learned is None or accepted.state != learned.state):
            unfinished = True  # accepted, never announced chosen: finish it
        members = [n.node_id for n in ring.nodes if n.node_id in self.live]
        if not unfinished or self.node_id not in members:
            return False
        rank = members.index(self.node_id)
        return now_ms - self._heard_ms >= self.timing.takeover_after_ms * (1 + rank)

    def _on_leader_message(
        self, message: RcPromise | RcAck | RcReject | RcDropped | XfReport, now_ms: int
    ) -> list[Action]:
        lead = self._lead
        if lead is None:
            return []
        match message:
            case RcPromise():
                if lead.prepared or (message.slot, message.ballot) != (lead.slot, lead.ballot):
                    return []
                if message.change is not None and not self._valid(message.change, lead.slot):
                    return []
                if message.sender in lead.acceptors:
                    lead.promises[message.sender] = message
                if len(lead.promises) < lead.quorum:
                    return []
                return self._on_prepared(lead, now_ms)
            case RcReject():
                return self._on_reject(lead, message, now_ms)
            case RcAck():
                if message.slot != lead.slot or lead.stamp is None:
                    return []
                if message.stamp == lead.stamp and message.sender in lead.acceptors:
                    lead.accepted_by.add(message.sender)
                self._note_learned(lead, message)
            case RcDropped():
                ours = lead.change is not None and message.change_id == lead.change.change_id
                if lead.drops is not None and ours:
                    lead.drops.pop(message.sender, None)
            case XfReport():
                self._on_report(lead, message)
            case _:
                assert_never(message)
        return self._advance(now_ms)

    def _on_reject(self, lead: _Lead, message: RcReject, now_ms: int) -> list[Action]:
        if message.ballot != lead.ballot or message.slot != lead.slot:
            return []
        self._round = max(self._round, message.promised.round)
        if message.node_slot > lead.slot:
            # The sender holds a later ring: this slot was committed.
            if lead.announced is not None and lead.announced[1] is ChangeState.COMMITTED:
                lead.learned_by[message.sender] = message.node_slot
                return self._advance(now_ms)
            return self._give_up(now_ms)
        if lead.prepared:
            return self._give_up(now_ms) if message.promised > lead.ballot else []
        lead.refusals.add(message.sender)
        if len(lead.refusals) > len(lead.acceptors) - lead.quorum:
            return self._give_up(now_ms)
        return []

    def _note_learned(self, lead: _Lead, ack: RcAck) -> None:
        if lead.announced is None:
            return
        change_id, state = lead.announced
        committed = state is ChangeState.COMMITTED and ack.ring_epoch > lead.slot
        if (ack.learned_id, ack.learned_state) == (change_id, state) or committed:
            lead.learned_by[ack.sender] = ack.ring_epoch

    def _on_prepared(self, lead: _Lead, now_ms: int) -> list[Action]:
        """A majority promised: adopt the highest-stamped record, and write it again."""
        lead.prepared = True
        best: tuple[Stamp, ClusterChange] | None = None
        for sender in sorted(lead.promises):
            promise = lead.promises[sender]
            if promise.stamp is None or promise.change is None:
                continue
            if best is None or promise.stamp > best[0]:
                best = (promise.stamp, promise.change)
        if best is None:
            lead.chosen, lead.done = True, True  # nothing was ever chosen in this slot
            return self._advance(now_ms)
        return self._write(lead, best[1], now_ms)

    def _write(
        self, lead: _Lead, change: ClusterChange, now_ms: int, answer_to: int | None = None
    ) -> list[Action]:
        version = 1 if lead.stamp is None else lead.stamp.version + 1
        if lead.change is None or lead.change.change_id != change.change_id:
            lead.index = {(t.partition, t.to_node): i for i, t in enumerate(change.transfers)}
            lead.failures, lead.down_since, lead.ready_ms = [], {}, None
        lead.stamp = Stamp(lead.ballot.round, lead.ballot.node, version)
        lead.change, lead.chosen, lead.accepted_by = change, False, set()
        lead.statuses, lead.dirty, lead.written_ms = list(change.statuses), False, now_ms
        lead.answer_to = answer_to
        lead.sent_ms = dict.fromkeys(lead.acceptors, now_ms)
        actions: list[Action] = []
        write = RcWrite(self.node_id, lead.slot, lead.stamp, change)
        for node_id in lead.acceptors:
            actions.extend(self._send(node_id, write))
        return actions

    def _audience(self, lead: _Lead) -> list[str]:
        """Every node that routes by the change: old and new members, and the live."""
        nodes = set(lead.acceptors) | self.live
        if lead.change is not None:
            nodes.update(node.node_id for node in self._decode(lead.change.new_ring).nodes)
        return sorted(nodes)

    def _on_chosen(self, lead: _Lead, now_ms: int) -> list[Action]:
        change = lead.change
        assert change is not None and not lead.chosen
        lead.chosen = True
        actions: list[Action] = []
        if lead.answer_to is not None:
            request = self._requests.popleft()
            assert request.request_id == lead.answer_to, (request, lead.answer_to)
            actions.append(Answer(request.request_id, Accepted(change)))
            lead.answer_to = None
        key = (change.change_id, change.state)
        if lead.announced == key:
            return actions
        lead.announced, lead.learned_by, lead.sent_ms = key, {}, {}
        lead.settled_ms, lead.drops, lead.done = None, None, False
        actions.extend(self._lifecycle(change))
        return actions + self._resend(lead, now_ms)

    def _lifecycle(self, change: ClusterChange) -> list[Action]:
        if change.state is ChangeState.COMMITTED:
            after = Lifecycle.MEMBER if change.kind == "join" else Lifecycle.REMOVED
            return [SetLifecycle(change.node_id, after)]
        if change.kind == "leave":
            open_now = change.state is ChangeState.OPEN
            lifecycle = Lifecycle.LEAVING if open_now else Lifecycle.MEMBER
            return [SetLifecycle(change.node_id, lifecycle)]
        return []

    def _resend(self, lead: _Lead, now_ms: int) -> list[Action]:
        """Writes to acceptors that have not accepted, announcements to the live that have
        not learned (every ``retry_interval_ms``), and the heartbeat."""
        if lead.stamp is None or lead.change is None:
            return []
        due = now_ms - self.timing.retry_interval_ms
        if not lead.chosen:
            targets = [n for n in lead.acceptors if n not in lead.accepted_by]
        else:
            targets = [n for n in self._audience(lead) if not lead.has_learned(n)]
        write = RcWrite(self.node_id, lead.slot, lead.stamp, lead.change, chosen=lead.chosen)
        actions: list[Action] = []
        for node_id in targets:
            if node_id in self.live and lead.sent_ms.get(node_id, due) <= due:
                lead.sent_ms[node_id] = now_ms
                actions.extend(self._send(node_id, write))
        if not lead.done and now_ms - lead.beat_ms >= self.timing.heartbeat_ms:
            lead.beat_ms = now_ms
            beat = RcBeat(self.node_id, lead.slot, lead.ballot)
            for node_id in lead.acceptors:
                if node_id != self.node_id:
                    actions.extend(self._send(node_id, beat))
        return actions

    def _advance(self, now_ms: int) -> list[Action]:
        """Whatever the leader can do now; requests wait, are served, or are Busy."""
        lead = self._lead
        actions: list[Action] = []
        if lead is not None and lead.slot < self.register.slot:
            settling = lead.announced is not None and lead.announced[1] is ChangeState.COMMITTED
            if not settling or lead.done:
                self._lead = lead = None  # the slot was committed: a new one needs a new ballot
        register = self.register
        if lead is not None and lead.slot == register.slot and register.promised > lead.ballot:
            # Deposed: this node promised a higher ballot, so another leader runs the
            # slot (and writes nothing of ours any more). Without this a leader whose
            # writes all got accepted before it lost the slot heard no reject, kept
            # driving a change the new leader had cancelled, and answered Busy for it
            # forever (sim seed 6, --nodes 5 --ring-changes).
            actions.extend(self._give_up(now_ms))
            lead = None
        if lead is None:
            busy = self.in_progress()
            if busy is not None:
                actions.extend(
                    _busy(r.request_id, r.kind, r.node.node_id, busy) for r in self._requests
                )
                self._requests.clear()
            elif self._requests and self.ring is not None and now_ms >= self._retry_ms:
                actions.extend(self._prepare(now_ms))
            return actions
        if not lead.prepared:
            return actions
        if not lead.chosen and len(lead.accepted_by) >= lead.quorum:
            actions.extend(self._on_chosen(lead, now_ms))
        actions.extend(self._resend(lead, now_ms))
        change = lead.change
        if not lead.chosen:
            return actions
        if change is None or lead.done:
            actions.extend(self._serve(lead, now_ms))
        elif change.state is ChangeState.OPEN:
            actions.extend(self._drive(lead, change, now_ms))
        else:
            actions.extend(self._settle(lead, change, now_ms))
        busy = self.in_progress()
        if busy is not None and self._lead is lead:
            waiting = [r for r in self._requests if r.request_id != lead.answer_to]
            actions.extend(_busy(r.request_id, r.kind, r.node.node_id, busy) for r in waiting)
            for request in waiting:
                self._requests.remove(request)
        return actions

    def _serve(self, lead: _Lead, now_ms: int) -> list[Action]:
        """Plan the first waiting request, and write it OPEN."""
        if lead.answer_to is not None or not self._requests:
            return []
        request, ring = self._requests[0], lead.old_ring
        node = request.node
        if request.kind != "join" and ring.has_node(node.node_id):
            node = ring.node(node.node_id)
        problem = request_problem(ring, request.kind, node, self.live)
        if problem is not None:
            self._requests.popleft()
            return [Answer(request.request_id, Refused(problem))]
        version = 1 if lead.stamp is None else lead.stamp.version + 1
        change_id = f"{lead.slot}.{lead.ballot.round}.{version}.{self.node_id}"
        change = plan_change(ring, request.kind, node, change_id, now_ms)
        return self._write(lead, change, now_ms, answer_to=request.request_id)

    def _drive(self, lead: _Lead, change: ClusterChange, now_ms: int) -> list[Action]:
        """An OPEN change: barrier, drain, streams, then commit (or cancel)."""
        if lead.ready_ms is None:
            if all(lead.has_learned(n) for n in self._audience(lead) if n in self.live):
                lead.ready_ms = now_ms + self.timing.write_drain_ms
            return []
        statuses = tuple(lead.statuses)
        reason = self._cancel_reason(lead, change, now_ms)
        if reason is not None:
            cancelled = msgspec.structs.replace(
                change, statuses=statuses, state=ChangeState.CANCELLED, reason=reason
            )
            return self._write(lead, cancelled, now_ms)
        if all(status is TransferStatus.VERIFIED for status in statuses):
            committed = msgspec.structs.replace(
                change, statuses=statuses, state=ChangeState.COMMITTED
            )
            return self._write(lead, committed, now_ms)
        if now_ms < lead.ready_ms:
            return []
        if lead.dirty and now_ms - lead.written_ms >= self.timing.progress_interval_ms:
            return self._write(lead, msgspec.structs.replace(change, statuses=statuses), now_ms)
        return self._assign(lead, change, now_ms)

    def _cancel_reason(self, lead: _Lead, change: ClusterChange, now_ms: int) -> str | None:
        if lead.failures:
            return lead.failures[0]
        waiting = {
            plan.to_node
            for index, plan in enumerate(change.transfers)
            if lead.statuses[index] is not TransferStatus.VERIFIED
        }
        for receiver in sorted(waiting | set(lead.down_since)):
            if receiver in self.live or receiver not in waiting:
                lead.down_since.pop(receiver, None)
                continue
            since = lead.down_since.setdefault(receiver, now_ms)
            if now_ms - since >= self.timing.down_cancel_ms:
                return f"{receiver} has been down for {now_ms - since} ms"
        return None

    def _assign(self, lead: _Lead, change: ClusterChange, now_ms: int) -> list[Action]:
        """Each receiver's next batch of unverified transfers, every ``retry_interval_ms``."""
        batches: dict[str, list[TransferPlan]] = {}
        for index, plan in enumerate(change.transfers):
            if lead.statuses[index] is not TransferStatus.VERIFIED:
                batch = batches.setdefault(plan.to_node, [])
                if len(batch) < self.timing.assign_batch_max:
                    batch.append(plan)
        actions: list[Action] = []
        due = now_ms - self.timing.retry_interval_ms
        for receiver in sorted(batches):
            if receiver in self.live and lead.assigned_ms.get(receiver, due) <= due:
                lead.assigned_ms[receiver] = now_ms
                assign = XfAssign(self.node_id, change.change_id, tuple(batches[receiver]))
                actions.extend(self._send(receiver, assign))
        return actions

    def _on_report(self, lead: _Lead, report: XfReport) -> None:
        change = lead.change
        if change is None or change.state is not ChangeState.OPEN:
            return
        if report.change_id != change.change_id:
            return
        for verified in report.verified:
            index = lead.index.get((verified.partition, report.sender))
            if index is not None and lead.statuses[index] is not TransferStatus.VERIFIED:
                lead.statuses[index], lead.dirty = TransferStatus.VERIFIED, True
        for partition in report.streaming:
            index = lead.index.get((partition, report.sender))
            if index is not None and lead.statuses[index] is TransferStatus.PENDING:
                lead.statuses[index], lead.dirty = TransferStatus.STREAMING, True
        for failed in report.failed:
            if (failed.partition, report.sender) in lead.index:
                lead.failures.append(f"transfer to {report.sender} failed: {failed.reason}")

    def _settle(self, lead: _Lead, change: ClusterChange, now_ms: int) -> list[Action]:
        """After a chosen commit or cancel: every live node learns it, a grace, then drops."""
        if lead.settled_ms is None:
            if not all(lead.has_learned(n) for n in self._audience(lead) if n in self.live):
                return []
            lead.settled_ms = now_ms
        if lead.drops is None:
            if now_ms < lead.settled_ms + self.timing.drop_grace_ms:
                return []
            lead.drops, lead.sent_ms = self._drops(lead, change), {}
        actions: list[Action] = []
        due = now_ms - self.timing.retry_interval_ms
        for node_id in sorted(lead.drops):
            if node_id not in self.live:
                del lead.drops[node_id]  # down: it keeps what it holds (see the module doc)
            elif lead.sent_ms.get(node_id, due) <= due:
                lead.sent_ms[node_id] = now_ms
                actions.extend(self._send(node_id, lead.drops[node_id]))
        if not lead.drops:
            lead.done = True
        return actions

    def _drops(self, lead: _Lead, change: ClusterChange) -> dict[str, RcDrop]:
        """Committed: what each old member no longer replicates. Cancelled: what each
        receiver was streaming. A leaving node is told to retire once it dropped."""
        partitions: dict[str, set[int]] = {}
        if change.state is ChangeState.COMMITTED:
            old, new = lead.old_ring, self._decode(change.new_ring)
            for node in old.nodes:
                gone = set(old.replica_partitions(node.node_id))
                partitions[node.node_id] = gone - set(new.replica_partitions(node.node_id))
            if change.kind == "remove":
                partitions.pop(change.node_id, None)
        else:
            for plan in change.transfers:
                partitions.setdefault(plan.to_node, set()).add(plan.partition)
        retiring = change.node_id if change.state is ChangeState.COMMITTED else ""
        retiring = retiring if change.kind == "leave" else ""
        return {
            node_id: RcDrop(
                self.node_id, change.change_id, tuple(sorted(parts)), node_id == retiring
            )
            for node_id, parts in sorted(partitions.items())
            if parts or node_id == retiring
        }
