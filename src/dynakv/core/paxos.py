"""Per-key Paxos, Cassandra lightweight-transaction style: ballots, proposals, the acceptor.

Every key has, on each of its home replicas, one ``AcceptorState``: the
highest ballot it ``promised``, the last proposal it ``accepted`` (with the
ballot it was accepted at), and the latest proposal it saw ``committed``.
The node keeps that state in storage beside the key; this module only says
how it changes (``on_prepare``, ``on_propose``, ``on_commit``), what the
messages look like (tagged ``px...`` msgspec Structs) and how the proposer
reads a quorum of promises or snapshots (``summarize``). ``core.lwt`` is the proposer.

The register is not one decree but a chain of them, as in Cassandra: each
chosen proposal is built on the one chosen before it (its *base*), and the
next round starts from the latest commit. A ``Proposal`` carries its
``origin`` (the ballot it was first proposed at: its identity, kept when
another proposer re-proposes it to finish it) and ``history``, the origins
of the chain before it, newest first, at most ``HISTORY_MAX``. The history
lets a proposer that lost track of its own proposal (a timeout, a rejected
round) learn later whether it was chosen, even after others wrote on top.

Ballots are ``(hlc_timestamp, node_id)``, ordered as tuples; the proposer's
HLC makes them unique and increasing. ``ZERO_BALLOT`` is below every real one.

Acceptor rules (the safety of Paxos rests on exactly these):

- prepare(b): promise iff ``b > promised``, reporting what was accepted and
  committed; else reject naming ``promised``. Strictly higher, so no two
  proposers ever hold a quorum of promises for one ballot, even if a node
  reused a ballot (a duplicated prepare is refused; its first copy counted).
- propose(b, p): accept iff ``b >= promised``; ``promised`` becomes ``b``. The
  accepted ballot therefore never decreases and an accepted value is only
  ever replaced by one at a higher or equal ballot, never forgotten.
- commit(b, p): always applied (a commit is only sent once ``p`` was chosen);
  ``committed`` moves only forward; ``promised`` rises to ``b``.
- read: report what was accepted and committed, changing nothing
  (``on_read``). It needs no persisting: what it reports is never less than
  what is on disk, and a proposer only relies on a report to say a value is
  chosen (a commit is only sent once it is) or that nothing newer is
  accepted here (see ``core.lwt``).

PERSIST BEFORE SEND: the node must write the new ``AcceptorState`` durably
(the group commit's fsync) before it sends the reply the rule returned. A
promise or an accept that is forgotten after a crash breaks safety: two
values could be chosen. A commit must also be durable before it is acked.
The node applies a committed record to the key's regular record in the same
write batch (so quorum reads see strong writes), and never applies one that
is only accepted.

Must never: do I/O, read a clock, or choose randomly.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Final, Literal

import msgspec

from dynakv.core.homes import HomeLists
from dynakv.core.record import Record, record_problem

HISTORY_MAX: Final = 16
STATE_FORMAT: Final = 1


class Ballot(msgspec.Struct, frozen=True, array_like=True, order=True):
    """A proposer round's number: the proposer's HLC timestamp, then its node id."""

    timestamp: int
    node: str


ZERO_BALLOT: Final = Ballot(0, "")


class Proposal(msgspec.Struct, frozen=True, array_like=True):
    """A value for the key: the whole record it is to hold once chosen."""

    origin: Ballot  # the ballot it was first proposed at; it names the proposal
    record: Record
    history: tuple[Ballot, ...]  # origins of the chain before it, newest first

    def base(self) -> Ballot | None:
        """The origin of the commit it was built on (None: built on an empty key)."""
        return self.history[0] if self.history else None


class Decree(msgspec.Struct, frozen=True, array_like=True):
    """A proposal at a ballot: as proposed, accepted or committed."""

    ballot: Ballot
    proposal: Proposal


class AcceptorState(msgspec.Struct, frozen=True, array_like=True):
    """One replica's Paxos state for one key. Persist it before replying."""

    promised: Ballot = ZERO_BALLOT
    accepted: Decree | None = None
    committed: Decree | None = None


EMPTY_STATE: Final = AcceptorState()


# Messages. Requests name the key (partition, key) like ``ReplicaRead``; replies
# name the ballot they answer, so a proposer drops answers to an older round.


class PxPrepare(msgspec.Struct, frozen=True, array_like=True, tag="pxprepare"):
    partition: int
    key: bytes
    ballot: Ballot
    epoch: int = 0  # the proposer's ring epoch and the home lists it needs majorities
    lists: HomeLists = ()  # of (``core.homes``): the acceptor's fence checks them


class PxPromise(msgspec.Struct, frozen=True, array_like=True, tag="pxpromise"):
    """A promise not to accept below ``ballot``, with what the replica holds:
    its accepted and committed decrees and its regular record of the key."""

    ballot: Ballot
    accepted: Decree | None
    committed: Decree | None
    record: Record | None


class PxRead(msgspec.Struct, frozen=True, array_like=True, tag="pxread"):
    """What the replica holds for the key, changing nothing: no promise, no disk write.
    ``ballot`` only names the proposer's round, so it can drop older answers."""

    partition: int
    key: bytes
    ballot: Ballot
    epoch: int = 0  # as on ``PxPrepare``
    lists: HomeLists = ()


class PxSnapshot(msgspec.Struct, frozen=True, array_like=True, tag="pxsnapshot"):
    """The answer to ``PxRead``: a promise's report without the promise, and without
    what the proposer cannot use (``on_read``): ``accepted`` is None when it is not
    above ``committed``, ``record`` is None when it is ``committed``'s record."""

    ballot: Ballot
    accepted: Decree | None
    committed: Decree | None
    record: Record | None


class PxReject(msgspec.Struct, frozen=True, array_like=True, tag="pxreject"):
    """A prepare or propose at ``ballot`` refused: the replica promised ``promised``.

    It answers one copy of one request: if the network delivered a request twice,
    another copy may have been accepted, so a reject never proves "not accepted"."""

    ballot: Ballot
    promised: Ballot
    phase: Literal["prepare", "propose"]


class PxPropose(msgspec.Struct, frozen=True, array_like=True, tag="pxpropose"):
    partition: int
    key: bytes
    decree: Decree
    epoch: int = 0  # as on ``PxPrepare``
    lists: HomeLists = ()


class PxAccepted(msgspec.Struct, frozen=True, array_like=True, tag="pxaccepted"):
    ballot: Ballot


class PxCommit(msgspec.Struct, frozen=True, array_like=True, tag="pxcommit"):
    partition: int
    key: bytes
    decree: Decree


class PxCommitted(msgspec.Struct, frozen=True, array_like=True, tag="pxcommitted"):
    ballot: Ballot


PxRequest = PxPrepare | PxPropose | PxCommit | PxRead
PxReply = PxPromise | PxReject | PxAccepted | PxCommitted | PxSnapshot
PxMessage = (
    PxPrepare
    | PxPromise
    | PxReject
    | PxPropose
    | PxAccepted
    | PxCommit
    | PxCommitted
    | PxRead
    | PxSnapshot
)
# What a replica reports of a key: its accepted and committed decrees, its record.
PxReport = PxPromise | PxSnapshot


def on_prepare(
    state: AcceptorState, ballot: Ballot, record: Record | None = None
) -> tuple[AcceptorState, PxPromise | PxReject]:
    """Promise ``ballot`` if it is above every ballot promised. ``record`` is the replica's
    regular record of the key, carried in the promise so a strong read is one round.
    Persist the returned state before sending the reply."""
    assert ballot > ZERO_BALLOT, ballot
    if ballot <= state.promised:
        return state, PxReject(ballot, state.promised, "prepare")
    new_state = msgspec.structs.replace(state, promised=ballot)
    return new_state, PxPromise(ballot, state.accepted, state.committed, record)


def on_propose(state: AcceptorState, decree: Decree) -> tuple[AcceptorState, PxAccepted | PxReject]:
    """Accept ``decree`` unless a higher ballot was promised. Persist before replying."""
    ballot = decree.ballot
    assert ballot > ZERO_BALLOT, ballot
    if ballot < state.promised:
        return state, PxReject(ballot, state.promised, "propose")
    assert state.accepted is None or state.accepted.ballot <= ballot, "accepted never goes back"
    new_state = msgspec.structs.replace(state, promised=ballot, accepted=decree)
    return new_state, PxAccepted(ballot)


def on_commit(state: AcceptorState, decree: Decree) -> AcceptorState:
    """Learn that ``decree`` was chosen. Unconditional; only a newer commit replaces the
    last one. The accepted decree is kept (its ballot must never go back). Persist
    (and merge the record into the key's regular record) before acking."""
    committed = state.committed
    if committed is not None and decree.ballot <= committed.ballot:
        return state
    return AcceptorState(
        promised=max(state.promised, decree.ballot),
        accepted=state.accepted,
        committed=decree,
    )


def on_read(state: AcceptorState, ballot: Ballot, record: Record | None = None) -> PxSnapshot:
    """Report ``state`` and ``record`` for a read round at ``ballot``; the state does not
    change, so nothing is persisted (see ``core.lwt`` for why a read may use it).

    Leaves out what ``summarize`` and a merge would ignore, so a settled key's
    snapshot carries one record, not three: an accepted decree not above the
    committed one (``summarize`` ignores accepted decrees not above the latest
    commit, which is at least this one), and a regular record equal to the
    committed one (the latest commit descends from it: merging it adds nothing)."""
    accepted, committed = state.accepted, state.committed
    if committed is not None:
        if accepted is not None and accepted.ballot <= committed.ballot:
            accepted = None
        if record is not None and record == committed.proposal.record:
            record = None
    return PxSnapshot(ballot, accepted, committed, record)


def merge_states(state: AcceptorState, copied: AcceptorState) -> AcceptorState:
    """``state`` with ``copied`` (another replica's state of the key, streamed to this new
    replica in a ring change, ``core.homes`` rule 3) folded in: the higher promise, and
    for accepted and committed the decree at the higher ballot. As if this replica had
    also received what the other one did: it reports more, never less, and every decree
    it reports was really proposed at its ballot, which is all a proposer relies on."""
    accepted, committed = state.accepted, state.committed
    if copied.accepted is not None and (
        accepted is None or copied.accepted.ballot > accepted.ballot
    ):
        accepted = copied.accepted
    if copied.committed is not None and (
        committed is None or copied.committed.ballot > committed.ballot
    ):
        committed = copied.committed
    promised = max(state.promised, copied.promised)
    if (promised, accepted, committed) == (state.promised, state.accepted, state.committed):
        return state
    return AcceptorState(promised=promised, accepted=accepted, committed=committed)


def summarize(promises: Iterable[PxReport]) -> tuple[Decree | None, Decree | None]:
    """``(head, in_progress)`` from a quorum of promises (or snapshots).

    ``head`` is the latest commit any of them saw (the chain's newest link). A
    proposal accepted at a higher ballot than ``head`` and not ``head`` itself
    (re-proposed to finish it) is ``in_progress``: it may have been chosen, so it
    must be finished (re-proposed, then committed) before anything else.
    """
    head: Decree | None = None
    top: Decree | None = None
    for promise in promises:
        committed, accepted = promise.committed, promise.accepted
        if committed is not None and (head is None or committed.ballot > head.ballot):
            head = committed
        if accepted is not None and (top is None or accepted.ballot > top.ballot):
            top = accepted
    if top is None:
        return head, None
    if head is not None and (
        top.ballot <= head.ballot or top.proposal.origin == head.proposal.origin
    ):
        return head, None
    return head, top


def chain_of(head: Decree | None) -> tuple[Ballot, ...]:
    """The history for a proposal built on ``head``: its origin, then its history."""
    if head is None:
        return ()
    return (head.proposal.origin, *head.proposal.history)[:HISTORY_MAX]


class Fate(Enum):
    """What became of a proposal, as a later round's promises tell it."""

    CHOSEN = "chosen"  # in the chain: it was applied
    LIVE = "live"  # not chosen yet; may still be (the chain has not moved past its base)
    DEAD = "dead"  # never chosen, and never can be
    UNDETERMINED = "undetermined"  # the history is too short to tell


def fate(proposal: Proposal, head: Decree | None) -> Fate:
    """The fate of ``proposal`` given the latest commit ``head``, when a quorum of
    promises shows nothing in progress (``summarize``)."""
    base = proposal.base()
    if head is None:
        # No commit anywhere: nothing was ever chosen, so its base must be empty too.
        return Fate.LIVE if base is None else Fate.UNDETERMINED
    known = (head.proposal.origin, *head.proposal.history)
    if proposal.origin in known:
        return Fate.CHOSEN
    if base == head.proposal.origin:
        return Fate.LIVE
    # The chain moved past its base without it. The first value chosen after the
    # base does not descend from it, and no proposal above a chosen ballot is off
    # the chosen value's line, so it was only ever accepted below that ballot: no
    # quorum of promises will ever report it as the newest accepted value again.
    complete = len(head.proposal.history) < HISTORY_MAX  # back to an empty key
    if base in known or (base is None and complete):
        return Fate.DEAD
    return Fate.UNDETERMINED


def ballot_problem(ballot: Ballot, ceiling: int, node_bytes_max: int = 128) -> str | None:
    """Why a ballot from a peer cannot be used, or None. ``ceiling`` is
    ``versions.hlc_ceiling`` at this node: a ballot far in the future would let
    one proposer lock everyone else out of the key."""
    if ballot <= ZERO_BALLOT or not ballot.node:
        return "the zero ballot, or a ballot with no node"
    if ballot.timestamp > ceiling:
        return f"ballot timestamp {ballot.timestamp} is ahead of this node's clock"
    if len(ballot.node) > node_bytes_max:
        return f"ballot names a node id of {len(ballot.node)} characters"
    return None


def decree_problem(decree: Decree) -> str | None:
    """Why a decree from outside (a peer or the disk) breaks the invariants, or None.
    Record bounds (sizes, clock offsets) are the node's to check with ``RecordBounds``."""
    proposal = decree.proposal
    if decree.ballot <= ZERO_BALLOT or proposal.origin <= ZERO_BALLOT:
        return "a decree names the zero ballot"
    if proposal.origin > decree.ballot:
        return "a proposal's origin is after the ballot it is proposed at"
    if len(proposal.history) > HISTORY_MAX:
        return f"history of {len(proposal.history)} entries; the limit is {HISTORY_MAX}"
    if any(entry >= proposal.origin for entry in proposal.history):
        return "a proposal's history names a ballot not before its origin"
    return record_problem(proposal.record)


def state_problem(state: AcceptorState) -> str | None:
    """Why a stored acceptor state breaks the invariants, or None."""
    for decree in (state.accepted, state.committed):
        if decree is None:
            continue
        if decree.ballot > state.promised:
            return "a decree is above the promised ballot"
        problem = decree_problem(decree)
        if problem is not None:
            return problem
    return None


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(AcceptorState)


def encode_state(state: AcceptorState) -> bytes:
    assert state_problem(state) is None, state_problem(state)
    return bytes((STATE_FORMAT,)) + _encoder.encode(state)


def decode_state(data: bytes) -> AcceptorState:
    """Decode a stored acceptor state; raises ValueError on anything malformed."""
    if not data or data[0] != STATE_FORMAT:
        raise ValueError(f"unknown acceptor state format byte {data[:1]!r}")
    try:
        state = _state_decoder.decode(data[1:])
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed acceptor state: {exc}") from exc
    problem = state_problem(state)
    if problem is not None:
        raise ValueError(f"invalid acceptor state: {problem}")
    return state
