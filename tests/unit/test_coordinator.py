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
    assert refused.on_failure("n3", definite=True) is Outcome.FAILED
    unknown = write()
    unknown.on_failure("n2", definite=False)
    assert unknown.on_failure("n3", definite=True) is Outcome.UNKNOWN
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
