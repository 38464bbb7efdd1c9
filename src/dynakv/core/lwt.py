"""One ``strong`` operation on one key, as a pure proposer state machine (Cassandra LWT).

The shell builds a ``StrongOperation`` (a read, or a write with an optional
condition), calls ``start(ballot, now_ms)``, carries out the actions it gets
back (``Send`` a px message to a home replica; ``Retry``: after a random delay
in ``[after_ms_min, after_ms_max]``, call ``start`` again with a fresh ballot
above ``ballot_floor``; ``Done``: answer the client), and feeds back every
reply (``on_message``), every failed call (``on_failure``, definite or not)
and the request's deadline (``on_deadline``). Only the key's home replicas
take part, never fallbacks; a quorum is a majority of them.

A round (one ballot):

1. prepare: send ``PxPrepare`` to every home replica; wait for a quorum of
   promises. Each promise carries the replica's accepted and committed
   decrees and its regular record, so a read needs no separate read round.
2. If a proposal accepted above the latest commit is reported, it may have
   been chosen: re-propose it at our ballot, commit it, and start a new round
   (Cassandra's in-progress repair). If it is our own, finishing it is our
   answer.
3. Otherwise the current value is the merge of the latest commit and the
   promisers' regular records. A read answers it; a condition is checked on
   its ETag (``core.etag``): if it fails, the answer is ``ConditionFailed``
   with the current ETag and nothing is written; else the caller's ``mint``
   builds the new record on top of the current one, and it is proposed.
4. propose: ``PxPropose`` to every home replica; a quorum of accepts means the
   value is chosen. commit: ``PxCommit`` to every home replica.

A read starts with a cheaper round: ``PxRead`` asks every home replica for
what it holds (accepted and committed decrees, regular record) without a
promise, so no replica writes anything. If a quorum of snapshots shows
nothing in progress and no weak write the chain lacks, the latest commit is
the answer; otherwise the read runs the round above at the same ballot.

Decisions (``docs/consistency.md`` is written from these):

- A read answered from snapshots (no promise, no disk write) is
  linearizable, ordered at the moment its last snapshot was taken. Its
  answer, the latest commit ``head`` seen, was chosen (a commit is only sent
  once chosen), so every later operation sees it or a successor. Nothing
  newer was chosen before the read began: such a value was accepted by a
  quorum, which meets the snapshot quorum in a replica that accepted it
  before it answered, and an accepted ballot never goes back, so that
  replica reports an accepted decree above ``head`` and the read falls back
  to a prepare round (which finishes it). A snapshot may report state not
  yet durable; that is safe because the read only relies on "chosen" (true
  whatever that replica's disk holds) and on "nothing newer accepted here"
  (memory never holds less than the disk). Cost: one round trip and no
  fsync anywhere, like a quorum read.
- Reads that need the full round take one round trip (prepare/promise) when
  nothing is in progress and no weak write waits (below): no propose, unlike
  Cassandra v1's SERIAL read. Linearizable, ordering the read at its ballot b: every value chosen
  below b was accepted by a quorum, which meets our promise quorum in a
  replica that accepted before it promised (else it would have refused the
  accept), so we see it committed or in progress, and finish it before
  answering. Once our quorum has promised, no quorum can accept below b, so
  anything chosen afterwards is chosen above b: after the read. A proposal
  we missed (accepted only outside our quorum) was not chosen, and if a
  repair chooses it later, that is after us too; its own proposer cannot
  have answered success. Cassandra proposes an empty value on reads because
  v1 read the table apart from the Paxos state; our promise carries both.
  A failed condition answers the same way.
- A write answers after a quorum of commit acks (Cassandra v1's commit at
  QUORUM), one round trip more than needed for linearizability, so that a
  strong write once acknowledged is visible to ``quorum`` reads too (the
  node merges a commit into the key's regular record). If the commits do not
  reach a quorum in time the write was still chosen: it answers ``Written``
  with ``commits_acked`` below the quorum, never "unknown".
- Strong and weak writes on one key: strong operations read the merge of the
  latest commit *and* the promisers' regular records, so weak (one/quorum/all)
  writes are visible to them, merged by the key's policy (under ``lww`` a weak
  write stamped before the latest commit loses to it; one stamped after wins).
  To keep strong operations linearizable among themselves, a strong operation
  that sees a weak write the chain does not hold yet *absorbs* it: a write
  builds on it anyway; a read or a failed condition proposes the merged record
  unchanged and answers once it is chosen (one more round trip). So a weak
  write takes effect, for strong operations, at the first strong operation
  that sees it (possibly long after it was acknowledged, or never, if it
  only ever lives outside every quorum asked): weak writes are not
  linearizable, strong operations stay linearizable, and once one strong
  operation saw a weak write every later one does.
- Own proposals: an operation has at most one live proposal of its own. A
  round that fails after our propose was sent does not forget it: the next
  round finds it chosen (its origin is in the latest commit's history), still
  possible (the chain has not moved past its base: propose it again), or dead
  (the chain moved on without it: a value chosen at a higher ballot that does
  not descend from it means it can never be chosen), and only then builds a
  new one. So a write is never applied twice and never reported failed when
  it may still be applied. When the history is too short to tell, the answer
  is ``Unknown``.
- Failures: ``Tally`` tells accepts/promises from definite failures (refused,
  unreachable: nothing applied there) and unknown ones (timeouts). When more
  home replicas are unreachable than a quorum allows, the answer is an
  immediate ``Unavailable`` (the minority side of a partition never waits);
  a reject or a timeout retries after a randomized, growing backoff, at most
  ``rounds_max`` rounds, then ``Contended`` / ``Unavailable``, or ``Unknown``
  whenever our own proposal was sent and not since proven chosen or dead. A
  reject never proves a replica does not hold it: it answers one copy of a
  request, and a network may deliver two.

Message counts without contention, N home replicas (requests + replies):
read 2N in 1 round trip and no disk write (snapshots; +2N and a round trip,
with N durable promises, when it must prepare); write 6N in 3 (prepare,
propose, commit);
+2N (and a round trip) to absorb a weak write on a read or failed condition;
+4N and a restart for each in-progress repair.

Invariants: one ballot per round and one proposal per ballot; each replica
answers a phase at most once; a decided operation never changes its answer.
Must never: do I/O, read a clock, choose randomly, or report a write failed
while a proposal of it may still be chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from dynakv.core.etag import Condition, condition_holds, etag_of
from dynakv.core.homes import Homes, single_list
from dynakv.core.paxos import (
    ZERO_BALLOT,
    Ballot,
    Decree,
    Fate,
    Proposal,
    PxAccepted,
    PxCommit,
    PxCommitted,
    PxPrepare,
    PxPromise,
    PxPropose,
    PxRead,
    PxReject,
    PxReply,
    PxReport,
    PxRequest,
    PxSnapshot,
    chain_of,
    fate,
    summarize,
)
from dynakv.core.quorum import JointTally, Outcome, Tally
from dynakv.core.record import ConflictPolicy, Record, merge

Mint = Callable[[Record | None], Record]


# Results: what the operation answers.


@dataclass(frozen=True, slots=True)
class Found:
    """A strong read: the current record (None: no record) and its ETag."""

    record: Record | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class Written:
    """The write was chosen; ``record`` is the version it wrote."""

    record: Record
    etag: str | None
    commits_acked: int


@dataclass(frozen=True, slots=True)
class ConditionFailed:
    """The condition was false (HTTP 412); nothing was written."""

    record: Record | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Nothing was applied: too few home replicas answered (HTTP 503)."""

    reason: str
    required: int
    answered: int


@dataclass(frozen=True, slots=True)
class Contended:
    """Nothing was applied: other proposers kept winning for ``rounds`` rounds (503)."""

    rounds: int


@dataclass(frozen=True, slots=True)
class Unknown:
    """Our write may or may not be chosen, now or later (HTTP 504)."""

    reason: str


StrongResult = Found | Written | ConditionFailed | Unavailable | Contended | Unknown


# Actions: what the shell does.


@dataclass(frozen=True, slots=True)
class Send:
    node: str
    message: PxRequest


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait a random time in ``[after_ms_min, after_ms_max]``, then ``start`` again
    with a ballot above ``ballot_floor`` (observe its timestamp in the HLC first)."""

    after_ms_min: int
    after_ms_max: int
    ballot_floor: Ballot


@dataclass(frozen=True, slots=True)
class Done:
    result: StrongResult


Action = Send | Retry | Done


class _Phase(Enum):
    IDLE = auto()  # not started, or waiting to retry
    READ = auto()  # a read's snapshot round: no promise asked
    PREPARE = auto()
    PROPOSE = auto()
    COMMIT = auto()
    DONE = auto()


class _Purpose(Enum):
    OWN = auto()  # our write: chosen means written
    REPAIR = auto()  # another's in-progress proposal: finish it, then a new round
    ABSORB = auto()  # the current record unchanged: a read or failed condition saw weak writes


class StrongOperation:
    """One strong read or (conditional) write of one key. See the module docstring."""

    def __init__(
        self,
        *,
        partition: int,
        key: bytes,
        policy: ConflictPolicy,
        replicas: tuple[str, ...] = (),
        homes: Homes | None = None,
        mint: Mint | None = None,
        condition: Condition | None = None,
        rounds_max: int = 8,
        backoff_ms_base: int = 4,
        backoff_ms_max: int = 200,
        snapshot_reads: bool = True,
    ) -> None:
        """``snapshot_reads``: a read starts with a ``PxRead`` round (False: it always
        prepares, as writes do). ``mint`` (None for a read) builds the new record on
        top of the current one with ``make_write`` and ``context_of(current)`` (the
        caller's HLC observes the current record first). If it raises (say
        ``InsufficientStorage``), nothing of this operation can be chosen any more: the
        shell answers with that error. ``homes`` (``core.homes``): whom to ask and the
        majorities needed, joint during a ring change; without it, ``replicas`` on a
        static ring (a majority of them)."""
        if homes is None:
            homes = single_list(replicas)
        assert mint is not None or condition is None, "a read has no condition"
        assert rounds_max >= 1 and 0 < backoff_ms_base <= backoff_ms_max
        self.partition = partition
        self.key = key
        self._phase = _Phase.IDLE
        self.rehome(homes)
        self.policy = policy
        self.mint = mint
        self.condition = condition
        self.rounds_max = rounds_max
        self.backoff_ms_base = backoff_ms_base
        self.backoff_ms_max = backoff_ms_max
        self.snapshot_reads = snapshot_reads and mint is None
        self.rounds = 0
        self.result: StrongResult | None = None
        self._phase = _Phase.IDLE
        self._purpose = _Purpose.OWN
        self._ballot = ZERO_BALLOT
        self._floor = ZERO_BALLOT
        self._now_ms = 0
        self._tally = self._new_tally()
        self._promises: dict[str, PxReport] = {}
        self._rejected = self._timed_out = 0
        self._unreachable: set[str] = set()
        self._decree: Decree | None = None
        self._answer: Found | ConditionFailed | None = None  # after absorbing
        self._own: Proposal | None = None
        self._own_exposed = False  # some replica may hold our own proposal

    @property
    def own_record(self) -> Record | None:
        """The record our write proposes (while it may be chosen), else None."""
        return self._own.record if self._own is not None else None

    @property
    def may_have_written(self) -> bool:
        """Could our write be chosen (now or later)? Abandoning now is ``Unknown``."""
        return self._own is not None and self._own_exposed

    def rehome(self, homes: Homes) -> None:
        """Route the next rounds by ``homes`` (a ring change opened or ended since the
        last one). Each round uses one quorum system; our own proposal's fate is read
        from the next round's quorum, whichever system it is."""
        assert self._phase is _Phase.IDLE, "only between rounds"
        assert homes.targets and len(set(homes.targets)) == len(homes.targets), homes
        self.homes = homes
        self.replicas = homes.targets
        self.quorum = max(needed for _, needed in homes.groups)

    def start(self, ballot: Ballot, now_ms: int) -> list[Action]:
        """Begin a round at ``ballot`` (above every ballot this operation has seen)."""
        assert self._phase is _Phase.IDLE, self._phase
        assert ballot > self._floor and ballot > self._ballot, (ballot, self._floor)
        self.rounds += 1
        self._ballot, self._now_ms = ballot, now_ms
        homes = self.homes
        if any(len(members) < needed for members, needed in homes.groups):
            # A removed node's list: its survivors cannot make a majority of it.
            self._unreachable = set(self.replicas)
            return self._give_up(contended=False, reason="too few home replicas left")
        if self.snapshot_reads:
            self._promises = {}
            self._enter(_Phase.READ)
            read = PxRead(self.partition, self.key, ballot, homes.epoch, homes.lists)
            return [Send(node, read) for node in self.replicas]
        return self._prepare()

    def _prepare(self) -> list[Action]:
        self._promises = {}
        self._enter(_Phase.PREPARE)
        homes = self.homes
        prepare = PxPrepare(self.partition, self.key, self._ballot, homes.epoch, homes.lists)
        return [Send(node, prepare) for node in self.replicas]

    def _new_tally(self) -> Tally:
        groups = self.homes.groups
        if len(groups) == 1:
            return Tally(self.replicas, self.quorum)
        return JointTally(self.replicas, groups)

    def on_message(self, node: str, message: PxReply) -> list[Action]:
        """A reply from ``node``. Replies to older rounds, duplicates and replies after
        the answer are ignored."""
        phase = self._phase
        if phase is _Phase.DONE or phase is _Phase.IDLE:
            return []
        decree = self._decree
        expected = decree.ballot if phase is _Phase.COMMIT and decree is not None else self._ballot
        if message.ballot != expected or node not in self._tally.pending:
            return []
        if isinstance(message, PxReject):
            if phase is _Phase.READ:
                return []  # a read asks no promise: nothing to refuse
            if message.phase != ("prepare" if phase is _Phase.PREPARE else "propose"):
                return []
            self._floor = max(self._floor, message.promised)
            self._rejected += 1
            self._tally.on_definite_failure(node)
        elif isinstance(message, PxPromise):
            if phase is not _Phase.PREPARE:
                return []
            self._promises[node] = message
            self._tally.on_success(node)
        elif isinstance(message, PxSnapshot):
            if phase is not _Phase.READ:
                return []
            self._promises[node] = message
            self._tally.on_success(node)
        elif isinstance(message, PxAccepted):
            if phase is not _Phase.PROPOSE:
                return []
            self._tally.on_success(node)
        elif isinstance(message, PxCommitted):
            if phase is not _Phase.COMMIT:
                return []
            self._tally.on_success(node)
        else:
            raise AssertionError(f"not a px reply: {type(message).__name__}")
        return self._advance()

    def on_failure(self, node: str, request: PxRequest, *, definite: bool) -> list[Action]:
        """The call carrying ``request`` to ``node`` failed: ``definite`` if it certainly
        was not applied (unreachable, refused), else it timed out."""
        if not self._is_current(request) or node not in self._tally.pending:
            return []
        if definite:
            self._unreachable.add(node)
            self._tally.on_definite_failure(node)
        else:
            self._timed_out += 1
            self._tally.on_unknown_failure(node)
        return self._advance()

    def on_deadline(self) -> list[Action]:
        """The request's time is up: answer with what is known now."""
        if self._phase is _Phase.DONE:
            return []
        if self._phase is _Phase.COMMIT and self._purpose is _Purpose.OWN:
            return self._written()
        return self._give_up(contended=False, reason="the deadline passed")

    def _is_current(self, request: PxRequest) -> bool:
        if isinstance(request, PxPrepare):
            return self._phase is _Phase.PREPARE and request.ballot == self._ballot
        if isinstance(request, PxRead):
            return self._phase is _Phase.READ and request.ballot == self._ballot
        expected = _Phase.PROPOSE if isinstance(request, PxPropose) else _Phase.COMMIT
        return self._phase is expected and request.decree == self._decree

    def _enter(self, phase: _Phase) -> None:
        self._phase = phase
        self._tally = self._new_tally()
        self._rejected = self._timed_out = 0
        self._unreachable = set()

    def _advance(self) -> list[Action]:
        outcome = self._tally.outcome()
        if outcome is Outcome.PENDING:
            return []
        if self._phase is _Phase.COMMIT:
            return self._on_committed()
        if outcome is not Outcome.SUCCEEDED:
            return self._on_round_failed()
        if self._phase is _Phase.READ:
            return self._on_snapshots()
        if self._phase is _Phase.PREPARE:
            return self._on_promised()
        return self._on_chosen()

    def _on_snapshots(self) -> list[Action]:
        """A read's quorum of snapshots: answer the latest commit if nothing is in
        progress and no weak write waits to be absorbed; else prepare at this ballot
        (unused so far: no replica was asked to promise it)."""
        head, in_progress = summarize(self._promises[n] for n in sorted(self._promises))
        if in_progress is None:
            current = self._current(head)
            if current == (head.proposal.record if head is not None else None):
                return self._finish(Found(current, etag_of(current, self._now_ms))) + (
                    self._refresh_commits(head)
                )
        return self._prepare()

    def _current(self, head: Decree | None) -> Record | None:
        """The latest commit merged with the reporting replicas' regular records."""
        current = head.proposal.record if head is not None else None
        for node in sorted(self._promises):
            current = merge(current, self._promises[node].record, self.policy)
        return current

    def _on_promised(self) -> list[Action]:
        head, in_progress = summarize(self._promises[n] for n in sorted(self._promises))
        own = self._own
        if in_progress is not None:
            if own is not None and in_progress.proposal.origin == own.origin:
                return self._propose(own, _Purpose.OWN)
            return self._propose(in_progress.proposal, _Purpose.REPAIR)
        if own is not None:
            status = fate(own, head)
            if status is Fate.CHOSEN:
                assert head is not None
                return self._commit(head, _Purpose.OWN)
            if status is Fate.LIVE:
                return self._propose(own, _Purpose.OWN)
            if status is Fate.UNDETERMINED:
                return self._finish(Unknown("our proposal fell out of the key's history"))
            self._own, self._own_exposed = None, False  # dead: it can never be chosen
        return self._evaluate(head)

    def _evaluate(self, head: Decree | None) -> list[Action]:
        head_record = head.proposal.record if head is not None else None
        current = self._current(head)
        etag = etag_of(current, self._now_ms)
        answer: Found | ConditionFailed
        if self.mint is None:
            answer = Found(current, etag)
        elif not condition_holds(self.condition, etag):
            answer = ConditionFailed(current, etag)
        else:
            record = self.mint(current)
            assert merge(current, record, self.policy) == record, "mint must build on current"
            self._own = Proposal(self._ballot, record, chain_of(head))
            self._own_exposed = False
            return self._propose(self._own, _Purpose.OWN)
        if current != head_record:
            assert current is not None
            self._answer = answer  # a weak write the chain lacks: absorb it first
            return self._propose(Proposal(self._ballot, current, chain_of(head)), _Purpose.ABSORB)
        return self._finish(answer) + self._refresh_commits(head)

    def _refresh_commits(self, head: Decree | None) -> list[Action]:
        """Fire-and-forget commits of ``head`` to promisers that lack it (helps quorum
        reads and the next round; the answer does not wait for them)."""
        if head is None:
            return []
        commit = PxCommit(self.partition, self.key, head)
        return [
            Send(node, commit)
            for node in sorted(self._promises)
            if self._promises[node].committed != head
        ]

    def _propose(self, proposal: Proposal, purpose: _Purpose) -> list[Action]:
        self._purpose = purpose
        self._decree = Decree(self._ballot, proposal)
        self._enter(_Phase.PROPOSE)
        if purpose is _Purpose.OWN:
            # Exposed until a later round proves it chosen or dead: no answer to this
            # round can prove a replica does not hold it (a reject answers one copy of
            # the request; the network may have delivered another).
            self._own_exposed = True
        homes = self.homes
        propose = PxPropose(self.partition, self.key, self._decree, homes.epoch, homes.lists)
        return [Send(node, propose) for node in self.replicas]

    def _on_chosen(self) -> list[Action]:
        decree = self._decree
        assert decree is not None
        if self._purpose is _Purpose.ABSORB:
            assert self._answer is not None
            commit = PxCommit(self.partition, self.key, decree)
            return self._finish(self._answer) + [Send(node, commit) for node in self.replicas]
        return self._commit(decree, self._purpose)

    def _commit(self, decree: Decree, purpose: _Purpose) -> list[Action]:
        self._purpose = purpose
        if purpose is _Purpose.OWN:
            self._own_exposed = True  # chosen
        self._decree = decree
        self._enter(_Phase.COMMIT)
        commit = PxCommit(self.partition, self.key, decree)
        return [Send(node, commit) for node in self.replicas]

    def _on_committed(self) -> list[Action]:
        if self._purpose is _Purpose.OWN:
            return self._written()
        # A repair: the chain moved; our operation starts over at a fresh ballot.
        self._phase = _Phase.IDLE
        if self.rounds >= self.rounds_max:
            return self._give_up(contended=True, reason="rounds exhausted")
        return [Retry(0, 0, self._floor_now())]

    def _on_round_failed(self) -> list[Action]:
        self._phase = _Phase.IDLE
        if any(len(members - self._unreachable) < needed for members, needed in self.homes.groups):
            return self._give_up(contended=False, reason="too few home replicas reachable")
        if self.rounds >= self.rounds_max:
            return self._give_up(contended=self._rejected > 0, reason="rounds exhausted")
        bound_ms = min(self.backoff_ms_max, self.backoff_ms_base << min(self.rounds - 1, 16))
        return [Retry(bound_ms // 2, bound_ms, self._floor_now())]

    def _floor_now(self) -> Ballot:
        return max(self._floor, self._ballot)

    def _give_up(self, *, contended: bool, reason: str) -> list[Action]:
        if self.may_have_written:
            return self._finish(Unknown(f"{reason}; our write may still be chosen"))
        if contended:
            return self._finish(Contended(self.rounds))
        answered = len(self.replicas) - len(self._unreachable) - self._timed_out
        return self._finish(Unavailable(reason, self.quorum, answered))

    def _written(self) -> list[Action]:
        own = self._own
        assert own is not None
        return self._finish(
            Written(own.record, etag_of(own.record, self._now_ms), self._tally.acked)
        )

    def _finish(self, result: StrongResult) -> list[Action]:
        assert self.result is None, (self.result, result)
        self.result = result
        self._phase = _Phase.DONE
        return [Done(result)]
