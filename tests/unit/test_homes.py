"""Strong operations across a ring change (``core.homes``): joint majorities, the
acceptor's fence, and Paxos state merged into a new replica."""

from __future__ import annotations

import pytest

from dynakv.core import paxos
from dynakv.core.claim import RingChange, plan_join, plan_remove
from dynakv.core.homes import Homes, fence_problem, homes_of, newest_list
from dynakv.core.lwt import Send, StrongOperation, Unavailable
from dynakv.core.paxos import (
    EMPTY_STATE,
    AcceptorState,
    Ballot,
    Decree,
    Proposal,
    PxPrepare,
    PxPromise,
    encode_state,
    merge_states,
)
from dynakv.core.record import ConflictPolicy, Record, Sibling
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.errors import StaleRouting
from tests.unit.test_strong_shell import NODES, PARTITIONS, Cluster

RING = Ring.build([RingNode(n, f"z{i}") for i, n in enumerate(NODES)], PARTITIONS, 3)
JOIN = plan_join(RING, RingNode("n4", "z0"))


def key_in(change: RingChange, moving: bool) -> tuple[int, bytes]:
    moved = set(change.moving_partitions())
    for index in range(10_000):
        key = b"k%d" % index
        partition = partition_of(key, PARTITIONS)
        if (partition in moved) == moving:
            return partition, key
    raise AssertionError("no such key")


def test_a_partition_a_change_moves_needs_majorities_of_both_lists() -> None:
    partition, _ = key_in(JOIN, moving=True)
    homes = homes_of(RING, JOIN, partition)
    old, new = RING.preference_list(partition), JOIN.new.preference_list(partition)
    assert homes.joint and homes.lists == (old, new) and homes.epoch == RING.epoch
    assert set(homes.targets) == set(old) | set(new)
    assert homes.groups == ((frozenset(old), 2), (frozenset(new), 2))


def test_a_partition_the_change_leaves_alone_and_a_static_ring_need_one_majority() -> None:
    partition, _ = key_in(JOIN, moving=False)
    for change in (JOIN, None):
        homes = homes_of(RING, change, partition)
        home = RING.preference_list(partition)
        assert not homes.joint and homes.targets == home
        assert homes.groups == ((frozenset(home), 2),)


def test_a_removed_node_still_counts_in_the_old_majority() -> None:
    ring = JOIN.new  # four nodes
    remove = plan_remove(ring, "n3")
    partition = next(p for p in remove.moving_partitions() if "n3" in ring.preference_list(p))
    homes = homes_of(ring, remove, partition)
    survivors = frozenset(ring.preference_list(partition)) - {"n3"}
    assert "n3" not in homes.targets and homes.groups[0] == (survivors, 2)
    assert "n3" in homes.lists[0]


def test_the_fence_refuses_an_old_list_alone_once_a_change_moves_the_partition() -> None:
    partition, _ = key_in(JOIN, moving=True)
    old, new = RING.preference_list(partition), JOIN.new.preference_list(partition)
    newest = newest_list(RING, JOIN, partition)
    assert newest == new
    assert fence_problem(RING.epoch, (old,), ring=RING, newest=newest) is not None
    assert fence_problem(RING.epoch, (old, new), ring=RING, newest=newest) is None
    # A proposer that already routes by the committed ring: this acceptor lags.
    assert fence_problem(RING.epoch + 1, (new,), ring=RING, newest=newest) is None
    # After the commit (the acceptor routes by the new ring): joint and new pass.
    after = newest_list(JOIN.new, None, partition)
    assert fence_problem(RING.epoch, (old, new), ring=JOIN.new, newest=after) is None
    assert fence_problem(RING.epoch, (old,), ring=JOIN.new, newest=after) is not None
    # An acceptor that has not learned the change yet takes a joint request.
    assert fence_problem(RING.epoch, (old, new), ring=RING, newest=old) is None


def test_the_fence_lets_a_partition_the_change_leaves_alone_through() -> None:
    partition, _ = key_in(JOIN, moving=False)
    home = RING.preference_list(partition)
    newest = newest_list(RING, JOIN, partition)
    assert fence_problem(RING.epoch, (home,), ring=RING, newest=newest) is None
    assert fence_problem(RING.epoch, (home,), ring=JOIN.new, newest=newest) is None


OLD, NEW = ("r1", "r2", "r3"), ("r1", "r2", "r4")


def joint_operation() -> StrongOperation:
    """A read while r3 is replaced by r4: majorities of both lists, no snapshot round."""
    groups = ((frozenset(OLD), 2), (frozenset(NEW), 2))
    homes = Homes(1, (OLD, NEW), ("r1", "r2", "r3", "r4"), groups)
    return StrongOperation(
        partition=0, key=b"k", homes=homes, policy=ConflictPolicy.LWW, snapshot_reads=False
    )


def test_a_joint_round_waits_for_a_majority_of_each_list() -> None:
    old, new = OLD, NEW
    op = joint_operation()
    ballot = Ballot(5, "p")
    sends = op.start(ballot, 0)
    assert [s.node for s in sends if isinstance(s, Send)] == ["r1", "r2", "r3", "r4"]
    prepare = sends[0].message
    assert isinstance(prepare, PxPrepare) and prepare.lists == (old, new) and prepare.epoch == 1
    promise = PxPromise(ballot, None, None, None)
    assert op.on_message("r3", promise) == []
    assert op.on_message("r4", promise) == []  # a majority of neither list yet
    assert op.on_message("r1", promise) != []  # r1 and r3 of the old, r1 and r4 of the new


def test_a_joint_round_is_unavailable_once_one_list_cannot_reach_its_majority() -> None:
    op = joint_operation()
    sends = op.start(Ballot(5, "p"), 0)
    prepare = sends[0].message
    assert isinstance(prepare, PxPrepare)
    assert op.on_failure("r1", prepare, definite=True) == []
    result = op.on_failure("r4", prepare, definite=True)  # the new list has r2 left: 1 < 2
    assert op.result is not None and isinstance(op.result, Unavailable), result


def test_a_removed_nodes_survivors_that_cannot_make_a_majority_answer_unavailable() -> None:
    old, new = ("r1", "dead"), ("r1", "r2")
    homes = Homes(1, (old, new), ("r1", "r2"), ((frozenset({"r1"}), 2), (frozenset(new), 2)))
    op = StrongOperation(partition=0, key=b"k", homes=homes, policy=ConflictPolicy.LWW)
    op.start(Ballot(5, "p"), 0)
    assert isinstance(op.result, Unavailable)


def _decree(ballot: int, value: bytes) -> Decree:
    record = Record((Sibling(value, "n1", ballot, (), ballot, 0),))
    return Decree(Ballot(ballot, "n1"), Proposal(Ballot(ballot, "n1"), record, ()))


def test_merging_states_keeps_the_higher_promise_and_the_later_decrees() -> None:
    mine = AcceptorState(Ballot(9, "n2"), _decree(3, b"a"), _decree(2, b"z"))
    theirs = AcceptorState(Ballot(7, "n1"), _decree(5, b"b"), _decree(1, b"y"))
    merged = merge_states(mine, theirs)
    assert merged.promised == Ballot(9, "n2")
    assert merged.accepted == _decree(5, b"b") and merged.committed == _decree(2, b"z")
    assert paxos.state_problem(merged) is None
    assert merge_states(merged, theirs) is merged  # nothing new: the same state
    assert merge_states(EMPTY_STATE, theirs) == theirs


# -- the acceptor: fence and streamed state, on a real replica ---------------------------


def test_the_acceptor_refuses_a_stale_proposer_and_takes_a_joint_one() -> None:
    cluster = Cluster()
    acceptor = cluster.network.acceptors["n1"]
    acceptor.routes = lambda: (RING, JOIN)
    partition, key = key_in(JOIN, moving=True)
    old, new = RING.preference_list(partition), JOIN.new.preference_list(partition)
    ballot = Ballot(cluster.clock.now_ms() << 16, "n2")
    with pytest.raises(StaleRouting, match="ring change moves the partition"):
        acceptor.handle(PxPrepare(partition, key, ballot, RING.epoch, (old,)), "n2")
    assert acceptor.state(partition, key) == EMPTY_STATE  # nothing promised
    answer = acceptor.handle(PxPrepare(partition, key, ballot, RING.epoch, (old, new)), "n2")
    assert acceptor.fenced == 1 and answer is not None


def test_a_streamed_state_is_merged_and_its_commit_reaches_the_record() -> None:
    cluster = Cluster()
    acceptor = cluster.network.acceptors["n1"]
    replica = cluster.replicas["n1"]
    partition, key = key_in(JOIN, moving=True)
    now = cluster.clock.now_ms() << 16
    record = Record((Sibling(b"chosen", "n2", now, (), now, 0),))
    decree = Decree(Ballot(now, "n2"), Proposal(Ballot(now, "n2"), record, ()))
    copied = AcceptorState(Ballot(now, "n2"), decree, decree)
    acceptor.merge_streamed(partition, key, encode_state(copied), "n2")
    assert acceptor.state(partition, key) == copied
    stored = replica.read(partition, key)
    assert stored is not None and [s.value for s in stored.siblings] == [b"chosen"]
    with pytest.raises(Exception, match="does not decode"):
        acceptor.merge_streamed(partition, key, b"\x01garbage", "n2")
