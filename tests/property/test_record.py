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

Idempotent retries: a client may resend its last write under the same
idempotency key at any replica. The model keeps each replica's idempotency
entries as a plain set (union on sync, expired ones dropped when that
replica mints) and predicts whether the retry is minted again (the replica
holds no live entry for the key) or answered with the original; readers see
one value per key among the surviving copies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dynakv.core.idempotency import IDEMPOTENCY_ENTRIES_MAX, IdempotencyEntry, merge_idempotency
from dynakv.core.record import (
    EMPTY_CONTEXT,
    ConflictPolicy,
    Context,
    Record,
    Sibling,
    applied_context,
    context_of,
    make_write,
    merge,
)
from dynakv.core.versions import LOGICAL_BITS, Hlc, clock_get

REPLICA_COUNT = 3
CLIENT_COUNT = 3
REPLICA_IDS = [f"r{i}" for i in range(REPLICA_COUNT)]
POLICIES = [ConflictPolicy.SIBLINGS, ConflictPolicy.LWW]

WriteId = tuple[str, int, int]  # (node, counter, timestamp): unique even if LWW reuses a dot
Idempotent = tuple[int, int]  # (key hash, window_ms)
Read = tuple[Context, frozenset[WriteId]]


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
    # the model of each replica's idempotency entries, and each client's last
    # idempotent write (its read, value, key) for a retry to resend
    entries: list[set[IdempotencyEntry]] = field(
        default_factory=lambda: [set() for _ in range(REPLICA_COUNT)]
    )
    last_idempotent: list[tuple[Read | None, bytes | None, Idempotent] | None] = field(
        default_factory=lambda: [None] * CLIENT_COUNT
    )
    replays: int = 0
    duplicates: int = 0

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
        idempotent: Idempotent | None = None,
        value: bytes | None = None,
    ) -> Record | None:
        """Mint a write (None when an idempotent retry is answered from the record)."""
        context, seen = read if read is not None else (EMPTY_CONTEXT, frozenset())
        local = self.records[replica]
        hlc = self.hlcs[replica]
        if idempotent is not None:
            physical_ms = max(wall_ms, hlc.last >> LOGICAL_BITS)
            replayed = applied_context(local, idempotent[0], physical_ms)
            live = [
                e
                for e in self.entries[replica]
                if e.hash == idempotent[0] and e.expires_at_ms > physical_ms
            ]
            assert (replayed is not None) == bool(live), "answered from the record iff known"
            if replayed is not None:
                first = min(live, key=IdempotencyEntry.identity)
                assert clock_get(replayed.clock, first.node) == first.counter
                self.replays += 1
                return None
        hlc.observe(context.max_timestamp)
        if local is not None:
            hlc.observe(local.max_timestamp())
        timestamp = hlc.tick(wall_ms)
        # The HLC promise LWW relies on: a write outranks everything its writer saw.
        assert all(timestamp > self.writes[seen_id].write_id[2] for seen_id in seen)
        if value is None and not tombstone:
            value = b"v%d" % len(self.writes)
        expires_at_ms = wall_ms + ttl_ms if ttl_ms else 0
        node_id = REPLICA_IDS[replica]
        key_hash, window_ms = idempotent if idempotent is not None else (0, 0)
        record = make_write(
            local,
            node_id=node_id,
            value=value,
            context=context,
            timestamp=timestamp,
            expires_at_ms=expires_at_ms,
            policy=self.policy,
            idempotency_hash=key_hash,
            idempotency_expires_at_ms=(timestamp >> LOGICAL_BITS) + window_ms,
        )
        (new,) = [s for s in record.siblings if s.node == node_id and s.timestamp == timestamp]
        assert new.past == context.clock
        assert new.value == value and new.expires_at_ms == expires_at_ms
        write = Write(write_id_of(new), value, expires_at_ms, seen)
        assert write.write_id not in self.writes
        self.writes[write.write_id] = write
        self.received[replica].add(write.write_id)
        self.records[replica] = record
        physical_ms = timestamp >> LOGICAL_BITS
        kept = {e for e in self.entries[replica] if e.expires_at_ms > physical_ms}
        if idempotent is not None:
            kept.add(
                IdempotencyEntry(key_hash, node_id, new.counter, timestamp, physical_ms + window_ms)
            )
        self.entries[replica] = kept
        return record

    def sync(self, source: int, target: int) -> None:
        self.records[target] = merge(self.records[source], self.records[target], self.policy)
        self.received[target] |= self.received[source]
        self.entries[target] |= self.entries[source]

    def expected_visible(self, record: Record, now_ms: int) -> list[bytes]:
        """Live values of the survivors in dot order, one per idempotency key."""
        hash_of = {(e.node, e.counter): e.hash for e in record.idempotency}
        shown: set[int] = set()
        values: list[bytes] = []
        for sibling in record.siblings:
            write = self.writes[write_id_of(sibling)]
            if write.value is None or not (
                write.expires_at_ms == 0 or write.expires_at_ms > now_ms
            ):
                continue
            key_hash = hash_of.get((sibling.node, sibling.counter))
            if key_hash in shown:
                continue
            if key_hash is not None:
                shown.add(key_hash)
            values.append(write.value)
        return values

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
        # Histories are short: the bounded union never drops an entry here.
        assert len(self.entries[replica]) <= IDEMPOTENCY_ENTRIES_MAX
        assert set(record.idempotency) == self.entries[replica]
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
    st.tuples(
        st.just("idempotent_write"),
        clients,
        replicas,
        st.integers(0, 1000),  # wall_ms
        st.booleans(),  # blind
        st.sampled_from([1, 2, 3]),  # the key's hash: few, so keys also repeat across writes
        st.sampled_from([50, 400, 100_000]),  # window_ms
    ),
    st.tuples(st.just("retry"), clients, replicas, st.integers(0, 1000)),
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
            case (
                "idempotent_write",
                int(client),
                int(replica),
                int(wall_ms),
                bool(blind),
                int(key_hash),
                int(window_ms),
            ):
                read = None if blind else world.reads[client]
                value = b"i%d" % len(world.writes)
                idempotent = (key_hash, window_ms)
                world.last_idempotent[client] = (read, value, idempotent)
                world.write(
                    replica,
                    wall_ms=wall_ms,
                    read=read,
                    tombstone=False,
                    ttl_ms=0,
                    idempotent=idempotent,
                    value=value,
                )
            case ("retry", int(client), int(replica), int(wall_ms)):
                last = world.last_idempotent[client]
                if last is not None:
                    read, value, idempotent = last
                    minted = world.write(
                        replica,
                        wall_ms=wall_ms,
                        read=read,
                        tombstone=False,
                        ttl_ms=0,
                        idempotent=idempotent,
                        value=value,
                    )
                    world.duplicates += minted is not None
            case ("sync", int(source), int(target), bool(both)):
                world.sync(source, target)
                if both:
                    world.sync(target, source)
            case ("read_modify_write", int(replica), int(wall_ms)):
                # A write on top of everything the replica has supersedes all of it.
                local = world.records[replica]
                read = (context_of(local), world.history_of(local))
                record = world.write(replica, wall_ms=wall_ms, read=read, tombstone=False, ttl_ms=0)
                assert record is not None and len(record.siblings) == 1
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
    assert final is not None and len(final.siblings) == 1
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
        assert record.visible_values(now_ms) == world.expected_visible(record, now_ms)
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


# --- idempotent retries -------------------------------------------------------------------

entry_strategy = st.builds(
    IdempotencyEntry,
    hash=st.integers(1, 6),
    node=st.sampled_from(REPLICA_IDS),
    counter=st.integers(1, 12),
    timestamp=st.integers(0, 3),
    expires_at_ms=st.integers(0, 50),
)


def entry_list(entries: list[IdempotencyEntry]) -> tuple[IdempotencyEntry, ...]:
    """A list as a record holds it: folded through the bounded union."""
    result: tuple[IdempotencyEntry, ...] = ()
    for entry in entries:
        result = merge_idempotency(result, (entry,))
    return result


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(entry_strategy, max_size=30), min_size=3, max_size=3), st.integers(0, 20))
def test_the_bounded_union_of_entries_is_a_semilattice(
    lists: list[list[IdempotencyEntry]], filler: int
) -> None:
    # Enough distinct entries, often, to overflow the bound.
    lists[0] = lists[0] + [IdempotencyEntry(9, "r0", n, 0, n % 7) for n in range(1, filler + 1)]
    lists[2] = lists[2] + [IdempotencyEntry(8, "r1", n, 1, n % 5) for n in range(1, filler + 1)]
    a, b, c = (entry_list(entries) for entries in lists)
    union = {e.identity() for e in (*a, *b, *c)}
    event("over the bound" if len(union) > IDEMPOTENCY_ENTRIES_MAX else "within the bound")
    for x in (a, b, c):
        assert merge_idempotency(x, x) == x
        assert len(x) <= IDEMPOTENCY_ENTRIES_MAX
        assert list(x) == sorted(x, key=IdempotencyEntry.identity)
    assert merge_idempotency(a, b) == merge_idempotency(b, a)
    left = merge_idempotency(merge_idempotency(a, b), c)
    assert left == merge_idempotency(a, merge_idempotency(b, c))
    # The reference: one copy per identity (the larger), the K that expire last.
    best: dict[tuple[int, str, int], IdempotencyEntry] = {}
    for entry in (*lists[0], *lists[1], *lists[2]):
        seen = best.get(entry.identity())
        if seen is None or entry.keep_order() > seen.keep_order():
            best[entry.identity()] = entry
    expected = sorted(best.values(), key=IdempotencyEntry.keep_order, reverse=True)
    assert set(left) == set(expected[:IDEMPOTENCY_ENTRIES_MAX])


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.value)
@HISTORY_SETTINGS
@given(history=histories, order=st.permutations(range(REPLICA_COUNT)))
def test_a_retry_is_applied_at_most_once_where_it_is_known(
    policy: ConflictPolicy, history: list[tuple[object, ...]], order: list[int]
) -> None:
    world = run_history(policy, history)
    event(f"retries answered from the record: {min(world.replays, 3)}")
    event(f"retries minted again (replica did not know): {min(world.duplicates, 3)}")
    converge(world, order)
    converged = world.records[0]
    if converged is None:
        return
    # After convergence every replica knows every live key: a retry of any of
    # them, at any replica, mints nothing.
    for client, last in enumerate(world.last_idempotent):
        if last is None:
            continue
        _, _, (key_hash, _) = last
        for replica in range(REPLICA_COUNT):
            physical_ms = world.hlcs[replica].last >> LOGICAL_BITS
            live = any(
                e.hash == key_hash and e.expires_at_ms > physical_ms for e in converged.idempotency
            )
            known = applied_context(world.records[replica], key_hash, physical_ms)
            assert (known is not None) == live, (client, replica)


def test_a_retry_minted_at_a_second_replica_reads_as_one_value() -> None:
    """The 504-then-retry case: r0 minted the write, r1 did not know and minted it
    again. Once they meet, readers see one value, the record's clock covers both
    copies, and the next write on the read's context supersedes both."""
    world = World(ConflictPolicy.SIBLINGS)
    key = (7, 100_000)
    first = world.write(0, wall_ms=10, read=None, tombstone=False, ttl_ms=0, idempotent=key)
    assert first is not None
    value = first.siblings[0].value
    again = world.write(
        1, wall_ms=20, read=None, tombstone=False, ttl_ms=0, idempotent=key, value=value
    )
    assert again is not None, "r1 had not seen the original: it mints a copy"
    world.sync(0, 1)
    merged = world.records[1]
    assert merged is not None and len(merged.siblings) == 2
    assert merged.visible_values(30) == [value]
    world.check(1)
    # r1 now knows the key: a third attempt is answered, not minted.
    assert (
        world.write(
            1, wall_ms=40, read=None, tombstone=False, ttl_ms=0, idempotent=key, value=value
        )
        is None
    )
    clock = merged.clock()
    assert all(clock_get(clock, s.node) >= s.counter for s in merged.siblings)
    read = (context_of(merged), world.history_of(merged))
    final = world.write(1, wall_ms=50, read=read, tombstone=False, ttl_ms=0)
    assert final is not None and len(final.siblings) == 1
    # The entries outlive the superseded copies: a late retry still is not applied.
    assert (
        world.write(
            1, wall_ms=60, read=None, tombstone=False, ttl_ms=0, idempotent=key, value=value
        )
        is None
    )


def test_an_expired_key_is_applied_again_and_pruned_at_minting() -> None:
    world = World(ConflictPolicy.LWW)
    key = (5, 100)
    assert world.write(0, wall_ms=10, read=None, tombstone=False, ttl_ms=0, idempotent=key)
    assert world.write(0, wall_ms=50, read=None, tombstone=False, ttl_ms=0, idempotent=key) is None
    record = world.write(0, wall_ms=500, read=None, tombstone=False, ttl_ms=0, idempotent=key)
    assert record is not None, "past its window the key no longer protects"
    assert len(record.idempotency) == 1, "the expired entry was pruned when minting"
    world.check(0)
