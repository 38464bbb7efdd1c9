"""Record merge on realistic histories, checked against a reference model of causality.

A history is a run of client operations against a few replicas of one key:
clients read a replica (keeping ``context_of`` the record), later write at
some replica with that context (or blind), and replicas exchange records
with ``merge``. The model tracks, for every write, the set of writes its
writer had seen (``past_ids``), and for every replica the writes it has
received. From that alone it predicts each replica's record:

- ``siblings``: exactly the received writes that no other received write
  has seen (no write is lost unless a later write's context saw it);
- ``lww``: the received write with the largest (timestamp, node, counter).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dynakv.core.record import (
    EMPTY_CONTEXT,
    ConflictPolicy,
    Context,
    Record,
    Sibling,
    context_of,
    make_write,
    merge,
)
from dynakv.core.versions import Hlc, clock_get

REPLICA_COUNT = 3
CLIENT_COUNT = 3
REPLICA_IDS = [f"r{i}" for i in range(REPLICA_COUNT)]
POLICIES = [ConflictPolicy.SIBLINGS, ConflictPolicy.LWW]

WriteId = tuple[str, int, int]  # (node, counter, timestamp): unique even if LWW reuses a dot


@dataclass(frozen=True)
class Write:
    write_id: WriteId
    value: bytes | None
    expires_at_ms: int
    past_ids: frozenset[WriteId]

    @property
    def order_key(self) -> tuple[int, str, int]:
        node, counter, timestamp = self.write_id
        return (timestamp, node, counter)


def write_id_of(sibling: Sibling) -> WriteId:
    return (sibling.node, sibling.counter, sibling.timestamp)


@dataclass
class World:
    """The replicas under test and the reference model beside them."""

    policy: ConflictPolicy
    records: list[Record | None] = field(default_factory=lambda: [None] * REPLICA_COUNT)
    hlcs: list[Hlc] = field(default_factory=lambda: [Hlc() for _ in range(REPLICA_COUNT)])
    received: list[set[WriteId]] = field(
        default_factory=lambda: [set() for _ in range(REPLICA_COUNT)]
    )
    reads: list[tuple[Context, frozenset[WriteId]] | None] = field(
        default_factory=lambda: [None] * CLIENT_COUNT
    )
    writes: dict[WriteId, Write] = field(default_factory=dict)
    produced: list[Record] = field(default_factory=list)

    def history_of(self, record: Record | None) -> frozenset[WriteId]:
        """Every write in the causal past of what a reader of ``record`` sees."""
        if record is None:
            return frozenset()
        seen: set[WriteId] = set()
        for sibling in record.siblings:
            write = self.writes[write_id_of(sibling)]
            seen.add(write.write_id)
            seen |= write.past_ids
        return frozenset(seen)

    def read(self, client: int, replica: int) -> None:
        record = self.records[replica]
        self.reads[client] = (context_of(record), self.history_of(record))

    def write(
        self,
        replica: int,
        *,
        wall_ms: int,
        read: tuple[Context, frozenset[WriteId]] | None,
        tombstone: bool,
        ttl_ms: int,
    ) -> Record:
        context, seen = read if read is not None else (EMPTY_CONTEXT, frozenset())
        local = self.records[replica]
        hlc = self.hlcs[replica]
        hlc.observe(context.max_timestamp)
        if local is not None:
            hlc.observe(local.max_timestamp())
        timestamp = hlc.tick(wall_ms)
        # The HLC promise LWW relies on: a write outranks everything its writer saw.
        assert all(timestamp > self.writes[seen_id].write_id[2] for seen_id in seen)
        value = None if tombstone else b"v%d" % len(self.writes)
        expires_at_ms = wall_ms + ttl_ms if ttl_ms else 0
        node_id = REPLICA_IDS[replica]
        record = make_write(
            local,
            node_id=node_id,
            value=value,
            context=context,
            timestamp=timestamp,
            expires_at_ms=expires_at_ms,
            policy=self.policy,
        )
        (new,) = [s for s in record.siblings if s.node == node_id and s.timestamp == timestamp]
        assert new.past == context.clock
        assert new.value == value and new.expires_at_ms == expires_at_ms
        write = Write(write_id_of(new), value, expires_at_ms, seen)
        assert write.write_id not in self.writes
        self.writes[write.write_id] = write
        self.received[replica].add(write.write_id)
        self.records[replica] = record
        return record

    def sync(self, source: int, target: int) -> None:
        self.records[target] = merge(self.records[source], self.records[target], self.policy)
        self.received[target] |= self.received[source]

    def expected_survivors(self, received: set[WriteId]) -> set[WriteId]:
        if not received:
            return set()
        if self.policy is ConflictPolicy.LWW:
            return {max(received, key=lambda w: self.writes[w].order_key)}
        seen_by_others = set().union(*(self.writes[w].past_ids for w in received))
        return received - seen_by_others

    def check(self, replica: int) -> None:
        record = self.records[replica]
        received = self.received[replica]
        if record is None:
            assert not received
            return
        self.produced.append(record)
        dots = [(s.node, s.counter) for s in record.siblings]
        assert record.siblings and dots == sorted(set(dots)), "sorted by dot, never empty"
        assert {write_id_of(s) for s in record.siblings} == self.expected_survivors(received)
        for sibling in record.siblings:
            write = self.writes[write_id_of(sibling)]
            assert (sibling.value, sibling.expires_at_ms) == (write.value, write.expires_at_ms)
        if self.policy is ConflictPolicy.SIBLINGS:
            # The record's clock (what a reader's context will claim to have
            # seen) covers exactly the writes in its causal history: of all the
            # writes ever minted for the key, never one the history lacks.
            # (Counters increase per node but need not be contiguous.)
            history = self.history_of(record)
            clock = record.clock()
            for node_id in REPLICA_IDS:
                bound = clock_get(clock, node_id)
                covered = {(n, c) for n, c, _ in self.writes if n == node_id and c <= bound}
                seen = {(n, c) for n, c, _ in history if n == node_id}
                assert covered == seen, (node_id, covered - seen, seen - covered)


# --- histories ----------------------------------------------------------------------------

replicas = st.integers(0, REPLICA_COUNT - 1)
clients = st.integers(0, CLIENT_COUNT - 1)
operations = st.one_of(
    st.tuples(st.just("read"), clients, replicas),
    st.tuples(
        st.just("write"),
        clients,
        replicas,
        st.integers(0, 1000),  # wall_ms: skewed per replica and free to go backwards
        st.booleans(),  # blind (ignore the client's last read)
        st.integers(0, 9),  # 0: tombstone
        st.sampled_from([0, 0, 50, 400]),  # ttl_ms, 0 = never expires
    ),
    st.tuples(st.just("sync"), replicas, replicas, st.booleans()),
    st.tuples(st.just("read_modify_write"), replicas, st.integers(0, 1000)),
)


def run_history(policy: ConflictPolicy, history: list[tuple[object, ...]]) -> World:
    world = World(policy)
    for operation in history:
        match operation:
            case ("read", int(client), int(replica)):
                world.read(client, replica)
            case (
                "write",
                int(client),
                int(replica),
                int(wall_ms),
                bool(blind),
                int(kind),
                int(ttl),
            ):
                read = None if blind else world.reads[client]
                world.write(replica, wall_ms=wall_ms, read=read, tombstone=kind == 0, ttl_ms=ttl)
            case ("sync", int(source), int(target), bool(both)):
                world.sync(source, target)
                if both:
                    world.sync(target, source)
            case ("read_modify_write", int(replica), int(wall_ms)):
                # A write on top of everything the replica has supersedes all of it.
                local = world.records[replica]
                read = (context_of(local), world.history_of(local))
                record = world.write(replica, wall_ms=wall_ms, read=read, tombstone=False, ttl_ms=0)
                assert len(record.siblings) == 1
            case _:
                raise AssertionError(operation)
        for replica in range(REPLICA_COUNT):
            world.check(replica)
    return world


def converge(world: World, order: list[int]) -> None:
    """Anti-entropy: every pair exchanges both ways, twice over, in the given order."""
    for _ in range(2):
        for source, target in itertools.permutations(order, 2):
            world.sync(source, target)
            world.sync(target, source)


histories = st.lists(operations, max_size=30)
HISTORY_SETTINGS = settings(max_examples=120, deadline=None)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.value)
@HISTORY_SETTINGS
@given(history=histories, order=st.permutations(range(REPLICA_COUNT)))
def test_replicas_match_the_model_and_converge(
    policy: ConflictPolicy, history: list[tuple[object, ...]], order: list[int]
) -> None:
    world = run_history(policy, history)
    converge(world, order)
    for replica in range(REPLICA_COUNT):
        world.check(replica)
    assert all(record == world.records[0] for record in world.records)
    all_writes = set(world.writes)
    converged = world.records[0]
    if converged is None:
        assert not all_writes
        return
    assert {write_id_of(s) for s in converged.siblings} == world.expected_survivors(all_writes)
    write_count = "5+" if len(all_writes) >= 5 else str(len(all_writes))
    event(f"writes: {write_count}, siblings: {len(converged.siblings)}")
    # A write carrying the merged context of all siblings supersedes them all.
    full_read = (context_of(converged), world.history_of(converged))
    final = world.write(order[0], wall_ms=0, read=full_read, tombstone=False, ttl_ms=0)
    assert len(final.siblings) == 1
    assert final.siblings[0].value == world.writes[write_id_of(final.siblings[0])].value


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.value)
@HISTORY_SETTINGS
@given(history=histories, data=st.data())
def test_merge_is_a_semilattice_on_produced_records(
    policy: ConflictPolicy, history: list[tuple[object, ...]], data: st.DataObject
) -> None:
    world = run_history(policy, history)
    distinct = list(dict.fromkeys(world.produced))
    sample = data.draw(st.lists(st.sampled_from(distinct), max_size=5)) if distinct else []
    sample_or_none: list[Record | None] = [None, *sample]
    for a in sample_or_none:
        assert merge(a, a, policy) == a
        for b in sample_or_none:
            ab = merge(a, b, policy)
            assert ab == merge(b, a, policy)
            for c in sample_or_none:
                assert merge(ab, c, policy) == merge(a, merge(b, c, policy), policy)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.value)
@HISTORY_SETTINGS
@given(history=histories, now_ms=st.integers(0, 2000))
def test_visible_values_and_purge_time_follow_the_model(
    policy: ConflictPolicy, history: list[tuple[object, ...]], now_ms: int
) -> None:
    world = run_history(policy, history)
    for record in world.records:
        if record is None:
            continue
        survivors = [world.writes[write_id_of(s)] for s in record.siblings]
        expected = [
            w.value
            for w in survivors
            if w.value is not None and (w.expires_at_ms == 0 or w.expires_at_ms > now_ms)
        ]
        assert record.visible_values(now_ms) == expected
        purge_at_ms = record.purge_at_ms()
        if any(w.expires_at_ms == 0 for w in survivors):
            assert purge_at_ms is None
        else:
            assert purge_at_ms == max(w.expires_at_ms for w in survivors)
            # Nothing is visible from the purge time on: removing the record loses nothing.
            assert record.visible_values(purge_at_ms) == []
            assert record.visible_values(purge_at_ms + now_ms) == []
        if record.visible_values(now_ms):
            assert purge_at_ms is None or purge_at_ms > now_ms
