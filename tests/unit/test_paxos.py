"""The acceptor's rules, the promise summary, a proposal's fate, the wire and disk forms, ETags."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core import paxos
from dynakv.core.etag import (
    ETAG_CHARS,
    IfAbsent,
    IfMatch,
    condition_holds,
    etag_of,
    is_etag,
)
from dynakv.core.paxos import (
    EMPTY_STATE,
    HISTORY_MAX,
    ZERO_BALLOT,
    AcceptorState,
    Ballot,
    Decree,
    Fate,
    Proposal,
    PxAccepted,
    PxCommit,
    PxPrepare,
    PxPromise,
    PxReject,
    fate,
    on_commit,
    on_prepare,
    on_propose,
    summarize,
)
from dynakv.core.record import EMPTY_CONTEXT, ConflictPolicy, Record, Sibling, make_write


def b(timestamp: int, node: str = "n1") -> Ballot:
    return Ballot(timestamp, node)


def record(value: bytes | None, counter: int = 1, node: str = "w") -> Record:
    return Record((Sibling(value, node, counter, (), counter),))


def proposal(origin: Ballot, value: bytes = b"v", history: tuple[Ballot, ...] = ()) -> Proposal:
    return Proposal(origin, record(value, origin.timestamp), history)


def decree(ballot: Ballot, prop: Proposal | None = None) -> Decree:
    return Decree(ballot, prop if prop is not None else proposal(ballot))


# -- ballots -----------------------------------------------------------------


def test_ballots_order_by_timestamp_then_node() -> None:
    assert ZERO_BALLOT < b(1, "a") < b(1, "b") < b(2, "a")
    assert max(b(5, "a"), b(5, "z"), b(4, "zz")) == b(5, "z")


def test_ballot_problem_refuses_zero_future_and_long_ids() -> None:
    assert paxos.ballot_problem(b(10), ceiling=100) is None
    assert paxos.ballot_problem(ZERO_BALLOT, ceiling=100) is not None
    assert paxos.ballot_problem(Ballot(5, ""), ceiling=100) is not None
    assert paxos.ballot_problem(b(101), ceiling=100) is not None
    assert paxos.ballot_problem(Ballot(5, "x" * 200), ceiling=100) is not None


# -- prepare -----------------------------------------------------------------


def test_prepare_promises_a_higher_ballot_and_reports_what_it_holds() -> None:
    held = AcceptorState(b(5), decree(b(5)), decree(b(3)))
    reg = record(b"regular")
    state, reply = on_prepare(held, b(7), reg)
    assert reply == PxPromise(b(7), held.accepted, held.committed, reg)
    assert state == AcceptorState(b(7), held.accepted, held.committed)


def test_prepare_rejects_a_lower_ballot_naming_the_promise() -> None:
    held = AcceptorState(b(7))
    state, reply = on_prepare(held, b(6, "zz"))
    assert reply == PxReject(b(6, "zz"), b(7), "prepare")
    assert state is held


def test_prepare_at_the_promised_ballot_is_rejected() -> None:
    """A ballot is promised once: two proposers that reuse one never both get a quorum."""
    state, first = on_prepare(EMPTY_STATE, b(4))
    again, second = on_prepare(state, b(4))
    assert (
        isinstance(first, PxPromise)
        and second == PxReject(b(4), b(4), "prepare")
        and again is state
    )


# -- propose -----------------------------------------------------------------


def test_propose_accepts_at_or_above_the_promise_and_raises_it() -> None:
    promised = AcceptorState(b(5))
    state, reply = on_propose(promised, decree(b(5)))
    assert reply == PxAccepted(b(5)) and state.accepted == decree(b(5))
    state, reply = on_propose(state, decree(b(9)))
    assert reply == PxAccepted(b(9))
    assert state.promised == b(9) and state.accepted == decree(b(9))


def test_propose_below_the_promise_is_rejected_and_changes_nothing() -> None:
    held = AcceptorState(b(8), decree(b(6)))
    state, reply = on_propose(held, decree(b(7)))
    assert reply == PxReject(b(7), b(8), "propose")
    assert state is held


def test_a_later_prepare_still_reports_the_accepted_value() -> None:
    state, _ = on_propose(AcceptorState(b(5)), decree(b(5)))
    state, reply = on_prepare(state, b(9))
    assert isinstance(reply, PxPromise) and reply.accepted == decree(b(5))


# -- commit --------------------------------------------------------------------


def test_commit_supersedes_an_older_commit_and_raises_the_promise() -> None:
    held = AcceptorState(b(4), decree(b(4)), decree(b(2)))
    state = on_commit(held, decree(b(6)))
    assert state == AcceptorState(b(6), decree(b(4)), decree(b(6)))


def test_an_older_commit_changes_nothing() -> None:
    held = AcceptorState(b(9), None, decree(b(6)))
    assert on_commit(held, decree(b(5))) is held
    assert on_commit(held, decree(b(6))) is held


def test_commit_never_forgets_the_accepted_value() -> None:
    held = AcceptorState(b(8), decree(b(8)), None)
    state = on_commit(held, decree(b(3)))
    assert state.accepted == decree(b(8)) and state.promised == b(8)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["prepare", "propose", "commit"]), st.integers(1, 12)),
        max_size=40,
    )
)
def test_acceptor_against_a_reference_model(events: list[tuple[str, int]]) -> None:
    """Promised, accepted and committed ballots never go back; nothing below a promise
    is ever accepted; every promise reports the accepted value it holds."""
    state = EMPTY_STATE
    promised = accepted = committed = 0  # the model
    for kind, timestamp in events:
        ballot = b(timestamp)
        if kind == "prepare":
            state, reply = on_prepare(state, ballot)
            if timestamp > promised:
                assert isinstance(reply, PxPromise)
                assert (reply.accepted.ballot.timestamp if reply.accepted else 0) == accepted
                promised = timestamp
            else:
                assert reply == PxReject(ballot, b(promised), "prepare")
        elif kind == "propose":
            state, answer = on_propose(state, decree(ballot))
            if timestamp >= promised:
                assert answer == PxAccepted(ballot)
                promised = accepted = timestamp
            else:
                assert isinstance(answer, PxReject)
        else:
            state = on_commit(state, decree(ballot))
            if timestamp > committed:
                committed, promised = timestamp, max(promised, timestamp)
        assert state.promised == (b(promised) if promised else ZERO_BALLOT)
        assert (state.accepted.ballot.timestamp if state.accepted else 0) == accepted
        assert (state.committed.ballot.timestamp if state.committed else 0) == committed
        assert paxos.state_problem(state) is None
        assert paxos.decode_state(paxos.encode_state(state)) == state


# -- summarize and fate ----------------------------------------------------------


def promise(accepted: Decree | None, committed: Decree | None) -> PxPromise:
    return PxPromise(b(99), accepted, committed, None)


def test_summarize_finds_the_latest_commit_and_nothing_in_progress() -> None:
    head = decree(b(5))
    assert summarize([promise(decree(b(5)), head), promise(decree(b(3)), decree(b(3)))]) == (
        head,
        None,
    )
    assert summarize([promise(None, None)] * 2) == (None, None)


def test_summarize_reports_an_accepted_value_above_the_commit_as_in_progress() -> None:
    head, newer = decree(b(5)), decree(b(7))
    assert summarize([promise(newer, head), promise(None, None)]) == (head, newer)
    assert summarize([promise(newer, None)]) == (None, newer)


def test_summarize_a_committed_proposal_re_accepted_higher_is_not_in_progress() -> None:
    finished = proposal(b(5))
    head = decree(b(5), finished)
    repaired = decree(b(8), finished)  # re-proposed by a repair, commit not seen yet
    assert summarize([promise(repaired, None), promise(None, head)]) == (head, None)


def chain(length: int) -> list[Proposal]:
    """Proposals 1..length, each built on the one before."""
    built: list[Proposal] = []
    for i in range(1, length + 1):
        history = paxos.chain_of(decree(b(i - 1), built[-1])) if built else ()
        built.append(proposal(b(i), history=history))
    return built


def test_fate_of_a_proposal_from_the_latest_commit() -> None:
    links = chain(5)
    head = decree(b(5), links[4])
    assert fate(links[4], head) is Fate.CHOSEN
    assert fate(links[1], head) is Fate.CHOSEN  # in the history
    live = proposal(b(9), history=paxos.chain_of(head))  # built on the head
    assert fate(live, head) is Fate.LIVE
    dead = proposal(b(9), history=paxos.chain_of(decree(b(3), links[2])))
    assert fate(dead, head) is Fate.DEAD  # the chain moved past its base without it
    assert fate(proposal(b(9)), head) is Fate.DEAD  # built on an empty key: full chain known
    assert fate(proposal(b(9)), None) is Fate.LIVE


def test_fate_is_undetermined_past_the_history_bound() -> None:
    links = chain(HISTORY_MAX + 4)
    head = decree(b(len(links)), links[-1])
    assert len(head.proposal.history) == HISTORY_MAX
    assert fate(links[0], head) is Fate.UNDETERMINED  # chosen, but fell out of the window
    assert fate(proposal(b(999)), head) is Fate.UNDETERMINED
    lost = proposal(b(999), history=paxos.chain_of(decree(b(1), links[0])))
    assert fate(lost, head) is Fate.UNDETERMINED
    assert fate(lost, None) is Fate.UNDETERMINED


# -- disk and wire -------------------------------------------------------------------


def test_state_round_trips_and_bad_bytes_are_refused() -> None:
    state = AcceptorState(b(9), decree(b(9)), decree(b(4)))
    assert paxos.decode_state(paxos.encode_state(state)) == state
    for bad in (b"", b"\x09", b"\x01\xc1", paxos.encode_state(state)[:-3]):
        with pytest.raises(ValueError):
            paxos.decode_state(bad)


def test_state_invariants_are_checked_on_decode() -> None:
    above = AcceptorState(b(3), decree(b(5)), None)  # accepted above the promise
    raw = bytes((paxos.STATE_FORMAT,)) + msgspec.msgpack.encode(above)
    with pytest.raises(ValueError, match="above the promised"):
        paxos.decode_state(raw)
    late_origin = AcceptorState(b(9), Decree(b(4), proposal(b(6))), None)
    assert "origin" in (paxos.state_problem(late_origin) or "")
    long = Proposal(b(50), record(b"v"), tuple(b(i) for i in range(HISTORY_MAX + 1)))
    assert "history" in (paxos.decree_problem(Decree(b(50), long)) or "")


def test_messages_cross_the_wire_by_tag() -> None:
    decoder = msgspec.msgpack.Decoder(paxos.PxMessage)
    messages = [
        PxPrepare(3, b"key", b(1)),
        promise(decree(b(2)), decree(b(1))),
        PxReject(b(1), b(2), "propose"),
        paxos.PxPropose(3, b"key", decree(b(2))),
        PxAccepted(b(2)),
        PxCommit(3, b"key", decree(b(2))),
        paxos.PxCommitted(b(2)),
    ]
    for message in messages:
        wire = msgspec.msgpack.encode(message)
        assert decoder.decode(wire) == message
        assert type(message).__struct_config__.tag in {
            "pxprepare",
            "pxpromise",
            "pxreject",
            "pxpropose",
            "pxaccepted",
            "pxcommit",
            "pxcommitted",
        }


# -- ETags and conditions ----------------------------------------------------------------


def test_etag_names_the_exact_write_under_lww() -> None:
    one = make_write(
        None,
        node_id="a",
        value=b"same",
        context=EMPTY_CONTEXT,
        timestamp=10,
        expires_at_ms=0,
        policy=ConflictPolicy.LWW,
    )
    again = make_write(
        one,
        node_id="a",
        value=b"same",
        context=EMPTY_CONTEXT,
        timestamp=11,
        expires_at_ms=0,
        policy=ConflictPolicy.LWW,
    )
    first, second = etag_of(one, 0), etag_of(again, 0)
    assert first is not None and second is not None and first != second  # same bytes, new write
    assert is_etag(first) and len(first) == ETAG_CHARS
    # Stable across processes and releases: a golden value.
    assert etag_of(record(b"x", 7, "node-1"), 0) == etag_of(record(b"y", 7, "node-1"), 0)
    assert etag_of(record(b"x", 7, "node-1"), 0) == "3ZpAun_MUBzzSfA1yGCfgg"


def test_etag_names_the_set_of_siblings_in_any_order() -> None:
    s1 = Sibling(b"a", "n1", 3, (), 3)
    s2 = Sibling(b"b", "n2", 4, (), 4)
    both = etag_of(Record((s1, s2)), 0)
    assert both is not None
    assert both == etag_of(Record((s2, s1)), 0)
    assert both not in (etag_of(Record((s1,)), 0), etag_of(Record((s2,)), 0))


def test_no_etag_when_nothing_is_visible() -> None:
    assert etag_of(None, 0) is None
    assert etag_of(record(None), 0) is None  # a tombstone
    expiring = Record((Sibling(b"v", "n", 1, (), 1, expires_at_ms=100),))
    assert etag_of(expiring, 99) is not None
    assert etag_of(expiring, 100) is None


def test_conditions() -> None:
    assert condition_holds(None, None) and condition_holds(None, "e")
    assert condition_holds(IfAbsent(), None) and not condition_holds(IfAbsent(), "e")
    assert condition_holds(IfMatch("e"), "e")
    assert not condition_holds(IfMatch("e"), "f") and not condition_holds(IfMatch("e"), None)
    assert not is_etag("short") and not is_etag("!" * ETAG_CHARS)


# -- read (snapshots) ------------------------------------------------------------


def test_a_read_reports_without_what_summarize_and_merge_would_ignore() -> None:
    settled = decree(b(5))
    state = AcceptorState(b(5), settled, settled)
    snapshot = paxos.on_read(state, b(9), settled.proposal.record)
    assert snapshot == paxos.PxSnapshot(b(9), None, settled, None)  # one record, not three


def test_a_read_reports_an_accepted_decree_above_the_commit_and_a_weak_write() -> None:
    committed, accepted = decree(b(3)), decree(b(5))
    state = AcceptorState(b(5), accepted, committed)
    weak = record(b"weak", 99)
    snapshot = paxos.on_read(state, b(9), weak)
    assert snapshot == paxos.PxSnapshot(b(9), accepted, committed, weak)
    assert summarize([snapshot]) == (committed, accepted)
    uncommitted = paxos.on_read(AcceptorState(b(5), accepted, None), b(9), None)
    assert uncommitted.accepted == accepted  # nothing committed: nothing left out


@given(accepted_at=st.integers(1, 9), committed_at=st.integers(1, 9), same_record=st.booleans())
def test_a_snapshot_summarizes_as_the_full_report_would(
    accepted_at: int, committed_at: int, same_record: bool
) -> None:
    committed = decree(b(committed_at))
    accepted = decree(b(accepted_at)) if accepted_at >= committed_at else None
    state = AcceptorState(b(max(accepted_at, committed_at)), accepted, committed)
    regular = committed.proposal.record if same_record else record(b"other", 77)
    full = PxPromise(b(10), state.accepted, state.committed, regular)
    snapshot = paxos.on_read(state, b(10), regular)
    assert summarize([snapshot]) == summarize([full])
