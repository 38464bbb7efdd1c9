"""Partition ranges against every engine: raw scans (anti-entropy, streaming),
bulk ingest of encoded records, dropping a handed-off partition, and the
digest that checks a streamed partition. Plus every new write path on a real
full disk (RocksDB) and a property test of both engines against a dict model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynakv.core.record import Record, encode_record
from dynakv.storage import (
    MemoryStorage,
    RocksStorage,
    Storage,
    StorageCorruption,
    StorageFull,
)
from dynakv.storage.raw import RecordsDigest
from dynakv.storage.rocks import REOPEN_RETRY_INTERVAL_S
from dynakv.storage.sweeper import Sweeper
from tests.contract.conftest import EDGE_KEYS, EDGE_PARTITIONS
from tests.contract.test_storage_contract import expiring, record, sibling
from tests.contract.test_storage_hints import all_hints, summary_from_listing


def fill(storage: Storage, partitions: list[int]) -> None:
    """Every key in every partition; every other one expiring at 1_000."""
    for partition in partitions:
        for index, key in enumerate(EDGE_KEYS):
            value = bytes([partition % 256, index])
            storage.put(
                partition, key, expiring(1_000, value) if index % 2 else record(sibling(value))
            )


def raw_pages(storage: Storage, partition: int, limit: int) -> list[tuple[bytes, bytes]]:
    items: list[tuple[bytes, bytes]] = []
    after: bytes | None = None
    for _ in range(10_000):
        page = storage.scan_raw(partition, after=after, limit=limit)
        assert len(page) <= limit
        items.extend(page)
        if len(page) < limit:
            return items
        after = page[-1][0]
    raise AssertionError("scan_raw never ended")


def raw_pages_reverse(storage: Storage, partition: int, limit: int) -> list[tuple[bytes, bytes]]:
    items: list[tuple[bytes, bytes]] = []
    before: bytes | None = None
    for _ in range(10_000):
        page = storage.scan_raw_reverse(partition, before=before, limit=limit)
        assert len(page) <= limit
        items.extend(page)
        if len(page) < limit:
            return items
        before = page[-1][0]
    raise AssertionError("scan_raw_reverse never ended")


def digest_of(items: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    digest = RecordsDigest()
    for key, data in items:
        digest.add(key, data)
    return digest.result()


# --- scan_raw ----------------------------------------------------------------


def test_scan_raw_pages_equal_scan(storage: Storage) -> None:
    fill(storage, EDGE_PARTITIONS)
    for partition in EDGE_PARTITIONS:
        want = [(key, encode_record(rec)) for key, rec in storage.scan(partition)]
        assert [key for key, _ in want] == sorted(EDGE_KEYS)
        for limit in (1, 2, 3, 100):
            assert raw_pages(storage, partition, limit) == want
    assert storage.scan_raw(3, limit=10) == []
    assert storage.scan_raw(65535, after=b"\xff" * 21, limit=10) == []
    # ``after`` need not be a stored key.
    assert [k for k, _ in storage.scan_raw(1, after=b"a\x00\x00", limit=10)] == [
        b"b",
        b"\xff",
        b"\xff" * 20,
    ]


# --- scan_raw_reverse --------------------------------------------------------


def test_scan_raw_reverse_pages_equal_a_reversed_forward_scan(storage: Storage) -> None:
    fill(storage, EDGE_PARTITIONS)
    for partition in EDGE_PARTITIONS:
        want = list(reversed(raw_pages(storage, partition, 100)))
        assert [key for key, _ in want] == sorted(EDGE_KEYS, reverse=True)
        for limit in (1, 2, 3, 100):
            assert raw_pages_reverse(storage, partition, limit) == want


def test_scan_raw_reverse_before_at_and_between_keys(storage: Storage) -> None:
    fill(storage, [1])
    keys = sorted(EDGE_KEYS)
    # At every stored key, and between keys (past each, not stored itself).
    for before in keys + [key + b"\x00\x00" for key in keys] + [b"\x01", b"c"]:
        got = storage.scan_raw_reverse(1, before=before, limit=100)
        assert [k for k, _ in got] == sorted((k for k in keys if k < before), reverse=True)
    assert storage.scan_raw_reverse(1, before=b"", limit=10) == []
    assert [k for k, _ in storage.scan_raw_reverse(1, before=b"a\x00\x00", limit=2)] == [
        b"a\x00",
        b"a",
    ]
    assert [k for k, _ in storage.scan_raw_reverse(1, before=b"\xff" * 30, limit=1)] == [
        b"\xff" * 20
    ]


@pytest.mark.parametrize("empty", [0, 1, 65534, 65535])
def test_scan_raw_reverse_never_leaks_a_neighbouring_partition(
    storage: Storage, empty: int
) -> None:
    neighbours = [p for p in (empty - 1, empty + 1) if 0 <= p <= 65535]
    fill(storage, neighbours)
    assert storage.scan_raw_reverse(empty, limit=10) == []
    assert storage.scan_raw_reverse(empty, before=b"\xff" * 30, limit=10) == []
    assert storage.scan_raw_reverse(empty, before=b"\x00", limit=10) == []
    for partition in neighbours:
        got = storage.scan_raw_reverse(partition, limit=100)
        assert [k for k, _ in got] == sorted(EDGE_KEYS, reverse=True)
        assert got == storage.scan_raw(partition, limit=100)[::-1]


# --- put_raw_batch -----------------------------------------------------------


def test_put_raw_batch_round_trip_with_index_entries(storage: Storage) -> None:
    source = MemoryStorage()
    fill(source, [4])
    items = source.scan_raw(4, limit=100)
    storage.put(9, b"a", record(sibling(b"overwritten")))
    storage.put_raw_batch(9, items)
    assert list(storage.scan(9)) == list(source.scan(4))
    assert storage.scan_raw(9, limit=100) == items
    assert storage.partition_digest(9) == source.partition_digest(4)
    expiring_keys = sorted(key for index, key in enumerate(EDGE_KEYS) if index % 2)
    assert sorted(k for _, k in storage.due_for_purge(1_000, limit=100)) == expiring_keys
    storage.put_raw_batch(9, [])  # nothing to do


def test_put_raw_batch_refuses_a_corrupt_record_and_writes_nothing(storage: Storage) -> None:
    items = [
        (b"a", encode_record(record())),
        (b"bad", b"\x01\xc1garbage"),
        (b"c", encode_record(expiring(10))),
    ]
    with pytest.raises(StorageCorruption) as caught:
        storage.put_raw_batch(6, items)
    assert (caught.value.partition, caught.value.key) == (6, b"bad")
    assert storage.get(6, b"a") is None and storage.get(6, b"c") is None
    assert storage.count_partition(6) == 0
    assert storage.due_for_purge(10, limit=10) == []


# --- delete_partition --------------------------------------------------------


@pytest.mark.parametrize("dropped", [0, 1, 65534, 65535])
def test_delete_partition_drops_exactly_that_partition_and_its_hints(
    storage: Storage, dropped: int
) -> None:
    fill(storage, EDGE_PARTITIONS)
    for partition in EDGE_PARTITIONS:
        for owner in ("n2", "n3"):
            storage.put_hinted(partition, b"h", record(), owner=owner, created_ms=partition)
    storage.put_hinted(dropped, b"h2", record(), owner="n4", created_ms=1)  # only in `dropped`
    before = {p: storage.scan_raw(p, limit=100) for p in EDGE_PARTITIONS}
    hints_before = {o: all_hints(storage, o) for o in ("n2", "n3")}

    storage.delete_partition(dropped)

    assert storage.scan_raw(dropped, limit=100) == [] and storage.count_partition(dropped) == 0
    assert storage.partition_digest(dropped) == digest_of([])
    for partition in EDGE_PARTITIONS:
        if partition != dropped:
            assert storage.scan_raw(partition, limit=100) == before[partition]
    for owner in ("n2", "n3"):
        want = [h for h in hints_before[owner] if h.partition != dropped]
        assert all_hints(storage, owner) == want
    assert "n4" not in storage.hint_summary()
    assert storage.hint_summary() == summary_from_listing(storage)

    # The dropped records' index entries are left behind: the sweep finds them stale.
    sweeper = Sweeper(storage, batch_max=4)
    for _ in range(100):
        if not storage.due_for_purge(1_000, limit=1):
            break
        sweeper.sweep_once(1_000)
    assert storage.due_for_purge(1_000, limit=100) == []
    expiring_per_partition = sum(1 for index in range(len(EDGE_KEYS)) if index % 2)
    assert sweeper.purged_total == expiring_per_partition * (len(EDGE_PARTITIONS) - 1)
    assert sweeper.stale_total == expiring_per_partition and sweeper.corrupt_total == 0

    storage.put(dropped, b"again", record())  # a new write after the drop is seen
    assert [k for k, _ in storage.scan_raw(dropped, limit=10)] == [b"again"]


# --- partition_digest --------------------------------------------------------


def test_partition_digest_equal_across_engines_and_sensitive_to_one_record(tmp_path: Path) -> None:
    memory, rocks = MemoryStorage(), RocksStorage.open(tmp_path / "db")
    try:
        for engine in (memory, rocks):
            fill(engine, [5, 6])
            assert engine.partition_digest(7) == (0, digest_of([])[1])
        digest = memory.partition_digest(5)
        assert digest == rocks.partition_digest(5) == digest_of(rocks.scan_raw(5, limit=100))
        assert digest[0] == len(EDGE_KEYS) == rocks.count_partition(5) == memory.count_partition(5)
        assert digest != memory.partition_digest(6)

        rocks.put(5, b"a", record(sibling(b"different")))
        assert rocks.partition_digest(5)[0] == digest[0]
        assert rocks.partition_digest(5)[1] != digest[1]
        memory.put(5, b"extra", record())
        assert memory.partition_digest(5)[0] == digest[0] + 1
        # A key moved into the value's bytes is not the same content.
        assert digest_of([(b"ab", b"c")]) != digest_of([(b"a", b"bc")])
    finally:
        rocks.close()


# --- RocksDB on a real full disk ---------------------------------------------


@pytest.mark.integration
def test_rocks_every_new_write_path_is_storage_full_then_resumes(tmp_path: Path) -> None:
    from tests.integration.test_disk_full import MIB, WRITES_MAX, FakeClock, loop_fs
    from tests.integration.test_disk_full import fill as fill_disk

    with loop_fs(tmp_path) as mount_point:
        clock = FakeClock()
        (mount_point / "db").mkdir()
        storage = RocksStorage(
            mount_point / "db", write_buffer_bytes=4 * MIB, monotonic_s=clock.now_s
        )
        try:
            storage.put_hinted(1, b"kept", record(), owner="n2", created_ms=1)
            storage.put_meta("hlc", b"1")
            storage.sync()
            filler = fill_disk(mount_point, leave_bytes=6 * MIB)
            for index in range(WRITES_MAX):
                try:
                    value = index.to_bytes(4, "big") * (16 * 1024)
                    storage.put_hinted(
                        0,
                        index.to_bytes(4, "big"),
                        record(sibling(value)),
                        owner="n3",
                        created_ms=2,
                    )
                    storage.sync()
                except StorageFull:
                    break
            else:
                raise AssertionError(f"{WRITES_MAX} hinted writes never filled the file system")
            summary = storage.hint_summary()
            refused: dict[str, Callable[[], object]] = {
                "put_hinted": lambda: storage.put_hinted(
                    1, b"x", record(), owner="n2", created_ms=3
                ),
                "delete_hint": lambda: storage.delete_hint("n2", 1, b"kept"),
                "put_raw_batch": lambda: storage.put_raw_batch(
                    2, [(b"x", encode_record(record()))]
                ),
                "delete_partition": lambda: storage.delete_partition(0),
                "put_meta": lambda: storage.put_meta("hlc", b"2"),
                "delete_meta": lambda: storage.delete_meta("hlc"),
            }
            for name, write in refused.items():
                with pytest.raises(StorageFull):
                    write()
                assert storage.hint_summary() == summary, name
            # Reads go on.
            assert storage.get_meta("hlc") == b"1"
            assert [h.key for h in storage.hints_for("n2", limit=10)] == [b"kept"]
            assert storage.scan_raw(1, limit=10)[0][0] == b"kept"

            filler.unlink()
            clock.time_s += REOPEN_RETRY_INTERVAL_S
            storage.put_meta("hlc", b"2")  # reopens: the space is back
            assert storage.reopens_total == 1 and storage.full_reason is None
            assert storage.hint_summary() == summary == summary_from_listing(storage)
            storage.delete_partition(0)
            assert list(storage.hint_summary()) == ["n2"]
            storage.sync()
            summary = storage.hint_summary()
        finally:
            storage.close()
        reopened = RocksStorage.open(mount_point / "db")
        try:
            assert reopened.hint_summary() == summary
            assert reopened.get_meta("hlc") == b"2"
            assert reopened.count_partition(0) == 0
        finally:
            reopened.close()


# --- both engines agree with a dict model --------------------------------------

RANGE_PARTITIONS = st.sampled_from([0, 1, 65535])
RANGE_KEYS = st.sampled_from([b"", b"a", b"b", b"\xff" * 9])
RANGE_RECORDS = st.builds(
    lambda value, at_ms: expiring(at_ms, value) if at_ms else record(sibling(value)),
    st.binary(max_size=4),
    st.sampled_from([0, 100, 200]),
)
RANGE_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), RANGE_PARTITIONS, RANGE_KEYS, RANGE_RECORDS),
        st.tuples(
            st.just("raw"),
            RANGE_PARTITIONS,
            st.lists(st.tuples(RANGE_KEYS, RANGE_RECORDS), max_size=4),
        ),
        st.tuples(st.just("drop"), RANGE_PARTITIONS),
        st.tuples(st.just("sweep"), st.sampled_from([100, 200])),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=RANGE_OPERATIONS, page=st.integers(1, 3))
def test_ranges_agree_with_a_dict_model(operations: list[tuple[object, ...]], page: int) -> None:
    model: dict[int, dict[bytes, Record]] = {0: {}, 1: {}, 65535: {}}
    with tempfile.TemporaryDirectory() as directory:
        memory, rocks = MemoryStorage(), RocksStorage.open(Path(directory) / "db")
        engines: tuple[Storage, Storage] = (memory, rocks)
        try:
            for operation in operations:
                name, *args = operation
                if name == "put":
                    partition, key, stored = args
                    assert isinstance(partition, int) and isinstance(key, bytes)
                    assert isinstance(stored, Record)
                    for engine in engines:
                        engine.put(partition, key, stored)
                    model[partition][key] = stored
                elif name == "raw":
                    partition, pairs = args
                    assert isinstance(partition, int) and isinstance(pairs, list)
                    items = [(key, encode_record(stored)) for key, stored in pairs]
                    for engine in engines:
                        engine.put_raw_batch(partition, items)
                    model[partition].update(dict(pairs))
                elif name == "drop":
                    (partition,) = args
                    assert isinstance(partition, int)
                    for engine in engines:
                        engine.delete_partition(partition)
                    model[partition] = {}
                else:
                    (now_ms,) = args
                    assert isinstance(now_ms, int)
                    purged = [
                        Sweeper(engine, batch_max=1000).sweep_once(now_ms) for engine in engines
                    ]
                    assert purged[0] == purged[1]
                    for records in model.values():
                        for key in [
                            k for k, r in records.items() if (r.purge_at_ms() or 10**9) <= now_ms
                        ]:
                            del records[key]
            for partition, records in model.items():
                want = [(key, encode_record(records[key])) for key in sorted(records)]
                for engine in engines:
                    assert raw_pages(engine, partition, page) == want
                    assert raw_pages_reverse(engine, partition, page) == want[::-1]
                    assert engine.partition_digest(partition) == digest_of(want)
                    assert engine.count_partition(partition) == len(want)
        finally:
            rocks.close()
