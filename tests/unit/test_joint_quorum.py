"""Writes during a ring change: the joint quorum, and which partitions route by the change."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.claim import plan_join, plan_remove
from dynakv.core.consistency import Consistency
from dynakv.core.coordinator import WriteCoordination
from dynakv.core.quorum import JointTally, Outcome
from dynakv.core.record import Context, Record, Sibling
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.errors import PeerUnreachable, QuorumNotReached
from dynakv.net.messages import Message, WriteReply, WriteRequest
from tests.unit.test_coordinator_shell import coordinator, healthy

OLD = frozenset({"a", "b", "c"})
NEW = frozenset({"a", "c", "d"})
TARGETS = ("a", "b", "c", "d")


def joint() -> JointTally:
    return JointTally(TARGETS, ((OLD, 2), (NEW, 2)))


def test_a_joint_write_needs_a_quorum_of_the_old_list_and_of_the_new() -> None:
    tally = joint()
    tally.on_success("b")
    assert tally.on_success("d") is Outcome.PENDING  # one of each: neither quorum
    assert tally.on_success("a") is Outcome.SUCCEEDED  # a counts for both


def test_a_joint_write_fails_once_either_list_cannot_reach_its_quorum() -> None:
    tally = joint()
    tally.on_success("a")
    tally.on_success("b")  # the old list's quorum is there
    tally.on_definite_failure("c")
    assert tally.on_definite_failure("d") is Outcome.FAILED  # the new list has only a


def test_a_timeout_in_a_joint_write_is_unknown_never_failed() -> None:
    tally = joint()
    tally.on_success("a")
    tally.on_unknown_failure("c")
    assert tally.on_deadline() is Outcome.UNKNOWN


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TARGETS), st.booleans()), max_size=6))
def test_a_joint_outcome_is_exactly_both_quorums(events: list[tuple[str, bool]]) -> None:
    tally, acked, answered = joint(), set(), set()
    for node, ok in events:
        if node in answered:
            continue
        answered.add(node)
        if ok:
            acked.add(node)
            tally.on_success(node)
        else:
            tally.on_definite_failure(node)
    both = len(acked & OLD) >= 2 and len(acked & NEW) >= 2
    possible = all(len((acked | (set(TARGETS) - answered)) & g) >= 2 for g in (OLD, NEW))
    expected = Outcome.SUCCEEDED if both else (Outcome.PENDING if possible else Outcome.FAILED)
    assert tally.outcome() is expected


def test_a_joint_write_coordination_sends_to_every_target_and_takes_no_fallback() -> None:
    record = Record((Sibling(b"v", "a", 1, (), 1),))
    coordination = WriteCoordination(
        preference_list=TARGETS,
        local_node="a",
        required=2,
        partition=0,
        key=b"k",
        record=record,
        groups=((OLD, 2), (NEW, 2)),
    )
    assert [w.node for w in coordination.start()] == ["b", "c", "d"]
    outcome, fallbacks = coordination.on_failure("d", definite=True)
    assert fallbacks == [] and outcome is Outcome.PENDING
    assert coordination.on_ack("c") is Outcome.SUCCEEDED  # a, c: both lists


def ring(count: int) -> Ring:
    nodes = [RingNode(f"n{i}", f"z{i % 3}") for i in range(1, count + 1)]
    return Ring.build(nodes, partition_count=64, replicas=3)


def test_joint_groups_follow_the_change_for_moving_partitions_only() -> None:
    old = ring(5)
    change = plan_join(old, RingNode("n6", "z0"))
    moving = set(change.moving_partitions())
    assert moving and len(moving) < old.partition_count
    for partition in range(old.partition_count):
        before = old.preference_list(partition)
        after = change.new.preference_list(partition)
        assert (set(before) != set(after)) == (partition in moving)
        if partition in moving:
            targets = change.write_targets(partition)
            assert set(before) | set(after) == set(targets)
            assert change.read_targets(partition) == before


def test_a_remove_leaves_the_dead_node_out_of_every_target() -> None:
    old = ring(5)
    change = plan_remove(old, "n2")
    for partition in change.moving_partitions():
        assert "n2" not in change.write_targets(partition)
        assert "n2" not in change.read_targets(partition)


def test_the_shell_writes_a_moving_key_to_the_old_list_and_the_joining_node() -> None:
    async def scenario() -> None:
        subject, peers = coordinator(healthy)
        change = plan_join(subject.ring, RingNode("n4", "z1"))
        subject.routing = lambda: change
        partition = next(p for p in change.moving_partitions() if "n1" in change.write_targets(p))
        key = next(
            b"k%d" % i for i in range(100_000) if partition_of(b"k%d" % i, 1024) == partition
        )
        await subject.write(key, b"v", Consistency.QUORUM, 0, Context())
        assert sorted(node for node, _ in peers.sent) == sorted(
            n for n in change.write_targets(partition) if n != "n1"
        )

    asyncio.run(scenario())


def test_the_shell_fails_a_moving_write_the_new_list_does_not_take() -> None:
    async def scenario() -> None:
        def joiner_refuses(node: str, message: Message) -> Message | BaseException:
            assert isinstance(message, WriteRequest)
            return PeerUnreachable(peer=node, reason="refused") if node == "n4" else WriteReply()

        subject, _ = coordinator(joiner_refuses)
        change = plan_join(subject.ring, RingNode("n4", "z1"))
        subject.routing = lambda: change
        partition = next(
            p
            for p in change.moving_partitions()
            if "n1" in change.write_targets(p) and "n1" not in change.new.preference_list(p)
        )
        key = next(
            b"k%d" % i for i in range(100_000) if partition_of(b"k%d" % i, 1024) == partition
        )
        with pytest.raises(QuorumNotReached):
            # n1 leaves this list: the new list (n4 + one other) lacks a quorum without n4
            await subject.write(key, b"v", Consistency.ALL, 0, Context())

    asyncio.run(scenario())
