"""The local replica: what it accepts from peers, and how it mints writes."""

from __future__ import annotations

import pytest

from dynakv.core.record import ConflictPolicy, Context, Record, Sibling, context_of, make_write
from dynakv.core.ring import partition_of
from dynakv.core.versions import covers
from dynakv.errors import InsufficientStorage, InvalidRequest, RemoteProtocolError
from dynakv.net.messages import ReadReply, ReadRequest, WriteReply, WriteRequest
from dynakv.node.replica import LocalReplica
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.memory import MemoryStorage

PARTITIONS = 1024
KEY = b"cart:42"
PARTITION = partition_of(KEY, PARTITIONS)


class FixedClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now

    def monotonic_ms(self) -> float:
        return float(self.now)


def replica(policy: ConflictPolicy = ConflictPolicy.LWW) -> LocalReplica:
    storage = MemoryStorage()
    return LocalReplica(
        node_id="n1",
        storage=storage,
        committer=GroupCommitter(storage, durable=False),
        clock=FixedClock(1_000_000),
        policy=policy,
        tombstone_grace_s=60,
        partition_count=PARTITIONS,
        key_bytes_max=2048,
    )


def a_record(timestamp: int = 5 << 16) -> Record:
    return Record((Sibling(b"v", "n2", 1, (), timestamp),))


def test_a_peer_write_is_merged_and_acknowledged() -> None:
    local = replica()
    assert local.handle(WriteRequest(PARTITION, KEY, a_record()), "n2") == WriteReply()
    assert local.read(PARTITION, KEY) == a_record()
    assert local.handle(ReadRequest(PARTITION, KEY), "n2") == ReadReply(a_record())


@pytest.mark.parametrize(
    ("partition", "key", "problem"),
    [
        ((PARTITION + 1) % PARTITIONS, KEY, "not the key's partition"),
        (70_000, KEY, "not the key's partition"),
        (0, b"", "outside 1..2048"),
        (partition_of(b"k" * 2049, PARTITIONS), b"k" * 2049, "outside 1..2048"),
    ],
)
def test_a_peer_request_for_an_impossible_address_is_refused(
    partition: int, key: bytes, problem: str
) -> None:
    local = replica()
    with pytest.raises(RemoteProtocolError, match=problem):
        local.handle(WriteRequest(partition, key, a_record()), "n2")
    with pytest.raises(RemoteProtocolError, match=problem):
        local.handle(ReadRequest(partition, key), "n2")
    assert local.storage.count_records() == 0


def test_a_peer_record_breaking_the_invariants_is_refused_and_not_stored() -> None:
    local = replica()
    duplicate_dots = Record((Sibling(b"a", "n2", 1, (), 5), Sibling(b"b", "n2", 1, (), 6)))
    with pytest.raises(RemoteProtocolError, match="sorted and unique"):
        local.handle(WriteRequest(PARTITION, KEY, duplicate_dots), "n2")
    assert local.read(PARTITION, KEY) is None


def test_a_minted_write_is_stamped_after_everything_it_saw() -> None:
    local = replica()
    far_future = ((1_000_000 + 30_000) << 16) + 7  # from a node whose clock is 30 s ahead
    first = local.write_new(
        PARTITION,
        KEY,
        value=b"x",
        context=Context(clock=(("n2", 3),), max_timestamp=far_future),
        ttl_s=0,
    )
    assert first.written.timestamp > far_future
    assert first.written.node == "n1"
    assert first.written.counter >= first.written.timestamp
    second = local.write_new(PARTITION, KEY, value=b"y", context=context_of(first.record), ttl_s=10)
    assert second.written.timestamp > first.written.timestamp
    assert second.written.counter > first.written.counter
    assert second.written.expires_at_ms == 1_000_000 + 10_000


def test_a_delete_is_a_tombstone_with_the_grace_period() -> None:
    local = replica()
    deleted = local.write_new(PARTITION, KEY, value=None, context=Context(), ttl_s=0)
    assert deleted.written.is_tombstone
    assert deleted.record.purge_at_ms() == 1_000_000 + 60_000


def test_a_context_from_too_far_in_the_future_is_refused() -> None:
    local = replica()
    hour_ahead = (1_000_000 + 3_600_000) << 16
    with pytest.raises(InvalidRequest, match="clock_offset_ms_max") as refused:
        local.write_new(
            PARTITION,
            KEY,
            value=b"x",
            context=Context(clock=(("n2", 1),), max_timestamp=hour_ahead),
            ttl_s=0,
        )
    assert refused.value.field == "X-Dynakv-Context"
    assert local.read(PARTITION, KEY) is None
    assert local.hlc.last == 0  # the clock was not dragged forward


@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_a_context_from_before_a_purge_does_not_cover_the_next_write(
    policy: ConflictPolicy,
) -> None:
    """After a record is purged (tombstone GC, TTL) the next write must get a
    dot no old context covers, or an old reader's write would silently
    supersede a write it never saw (siblings) - the reason counters follow the HLC."""
    first = make_write(
        None,
        node_id="n1",
        value=b"a",
        context=Context(),
        timestamp=10 << 16,
        expires_at_ms=0,
        policy=policy,
    )
    old_context = context_of(first)
    # The record is purged everywhere; the same node writes the key again, blind.
    again = make_write(
        None,
        node_id="n1",
        value=b"b",
        context=Context(),
        timestamp=11 << 16,
        expires_at_ms=0,
        policy=policy,
    )
    (written,) = again.siblings
    assert not covers(old_context.clock, written.node, written.counter)


def test_the_hlc_never_goes_back_across_a_restart_even_when_the_wall_clock_does() -> None:
    first = replica()
    assert isinstance(first.clock, FixedClock)
    written = first.write_new(PARTITION, KEY, value=b"v", context=Context(), ttl_s=0)
    storage = first.storage
    # The node restarts with its wall clock ten seconds behind; a key it has
    # never written (as one whose record was purged) gets a later dot anyway.
    restarted = LocalReplica(
        node_id="n1",
        storage=storage,
        committer=GroupCommitter(storage, durable=False),
        clock=FixedClock(first.clock.now - 10_000),
        policy=ConflictPolicy.LWW,
        tombstone_grace_s=60,
        partition_count=PARTITIONS,
        key_bytes_max=2048,
    )
    other_key = b"fresh-key"
    other = partition_of(other_key, PARTITIONS)
    again = restarted.write_new(other, other_key, value=b"w", context=Context(), ttl_s=0)
    assert again.written.timestamp > written.written.timestamp
    assert again.written.counter > written.written.counter  # no dot of n1 is ever reused


class LowDisk:
    """A disk guard below its reserve: it refuses every value write."""

    def __init__(self) -> None:
        self.asked = 0

    def check_value_write(self) -> None:
        self.asked += 1
        raise InsufficientStorage(node="n1", free_bytes=1, reserve_bytes=2)


def test_below_the_disk_reserve_a_merge_refuses_only_values_it_did_not_hold() -> None:
    local = replica()
    held = a_record()
    local.apply(PARTITION, KEY, held)
    guard = local.disk_guard = LowDisk()
    newer = Record((Sibling(b"w", "n2", 2, (("n2", 1),), 6 << 16),))
    with pytest.raises(InsufficientStorage):
        local.apply(PARTITION, KEY, newer)
    assert local.read(PARTITION, KEY) == held
    # The value it already holds, now as a fallback's hinted copy: no new value, stored.
    local.apply(PARTITION, KEY, held, hint_for="n3")
    tombstone = Record((Sibling(None, "n2", 3, (("n2", 1),), 7 << 16),))
    local.apply(PARTITION, KEY, tombstone)
    assert local.read(PARTITION, KEY) == tombstone
    assert guard.asked == 3
