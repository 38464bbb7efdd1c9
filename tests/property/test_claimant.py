"""Ring changes under a hostile network, in the seeded harness (``sim.claimant_harness``).

Clients write and read random keys through random coordinators while a join,
leave or remove runs; claimant messages are lost, duplicated, delayed and
reordered; claimants crash. Checked against dumb reference facts:

(a) one change at a time: per slot, in stamp order, no change is chosen OPEN
    while another is unfinished, and one epoch never has two rings;
(b) no acknowledged write is lost: after the commit every one is on every
    replica of its new preference list (clients lose nothing here), or on W
    of them when a replica was down; no read missed a write acknowledged (or
    stored everywhere) before it began; no page was read while a write that
    bypassed its receiver was in flight; nothing was dropped while a
    coordinator still read it;
(c) movement is the plan: the partitions streamed are the plan's transfers,
    the partitions dropped are what old owners no longer replicate;
(d) liveness after faults: the change commits, a dead claimant is replaced;
(e) one seed, one trace hash;
and that the checks catch planted bugs (no barrier before streaming, drops
before every node learned the commit, an acceptor that forgets its promise).
A failure names its seed: rerun it with ``ClaimantHarness(seed, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.claimant import ZERO_BALLOT, Accepted, Busy, ChangeState, Claimant
from dynakv.core.ring import decode_ring
from dynakv.sim.claimant_harness import ClaimantHarness, Faults

SEEDS = st.integers(0, 2**32 - 1)
KINDS = st.sampled_from(["join", "leave", "remove"])
HOSTILE = st.builds(
    Faults,
    loss_p=st.sampled_from([0.0, 0.1, 0.25]),
    duplicate_p=st.sampled_from([0.0, 0.1]),
    delay_ms_max=st.sampled_from([5, 30, 80]),
    gossip_ms_max=st.sampled_from([50, 300, 1000]),
)


def scenario(
    seed: int, kind: str, faults: Faults, *, nodes: int = 5
) -> tuple[ClaimantHarness, int]:
    """One change of ``kind`` at 500 ms under writes and reads; the request's id."""
    harness = ClaimantHarness(seed, nodes=nodes, partition_count=16, faults=faults)
    harness.workload(0, 4000, writes=400, reads=400, keys=400)
    target = {"join": "n9", "leave": "n2", "remove": "n3"}[kind]
    if kind == "join":
        harness.start_node("n9", "z2")
    if kind == "remove":
        harness.crash(100, "n3")
    request_id = harness.request(500, f"n{seed % 2}", kind, target, zone="z2")  # type: ignore[arg-type]
    return harness, request_id


def committed(harness: ClaimantHarness) -> list[str]:
    return [c for _, _, _, c, state in harness.chosen if state is ChangeState.COMMITTED]


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, kind=KINDS, faults=HOSTILE)
def test_a_change_under_faults_commits_and_loses_no_acknowledged_write(
    seed: int, kind: str, faults: Faults
) -> None:
    harness, request_id = scenario(seed, kind, faults)
    harness.run(30_000)
    assert harness.chosen_problems() == [], seed
    assert isinstance(harness.answers.get(request_id), Accepted), (seed, harness.answers)
    ring = harness.current_ring()
    assert ring.epoch == 2 and committed(harness), seed
    replicas = ring.replicas_wanted  # no client message is lost: every replica has each write
    assert harness.data_problems(ring, required=replicas) == [], seed
    assert harness.leftovers(ring) == [], seed
    live = harness.live()
    assert all(harness.nodes[n].ring == ring for n in live), seed


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, kind=KINDS)
def test_movement_is_exactly_the_plan(seed: int, kind: str) -> None:
    harness, request_id = scenario(seed, kind, Faults())
    harness.run(15_000)
    accepted = harness.answers[request_id]
    assert isinstance(accepted, Accepted)
    change = accepted.change
    old = decode_ring(harness.rings[1])
    new = decode_ring(change.new_ring)
    lost = set(change.lost)
    planned = {(p.to_node, p.partition) for p in change.transfers if p.partition not in lost}
    assert harness.ingested == planned, seed
    dropped = {
        (node.node_id, partition)
        for node in old.nodes
        if node.node_id != change.node_id or kind == "leave"
        for partition in set(old.replica_partitions(node.node_id))
        - set(new.replica_partitions(node.node_id))
    }
    assert harness.dropped == dropped, seed
    gained = sum(
        max(0, len(new.replica_partitions(n.node_id)) - len(old.replica_partitions(n.node_id)))
        for n in new.nodes
    )
    assert len(change.transfers) >= gained
    if kind == "join":  # the joiner's share: about 1/n of the replica slots
        share = len(new.replica_partitions("n9")) / (new.partition_count * new.replicas_wanted)
        assert abs(share - 1 / len(new.nodes)) <= 2 / new.partition_count


@settings(max_examples=15, deadline=None)
@given(
    seed=SEEDS,
    vias=st.lists(st.sampled_from(["n0", "n1", "n2", "n3", "n4"]), min_size=2, max_size=3),
    gaps_ms=st.lists(st.integers(0, 60), min_size=3, max_size=3),
    faults=HOSTILE,
)
def test_concurrent_requests_yield_one_change_at_a_time(
    seed: int, vias: list[str], gaps_ms: list[int], faults: Faults
) -> None:
    harness = ClaimantHarness(seed, nodes=5, partition_count=16, faults=faults)
    harness.workload(0, 3000, writes=200, reads=200, keys=300)
    requests: list[int] = []
    at_ms = 500
    for index, via in enumerate(vias):
        harness.start_node(f"n{7 + index}", "z3")
        at_ms += gaps_ms[index]
        requests.append(harness.request(at_ms, via, "join", f"n{7 + index}", zone="z3"))
    harness.run(40_000)
    assert harness.chosen_problems() == [], seed
    answers = [harness.answers.get(r) for r in requests]
    assert all(a is not None for a in answers), (seed, answers)
    accepted = [a for a in answers if isinstance(a, Accepted)]
    assert accepted, (seed, answers)
    for answer in answers:
        if isinstance(answer, Busy):  # it names a change that really was chosen
            assert answer.change.change_id in {c for _, _, _, c, _ in harness.chosen}
    ring = harness.current_ring()
    assert harness.data_problems(ring, required=ring.replicas_wanted) == [], seed


@settings(max_examples=12, deadline=None)
@given(
    seed=SEEDS,
    who=st.sampled_from(["leader", "other"]),
    crash_after_ms=st.integers(-400, 900),
    restart_after_ms=st.sampled_from([None, 700, 3000]),
    faults=HOSTILE,
)
def test_a_crashed_node_is_replaced_or_catches_up_and_the_change_ends(
    seed: int, who: str, crash_after_ms: int, restart_after_ms: int | None, faults: Faults
) -> None:
    """The claimant (or another member) crashes before or during the change, and may come
    back: a new claimant finishes it, and a node back mid-stream coordinates only once
    it caught up (``ready``), so it never writes around a receiver."""
    harness, _ = scenario(seed, "join", faults)
    crashed = f"n{seed % 2}" if who == "leader" else "n4"
    harness.crash(500 + crash_after_ms, crashed, restart_after_ms)
    harness.run(40_000)
    assert harness.chosen_problems() == [], seed
    states = [state for _, _, _, _, state in harness.chosen]
    ring = harness.current_ring()
    # A claimant that died before its record was chosen may take the change with it.
    assert not states or states[-1] is not ChangeState.OPEN, (seed, states)
    assert (ring.epoch == 2) == (ChangeState.COMMITTED in states), seed
    required = 2  # W: the crashed node missed the writes made while it was down
    assert harness.data_problems(ring, required=required) == [], seed


@settings(max_examples=5, deadline=None)
@given(seed=SEEDS, kind=KINDS, faults=HOSTILE)
def test_one_seed_gives_one_trace(seed: int, kind: str, faults: Faults) -> None:
    traces = []
    for _ in range(2):
        harness, _ = scenario(seed, kind, faults)
        harness.run(6000)
        traces.append((harness.trace.hexdigest(), harness.trace.events, len(harness.chosen)))
    assert traces[0] == traces[1]
    other, _ = scenario(seed + 1, kind, faults)
    other.run(6000)
    assert other.trace.hexdigest() != traces[0][0]


# -- the checks catch planted bugs ----------------------------------------------------------


@contextmanager
def planted(name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(Claimant, name)
    setattr(Claimant, name, replacement(original))
    try:
        yield
    finally:
        setattr(Claimant, name, original)


def no_barrier(original: Callable[..., Any]) -> Callable[..., Any]:
    def drive(self: Claimant, lead: Any, change: Any, now_ms: int) -> Any:
        if lead.ready_ms is None:
            lead.ready_ms = now_ms  # stream before every coordinator dual-writes
        return original(self, lead, change, now_ms)

    return drive


def early_drop(original: Callable[..., Any]) -> Callable[..., Any]:
    def settle(self: Claimant, lead: Any, change: Any, now_ms: int) -> Any:
        if lead.settled_ms is None:
            lead.settled_ms = now_ms - self.timing.drop_grace_ms  # drop before all learned
        return original(self, lead, change, now_ms)

    return settle


def forgets_promises(original: Callable[..., Any]) -> Callable[..., Any]:
    def on_write(self: Claimant, message: Any, now_ms: int) -> Any:
        self.register = msgspec.structs.replace(self.register, promised=ZERO_BALLOT)
        return original(self, message, now_ms)  # accepts a write from a deposed leader

    return on_write


PLANTED_SEEDS = 10


def caught(bug: str, planting: Callable[..., Any], run: Callable[[int], list[str]]) -> int:
    with planted(bug, planting):
        return sum(1 for seed in range(PLANTED_SEEDS) if run(seed))


def crowded_join(seed: int) -> list[str]:
    """Nine nodes, a lossy network: some node is always slow to learn something."""
    faults = Faults(loss_p=0.4, delay_ms_max=80, gossip_ms_max=1000)
    harness = ClaimantHarness(seed, nodes=9, partition_count=32, faults=faults)
    harness.start_node("n19", "z1")
    harness.workload(0, 3000, writes=600, reads=600, keys=800)
    harness.request(500, "n1", "join", "n19", zone="z1")
    # 40% loss: each lost page costs a page timeout; with the Paxos states pulled from a
    # majority of the old replicas after the records, a join takes up to ~20 s here.
    harness.run(25_000)
    ring = harness.current_ring()
    stuck = [] if ring.epoch == 2 else ["the join did not commit"]
    return stuck + harness.chosen_problems() + harness.data_problems(ring, 3)


def racing_joins(seed: int) -> list[str]:
    harness = ClaimantHarness(seed, nodes=5, partition_count=16, faults=Faults(delay_ms_max=20))
    for index in range(3):  # each new node asks for its own join (``dynakv admin join``)
        joiner = f"n{7 + index}"
        harness.start_node(joiner, "z1")
        harness.request(500 + 5 * index, joiner, "join", joiner, zone="z1")
    harness.run(15_000)
    return harness.chosen_problems()


def test_the_checks_catch_a_stream_that_starts_before_the_barrier() -> None:
    assert caught("_drive", no_barrier, crowded_join) >= 3


def test_the_checks_catch_drops_before_every_node_learned_the_commit() -> None:
    assert caught("_settle", early_drop, crowded_join) >= 3


def test_the_checks_catch_an_acceptor_that_forgets_its_promise() -> None:
    assert caught("_on_write", forgets_promises, racing_joins) >= 5


def test_the_correct_claimant_passes_the_same_runs() -> None:
    seeds = range(PLANTED_SEEDS)
    assert [seed for seed in seeds if crowded_join(seed) or racing_joins(seed)] == []
