"""The membership state machine: merge precedence, refutation, join, leave, ring epochs, bounds."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import msgspec

from dynakv.core.gossip_messages import (
    Ack,
    Gossip,
    GossipMessage,
    Lifecycle,
    MemberChanged,
    MemberState,
    Ping,
    RingLearned,
    RingReply,
    RingRequest,
    Send,
    Status,
    SyncDelta,
    SyncDigest,
    SyncHello,
    merge_member,
    state_name,
)
from dynakv.core.member_table import BroadcastQueue, MemberTable
from dynakv.core.membership import Membership, MembershipTiming

TIMING = MembershipTiming()
Action = Send | MemberChanged | RingLearned


def state(
    node_id: str, incarnation: int = 0, status: Status = Status.ALIVE, **fields: object
) -> MemberState:
    base = MemberState(node_id, "z1", f"{node_id}:80", f"{node_id}:70", incarnation, status)
    return msgspec.structs.replace(base, **fields)


def node(
    node_id: str, seeds: Sequence[str] = (), known: Sequence[MemberState] = (), **kw: object
) -> Membership:
    me = state(node_id, lifecycle=Lifecycle.MEMBER)
    return Membership(me, seeds, TIMING, random.Random(node_id), known=known, **kw)  # type: ignore[arg-type]


def deliver(
    nodes: dict[str, Membership], sender: str, actions: list[Action], now_ms: int = 0
) -> list[tuple[str, GossipMessage]]:
    """Carry every Send to its node (by address), and their answers, until quiet; the log."""
    by_address = {m.self_address: m for m in nodes.values()}
    queue = [(sender, a) for a in actions if isinstance(a, Send)]
    log: list[tuple[str, GossipMessage]] = []
    for _ in range(1000):
        if not queue:
            return log
        origin, send = queue.pop(0)
        target = by_address.get(send.to_address)
        log.append((origin, send.message))
        if target is not None:
            answers = target.on_message(origin, send.message, now_ms)
            queue.extend((target.self_id, a) for a in answers if isinstance(a, Send))
    raise AssertionError("messages never went quiet")


# -- merge precedence ----------------------------------------------------------


def test_a_higher_incarnation_wins_whatever_its_status() -> None:
    assert merge_member(state("x", 1, Status.DEAD), state("x", 2)).status is Status.ALIVE
    assert merge_member(state("x", 2), state("x", 1, Status.DEAD)).incarnation == 2


def test_within_an_incarnation_alive_then_suspect_then_dead_then_left() -> None:
    ladder = [Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT]
    for low, high in itertools.pairwise(ladder):
        assert merge_member(state("x", 3, low), state("x", 3, high)).status is high
        assert merge_member(state("x", 3, high), state("x", 3, low)).status is high


def test_lifecycle_merges_by_its_own_version_independently_of_liveness() -> None:
    moved = state("x", 1, lifecycle_version=2, lifecycle=Lifecycle.LEAVING)
    refuted = state("x", 5, lifecycle_version=1, lifecycle=Lifecycle.MEMBER)
    merged = merge_member(moved, refuted)
    assert (merged.incarnation, merged.lifecycle) == (5, Lifecycle.LEAVING)
    assert merge_member(refuted, moved) == merged
    rejoined = state("x", 1, lifecycle_version=3, lifecycle=Lifecycle.JOINING)
    removed = state("x", 1, lifecycle_version=2, lifecycle=Lifecycle.REMOVED)
    assert merge_member(removed, rejoined).lifecycle is Lifecycle.JOINING


def test_accuser_does_not_order_records_but_ties_keep_the_smallest() -> None:
    a, b = state("x", 1, Status.SUSPECT, accuser="b"), state("x", 1, Status.SUSPECT, accuser="a")
    assert merge_member(a, b).accuser == merge_member(b, a).accuser == "a"


def test_state_names_for_the_status_page() -> None:
    assert state_name(state("x", lifecycle=Lifecycle.MEMBER)) == "up"
    assert state_name(state("x", lifecycle=Lifecycle.JOINING)) == "joining"
    assert state_name(state("x", lifecycle=Lifecycle.LEAVING)) == "leaving"
    assert state_name(state("x", status=Status.SUSPECT, lifecycle=Lifecycle.LEAVING)) == "suspect"
    assert state_name(state("x", status=Status.DEAD)) == "down"
    assert state_name(state("x", status=Status.LEFT)) == "down"
    assert state_name(state("x", lifecycle=Lifecycle.REMOVED)) == "down"


# -- table and queue bounds ----------------------------------------------------


def test_a_full_table_evicts_the_oldest_tombstone_then_refuses() -> None:
    table = MemberTable(state("me"), members_max=3, now_ms=0)
    table.apply(state("a", status=Status.DEAD), now_ms=1)
    table.apply(state("b"), now_ms=2)
    assert table.apply(state("c"), now_ms=3) is not None  # displaced dead "a"
    assert "a" not in table and len(table) == 3
    assert table.apply(state("d"), now_ms=4) is None
    assert table.refused == 1 and len(table) == 3


def test_broadcast_queue_replaces_per_node_and_stops_at_the_transmit_limit() -> None:
    queue = BroadcastQueue(entries_max=2)
    queue.push(state("a", 1))
    queue.push(state("a", 2))
    queue.push(state("b"))
    queue.push(state("c"))
    assert len(queue) == 2
    first = queue.take(limit=5, transmit_limit=2)
    assert [s.node_id for s in first] == ["c", "b"]  # newest first
    assert first[0] == state("c")
    assert len(queue.take(limit=5, transmit_limit=2)) == 2
    assert queue.take(limit=5, transmit_limit=2) == []


# -- refutation ------------------------------------------------------------------


def test_a_suspected_node_refutes_with_a_higher_incarnation() -> None:
    me = node("a")
    rumour = Gossip(
        "b", 0, (state("a", 0, Status.SUSPECT, accuser="b", lifecycle=Lifecycle.MEMBER),)
    )
    me.on_message("b", rumour, now_ms=10)
    assert me.me.incarnation == 1 and me.me.status is Status.ALIVE
    assert me.refutations == 1
    assert me.awareness == 1  # Lifeguard: being suspected hints we are slow
    assert me.state_of("a") == "up"
    echo = Gossip("b", 0, (me.me,))
    me.on_message("b", echo, now_ms=20)
    assert me.me.incarnation == 1  # our own news coming back is not a doubt


def test_a_restarted_node_refutes_its_previous_lifes_death() -> None:
    me = node("a")
    me.on_message("b", Gossip("b", 0, (state("a", 7, Status.DEAD),)), now_ms=0)
    assert me.me.incarnation == 8 and me.me.status is Status.ALIVE


def test_a_ping_to_a_suspect_carries_its_suspicion_so_it_can_refute() -> None:
    known = [state("a", lifecycle=Lifecycle.MEMBER), state("b", lifecycle=Lifecycle.MEMBER)]
    a = node("a", known=known)
    a.on_message("c", Gossip("c", 0, (state("b", 0, Status.SUSPECT, accuser="c"),)), now_ms=0)
    pings = [x for x in a.tick(0) if isinstance(x, Send) and isinstance(x.message, Ping)]
    assert len(pings) == 1
    ping = pings[0].message
    assert isinstance(ping, Ping) and ping.target == "b"
    assert ping.updates[0].node_id == "b" and ping.updates[0].status is Status.SUSPECT


# -- suspicion to death ------------------------------------------------------------


def test_an_unrefuted_suspicion_becomes_down_after_the_timeout() -> None:
    known = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("a", "b", "c")]
    a = node("a", known=known)
    changes = a.on_message(
        "c",
        Gossip("c", 0, (state("b", 0, Status.SUSPECT, accuser="c", lifecycle=Lifecycle.MEMBER),)),
        0,
    )
    assert MemberChanged("b", "up", "suspect") in changes
    seen: list[Action] = []
    for now in range(0, TIMING.suspicion_min_ms + 100, 50):
        seen.extend(a.tick(now))
        a_ping_answers = [x for x in seen if isinstance(x, Send) and isinstance(x.message, Ping)]
        for send in a_ping_answers:  # "c" answers every probe; "b" never does
            assert isinstance(send.message, Ping)
            if send.message.target == "c":
                a.on_message("c", Ack("c", send.message.seq), now)
        seen = [x for x in seen if not isinstance(x, Send)]
    assert a.state_of("b") == "down"
    assert a.state_of("c") == "up"


# -- join, leave --------------------------------------------------------------------


def test_join_via_a_seed_is_a_push_pull_that_teaches_both_sides() -> None:
    members = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("s", "t")]
    seed, other = node("s", known=members), node("t", known=members)
    joiner = Membership(state("j"), ["s:70"], TIMING, random.Random(3))
    nodes = {"s": seed, "t": other, "j": joiner}
    log = deliver(nodes, "j", joiner.tick(0))
    kinds = [type(m).__name__ for _, m in log if not isinstance(m, Ping | Ack)]
    assert kinds[:4] == ["SyncHello", "SyncDigest", "SyncDelta", "SyncDelta"]
    assert isinstance(log[0][1], SyncHello) and isinstance(log[1][1], SyncDigest)
    assert joiner.live_nodes() == ("j", "s", "t")
    assert seed.state_of("j") == "joining"
    assert other.state_of("j") is None  # not yet: gossip carries it
    deliver(nodes, "s", seed.tick(TIMING.gossip_interval_ms))
    assert other.state_of("j") == "joining"


def test_sync_between_agreeing_nodes_is_one_message() -> None:
    members = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("a", "b")]
    a, b = node("a", known=members), node("b", known=members)
    assert a.live_hash == b.live_hash
    hello = SyncHello(a.me, a.live_hash, 0)
    assert b.on_message("a", hello, 0) == []


def test_sync_tells_a_node_it_was_declared_dead_so_it_refutes() -> None:
    members = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("a", "b")]
    a, b = node("a", known=members), node("b", known=members)
    b.on_message("c", Gossip("c", 0, (state("a", 0, Status.DEAD, lifecycle=Lifecycle.MEMBER),)), 0)
    assert b.state_of("a") == "down"
    deliver({"a": a, "b": b}, "a", [Send("b:70", SyncHello(a.me, a.live_hash, 0))])
    assert a.me.incarnation == 1
    assert b.state_of("a") == "down"  # the refutation travels by gossip, next round
    deliver({"a": a, "b": b}, "a", a.tick(0))
    assert b.state_of("a") == "up"


def test_leave_announces_left_and_stops_probing() -> None:
    members = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("a", "b")]
    a, b = node("a", known=members), node("b", known=members)
    actions = a.leave(now_ms=0)
    assert MemberChanged("a", "up", "down") in actions
    assert a.me.status is Status.LEFT and a.me.incarnation == 1
    deliver({"a": a, "b": b}, "a", actions)
    assert b.state_of("a") == "down"
    assert not [x for x in a.tick(10_000) if isinstance(x, Send) and isinstance(x.message, Ping)]
    assert a.leave(now_ms=1) == []


def test_set_lifecycle_is_gossiped_and_adopted_by_its_subject() -> None:
    members = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("a", "b")]
    a, b = node("a", known=members), node("b", known=members)
    actions = a.set_lifecycle("b", Lifecycle.LEAVING, now_ms=0)
    assert MemberChanged("b", "up", "leaving") in actions
    deliver({"a": a, "b": b}, "a", a.tick(0))
    assert b.me.lifecycle is Lifecycle.LEAVING and b.state_of("b") == "leaving"


def test_dead_members_are_forgotten_after_their_ttl() -> None:
    members = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("a", "b")]
    a = node("a", known=members)
    a.on_message("c", Gossip("c", 0, (state("b", 0, Status.DEAD),)), now_ms=0)
    a.tick(TIMING.dead_member_ttl_ms - 1000)
    assert a.state_of("b") == "down"
    changes = [x for x in a.tick(TIMING.dead_member_ttl_ms + 1000) if isinstance(x, MemberChanged)]
    assert MemberChanged("b", "down", None) in changes
    assert a.member("b") is None


# -- ring epochs --------------------------------------------------------------------


def ring_requests(actions: list[Action]) -> list[Send]:
    return [x for x in actions if isinstance(x, Send) and isinstance(x.message, RingRequest)]


def test_a_newer_epoch_seen_in_a_ping_is_fetched_from_its_sender() -> None:
    members = [state(n, lifecycle=Lifecycle.MEMBER) for n in ("a", "b")]
    a = node("a", known=members, ring_epoch=2, ring_bytes=b"ring two")
    b = node("b", known=members, ring_epoch=1, ring_bytes=b"ring one")
    ping = Ping("a", "a:70", 1, "b", ring_epoch=2)
    requests = ring_requests(b.on_message("a", ping, now_ms=0))
    assert [r.to_address for r in requests] == ["a:70"]
    assert ring_requests(b.on_message("a", ping, now_ms=10)) == []  # one fetch at a time
    [reply] = a.on_message("b", requests[0].message, now_ms=20)
    assert isinstance(reply, Send) and reply.message == RingReply("a", 2, b"ring two")
    assert b.on_message("a", reply.message, now_ms=30) == [RingLearned(2, b"ring two")]
    assert (b.ring.epoch, b.ring.ring_bytes) == (2, b"ring two")
    assert b.on_message("a", reply.message, now_ms=40) == []  # not newer any more


def test_a_ring_the_check_refuses_is_not_adopted() -> None:
    b = node("b", ring_check=lambda epoch, data: data.startswith(b"ring"))
    assert b.on_message("a", RingReply("a", 5, b"garbage"), 0) == []
    assert b.ring.epoch == 0 and b.rejected == 1


def test_observe_ring_epoch_from_a_replica_message() -> None:
    b = node("b", ring_epoch=3)
    assert b.observe_ring_epoch(3, "a:70", 0) == []
    [send] = b.observe_ring_epoch(4, "a:70", 0)
    assert isinstance(send, Send) and send.message == RingRequest("b", "b:70", 4)
    assert b.observe_ring_epoch(4, "a:70", TIMING.ring_fetch_timeout_ms - 1) == []
    assert b.observe_ring_epoch(4, "a:70", TIMING.ring_fetch_timeout_ms) != []  # retried
    assert b.install_ring(5, b"five") and not b.install_ring(5, b"again")


# -- hostile input ------------------------------------------------------------------


def test_a_spoofed_or_oversized_message_is_dropped() -> None:
    a = node("a")
    assert a.on_message("mallory", Gossip("b", 0, (state("b"),)), 0) == []
    too_many = tuple(state(f"x{i}") for i in range(TIMING.updates_per_message_max + 1))
    assert a.on_message("b", Gossip("b", 0, too_many), 0) == []
    long_id = Gossip("b", 0, (state("x" * 200),))
    assert a.on_message("b", long_id, 0) == []
    assert a.rejected == 3 and a.live_nodes() == ("a",)


def test_a_delta_final_answer_is_never_answered() -> None:
    a = node("a")
    final = SyncDelta("b", "b:70", (state("b"),), ("a",), 0, final=True)
    actions = a.on_message("b", final, 0)
    assert not [x for x in actions if isinstance(x, Send)]
    assert a.state_of("b") == "joining"


def test_piggyback_puts_a_doubted_recipients_own_record_first() -> None:
    queue = BroadcastQueue(entries_max=8)
    queue.push(state("c"))
    doubted = state("b", 1, Status.SUSPECT, accuser="c")
    assert queue.piggyback(doubted, limit=4, transmit_limit=3) == (doubted, state("c"))
    assert queue.piggyback(state("b"), limit=4, transmit_limit=3) == (state("c"),)
    assert queue.piggyback(None, limit=4, transmit_limit=3) == (state("c"),)


def test_a_stale_doubt_in_a_ping_is_answered_with_the_current_record() -> None:
    a = node("a", known=[state("b", lifecycle=Lifecycle.MEMBER)])
    a.on_message("b", Gossip("b", 0, (state("a", 1, Status.SUSPECT, accuser="b"),)), 0)
    assert a.me.incarnation == 2
    for round_number in range(10):  # let the refutation's retransmissions run out
        now = round_number * TIMING.gossip_interval_ms
        for send in a.tick(now):
            if isinstance(send, Send) and isinstance(send.message, Ping):
                a.on_message("b", Ack("b", send.message.seq), now)  # b is fine
    assert ping_updates(a, Ping("b", "b:70", 8, "a")) == ()
    stale = state("a", 1, Status.SUSPECT, accuser="c", lifecycle=Lifecycle.MEMBER)
    assert ping_updates(a, Ping("b", "b:70", 9, "a", updates=(stale,))) == (a.me,)


def ping_updates(receiver: Membership, ping: Ping) -> tuple[MemberState, ...]:
    """What ``receiver``'s ack to ``ping`` piggybacks."""
    [ack] = [x for x in receiver.on_message(ping.sender, ping, 2000) if isinstance(x, Send)]
    assert isinstance(ack.message, Ack) and ack.message.seq == ping.seq
    return ack.message.updates
