"""The strong operation's flows, driven by hand against three real acceptors.

``Replicas`` applies the real ``core.paxos`` rules; ``drive`` carries out an
operation's actions in order (replies delivered at once, unless a test makes
a replica unreachable, silent, or holds its replies), so each test reads as
the message trace it checks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dynakv.core import paxos
from dynakv.core.etag import Condition, IfAbsent, IfMatch, etag_of
from dynakv.core.lwt import (
    Action,
    ConditionFailed,
    Contended,
    Done,
    Found,
    Retry,
    Send,
    StrongOperation,
    StrongResult,
    Unavailable,
    Unknown,
    Written,
)
from dynakv.core.paxos import Ballot, Decree, Proposal, PxPropose, PxRequest
from dynakv.core.record import ConflictPolicy, Record, Sibling, context_of, make_write, merge
from dynakv.core.versions import Hlc

NODES = ("r1", "r2", "r3")
NOW_MS = 1_000_000


class Replicas:
    """Three acceptors with their regular records; every message handled is logged."""

    def __init__(self) -> None:
        self.states = dict.fromkeys(NODES, paxos.EMPTY_STATE)
        self.records: dict[str, Record | None] = dict.fromkeys(NODES, None)
        self.log: list[tuple[str, str]] = []

    def handle(self, node: str, request: PxRequest) -> paxos.PxReply:
        self.log.append((node, type(request).__name__))
        state = self.states[node]
        reply: paxos.PxReply
        if isinstance(request, paxos.PxRead):
            return paxos.on_read(state, request.ballot, self.records[node])
        if isinstance(request, paxos.PxPrepare):
            state, reply = paxos.on_prepare(state, request.ballot, self.records[node])
        elif isinstance(request, PxPropose):
            state, reply = paxos.on_propose(state, request.decree)
        else:
            state = paxos.on_commit(state, request.decree)
            committed = request.decree.proposal.record
            self.records[node] = merge(self.records[node], committed, ConflictPolicy.LWW)
            reply = paxos.PxCommitted(request.decree.ballot)
        self.states[node] = state
        return reply

    def sent(self, kind: str) -> list[str]:
        return [node for node, name in self.log if name == kind]


CLOCKS = [Hlc()]  # one HLC shared by every proposer of a test: ballots unique, increasing


@pytest.fixture(autouse=True)
def _fresh_clock() -> None:
    CLOCKS[0] = Hlc()


class Proposer:
    """Ballots and writes minted from an HLC, as a node would."""

    def __init__(self, node: str = "p1") -> None:
        self.node = node
        self.hlc = CLOCKS[0]
        self.now_ms = NOW_MS

    def ballot(self, floor: Ballot = paxos.ZERO_BALLOT) -> Ballot:
        self.hlc.observe(floor.timestamp)
        return Ballot(self.hlc.tick(self.now_ms), self.node)

    def mint(self, value: bytes | None) -> Callable[[Record | None], Record]:
        def build(current: Record | None) -> Record:
            if current is not None:
                self.hlc.observe(current.max_timestamp())
            return make_write(
                current,
                node_id=self.node,
                value=value,
                context=context_of(current),
                timestamp=self.hlc.tick(self.now_ms),
                expires_at_ms=0,
                policy=ConflictPolicy.LWW,
            )

        return build

    def operation(
        self,
        value: bytes | None = None,
        *,
        write: bool = False,
        condition: Condition | None = None,
        rounds_max: int = 8,
    ) -> StrongOperation:
        return StrongOperation(
            partition=0,
            key=b"k",
            replicas=NODES,
            policy=ConflictPolicy.LWW,
            mint=self.mint(value) if write or value is not None else None,
            condition=condition,
            rounds_max=rounds_max,
        )


def drive(
    op: StrongOperation,
    replicas: Replicas,
    actions: list[Action],
    *,
    unreachable: frozenset[str] = frozenset(),
    silent: Callable[[str, PxRequest], bool] = lambda node, request: False,
    dropped: Callable[[str, PxRequest], bool] = lambda node, request: False,
    proposer: Proposer | None = None,
    retries_max: int = 0,
) -> tuple[StrongResult | None, list[Retry]]:
    """Carry out ``actions`` until the operation is done or asks to retry (restarting it
    up to ``retries_max`` times with ``proposer``'s next ballot)."""
    queue = list(actions)
    retries: list[Retry] = []
    for _ in range(10_000):
        if not queue:
            return op.result, retries
        action = queue.pop(0)
        if isinstance(action, Send):
            node, request = action.node, action.message
            if node in unreachable:
                queue += op.on_failure(node, request, definite=True)
            elif dropped(node, request):  # lost on the way: never applied, times out
                queue += op.on_failure(node, request, definite=False)
            elif silent(node, request):
                replicas.handle(node, request)  # applied, but the reply is lost
                queue += op.on_failure(node, request, definite=False)
            else:
                queue += op.on_message(node, replicas.handle(node, request))
        elif isinstance(action, Retry):
            retries.append(action)
            if len(retries) > retries_max or proposer is None:
                return op.result, retries
            queue += op.start(proposer.ballot(action.ballot_floor), proposer.now_ms)
    raise AssertionError("drive did not finish")


def write(replicas: Replicas, value: bytes | None, proposer: Proposer | None = None) -> Written:
    proposer = proposer or Proposer()
    op = proposer.operation(value, write=True)
    start = op.start(proposer.ballot(), NOW_MS)
    result, _ = drive(op, replicas, start, proposer=proposer, retries_max=3)
    assert isinstance(result, Written), result
    return result


def read(replicas: Replicas, proposer: Proposer | None = None) -> Found:
    proposer = proposer or Proposer("reader")
    op = proposer.operation()
    start = op.start(proposer.ballot(), NOW_MS)
    result, _ = drive(op, replicas, start, proposer=proposer, retries_max=3)
    assert isinstance(result, Found), result
    return result


def values(record: Record | None) -> list[bytes]:
    return record.visible_values(NOW_MS) if record is not None else []


# -- happy paths ----------------------------------------------------------------


def test_a_read_of_an_empty_key_is_one_round_trip() -> None:
    replicas = Replicas()
    assert read(replicas) == Found(None, None)
    assert replicas.log == [(n, "PxRead") for n in NODES]


def test_a_read_of_a_settled_key_asks_no_promise_and_changes_no_state() -> None:
    replicas = Replicas()
    written = write(replicas, b"v1")
    before = dict(replicas.states)
    replicas.log.clear()
    found = read(replicas)
    assert values(found.record) == [b"v1"] and found.etag == written.etag
    assert replicas.log == [(n, "PxRead") for n in NODES]
    assert replicas.states == before  # nothing to persist anywhere


def test_a_read_prepares_when_asked_to_and_answers_the_same() -> None:
    replicas = Replicas()
    write(replicas, b"v1")
    replicas.log.clear()
    reader = Proposer("reader")
    op = StrongOperation(
        partition=0, key=b"k", replicas=NODES, policy=ConflictPolicy.LWW, snapshot_reads=False
    )
    result, _ = drive(op, replicas, op.start(reader.ballot(), NOW_MS))
    assert isinstance(result, Found) and values(result.record) == [b"v1"]
    assert replicas.log == [(n, "PxPrepare") for n in NODES]


def test_a_read_whose_snapshots_show_a_proposal_in_progress_prepares_at_the_same_ballot() -> None:
    replicas, reader = Replicas(), Proposer("reader")
    write(replicas, b"v1")
    # Chosen (accepted by r1 and r2) but committed nowhere: the read must return it.
    ballot = Proposer("gone").ballot()
    head = replicas.states["r1"].committed
    assert head is not None
    record = Proposer("gone").mint(b"v2")(head.proposal.record)
    chosen = Decree(ballot, Proposal(ballot, record, paxos.chain_of(head)))
    for node in ("r1", "r2"):
        state, reply = paxos.on_propose(replicas.states[node], chosen)
        assert isinstance(reply, paxos.PxAccepted)
        replicas.states[node] = state
    replicas.log.clear()
    op = reader.operation()
    read_ballot = reader.ballot()
    result, _ = drive(op, replicas, op.start(read_ballot, NOW_MS), proposer=reader, retries_max=1)
    assert isinstance(result, Found) and values(result.record) == [b"v2"]
    prepares = [r for r in replicas.log if r[1] == "PxPrepare"]
    assert replicas.log[:3] == [(n, "PxRead") for n in NODES] and len(prepares) == 3
    assert all(s.promised >= read_ballot for s in replicas.states.values())


def test_a_write_is_prepare_propose_commit_and_answers_after_a_quorum_of_commits() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v1")
    actions = op.start(proposer.ballot(), NOW_MS)
    assert [a.node for a in actions if isinstance(a, Send)] == list(NODES)
    result, _ = drive(op, replicas, actions)
    assert isinstance(result, Written) and values(result.record) == [b"v1"]
    assert result.etag == etag_of(result.record, NOW_MS) and result.commits_acked == 2
    assert [name for _, name in replicas.log] == ["PxPrepare"] * 3 + ["PxPropose"] * 3 + [
        "PxCommit"
    ] * 3
    assert op.rounds == 1
    found = read(replicas)
    assert values(found.record) == [b"v1"] and found.etag == result.etag


def test_a_strong_write_reaches_the_regular_records_of_a_quorum() -> None:
    replicas = Replicas()
    written = write(replicas, b"v1")
    holding = [n for n in NODES if replicas.records[n] == written.record]
    assert len(holding) == 3  # commits go to all; the answer waited for two


def test_writes_build_on_the_previous_commit() -> None:
    replicas = Replicas()
    first = write(replicas, b"v1")
    second = write(replicas, b"v2", Proposer("p2"))
    assert merge(first.record, second.record, ConflictPolicy.LWW) == second.record
    assert values(read(replicas).record) == [b"v2"]


# -- conditions --------------------------------------------------------------------


def test_a_failed_if_match_answers_the_current_etag_and_writes_nothing() -> None:
    replicas, proposer = Replicas(), Proposer()
    current = write(replicas, b"v1")
    replicas.log.clear()
    op = proposer.operation(b"v2", condition=IfMatch("A" * 22))
    result, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert result == ConditionFailed(current.record, current.etag)
    assert replicas.sent("PxPropose") == []


def test_if_match_on_the_current_etag_writes() -> None:
    replicas, proposer = Replicas(), Proposer()
    current = write(replicas, b"v1")
    assert current.etag is not None
    op = proposer.operation(b"v2", condition=IfMatch(current.etag))
    result, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert isinstance(result, Written) and values(result.record) == [b"v2"]


def test_if_absent_creates_once() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"first", condition=IfAbsent())
    created, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert isinstance(created, Written)
    op = proposer.operation(b"second", condition=IfAbsent())
    result, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert result == ConditionFailed(created.record, created.etag)


def test_if_match_never_matches_a_deleted_key_and_if_absent_does() -> None:
    replicas, proposer = Replicas(), Proposer()
    written = write(replicas, b"v1")
    assert written.etag is not None
    op = proposer.operation(None, write=True, condition=IfMatch(written.etag))
    gone, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert isinstance(gone, Written) and gone.etag is None  # a delete has no etag
    op = proposer.operation(b"again", condition=IfMatch(written.etag))
    result, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert isinstance(result, ConditionFailed) and result.etag is None
    op = proposer.operation(b"again", condition=IfAbsent())
    created, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert isinstance(created, Written)


# -- in-progress repair -----------------------------------------------------------------


def leave_in_progress(replicas: Replicas, node: str, value: bytes, origin: Ballot) -> Proposal:
    """A proposer accepted on ``node`` only, then vanished."""
    head = replicas.states[node].committed
    current = head.proposal.record if head is not None else None
    record = Proposer(origin.node).mint(value)(current)
    stranded = Proposal(origin, record, paxos.chain_of(head))
    replicas.handle(node, paxos.PxPrepare(0, b"k", origin))
    replicas.handle(node, PxPropose(0, b"k", Decree(origin, stranded)))
    return stranded


def test_an_in_progress_proposal_is_finished_before_a_read_answers() -> None:
    replicas, proposer = Replicas(), Proposer()
    write(replicas, b"v1")
    stranded = leave_in_progress(replicas, "r1", b"v2", Proposer("gone").ballot())
    op = proposer.operation()
    result, retries = drive(
        op, replicas, op.start(proposer.ballot(), NOW_MS), proposer=proposer, retries_max=1
    )
    assert retries == [Retry(0, 0, retries[0].ballot_floor)]  # repaired, then a fresh round
    assert isinstance(result, Found) and values(result.record) == [b"v2"]
    assert op.rounds == 2
    assert all(
        (s.committed is not None and s.committed.proposal == stranded)
        for s in replicas.states.values()
    )


def test_a_stranded_proposal_seen_by_no_quorum_member_is_not_resurrected_by_a_read() -> None:
    replicas, proposer = Replicas(), Proposer()
    write(replicas, b"v1")
    leave_in_progress(replicas, "r3", b"v2", Proposer("gone").ballot())
    op = proposer.operation()
    start = op.start(proposer.ballot(), NOW_MS)
    result, _ = drive(op, replicas, start, silent=lambda node, request: node == "r3")
    assert isinstance(result, Found) and values(result.record) == [b"v1"]


def test_our_own_in_progress_proposal_finishing_is_our_answer() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"mine", rounds_max=4)
    # Round 1: r1 accepts, r2 and r3 time out (the proposes were applied but the
    # replies were lost): quorum unknown, so retry.
    actions = op.start(proposer.ballot(), NOW_MS)

    def lost(node: str, request: PxRequest) -> bool:
        return isinstance(request, PxPropose) and node != "r1" and op.rounds == 1

    result, retries = drive(op, replicas, actions, silent=lost, proposer=proposer, retries_max=1)
    assert len(retries) == 1 and retries[0].after_ms_max > 0
    assert isinstance(result, Written) and values(result.record) == [b"mine"]
    committed = {s.committed.proposal for s in replicas.states.values() if s.committed}
    assert [p.record for p in committed] == [result.record]  # one proposal, minted once
    assert replicas.sent("PxPropose").count("r1") == 2  # proposed once per round, never re-minted


def test_a_write_chosen_then_overwritten_while_we_were_away_is_not_applied_twice() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"mine")
    actions = op.start(proposer.ballot(), NOW_MS)
    # Our proposes reach only r1 (the others are lost and the calls time out).
    result, retries = drive(
        op,
        replicas,
        actions,
        dropped=lambda node, request: isinstance(request, PxPropose) and node != "r1",
    )
    assert result is None and len(retries) == 1 and op.may_have_written
    # Meanwhile another proposer repairs ours (it sees r1) and writes on top of it.
    other = Proposer("p2")
    other.now_ms += 5
    assert values(read(replicas, other).record) == [b"mine"]
    write(replicas, b"theirs", other)
    # Our retry learns from the history that ours was chosen: no second write.
    proposes_before = len(replicas.sent("PxPropose"))
    result, _ = drive(op, replicas, op.start(proposer.ballot(retries[0].ballot_floor), NOW_MS))
    assert isinstance(result, Written) and values(result.record) == [b"mine"]
    assert len(replicas.sent("PxPropose")) == proposes_before
    assert values(read(replicas).record) == [b"theirs"]


def test_a_cas_whose_proposal_died_re_evaluates_and_fails_definitely() -> None:
    replicas, proposer = Replicas(), Proposer()
    base = write(replicas, b"v1")
    assert base.etag is not None
    op = proposer.operation(b"mine", condition=IfMatch(base.etag))
    actions = op.start(proposer.ballot(), NOW_MS)
    result, retries = drive(
        op,
        replicas,
        actions,
        dropped=lambda node, request: isinstance(request, PxPropose) and node != "r3",
    )
    assert result is None and len(retries) == 1
    # Another write is chosen on r1, r2 (never seeing r3's copy of ours): ours is dead.
    other = Proposer("p2")
    other.now_ms += 5
    theirs = other.operation(b"theirs")
    drive(
        theirs,
        replicas,
        theirs.start(other.ballot(), other.now_ms),
        unreachable=frozenset({"r3"}),
    )
    assert isinstance(theirs.result, Written)
    result, _ = drive(op, replicas, op.start(proposer.ballot(retries[0].ballot_floor), NOW_MS))
    assert result == ConditionFailed(theirs.result.record, theirs.result.etag)
    assert not op.may_have_written


# -- contention and failures --------------------------------------------------------------


def test_a_reject_retries_above_the_promised_ballot_with_a_growing_backoff() -> None:
    replicas, proposer = Replicas(), Proposer()
    high = Ballot((NOW_MS + 50) << 16, "rival")
    for node in ("r1", "r2"):
        replicas.handle(node, paxos.PxPrepare(0, b"k", high))
    op = proposer.operation(b"v", rounds_max=3)
    result, retries = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert result is None and len(retries) == 1
    assert (
        retries[0].ballot_floor == high and 0 < retries[0].after_ms_min <= retries[0].after_ms_max
    )
    with pytest.raises(AssertionError):
        op.start(Ballot(high.timestamp, "a"), NOW_MS)  # not above the floor
    result, retries = drive(op, replicas, op.start(proposer.ballot(high), NOW_MS))
    assert isinstance(result, Written) and op.rounds == 2


def test_rounds_exhausted_without_a_propose_is_contended_after_growing_backoffs() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v", rounds_max=3)
    rival = Proposer("rival")
    bounds: list[int] = []
    actions = op.start(proposer.ballot(), NOW_MS)
    for _ in range(3):
        for node in NODES:  # a rival prepares higher before each of our rounds lands
            replicas.handle(node, paxos.PxPrepare(0, b"k", rival.ballot()))
        result, retries = drive(op, replicas, actions)
        if retries:
            bounds.append(retries[0].after_ms_max)
            actions = op.start(proposer.ballot(retries[0].ballot_floor), NOW_MS)
    assert result == Contended(rounds=3) and not op.may_have_written
    assert bounds == [4, 8]
    assert replicas.sent("PxPropose") == []


def test_a_minority_side_answers_unavailable_at_once() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v")
    result, retries = drive(
        op, replicas, op.start(proposer.ballot(), NOW_MS), unreachable=frozenset({"r2", "r3"})
    )
    assert result == Unavailable("too few home replicas reachable", required=2, answered=1)
    assert retries == [] and replicas.sent("PxPropose") == []


def test_one_unreachable_replica_is_tolerated() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v")
    result, _ = drive(
        op, replicas, op.start(proposer.ballot(), NOW_MS), unreachable=frozenset({"r1"})
    )
    assert isinstance(result, Written) and result.commits_acked == 2


def test_timeouts_after_a_propose_end_unknown_never_failed() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v", rounds_max=1)
    result, retries = drive(
        op,
        replicas,
        op.start(proposer.ballot(), NOW_MS),
        silent=lambda node, request: isinstance(request, PxPropose) and node != "r1",
    )
    assert isinstance(result, Unknown) and retries == []


def promised_everywhere(op: StrongOperation, replicas: Replicas, proposer: Proposer) -> list[Send]:
    """Run the prepare phase to the end; the proposes the operation then sends."""
    queue: list[Action] = []
    for send in op.start(proposer.ballot(), NOW_MS):
        assert isinstance(send, Send)
        queue += op.on_message(send.node, replicas.handle(send.node, send.message))
    proposes = [a for a in queue if isinstance(a, Send)]
    assert [type(a.message) for a in proposes] == [PxPropose] * 3
    return proposes


def test_a_propose_refused_everywhere_in_the_last_round_is_unknown() -> None:
    """A reject answers one copy of a request; a duplicate may have been accepted."""
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v", rounds_max=1)
    proposes = promised_everywhere(op, replicas, proposer)
    rival = Proposer("rival").ballot()
    answers: list[Action] = []
    for send in proposes:  # a rival promised higher everywhere before our proposes land
        replicas.handle(send.node, paxos.PxPrepare(0, b"k", rival))
        answers += op.on_message(send.node, replicas.handle(send.node, send.message))
    assert answers == [Done(Unknown("rounds exhausted; our write may still be chosen"))]


def test_a_propose_cut_off_after_the_prepare_is_unknown_at_once() -> None:
    """Two proposes undeliverable: no quorum can accept, and the third replica, not
    heard from yet, may hold the proposal for a later repair to finish."""
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v")
    answers: list[Action] = []
    for send in promised_everywhere(op, replicas, proposer)[:2]:
        answers += op.on_failure(send.node, send.message, definite=True)
    assert answers == [
        Done(Unknown("too few home replicas reachable; our write may still be chosen"))
    ]


def test_a_reject_of_another_phase_is_not_counted() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v")
    proposes = promised_everywhere(op, replicas, proposer)
    ballot = proposes[0].message.decree.ballot  # type: ignore[union-attr]
    stale = paxos.PxReject(ballot, ballot, "prepare")  # a duplicated prepare's answer
    assert op.on_message("r1", stale) == []
    result, _ = drive(op, replicas, list(proposes))
    assert isinstance(result, Written) and result.commits_acked == 2


def test_deadline_during_propose_is_unknown_and_during_commit_is_written() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v")
    result, _ = drive(
        op,
        replicas,
        op.start(proposer.ballot(), NOW_MS),
        silent=lambda node, request: isinstance(request, PxPropose) and node != "r1",
    )
    assert result is None  # waiting to retry
    assert isinstance(op.on_deadline()[0], Done) and isinstance(op.result, Unknown)
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v")
    result, _ = drive(
        op,
        replicas,
        op.start(proposer.ballot(), NOW_MS),
        silent=lambda node, request: isinstance(request, paxos.PxCommit) and node != "r1",
    )
    assert isinstance(result, Written) and result.commits_acked == 1


def test_a_read_timing_out_is_unavailable_not_unknown() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(rounds_max=1)
    result, _ = drive(
        op, replicas, op.start(proposer.ballot(), NOW_MS), silent=lambda n, r: n != "r1"
    )
    assert isinstance(result, Unavailable)


def test_stale_and_duplicate_replies_are_ignored() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"v")
    first = op.start(proposer.ballot(), NOW_MS)
    send = first[0]
    assert isinstance(send, Send)
    promise = replicas.handle(send.node, send.message)
    assert op.on_message(send.node, promise) == []
    assert op.on_message(send.node, promise) == []  # a duplicate
    old = paxos.PxPromise(Ballot(1, "p1"), None, None, None)
    assert op.on_message("r2", old) == []  # another round's
    assert op.on_failure("r2", paxos.PxPrepare(0, b"k", Ballot(1, "p1")), definite=True) == []


# -- strong and weak writes on one key ------------------------------------------------------


def weak(replicas: Replicas, node: str, value: bytes, timestamp_ms: int) -> Record:
    """A blind ``one`` write, coordinated elsewhere, that reached ``node`` only."""
    timestamp = timestamp_ms << 16
    written = Record((Sibling(value, "weak", timestamp, (), timestamp),))
    replicas.records[node] = merge(replicas.records[node], written, ConflictPolicy.LWW)
    return written


def test_a_weak_write_seen_by_a_strong_read_is_absorbed_so_every_later_read_sees_it() -> None:
    replicas = Replicas()
    write(replicas, b"strong")
    weak(replicas, "r1", b"weak", NOW_MS + 10)
    replicas.log.clear()
    found = read(replicas)  # its quorum includes r1
    assert values(found.record) == [b"weak"]
    assert replicas.sent("PxPropose") == list(NODES)  # absorbed: one more round trip
    only_r2_r3 = Proposer("late")
    op = only_r2_r3.operation()
    result, _ = drive(
        op,
        replicas,
        op.start(only_r2_r3.ballot(), NOW_MS),
        unreachable=frozenset({"r1"}),
    )
    assert isinstance(result, Found) and values(result.record) == [b"weak"]


def test_a_weak_write_stamped_before_the_latest_commit_loses_under_lww() -> None:
    replicas = Replicas()
    weak(replicas, "r1", b"old-weak", 5)
    written = write(replicas, b"strong")  # absorbs it, then wins by timestamp
    assert values(read(replicas).record) == [b"strong"]
    assert values(written.record) == [b"strong"]
    replicas.log.clear()
    weak(replicas, "r2", b"stale", 6)  # stamped long before the commit
    assert values(read(replicas).record) == [b"strong"]
    assert replicas.sent("PxPropose") == []  # nothing to absorb: it lost the merge


def test_a_conditional_write_sees_weak_writes() -> None:
    replicas, proposer = Replicas(), Proposer()
    write(replicas, b"strong")
    newer = weak(replicas, "r1", b"weak", NOW_MS + 10)
    op = proposer.operation(b"cas", condition=IfMatch(etag_of(newer, NOW_MS) or ""))
    result, _ = drive(op, replicas, op.start(proposer.ballot(), NOW_MS))
    assert isinstance(result, Written) and values(result.record) == [b"cas"]


def test_a_read_sends_the_latest_commit_to_a_promiser_that_lacks_it() -> None:
    replicas = Replicas()
    proposer = Proposer()
    op = proposer.operation(b"v1")
    drive(
        op,
        replicas,
        op.start(proposer.ballot(), NOW_MS),
        dropped=lambda node, request: isinstance(request, paxos.PxCommit) and node == "r3",
    )
    assert isinstance(op.result, Written) and replicas.states["r3"].committed is None
    reader = Proposer("reader")
    read_op = reader.operation()
    result, _ = drive(
        read_op, replicas, read_op.start(reader.ballot(), NOW_MS), unreachable=frozenset({"r1"})
    )
    assert isinstance(result, Found) and values(result.record) == [b"v1"]
    committed = replicas.states["r3"].committed
    assert committed is not None and committed.proposal.record == op.result.record
    assert replicas.records["r3"] == op.result.record  # quorum reads see it there too


def test_a_proposal_that_fell_out_of_the_history_is_unknown() -> None:
    replicas, proposer = Replicas(), Proposer()
    op = proposer.operation(b"mine")
    result, retries = drive(
        op,
        replicas,
        op.start(proposer.ballot(), NOW_MS),
        dropped=lambda node, request: isinstance(request, PxPropose) and node != "r3",
    )
    assert result is None and op.may_have_written
    other = Proposer("p2")
    for n in range(paxos.HISTORY_MAX + 1):  # r3, holding ours, is away meanwhile
        theirs = other.operation(f"theirs-{n}".encode())
        start = theirs.start(other.ballot(), NOW_MS)
        drive(theirs, replicas, start, unreachable=frozenset({"r3"}))
        assert isinstance(theirs.result, Written)
    start = op.start(proposer.ballot(retries[0].ballot_floor), NOW_MS)
    result, _ = drive(op, replicas, start, unreachable=frozenset({"r3"}))
    assert result == Unknown("our proposal fell out of the key's history")
