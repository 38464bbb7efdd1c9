"""The pure coordinator: what it sends, when it decides, what it repairs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.coordinator import (
    ReadCoordination,
    ReplicaRead,
    ReplicaWrite,
    WriteCoordination,
)
from dynakv.core.quorum import Outcome
from dynakv.core.record import ConflictPolicy, Record, Sibling, merge

NODES = ("n1", "n2", "n3")


def record(value: bytes, timestamp: int, node: str = "n1", counter: int = 1) -> Record:
    return Record((Sibling(value, node, counter, (), timestamp),))


OLD = record(b"old", 10)
NEW = record(b"new", 20, counter=2)


def write(required: int = 2) -> WriteCoordination:
    return WriteCoordination(
        preference_list=NODES, local_node="n1", required=required, partition=7, key=b"k", record=NEW
    )


def read(required: int = 2) -> ReadCoordination:
    return ReadCoordination(
        preference_list=NODES, required=required, partition=7, key=b"k", policy=ConflictPolicy.LWW
    )


def test_write_sends_the_record_to_every_other_replica() -> None:
    assert write().start() == [ReplicaWrite("n2", 7, b"k", NEW), ReplicaWrite("n3", 7, b"k", NEW)]


def test_write_with_w1_is_decided_by_the_local_copy() -> None:
    coordination = write(required=1)
    assert coordination.outcome() is Outcome.SUCCEEDED
    assert len(coordination.start()) == 2  # still replicated, in the background


def test_write_outcomes() -> None:
    ok = write()
    assert ok.on_ack("n3") is Outcome.SUCCEEDED
    refused = write()
    refused.on_failure("n2", definite=True)
    assert refused.on_failure("n3", definite=True) == (Outcome.FAILED, [])
    unknown = write()
    unknown.on_failure("n2", definite=False)
    assert unknown.on_failure("n3", definite=True) == (Outcome.UNKNOWN, [])
    late = write(required=3)
    late.on_ack("n2")
    assert late.on_deadline() is Outcome.UNKNOWN
    assert late.on_ack("n3") is Outcome.UNKNOWN  # after the deadline, a late ack changes nothing


def test_read_asks_the_others_and_counts_the_local_record() -> None:
    coordination = read()
    assert coordination.start("n1", OLD) == [ReplicaRead("n2", 7, b"k"), ReplicaRead("n3", 7, b"k")]
    assert coordination.outcome() is Outcome.PENDING
    assert coordination.on_reply("n2", NEW) == []
    merged, repairs = coordination.decide()
    assert merged == NEW
    assert repairs == [ReplicaWrite("n1", 7, b"k", NEW)]  # the local copy was stale


def test_a_late_stale_reply_is_repaired_and_a_current_one_is_not() -> None:
    coordination = read()
    coordination.start("n1", NEW)
    coordination.on_reply("n2", NEW)
    assert coordination.decide() == (NEW, [])
    assert coordination.on_reply("n3", None) == [ReplicaWrite("n3", 7, b"k", NEW)]
    current = read()
    current.start("n1", NEW)
    current.on_reply("n2", NEW)
    current.decide()
    assert current.on_reply("n3", NEW) == []


def test_a_key_nobody_has_needs_no_repair() -> None:
    coordination = read()
    coordination.start(None, None)
    coordination.on_reply("n1", None)
    coordination.on_reply("n2", None)
    assert coordination.decide() == (None, [])


def test_read_fails_when_r_replies_cannot_come() -> None:
    coordination = read()
    coordination.start("n1", OLD)
    coordination.on_failure("n2")
    assert coordination.on_failure("n3") is Outcome.FAILED
    timed_out = read(required=3)
    timed_out.start("n1", OLD)
    assert timed_out.on_deadline() is Outcome.FAILED
    assert timed_out.on_reply("n2", NEW) == []  # counted at the deadline already


def test_decide_before_quorum_is_a_bug() -> None:
    coordination = read()
    coordination.start(None, None)
    with pytest.raises(AssertionError):
        coordination.decide()


records = st.one_of(
    st.none(),
    st.builds(
        lambda ts, node: record(b"v%d" % ts, ts, node, ts),
        st.integers(1, 50),
        st.sampled_from(NODES),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.tuples(records, records, records), st.integers(1, 3), st.booleans())
def test_read_merges_and_repairs_against_a_reference(
    replies: tuple[Record | None, ...], required: int, local: bool
) -> None:
    coordination = read(required=required)
    coordination.start("n1" if local else None, replies[0])
    answered = {"n1": replies[0]} if local else {}
    for node, reply in zip(NODES, replies, strict=True):
        if coordination.outcome() is Outcome.SUCCEEDED:
            break
        if node in answered:
            continue
        coordination.on_reply(node, reply)
        answered[node] = reply
    merged, repairs = coordination.decide()
    expected: Record | None = None
    for reply in answered.values():
        expected = merge(expected, reply, ConflictPolicy.LWW)
    assert merged == expected
    stale = sorted(
        node for node, reply in answered.items() if expected is not None and reply != expected
    )
    assert [repair.node for repair in repairs] == stale
    assert all(repair.record == expected for repair in repairs)


# -- sloppy quorum: fallbacks with hints ---------------------------------------

FALLBACKS = ("n4", "n5")


def sloppy(required: int = 2, down: frozenset[str] = frozenset()) -> WriteCoordination:
    return WriteCoordination(
        preference_list=NODES,
        local_node="n1",
        required=required,
        partition=7,
        key=b"k",
        record=NEW,
        fallbacks=FALLBACKS,
        down=down,
    )


def test_a_home_replica_known_down_is_replaced_by_a_fallback_with_a_hint_at_once() -> None:
    coordination = sloppy(down=frozenset({"n3"}))
    assert coordination.start() == [
        ReplicaWrite("n2", 7, b"k", NEW),
        ReplicaWrite("n4", 7, b"k", NEW, hint_for="n3"),
    ]
    assert coordination.on_ack("n4") is Outcome.SUCCEEDED  # W counts the fallback, as in Dynamo
    assert coordination.hinted() == {"n4": "n3"}


def test_a_home_replica_failing_mid_write_is_counted_failed_and_still_gets_a_hinted_copy() -> None:
    coordination = sloppy()
    coordination.start()
    outcome, writes = coordination.on_failure("n2", definite=True)
    assert outcome is Outcome.PENDING and writes == [ReplicaWrite("n4", 7, b"k", NEW, "n2")]
    # n3 fails too: quorum of home replicas is out of reach, whatever the fallbacks do.
    outcome, writes = coordination.on_failure("n3", definite=True)
    assert outcome is Outcome.FAILED
    assert writes == [ReplicaWrite("n5", 7, b"k", NEW, "n3")]
    assert coordination.on_ack("n4") is Outcome.FAILED  # an uncounted copy changes nothing


def test_without_fallbacks_the_quorum_is_strict() -> None:
    strict = write()
    strict.start()
    strict.on_failure("n2", definite=True)
    assert strict.on_failure("n3", definite=True) == (Outcome.FAILED, [])


def test_a_failure_after_the_decision_still_sends_the_hinted_copy_uncounted() -> None:
    coordination = sloppy()
    coordination.start()
    assert coordination.on_ack("n2") is Outcome.SUCCEEDED
    outcome, writes = coordination.on_failure("n3", definite=False)
    assert outcome is Outcome.SUCCEEDED
    assert writes == [ReplicaWrite("n4", 7, b"k", NEW, hint_for="n3")]
    assert coordination.on_ack("n4") is Outcome.SUCCEEDED  # changes nothing


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(("n2", "n3", "n4", "n5")), st.sampled_from(("ack", "fail", "lost"))
        ),
        max_size=12,
    ),
    down=st.frozensets(st.sampled_from(("n2", "n3", "n4"))),
)
def test_sloppy_outcomes_match_the_acks_of_whoever_was_asked(
    events: list[tuple[str, str]], down: frozenset[str]
) -> None:
    coordination = sloppy(down=down)
    asked = {write.node for write in coordination.start()}
    acked = {"n1"}
    decided = Outcome.PENDING
    for node, event in events:
        if node not in asked:
            continue
        if event == "ack":
            outcome = coordination.on_ack(node)
            acked.add(node)
        else:
            outcome, writes = coordination.on_failure(node, definite=event == "fail")
            asked |= {write.node for write in writes}
            assert all(write.hint_for in NODES for write in writes)
        if decided is not Outcome.PENDING:
            assert outcome is decided, "a decided outcome never changes"
        decided = outcome
    # A home replica known down is asked directly only once every live fallback is used.
    if {"n2", "n3"} & down & asked:
        assert set(FALLBACKS) - down <= set(coordination.hinted())
    # Known-down fallbacks are never asked.
    assert not asked & down - {"n2", "n3"}
    if decided is Outcome.SUCCEEDED:
        # W acks from home replicas, or from fallbacks standing in for ones known down.
        counted = {node for node in acked if node in NODES or node in coordination.tally.replicas}
        assert len(counted) >= 2
    # Every fallback stands in for a home replica, and none is asked twice.
    assert set(coordination.hinted().values()) <= {"n2", "n3"}


def read_with_fallbacks(down: frozenset[str]) -> ReadCoordination:
    return ReadCoordination(
        preference_list=NODES,
        required=2,
        partition=7,
        key=b"k",
        policy=ConflictPolicy.LWW,
        fallbacks=FALLBACKS,
        down=down,
    )


def test_a_read_asks_a_stand_in_for_a_home_replica_known_down_and_never_repairs_it() -> None:
    coordination = read_with_fallbacks(frozenset({"n3"}))
    # n3 is asked too (the detector may be wrong about it); n4 stands in for it.
    reads = coordination.start("n1", OLD)
    assert reads == [ReplicaRead(n, 7, b"k") for n in ("n2", "n3", "n4")]
    assert coordination.on_reply("n4", NEW) == []  # the fallback holds the hinted write,
    assert coordination.outcome() is Outcome.PENDING  # but only home replicas count
    assert coordination.on_reply("n2", OLD) == []
    merged, repairs = coordination.decide()
    assert merged == NEW  # what the stand-in holds is merged in
    assert repairs == [ReplicaWrite("n1", 7, b"k", NEW), ReplicaWrite("n2", 7, b"k", NEW)]


def test_fallbacks_never_outvote_the_home_replicas_that_took_a_quorum_write() -> None:
    # Seed 44 of the five-node ring-change runs: n2 and n3 held down, two empty
    # fallbacks answered first, and the quorum read missed n1's acknowledged writes.
    coordination = read_with_fallbacks(frozenset({"n2", "n3"}))
    reads = coordination.start(None, None)
    assert {read.node for read in reads} == {"n1", "n2", "n3", "n4", "n5"}
    coordination.on_reply("n4", None)
    coordination.on_reply("n5", None)
    assert coordination.outcome() is Outcome.PENDING  # two empty fallbacks are not R
    coordination.on_failure("n2")
    assert coordination.on_failure("n3") is Outcome.FAILED  # 503, not an answer without it
    # And when a home replica held down answers after all, it counts.
    again = read_with_fallbacks(frozenset({"n2", "n3"}))
    again.start(None, None)
    again.on_reply("n1", NEW)
    again.on_reply("n3", NEW)
    assert again.outcome() is Outcome.SUCCEEDED and again.decide()[0] == NEW
