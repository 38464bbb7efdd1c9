"""Properties of membership: merge laws, order-free tables, push-pull, and whole clusters.

The reference model for records is a fold of ``merge_member`` per node: any
delivery order of the same updates must give that table. Cluster properties
run ``sim.membership_sim`` (every failure names its seed): convergence after
loss and partitions heal, no false deaths under 10% loss, crashes and pauses
detected within ``detection_bound_ms`` without flapping, one trace per seed.
"""

from __future__ import annotations

import functools
from collections import Counter

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core import membership_sync
from dynakv.core.gossip_messages import (
    Lifecycle,
    MemberState,
    Status,
    entry_hash,
    merge_member,
)
from dynakv.core.member_table import MemberTable, is_live
from dynakv.core.membership import detection_bound_ms
from dynakv.sim.membership_sim import MembershipSim, NetFaults, address_of

FAST = settings(max_examples=200, deadline=None)
SIM = settings(max_examples=20, deadline=None)
IDS = ("a", "b", "c", "d")


@st.composite
def records(draw: st.DrawFn, node_ids: tuple[str, ...] = IDS) -> MemberState:
    node_id = draw(st.sampled_from(node_ids))
    address = draw(st.sampled_from(["1", "2"]))
    return MemberState(
        node_id,
        draw(st.sampled_from(["z1", "z2"])),
        f"{node_id}:{address}",
        f"{node_id}:{address}",
        draw(st.integers(0, 3)),
        draw(st.sampled_from(list(Status))),
        draw(st.integers(0, 2)),
        draw(st.sampled_from(list(Lifecycle))),
        draw(st.sampled_from(["", "p", "q"])),
    )


same_node = records(node_ids=("x",))


@FAST
@given(same_node, same_node, same_node)
def test_merge_is_commutative_associative_idempotent(
    a: MemberState, b: MemberState, c: MemberState
) -> None:
    assert merge_member(a, b) == merge_member(b, a)
    assert merge_member(merge_member(a, b), c) == merge_member(a, merge_member(b, c))
    assert merge_member(a, a) == a
    merged = merge_member(a, b)
    assert merge_member(merged, a) == merged  # never goes back down


def reference(updates: list[MemberState]) -> dict[str, MemberState]:
    folded: dict[str, MemberState] = {}
    for update in updates:
        current = folded.get(update.node_id)
        folded[update.node_id] = update if current is None else merge_member(current, update)
    return folded


def table_of(updates: list[MemberState], self_id: str = "me") -> MemberTable:
    table = MemberTable(MemberState(self_id, "z", "me:1", "me:1"), members_max=64, now_ms=0)
    for update in updates:
        table.apply(update, now_ms=0)
    return table


@FAST
@given(st.lists(records(), max_size=12), st.randoms(use_true_random=False))
def test_any_delivery_order_gives_the_reference_table(
    updates: list[MemberState], order: object
) -> None:
    shuffled = list(updates)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    table = table_of(shuffled)
    expected = reference(updates)
    got = {s.node_id: s for s in table.states() if s.node_id != "me"}
    assert got == expected
    assert table.live_hash == table_of(updates).live_hash
    live = [s for s in table.states() if is_live(s)]
    assert table.live_hash == functools.reduce(lambda h, s: h ^ entry_hash(s), live, 0)
    assert table.live_ids() == sorted(s.node_id for s in live)


@FAST
@given(st.lists(records(), max_size=10), st.lists(records(), max_size=10))
def test_one_push_pull_leaves_both_tables_agreeing_on_every_live_member(
    left_updates: list[MemberState], right_updates: list[MemberState]
) -> None:
    left, right = table_of(left_updates, "l"), table_of(right_updates, "r")
    left_me, right_me = left.get("l"), right.get("r")
    assert left_me is not None and right_me is not None
    was_live = {
        s.node_id for t in (left, right) for s in t.states() if is_live(s) and s.node_id in IDS
    }
    before_left, before_right = reference(left_updates), reference(right_updates)
    hello = membership_sync.hello(left, left_me, 0)
    right.apply(hello.sender_state, 0)
    digest = membership_sync.answer_hello(right, hello, right_me, 0)
    if digest is not None:
        delta = membership_sync.answer_digest(left, digest, left_me, 0)
        if delta is not None:
            for state in delta.updates:
                right.apply(state, 0)
            final = membership_sync.answer_delta(right, delta, right_me, 0)
            if final is not None:
                assert final.final and membership_sync.answer_delta(left, final, left_me, 0) is None
                for state in final.updates:
                    left.apply(state, 0)
    for node_id in sorted(was_live):
        sides = [s for s in (before_left.get(node_id), before_right.get(node_id)) if s]
        expected = without_accuser(functools.reduce(merge_member, sides))
        assert without_accuser(left.get(node_id)) == expected
        assert without_accuser(right.get(node_id)) == expected
    assert left.live_hash == right.live_hash


def without_accuser(state: MemberState | None) -> MemberState | None:
    return None if state is None else msgspec.structs.replace(state, accuser="")


# -- whole clusters in the simulator ---------------------------------------------


def replay(seed: int) -> str:
    return f"(seed={seed}; replay: MembershipSim({seed}, ...))"


@SIM
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(3, 7),
    loss_p=st.floats(0.0, 0.3),
    split_ms=st.integers(0, 20_000),
    crash=st.booleans(),
)
def test_membership_converges_after_loss_and_partitions_heal(
    seed: int, size: int, loss_p: float, split_ms: int, crash: bool
) -> None:
    sim = MembershipSim(seed, faults=NetFaults(loss_p=loss_p, delay_ms_max=30))
    ids = sim.bootstrap(size)
    sim.run_for(2_000)
    cut = 1 + seed % (size - 1)
    sim.partition([ids[:cut], ids[cut:]])
    if crash:
        sim.crash(ids[-1])
    sim.run_for(split_ms)
    sim.heal()
    sim.faults = NetFaults()
    assert sim.run_until(sim.now_ms + 60_000, sim.converged), replay(seed)
    if crash:
        assert sim.seen_by_all(ids[-1], ("down",)), replay(seed)
    for node in sim.running():
        assert [node.membership.state_of(other.node_id) for other in sim.running()] == ["up"] * len(
            sim.running()
        ), replay(seed)


@SIM
@given(seed=st.integers(0, 2**32))
def test_no_false_deaths_and_rare_suspicion_under_ten_percent_loss(seed: int) -> None:
    size, duration_ms = 8, 120_000
    sim = MembershipSim(seed, faults=NetFaults(loss_p=0.10, delay_ms_max=20))
    sim.bootstrap(size)
    sim.run_for(duration_ms)
    news = Counter(change.new for _, _, change in sim.changes)
    assert news["down"] == 0, replay(seed)
    probes = size * duration_ms // sim.timing.probe_interval_ms
    episodes = news["suspect"] / (size - 1)  # each suspicion is seen by everyone else
    assert episodes <= 0.01 * probes, (episodes, probes, replay(seed))


@SIM
@given(seed=st.integers(0, 2**32), size=st.integers(3, 8))
def test_a_crash_is_down_everywhere_within_the_detection_bound(seed: int, size: int) -> None:
    sim = MembershipSim(seed)
    ids = sim.bootstrap(size)
    sim.run_for(3_000)
    victim = ids[seed % size]
    sim.crash(victim)
    bound_ms = detection_bound_ms(sim.timing, size)
    crashed_at = sim.now_ms
    assert sim.run_until(crashed_at + bound_ms, lambda: sim.seen_by_all(victim, ("down",))), (
        bound_ms,
        replay(seed),
    )


@SIM
@given(seed=st.integers(0, 2**32), size=st.integers(3, 6), longer_ms=st.integers(0, 30_000))
def test_a_paused_node_is_down_then_up_again_without_flapping(
    seed: int, size: int, longer_ms: int
) -> None:
    sim = MembershipSim(seed)
    ids = sim.bootstrap(size)
    sim.run_for(3_000)
    paused = ids[seed % size]
    sim.pause(paused)
    bound_ms = detection_bound_ms(sim.timing, size)
    assert sim.run_until(sim.now_ms + bound_ms, lambda: sim.seen_by_all(paused, ("down",)))
    sim.run_for(longer_ms)
    sim.resume(paused)
    assert sim.run_until(sim.now_ms + 5_000, lambda: sim.seen_by_all(paused, ("up",)))
    sim.run_for(20_000)
    for observer in ids:
        if observer == paused:
            continue
        seen = [c.new for _, o, c in sim.changes if o == observer and c.node_id == paused]
        assert seen in (["suspect", "down", "up"], ["down", "up"]), (observer, seen, replay(seed))
    others = [c for _, o, c in sim.changes if o == paused and c.node_id != paused]
    assert others == [], replay(seed)  # the paused node does not blame others for its pause


@SIM
@given(seed=st.integers(0, 2**32))
def test_one_seed_one_trace(seed: int) -> None:
    def run(seed: int) -> str:
        sim = MembershipSim(seed, faults=NetFaults(loss_p=0.1, delay_ms_max=30))
        ids = sim.bootstrap(5)
        sim.run_for(3_000)
        sim.pause(ids[1])
        sim.partition([ids[:2], ids[2:]])
        sim.run_for(8_000)
        sim.heal()
        sim.resume(ids[1])
        sim.add_node("late", seeds=[address_of(ids[0])])
        sim.run_for(8_000)
        return sim.trace.hexdigest()

    assert run(seed) == run(seed)
    assert run(seed) != run(seed + 1)


def test_a_join_is_known_everywhere_within_seconds() -> None:
    sim = MembershipSim(11)
    ids = sim.bootstrap(30)
    sim.run_for(2_000)
    sim.add_node("joiner", seeds=[address_of(ids[0])])
    started = sim.now_ms
    assert sim.run_until(started + 5_000, lambda: sim.seen_by_all("joiner", ("joining",)))
    assert sim.nodes["joiner"].membership.live_nodes() == tuple(sorted([*ids, "joiner"]))


def test_a_new_ring_epoch_reaches_every_node_once() -> None:
    sim = MembershipSim(12)
    ids = sim.bootstrap(12)
    for node_id in ids:
        assert sim.nodes[node_id].membership.install_ring(1, b"ring-1")
    sim.run_for(2_000)
    assert sim.nodes[ids[3]].membership.install_ring(2, b"ring-2")
    assert sim.run_until(
        sim.now_ms + 10_000,
        lambda: all(n.membership.ring.epoch == 2 for n in sim.running()),
    )
    learned = Counter(node_id for _, node_id, epoch in sim.rings_learned if epoch == 2)
    assert sorted(learned) == sorted(i for i in ids if i != ids[3])
    assert set(learned.values()) == {1}
    assert all(n.membership.ring.ring_bytes == b"ring-2" for n in sim.running())


@SIM
@given(seed=st.integers(0, 2**32), size=st.integers(4, 8))
def test_nodes_that_first_found_only_some_seeds_still_form_one_cluster(
    seed: int, size: int
) -> None:
    """Started together, each node greets every other as a seed, but the network lets
    two groups through only among themselves at first (late starters): once it heals
    they become one cluster, because a seed that is no known member is greeted again."""
    sim = MembershipSim(seed)
    ids = [f"n{i}" for i in range(size)]
    for node_id in ids:
        sim.add_node(
            node_id,
            seeds=[address_of(other) for other in ids if other != node_id],
            lifecycle=Lifecycle.MEMBER,
        )
    cut = 1 + seed % (size - 1)
    sim.partition([ids[:cut], ids[cut:]])
    sim.run_for(3_000)
    sim.heal()
    assert sim.run_until(sim.now_ms + 30_000, sim.converged), replay(seed)
    for node in sim.running():
        assert node.membership.live_nodes() == tuple(sorted(ids)), replay(seed)


def test_a_probe_begun_before_a_refutation_does_not_suspect_the_refuter_again() -> None:
    """Found by the pause property above (seed 1, 5 nodes, paused 446 ms past the
    bound): a probe sent while the node was paused failed after the node had come
    back and refuted, and suspected it once more. A probe failure older than newer
    evidence of life (a higher incarnation) no longer counts."""
    test_a_paused_node_is_down_then_up_again_without_flapping.hypothesis.inner_test(  # type: ignore[attr-defined]
        seed=1, size=5, longer_ms=446
    )
