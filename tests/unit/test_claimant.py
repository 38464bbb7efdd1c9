"""The claimant and the streaming protocol, one transition at a time.

Transfers (``core.transfer``): the sender's page, the receiver's checks, restarts,
failover and the verified report. The claimant (``core.claimant``): acceptor
rules, learning, requests (accepted, busy, refused), serving pages, drops,
and whole changes in the seeded harness without faults (join, leave, remove,
a dead claimant, a dead joiner, a failed transfer).
"""

from __future__ import annotations

import itertools
import random

import msgspec
import pytest

from dynakv.core.claim import plan_join, plan_leave
from dynakv.core.claimant import (
    Accepted,
    Answer,
    Ballot,
    Busy,
    ChangeState,
    Claimant,
    ClaimantMessage,
    ClusterChange,
    DropPartitions,
    InstallRing,
    PersistRegister,
    RcAck,
    RcDrop,
    RcDropped,
    RcPrepare,
    RcPromise,
    RcReject,
    RcWrite,
    Refused,
    RegisterState,
    Retire,
    ServePage,
    Stamp,
    TransferStatus,
    plan_change,
    request_problem,
    transfer_plans,
)
from dynakv.core.record import Record, Sibling, encode_record
from dynakv.core.ring import Ring, RingNode
from dynakv.core.transfer import (
    IngestPage,
    Receiver,
    Send,
    TransferPlan,
    TransferTiming,
    XfAssign,
    XfFailed,
    XfPage,
    XfPageRequest,
    XfRefused,
    XfReport,
    chain_next,
    page_reply,
)
from dynakv.sim.claimant_harness import HARNESS_TIMING, ClaimantHarness

NODES = [RingNode("a", "z1"), RingNode("b", "z2"), RingNode("c", "z3")]
RING = Ring.build(NODES, partition_count=16, replicas=3)
LIVE = frozenset({"a", "b", "c", "d"})
TIMING = TransferTiming(page_items_max=2, page_bytes_max=1000, page_timeout_ms=100)


def record_bytes(value: bytes, timestamp: int = 1) -> bytes:
    return encode_record(Record((Sibling(value, "a", timestamp, (), timestamp),)))


ITEMS = [(b"k%d" % i, record_bytes(b"v%d" % i)) for i in range(5)]


def fold_pages(chain: bytes, items: list[tuple[bytes, bytes]]) -> bytes:
    """The chain after streaming ``items`` in pages of ``page_items_max`` (a short page ends)."""
    size = TIMING.page_items_max
    for start in range(0, len(items) + 1, size):
        page = items[start : start + size]
        chain = chain_next(chain, page)
        if len(page) < size:
            break
    return chain


def claimant(node_id: str, ring: Ring | None = RING) -> Claimant:
    return Claimant(node_id, HARNESS_TIMING, random.Random(0), ring=ring)


def sends(actions: list[object]) -> list[Send]:
    return [action for action in actions if isinstance(action, Send)]


# -- the sender's page -------------------------------------------------------------------


def request(after: bytes | None = None, count: int = 0, chain: bytes = b"") -> XfPageRequest:
    return XfPageRequest("d", "x", 3, 1, after, count, chain, items_max=2, bytes_max=1000)


def test_page_reply_moves_count_and_chain_past_exactly_what_it_sends() -> None:
    page = page_reply("a", request(), ITEMS[:2])
    assert page.items == tuple(ITEMS[:2]) and page.count == 2 and not page.done
    assert page.chain == chain_next(b"", ITEMS[:2]) != chain_next(b"", ITEMS[:1])
    last = page_reply("a", request(ITEMS[3][0], 4, page.chain), ITEMS[4:])
    assert last.done and last.count == 5 and last.after == ITEMS[3][0]


def test_page_reply_trims_to_the_byte_bound_but_always_sends_one_record() -> None:
    big = [(b"k1", b"x" * 900), (b"k2", b"y" * 900)]
    page = page_reply("a", request(), big)
    assert page.items == (big[0],) and not page.done  # trimmed: more to come
    huge = [(b"k1", b"x" * 5000)]
    assert page_reply("a", request(), huge).items == tuple(huge)


def test_the_chain_tells_apart_what_plain_concatenation_would_not() -> None:
    assert chain_next(b"", [(b"ab", b"c")]) != chain_next(b"", [(b"a", b"bc")])
    assert chain_next(b"", []) != chain_next(chain_next(b"", []), [])


# -- the receiver ------------------------------------------------------------------------


def receiver_with(plan: TransferPlan) -> tuple[Receiver, list[Send | IngestPage]]:
    receiver = Receiver("d", TIMING)
    actions = receiver.assign(XfAssign("lead", "x", (plan,)), 0, LIVE)
    return receiver, actions


def first_request(actions: list[Send | IngestPage]) -> tuple[str, XfPageRequest]:
    for action in actions:
        if isinstance(action, Send) and isinstance(action.message, XfPageRequest):
            return action.to_node, action.message
    raise AssertionError(f"no page request in {actions}")


def serve(source: str, message: XfPageRequest, items: list[tuple[bytes, bytes]]) -> XfPage:
    after = message.after
    scanned = [item for item in items if after is None or item[0] > after][: message.items_max]
    return page_reply(source, message, scanned)


def stream_to_end(
    receiver: Receiver,
    actions: list[Send | IngestPage],
    items: list[tuple[bytes, bytes]],
    live: frozenset[str] = LIVE,
) -> list[Send | IngestPage]:
    for _ in range(20):
        source, message = first_request(actions)
        page = serve(source, message, items)
        ingest = receiver.on_page(page, 0, live)
        assert ingest == [IngestPage(3, page.items, page.attempt, message.paxos, source)]
        actions = receiver.on_page_stored(3, page.attempt, 0, live)
        if page.done:
            return actions
    raise AssertionError("the stream did not end")


def test_the_receiver_pulls_page_by_page_and_reports_verified_after_the_last_is_stored() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b"), "d"))
    source, message = first_request(actions)
    assert source == "a" and message.after is None and message.count == 0
    report = [a for a in actions if isinstance(a, Send) and isinstance(a.message, XfReport)]
    assert report[0].message == XfReport("d", "x", streaming=(3,))
    done = stream_to_end(receiver, actions, ITEMS)
    verified = done[0]
    assert isinstance(verified, Send) and isinstance(verified.message, XfReport)
    (result,) = verified.message.verified
    assert (result.count, result.chain, result.sources) == (5, fold_pages(b"", ITEMS), ("a",))
    assert receiver.verified[3] == result and receiver.streaming() == ()
    # Asked again (a new claimant), it answers from what it verified, without streaming.
    again = receiver.assign(XfAssign("lead2", "x", (TransferPlan(3, ("a", "b"), "d"),)), 0, LIVE)
    assert again == [Send("lead2", XfReport("d", "x", verified=(result,)))]


STATES = [(b"k1", b"state-1"), (b"k3", b"state-3")]


def test_after_the_records_it_merges_paxos_state_from_a_majority_of_the_old_list() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b", "c"), "d", paxos_quorum=2))
    records_done = stream_to_end(receiver, actions, ITEMS)
    assert 3 not in receiver.verified  # the records alone do not verify it
    source, message = first_request(records_done)
    assert (source, message.paxos, message.after, message.count) == ("a", True, None, 0)
    after_a = stream_to_end(receiver, records_done, STATES)
    source, message = first_request(after_a)
    assert (source, message.paxos) == ("b", True)
    done = stream_to_end(receiver, after_a, STATES[:1])
    verified = done[0]
    assert isinstance(verified, Send) and isinstance(verified.message, XfReport)
    (result,) = verified.message.verified
    # The report is the records' stream; the Paxos states only gate it.
    assert (result.count, result.chain, result.sources) == (5, fold_pages(b"", ITEMS), ("a",))


def test_paxos_state_skips_a_dead_old_replica_and_fails_without_a_majority() -> None:
    live = frozenset({"a", "c", "d"})
    receiver = Receiver("d", TIMING)
    plan = TransferPlan(3, ("a", "b", "c"), "d", paxos_quorum=2)
    actions = receiver.assign(XfAssign("lead", "x", (plan,)), 0, live)
    actions = stream_to_end(receiver, actions, ITEMS, live)
    actions = stream_to_end(receiver, actions, STATES, live)  # from a
    source, message = first_request(actions)
    assert (source, message.paxos) == ("c", True)  # b is down: skipped
    refusal = XfRefused("c", "x", 3, message.attempt, "no such change")
    only_a = frozenset({"a", "d"})
    assert receiver.on_refused(refusal, 0, only_a) == []  # none left live: it waits
    # b comes back within the wait: it is asked.
    source, message = first_request(receiver.tick(1_000, frozenset({"a", "b", "d"})))
    assert (source, message.paxos) == ("b", True)
    # b goes down again and stays down: after the wait, the transfer fails.
    assert receiver.tick(1_500, only_a) == []
    failed = receiver.tick(1_500 + TIMING.paxos_wait_ms, only_a)
    report = [a.message for a in failed if isinstance(a, Send)]
    assert report and isinstance(report[0], XfReport) and report[0].failed
    assert "merged from 1 old replica(s) of the 2 needed" in report[0].failed[0].reason
    assert 3 not in receiver.verified


def test_a_removed_nodes_list_needs_the_paxos_state_of_every_survivor() -> None:
    # Old list {a, b, dead}: a majority of it is 2, and only a and b are left.
    receiver, actions = receiver_with(TransferPlan(3, ("a",), "d", paxos_quorum=2))
    actions = stream_to_end(receiver, actions, ITEMS)
    source, message = first_request(actions)
    assert (source, message.paxos) == ("a", True)
    done = stream_to_end(receiver, actions, STATES)
    assert 3 in receiver.verified and isinstance(done[0], Send)


def test_the_next_page_is_asked_only_after_the_shell_stored_the_last() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a",), "d"))
    source, message = first_request(actions)
    page = serve(source, message, ITEMS)
    assert receiver.on_page(page, 0, LIVE) == [IngestPage(3, page.items, page.attempt, False, "a")]
    assert receiver.on_page(page, 0, LIVE) == []  # a duplicate while storing
    assert receiver.tick(10_000, LIVE) == []  # no timeout while the shell stores
    assert receiver.on_page_stored(3, page.attempt + 7, 0, LIVE) == []  # not this attempt
    _, following = first_request(receiver.on_page_stored(3, page.attempt, 0, LIVE))
    assert following.after == ITEMS[1][0] and following.count == 2


def test_a_page_that_does_not_check_restarts_the_stream_from_its_beginning() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b"), "d"))
    source, message = first_request(actions)
    good = serve(source, message, ITEMS)
    receiver.on_page(good, 0, LIVE)
    _, second = first_request(receiver.on_page_stored(3, good.attempt, 0, LIVE))
    corrupt = msgspec.structs.replace(serve(source, second, ITEMS), chain=b"\x00" * 16)
    restart = receiver.on_page(corrupt, 0, LIVE)
    restarted_at, again = first_request(restart)
    assert restarted_at == "a" and again.after is None and again.count == 0
    assert again.attempt > second.attempt
    assert receiver.on_page(serve(source, second, ITEMS), 0, LIVE) == []  # the old attempt's page


def test_pages_that_keep_failing_move_the_stream_to_the_next_source() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b"), "d"))
    source, message = first_request(actions)
    for _ in range(TIMING.restarts_max + 1):
        bad = msgspec.structs.replace(serve(source, message, ITEMS), count=99)
        source, message = first_request(receiver.on_page(bad, 0, LIVE))
    assert source == "b" and message.after is None


def test_a_dead_or_silent_source_gives_way_to_the_next() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b", "c"), "d"))
    source, message = first_request(actions)
    assert source == "a"
    source, message = first_request(receiver.tick(0, LIVE - {"a"}))  # a died
    assert source == "b"
    timeout_ms = TIMING.page_timeout_ms
    for retry in range(1, TIMING.page_retries_max + 1):
        resent = receiver.tick(retry * timeout_ms, LIVE)
        assert first_request(resent) == ("b", message)  # silent: the same request again
    assert receiver.tick(TIMING.page_retries_max * timeout_ms + 1, LIVE) == []
    source, message = first_request(receiver.tick(10_000, LIVE))
    assert source == "c" and message.after is None


def test_once_the_replaced_replica_is_given_up_every_other_source_is_merged_whole() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b", "c"), "d"))
    source, message = first_request(actions)
    page = serve(source, message, ITEMS)
    receiver.on_page(page, 0, LIVE)
    receiver.on_page_stored(3, page.attempt, 0, LIVE)
    source, message = first_request(receiver.tick(1, LIVE - {"a"}))
    assert (source, message.after, message.count) == ("b", None, 2)  # whole, chain goes on
    done = stream_to_end(receiver, [Send(source, message)], ITEMS[1:])
    source, message = first_request(done)
    assert (source, message.after) == ("c", None)
    done = stream_to_end(receiver, [Send(source, message)], ITEMS[:2])
    source, message = first_request(done)  # a is back: it is merged whole as well
    assert (source, message.after) == ("a", None)
    report = stream_to_end(receiver, [Send(source, message)], ITEMS)
    (verified,) = [a.message for a in report if isinstance(a, Send)]
    assert isinstance(verified, XfReport) and verified.verified[0].sources == ("b", "c", "a")


def test_the_sources_are_tried_round_a_few_times_then_the_transfer_fails() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b", "c"), "d"))
    asked: list[str] = []
    for _ in range(20):
        requests = [
            a for a in actions if isinstance(a, Send) and isinstance(a.message, XfPageRequest)
        ]
        if not requests:
            break
        source, message = requests[0].to_node, requests[0].message
        assert isinstance(message, XfPageRequest)
        asked.append(source)
        actions = receiver.on_refused(XfRefused(source, "x", 3, message.attempt, "no"), 0, LIVE)
    assert asked == ["a", "b", "c"] * TIMING.source_passes_max
    (failed,) = actions
    assert isinstance(failed, Send) and isinstance(failed.message, XfReport)
    assert failed.message.failed == (XfFailed(3, "no source left for partition 3: no"),)
    assert receiver.failed[3] == failed.message.failed[0]


def test_stream_all_merges_every_live_source_and_the_chain_runs_across_them() -> None:
    receiver, actions = receiver_with(TransferPlan(3, ("a", "b", "c"), "d", stream_all=True))
    first = stream_to_end(receiver, actions, ITEMS[:3])
    second = stream_to_end(receiver, first, ITEMS[2:])
    third = stream_to_end(receiver, second, [])
    report = third[0]
    assert isinstance(report, Send) and isinstance(report.message, XfReport)
    (verified,) = report.message.verified
    assert verified.sources == ("a", "b", "c") and verified.count == 6
    assert verified.chain == fold_pages(fold_pages(fold_pages(b"", ITEMS[:3]), ITEMS[2:]), [])


def test_a_transfer_with_no_source_is_verified_empty_and_the_queue_is_bounded() -> None:
    _, actions = receiver_with(TransferPlan(3, (), "d"))
    verified = [a for a in actions if isinstance(a, Send) and isinstance(a.message, XfReport)]
    assert verified[0].message.verified[0].count == 0
    small = Receiver("d", TransferTiming(streams_max=1, queued_max=1))
    plans = tuple(TransferPlan(p, ("a",), "d") for p in range(5))
    small.assign(XfAssign("lead", "x", plans), 0, LIVE)
    assert small.streaming() == (0, 1)  # one streaming, one queued; the rest come again


# -- acceptor and learner ----------------------------------------------------------------


def test_an_acceptor_promises_only_above_its_promise_and_persists_before_it_answers() -> None:
    node = claimant("b")
    actions = node.on_message("a", RcPrepare("a", 1, Ballot(1, "a")), 0)
    assert isinstance(actions[0], PersistRegister) and actions[0].state.promised == Ballot(1, "a")
    assert actions[1] == Send("a", RcPromise("b", 1, Ballot(1, "a"), None, None))
    for ballot in (Ballot(1, "a"), Ballot(0, "z")):
        refused = node.on_message("c", RcPrepare("c", 1, ballot), 0)
        assert refused == [Send("c", RcReject("b", 1, ballot, Ballot(1, "a"), 1))]
    stale = node.on_message("c", RcPrepare("c", 0, Ballot(9, "c")), 0)
    assert stale == [Send("c", RcReject("b", 0, Ballot(9, "c"), Ballot(1, "a"), 1))]


def open_change() -> ClusterChange:
    return plan_change(RING, "join", RingNode("d", "z1"), "1.1.1.a", 0)


def test_an_acceptor_keeps_the_highest_stamp_and_refuses_writes_below_its_promise() -> None:
    node = claimant("b")
    node.on_message("a", RcPrepare("a", 1, Ballot(2, "a")), 0)
    change = open_change()
    low = RcWrite("c", 1, Stamp(1, "c", 5), change)
    assert node.on_message("c", low, 0) == [
        Send("c", RcReject("b", 1, Ballot(1, "c"), Ballot(2, "a"), 1))
    ]
    newer, older = (
        RcWrite("a", 1, Stamp(2, "a", 2), change),
        RcWrite("a", 1, Stamp(2, "a", 1), change),
    )
    node.on_message("a", newer, 0)
    node.on_message("a", older, 0)  # reordered: acknowledged, never adopted
    assert node.register.stamp == Stamp(2, "a", 2)


def test_an_accepted_record_moves_nothing_until_it_is_known_chosen() -> None:
    node = claimant("b")
    change = open_change()
    committed = msgspec.structs.replace(change, state=ChangeState.COMMITTED)
    actions = node.on_message("a", RcWrite("a", 1, Stamp(1, "a", 1), committed), 0)
    assert not any(isinstance(a, InstallRing) for a in actions)
    assert node.routing() is None and node.ring is RING
    (ack,) = sends(actions)
    assert isinstance(ack.message, RcAck) and ack.message.ring_epoch == 1
    opened = node.on_message("a", RcWrite("a", 1, Stamp(1, "a", 2), change, chosen=True), 0)
    routing = node.routing()
    assert (
        routing is not None
        and routing.new.has_node("d")
        and opened[0] == PersistRegister(node.register)
    )
    chosen = RcWrite("a", 1, Stamp(1, "a", 3), committed, chosen=True)
    installed = node.on_message("a", chosen, 0)
    assert InstallRing(2, committed.new_ring) in installed
    assert node.ring is not None and node.ring.epoch == 2 and node.register.slot == 2
    assert node.routing() is None


def test_a_restarted_node_keeps_its_promise() -> None:
    state = RegisterState(slot=1, promised=Ballot(5, "c"))
    node = Claimant("b", HARNESS_TIMING, random.Random(0), ring=RING, register=state)
    refused = node.on_message("a", RcPrepare("a", 1, Ballot(4, "a")), 0)
    assert isinstance(refused[0], Send) and isinstance(refused[0].message, RcReject)


def test_messages_whose_sender_is_not_the_connection_are_dropped() -> None:
    node = claimant("b")
    assert node.on_message("c", RcPrepare("a", 1, Ballot(1, "a")), 0) == []
    assert node.rejected == 1


# -- requests ----------------------------------------------------------------------------


def run_to_quiet(nodes: dict[str, Claimant], first: list[object], origin: str) -> list[object]:
    """Deliver every message until none is left; every action but sends, in order."""
    queue = [(origin, action) for action in first]
    others: list[object] = []
    for _ in range(10_000):
        if not queue:
            return others
        node_id, action = queue.pop(0)
        if isinstance(action, Send):
            message = action.message
            assert isinstance(message, ClaimantMessage)
            replies = nodes[action.to_node].on_message(node_id, message, 0)
            queue.extend((action.to_node, reply) for reply in replies)
        else:
            others.append(action)
    raise AssertionError("messages did not settle")


def three() -> dict[str, Claimant]:
    """The three members and "d", a live node outside the ring (it has the ring by gossip)."""
    nodes = {node_id: claimant(node_id) for node_id in sorted(LIVE)}
    for node in nodes.values():
        node.tick(0, LIVE)
    return nodes


def test_a_request_is_accepted_once_a_majority_accepted_its_record() -> None:
    nodes = three()
    first = nodes["a"].request(7, "join", "d", 0, zone="z1")
    assert not any(isinstance(a, Answer) for a in first)  # a prepare round first
    prepares = sends(first)
    assert {s.to_node for s in prepares} == {"b", "c"}
    others = run_to_quiet(nodes, first, "a")
    answers = [a for a in others if isinstance(a, Answer)]
    assert len(answers) == 1 and answers[0].request_id == 7
    outcome = answers[0].outcome
    assert isinstance(outcome, Accepted) and outcome.change.state is ChangeState.OPEN
    assert outcome.change.old_epoch == 1 and outcome.change.kind == "join"
    assert all(n.in_progress() == outcome.change for n in nodes.values())
    assert all(n.routing() is not None for n in nodes.values())  # announced as chosen


def test_a_second_request_anywhere_is_busy_naming_the_change_in_progress() -> None:
    nodes = three()
    run_to_quiet(nodes, nodes["a"].request(7, "join", "d", 0, zone="z1"), "a")
    for node_id in ("a", "c"):
        (answer,) = nodes[node_id].request(8, "leave", "b", 0)
        assert isinstance(answer, Answer) and isinstance(answer.outcome, Busy)
        assert answer.outcome.change.node_id == "d"
        assert "join of d" in answer.outcome.change.describe()


@pytest.mark.parametrize(
    ("kind", "node", "live", "problem"),
    [
        ("join", RingNode("a", "z1"), LIVE, "already a member"),
        ("join", RingNode("e", "z1"), LIVE, "not a live member"),
        ("join", RingNode("d", ""), LIVE, "a zone"),
        ("leave", RingNode("e", "z1"), LIVE, "not a member"),
        ("remove", RingNode("b", "z2"), LIVE, "use leave"),
        ("remove", RingNode("b", "z2"), LIVE - {"b"}, None),
    ],
)
def test_requests_that_cannot_be_carried_out_say_why(
    kind: str, node: RingNode, live: frozenset[str], problem: str | None
) -> None:
    found = request_problem(RING, kind, node, live)  # type: ignore[arg-type]
    assert (found is None) if problem is None else (found is not None and problem in found)
    lonely = Ring.build([RingNode("a", "z1")], partition_count=4, replicas=1)
    assert "last node" in (request_problem(lonely, "leave", RingNode("a", "z1"), LIVE) or "")


def test_a_refused_request_is_answered_by_the_leader() -> None:
    nodes = three()
    others = run_to_quiet(nodes, nodes["a"].request(7, "join", "b", 0, zone="z2"), "a")
    (answer,) = [a for a in others if isinstance(a, Answer)]
    assert isinstance(answer.outcome, Refused) and "already a member" in answer.outcome.reason


def test_each_receiver_streams_first_from_the_node_whose_place_it_takes() -> None:
    ring = Ring.build([*NODES, RingNode("d", "z1"), RingNode("e", "z2")], 16, 3)
    change = plan_leave(ring, "e")
    for plan, transfer in zip(transfer_plans(change), change.transfers, strict=True):
        assert plan.from_nodes[0] == "e" and set(plan.from_nodes) == set(transfer.from_nodes)
    joined = plan_join(ring, RingNode("f", "z3"))
    for plan in transfer_plans(joined):
        old = ring.preference_list(plan.partition)
        assert plan.from_nodes[0] not in joined.new.preference_list(plan.partition)
        assert plan.from_nodes[0] in old


def test_partitions_only_a_removed_node_held_are_reported_lost() -> None:
    ring = Ring.build(NODES, partition_count=8, replicas=1)
    change = plan_change(ring, "remove", ring.node("b"), "1.1.1.a", 0)
    assert change.lost == ring.replica_partitions("b")
    for plan, status in zip(change.transfers, change.statuses, strict=True):
        assert (status is TransferStatus.VERIFIED) == (not plan.from_nodes) and plan.stream_all


def test_a_page_is_served_only_to_a_receiver_of_the_change_this_node_learned() -> None:
    nodes = three()
    run_to_quiet(nodes, nodes["a"].request(7, "join", "d", 0, zone="z1"), "a")
    change = nodes["b"].in_progress()
    assert change is not None
    ours = next(p for p in change.transfers if "b" in p.from_nodes)
    good = XfPageRequest("d", change.change_id, ours.partition, 1, None, 0, b"", 2, 1000)
    assert nodes["b"].on_message("d", good, 0) == [ServePage(good)]
    for bad in (
        msgspec.structs.replace(good, change_id="other"),
        msgspec.structs.replace(good, sender="c"),
    ):
        (refusal,) = nodes["b"].on_message(bad.sender, bad, 0)
        assert isinstance(refusal, Send) and isinstance(refusal.message, XfRefused)


def test_a_drop_keeps_what_the_node_replicates_and_only_a_node_that_left_retires() -> None:
    node = claimant("b")
    mine = RING.replica_partitions("b")
    actions = node.on_message("a", RcDrop("a", "x", (*mine[:2], 99 % 16), retire=True), 0)
    dropped = [a for a in actions if isinstance(a, DropPartitions)]
    assert all(p not in mine for d in dropped for p in d.partitions)
    assert not any(isinstance(a, Retire) for a in actions)  # still a member
    assert actions[-1] == Send("a", RcDropped("b", "x"))
    outsider = claimant("z")
    retired = outsider.on_message("a", RcDrop("a", "x", (1, 2), retire=True), 0)
    assert DropPartitions((1, 2)) in retired and Retire() in retired


# -- whole changes, in the harness without faults -----------------------------------------


def final_state(harness: ClaimantHarness) -> list[tuple[str, str]]:
    return [(change_id, state.name) for _, _, _, change_id, state in harness.chosen]


def test_a_join_commits_after_every_transfer_is_verified_and_old_owners_drop() -> None:
    harness = ClaimantHarness(1, nodes=4, partition_count=16)
    harness.start_node("n9", "z2")
    harness.workload(0, 3000, writes=300, reads=200, keys=300)
    request_id = harness.request(500, "n1", "join", "n9", zone="z2")
    harness.run(8000)
    accepted = harness.answers[request_id]
    assert isinstance(accepted, Accepted)
    assert final_state(harness)[-1] == (accepted.change.change_id, "COMMITTED")
    ring = harness.current_ring()
    assert ring.epoch == 2 and ring.has_node("n9")
    assert all(node.ring == ring for node in harness.nodes.values())
    expected = {(plan.to_node, plan.partition) for plan in accepted.change.transfers}
    assert harness.ingested == expected
    assert harness.leftovers(ring) == [] and harness.dropped
    assert harness.data_problems(ring, required=3) == []
    assert (harness.lifecycles[-1][1:]) == ("n9", "MEMBER")


def test_a_leave_hands_every_partition_off_then_the_node_retires() -> None:
    harness = ClaimantHarness(2, nodes=5, partition_count=16)
    harness.workload(0, 3000, writes=300, reads=200, keys=300)
    harness.request(400, "n0", "leave", "n3")
    harness.run(8000)
    ring = harness.current_ring()
    assert not ring.has_node("n3") and harness.nodes["n3"].retired
    assert all(not records for records in harness.nodes["n3"].storage.values())
    assert harness.data_problems(ring, required=3) == []
    # Set by the leader and by the leaving node itself (which learns each record too).
    names = [name for _, node, name in harness.lifecycles if node == "n3"]
    assert [name for name, _ in itertools.groupby(names)] == ["LEAVING", "REMOVED"], names


def test_a_remove_re_replicates_a_dead_nodes_partitions_from_every_survivor() -> None:
    harness = ClaimantHarness(3, nodes=5, partition_count=16)
    harness.workload(0, 3000, writes=300, reads=200, keys=300)
    harness.crash(200, "n2")
    request_id = harness.request(600, "n0", "remove", "n2")
    harness.run(8000)
    accepted = harness.answers[request_id]
    assert isinstance(accepted, Accepted)
    assert all(
        plan.stream_all and "n2" not in plan.from_nodes for plan in accepted.change.transfers
    )
    ring = harness.current_ring()
    assert not ring.has_node("n2") and harness.data_problems(ring, required=3) == []


def test_a_dead_claimant_is_replaced_and_the_change_finishes() -> None:
    harness = ClaimantHarness(4, nodes=5, partition_count=16)
    harness.start_node("n9", "z1")
    harness.workload(0, 4000, writes=300, reads=200, keys=300)
    harness.request(500, "n1", "join", "n9", zone="z1")
    harness.crash(800, "n1")
    harness.run(12_000)
    stamps = [stamp.node for _, _, stamp, _, _ in harness.chosen]
    assert stamps[0] == "n1" and stamps[-1] == "n0"  # the lowest live member took over
    assert final_state(harness)[-1][1] == "COMMITTED" and harness.current_ring().has_node("n9")
    assert (
        harness.chosen_problems() == [] and harness.data_problems(harness.current_ring(), 2) == []
    )


def test_a_dead_joiner_cancels_the_change_and_the_next_one_may_start() -> None:
    harness = ClaimantHarness(5, nodes=4, partition_count=16)
    harness.start_node("n9", "z1")
    harness.workload(0, 2000, writes=200, reads=0, keys=300)
    harness.request(500, "n1", "join", "n9", zone="z1")
    harness.crash(700, "n9")
    busy = harness.request(1500, "n2", "leave", "n3")
    harness.start_node("n8", "z2")
    later = harness.request(6000, "n2", "join", "n8", zone="z2")
    harness.run(12_000)
    assert isinstance(harness.answers[busy], Busy)
    states = final_state(harness)
    cancelled = [c for c, s in states if s == "CANCELLED"]
    assert cancelled and states[-1][1] == "COMMITTED" and states[-1][0] not in cancelled
    assert isinstance(harness.answers[later], Accepted)
    ring = harness.current_ring()
    assert ring.has_node("n8") and not ring.has_node("n9")
    assert harness.chosen_problems() == []


def test_a_failed_transfer_cancels_the_change_cleanly() -> None:
    harness = ClaimantHarness(6, nodes=4, partition_count=16)
    harness.start_node("n9", "z1")
    request_id = harness.request(500, "n1", "join", "n9", zone="z1")
    harness.run(560)
    accepted = harness.answers[request_id]
    assert isinstance(accepted, Accepted)
    plan = accepted.change.transfers[0]
    failed = XfReport("n9", accepted.change.change_id, failed=(XfFailed(plan.partition, "boom"),))
    leader = harness.nodes["n1"]
    harness._do(leader, leader.claimant.on_message("n9", failed, harness.now_ms))
    harness.run(5000)
    assert final_state(harness)[-1] == (accepted.change.change_id, "CANCELLED")
    assert harness.current_ring().epoch == 1
    assert all(not records for records in harness.nodes["n9"].storage.values())
    assert leader.claimant.in_progress() is None
    assert leader.claimant.status()["change"]["state"] == "cancelled"  # type: ignore[index]


def test_a_node_coordinates_only_after_a_majority_told_it_what_is_chosen() -> None:
    nodes = three()
    run_to_quiet(nodes, nodes["a"].request(7, "join", "d", 0, zone="z1"), "a")
    back = claimant("c")  # restarted with nothing persisted: it knows of no change
    assert not back.ready() and back.routing() is None
    hellos = back.tick(0, LIVE)
    assert sorted(s.to_node for s in sends(hellos)) == ["a", "b"]
    assert back.tick(50, LIVE) == []  # asked once per retry interval
    nodes["c"] = back
    run_to_quiet(nodes, hellos, "c")
    assert back.ready()  # a, b and itself: a majority of three
    routing = back.routing()
    assert routing is not None and routing.new.has_node("d")  # it dual-writes at once
    assert back.learned == nodes["a"].learned
