"""This replica's Paxos acceptor: the per-key rules of ``core.paxos`` over local storage.

Every home replica of a key answers ``PxPrepare``, ``PxPropose``,
``PxCommit`` and ``PxRead`` for it. For each request: check it (the key's address, the
ballot against this node's clock ceiling, the decree's invariants and its
record's bounds, as ``LocalReplica.check_peer_record`` checks a peer's
record), load the key's ``AcceptorState`` (``storage.get_paxos``), apply the
pure rule, write the new state in one batch with, for a commit, the
committed record merged into the key's regular record (``put_paxos``), then
answer once the group commit made that batch durable. A reply never leaves
before the state it changed is durable (PERSIST BEFORE SEND); a ``PxRead``
changes nothing and is answered at once from what storage holds (``core.paxos``
says why that is safe); the read, the
rule and the put run with no ``await`` between them, so on the event-loop
thread they are atomic per key.

The proposer's view of an answer lives here too: ``reply_problem`` (the same
checks the other way round: what a proposer refuses to use from a reply) and
``failure_is_definite`` (a failed call, by ``net.rpc``'s contract).

Refusals (the proposer counts each as a definite failure, nothing applied):
an invalid request is ``RemoteProtocolError`` (and a bad record is reported
against its sender); a stored state that does not decode is
``StorageCorruption`` (never read as empty: a forgotten promise could let
two values be chosen); a proposal carrying new values while the disk is below
its reserve is ``InsufficientStorage``. A state that was put but could not be
made durable is ``SyncFailed``: the proposer must treat it as "maybe applied".

Must never: reply before the state is durable, treat an undecodable state as
empty, or apply to the regular record a proposal that was only accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from dynakv.core.claim import RingChange
from dynakv.core.homes import fence_problem, newest_list
from dynakv.core.paxos import (
    EMPTY_STATE,
    ZERO_BALLOT,
    AcceptorState,
    Ballot,
    Decree,
    PxAccepted,
    PxCommit,
    PxCommitted,
    PxPrepare,
    PxPromise,
    PxPropose,
    PxRead,
    PxReject,
    PxReply,
    PxRequest,
    PxSnapshot,
    ballot_problem,
    decode_state,
    decree_problem,
    encode_state,
    merge_states,
    on_commit,
    on_prepare,
    on_propose,
    on_read,
)
from dynakv.core.record import Record, merge
from dynakv.core.ring import REPLICAS_MAX, Ring, partition_of
from dynakv.core.versions import hlc_ceiling
from dynakv.errors import DynakvError, RemoteError, RemoteProtocolError, RpcTimeout, StaleRouting
from dynakv.net.messages import Message
from dynakv.node.replica import LocalReplica, carries_new_values, reply_when_durable
from dynakv.storage.base import StorageCorruption, StorageFull, SyncFailed

log = logging.getLogger(__name__)


class Acceptor:
    """Answers this node's share of per-key Paxos (see the module docstring)."""

    def __init__(self, replica: LocalReplica) -> None:
        self.replica = replica
        self.storage = replica.storage
        self.prepares = self.proposes = self.commits = self.reads = 0  # answered, for status
        self.fenced = self.states_merged = 0
        # The ring this node routes by and the open change it learned (``core.homes``'s
        # fence); set by ``node.assembly``. None: no fence (a fixed set of replicas).
        self.routes: Callable[[], tuple[Ring, RingChange | None]] | None = None

    def handle(self, message: PxRequest, sender: str) -> Message | asyncio.Future[Message]:
        """The RPC handler for ``PxPrepare``/``PxPropose``/``PxCommit``/``PxRead`` from
        member ``sender``: the reply, or a Future of it resolved once the new state is
        durable."""
        self._check_address(message.partition, message.key)
        if not isinstance(message, PxCommit):
            self._check_route(message)
        if isinstance(message, PxRead):
            self._check_ballot(message.ballot)
            self.reads += 1
            partition, key = message.partition, message.key
            return on_read(
                self.state(partition, key), message.ballot, self.replica.read(partition, key)
            )
        if isinstance(message, PxPrepare):
            self._check_ballot(message.ballot)
            return self._prepare(message)
        self._check_decree(message.decree, sender)
        if isinstance(message, PxPropose):
            return self._propose(message)
        return self._commit(message)

    def state(self, partition: int, key: bytes) -> AcceptorState:
        """The key's stored acceptor state (empty when none); ``StorageCorruption`` if
        it does not decode."""
        data = self.storage.get_paxos(partition, key)
        if data is None:
            return EMPTY_STATE
        try:
            return decode_state(data)
        except ValueError as exc:
            log.error(
                "acceptor state does not decode partition=%d key=%s reason=%s",
                partition,
                key[:64].hex(),
                exc,
            )
            raise StorageCorruption(partition=partition, key=key, reason=str(exc)) from exc

    # -- the three requests --------------------------------------------------------------

    def _prepare(self, message: PxPrepare) -> Message | asyncio.Future[Message]:
        partition, key = message.partition, message.key
        state = self.state(partition, key)
        self._observe(message.ballot)
        new_state, reply = on_prepare(state, message.ballot, self.replica.read(partition, key))
        self.prepares += 1
        return self._persist(partition, key, state, new_state, None, reply)

    def _propose(self, message: PxPropose) -> Message | asyncio.Future[Message]:
        partition, key, decree = message.partition, message.key, message.decree
        state = self.state(partition, key)
        self._observe(decree.ballot)
        new_state, reply = on_propose(state, decree)
        guard = self.replica.disk_guard
        if (
            guard is not None
            and isinstance(reply, PxAccepted)
            and carries_new_values(decree.proposal.record, self.replica.read(partition, key))
        ):
            guard.check_value_write()  # refused before anything is written
        self.proposes += 1
        return self._persist(partition, key, state, new_state, None, reply)

    def _commit(self, message: PxCommit) -> Message | asyncio.Future[Message]:
        partition, key, decree = message.partition, message.key, message.decree
        state = self.state(partition, key)
        self._observe(decree.ballot)
        new_state = on_commit(state, decree)
        record: Record | None = None
        local: Record | None = None
        if new_state is not state:
            # The chosen record joins the key's regular record in the same batch, so
            # quorum reads (and read repair, and anti-entropy) see strong writes.
            self._observe_record(decree.proposal.record)
            record, local = self._with_committed(partition, key, decree.proposal.record)
        self.commits += 1
        reply = PxCommitted(decree.ballot)
        return self._persist(partition, key, state, new_state, record, reply, old=local)

    def merge_streamed(self, partition: int, key: bytes, data: bytes, sender: str) -> None:
        """Fold a key's acceptor state streamed from old replica ``sender`` in a ring change
        into this replica's (``core.paxos.merge_states``), with a committed record merged
        into the key's regular record as a commit would. Raises ``RemoteProtocolError``
        for a state that does not check; the caller waits for durability."""
        self._check_address(partition, key)
        try:
            copied = decode_state(data)
        except ValueError as exc:
            raise RemoteProtocolError(f"a streamed Paxos state does not decode: {exc}") from exc
        for decree in (copied.accepted, copied.committed):
            if decree is not None:
                self._check_decree(decree, sender)
        if copied.promised > ZERO_BALLOT:
            self._check_ballot(copied.promised)
        state = self.state(partition, key)
        new_state = merge_states(state, copied)
        if new_state is state:
            return
        self._observe(new_state.promised)
        record: Record | None = None
        local: Record | None = None
        if new_state.committed is not state.committed and new_state.committed is not None:
            committed = new_state.committed.proposal.record
            record, local = self._with_committed(partition, key, committed)
        self.states_merged += 1
        self._put(partition, key, new_state, record, local)

    # -- persistence ---------------------------------------------------------------------

    def _with_committed(
        self, partition: int, key: bytes, committed: Record
    ) -> tuple[Record | None, Record | None]:
        """(the key's regular record with ``committed`` merged in, or None when that
        changes nothing; the regular record as stored now)."""
        local = self.replica.read(partition, key)
        merged = merge(local, committed, self.replica.policy)
        return (merged if merged != local else None), local

    def _persist(
        self,
        partition: int,
        key: bytes,
        state: AcceptorState,
        new_state: AcceptorState,
        record: Record | None,
        reply: Message,
        *,
        old: Record | None = None,
    ) -> Message | asyncio.Future[Message]:
        """Write ``new_state`` (and ``record``, replacing ``old``) if anything changed,
        then ``reply`` once durable. An unchanged state still waits: an earlier
        request's write that produced it may not be durable yet."""
        if new_state != state or record is not None:
            self._put(partition, key, new_state, record, old)
            changed = True
        else:
            changed = False
        try:
            waiter = self.replica.committer.durable_future()
        except DynakvError as exc:
            if not changed:
                raise
            # Put, but no sync will be awaited: it may still become durable with a
            # later one. The proposer must count it as maybe applied.
            raise SyncFailed(reason=f"could not wait for the group commit: {exc.code}") from exc
        return reply_when_durable(waiter, reply)

    def _put(
        self,
        partition: int,
        key: bytes,
        state: AcceptorState,
        record: Record | None,
        old: Record | None,
    ) -> None:
        self.storage.put_paxos(partition, key, encode_state(state), record=record)
        if record is not None:
            self.replica.quarantine.release(partition, key)
            trees = self.replica.trees  # anti-entropy's, kept on every stored record
            if trees is not None:
                trees.on_write(partition, key, old, record)

    # -- checks --------------------------------------------------------------------------

    def _check_route(self, message: PxPrepare | PxPropose | PxRead) -> None:
        lists = message.lists
        id_max = self.replica.bounds.node_id_bytes_max
        if len(lists) > 2 or any(
            len(nodes) > REPLICAS_MAX or any(len(n) > id_max for n in nodes) for nodes in lists
        ):
            raise RemoteProtocolError(
                f"invalid Paxos request: home lists {len(lists)} (at most 2) of at most "
                f"{REPLICAS_MAX} node ids of at most {id_max} characters"
            )
        routes = self.routes
        if routes is None:
            return
        ring, change = routes()
        newest = newest_list(ring, change, message.partition)
        problem = fence_problem(message.epoch, lists, ring=ring, newest=newest)
        if problem is not None:
            self.fenced += 1
            raise StaleRouting(reason=problem)

    def _check_address(self, partition: int, key: bytes) -> None:
        key_bytes_max = self.replica.key_bytes_max
        if not 1 <= len(key) <= key_bytes_max:
            raise RemoteProtocolError(
                f"invalid Paxos request: key of {len(key)} bytes is outside 1..{key_bytes_max}"
            )
        if partition != partition_of(key, self.replica.partition_count):
            raise RemoteProtocolError(
                f"invalid Paxos request: partition {partition} is not the key's partition"
            )

    def _ceiling(self) -> int:
        bounds = self.replica.bounds
        return hlc_ceiling(self.replica.clock.now_ms(), bounds.clock_offset_ms_max)

    def _check_ballot(self, ballot: Ballot) -> None:
        problem = ballot_problem(ballot, self._ceiling(), self.replica.bounds.node_id_bytes_max)
        if problem is not None:
            raise RemoteProtocolError(f"invalid Paxos ballot: {problem}")

    def _check_decree(self, decree: Decree, sender: str) -> None:
        self._check_ballot(decree.ballot)
        problem = decree_problem(decree)
        if problem is not None:
            raise RemoteProtocolError(f"invalid Paxos decree from peer {sender}: {problem}")
        problem = self.replica.check_peer_record(sender, decree.proposal.record)
        if problem is not None:
            raise RemoteProtocolError(f"invalid record from peer {sender}: {problem}")

    def _observe(self, ballot: Ballot) -> None:
        # Checked against the ceiling already: our own next ballots start above it.
        self.replica.hlc.observe(ballot.timestamp, self._ceiling())

    def _observe_record(self, record: Record) -> None:
        self.replica.hlc.observe(record.max_timestamp(), self._ceiling())


def reply_problem(replica: LocalReplica, node: str, reply: PxReply) -> str | None:
    """Why a Paxos reply from ``node`` cannot be used by a proposer, or None: the
    acceptor's checks, the other way round (a bad record is reported against it)."""
    if isinstance(reply, PxReject):
        ceiling = hlc_ceiling(replica.clock.now_ms(), replica.bounds.clock_offset_ms_max)
        return ballot_problem(reply.promised, ceiling, replica.bounds.node_id_bytes_max)
    if not isinstance(reply, PxPromise | PxSnapshot):
        return None
    for decree in (reply.accepted, reply.committed):
        if decree is not None:
            problem = decree_problem(decree) or replica.check_peer_record(
                node, decree.proposal.record
            )
            if problem is not None:
                return problem
    if reply.record is not None:
        return replica.check_peer_record(node, reply.record)
    return None


def failure_is_definite(error: BaseException) -> bool:
    """Did this failed call certainly leave nothing applied (``net.rpc``'s contract)?"""
    if isinstance(error, RpcTimeout | SyncFailed | StorageFull):
        return False  # sent and unanswered, or put but not known durable
    if isinstance(error, RemoteError):
        return error.remote_code not in _MAYBE_APPLIED_CODES
    # PeerUnreachable, Overloaded, refusals: not applied. Anything outside the
    # contract is treated as maybe applied.
    return isinstance(error, DynakvError)


_MAYBE_APPLIED_CODES: Final = frozenset({SyncFailed.code, StorageFull.code})
