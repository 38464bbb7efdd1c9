"""The Storage contract, run against every engine (MemoryStorage and RocksStorage).

Plus RocksStorage-only facts (reopen, lock, corruption on disk, raw bytes) and
a property test that both engines give the same observable results. Hints are
in ``test_storage_hints.py``, partition ranges in ``test_storage_ranges.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Rdict

from dynakv.core.record import Record, Sibling, encode_record
from dynakv.storage import (
    ROCKSDB_FILES_OPEN_MAX,
    MemoryStorage,
    MetaTooLarge,
    RocksStorage,
    Storage,
    StorageClosed,
    StorageCorruption,
    StorageLocked,
    open_storage,
)
from dynakv.storage.base import META_NAME_BYTES_MAX, META_VALUE_BYTES_MAX, stored_key
from dynakv.storage.diskspace import BALLAST_NAME, DiskGuard
from dynakv.storage.rocks import (
    BLOCK_CACHE_BYTES_DEFAULT,
    INFO_LOGS_KEPT,
    OPEN_MARGIN_BYTES,
    TABLE_FILES_OPEN_MAX,
    open_bytes_needed,
    wal_bytes,
)

KEY_BYTES_MAX = 2048


def sibling(
    value: bytes | None = b"v",
    *,
    node: str = "n1",
    counter: int = 1,
    expires_at_ms: int = 0,
    timestamp: int = 1,
) -> Sibling:
    return Sibling(
        value=value,
        node=node,
        counter=counter,
        past=(),
        timestamp=timestamp,
        expires_at_ms=expires_at_ms,
    )


def record(*siblings: Sibling) -> Record:
    return Record(tuple(siblings) or (sibling(),))


def expiring(at_ms: int, value: bytes | None = b"v") -> Record:
    return record(sibling(value, expires_at_ms=at_ms))


@pytest.fixture
def rocks_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "db"


def corrupt(
    storage: Storage, path: Path | None, partition: int, key: bytes, data: bytes
) -> Storage:
    """Overwrite one stored value with raw bytes, behind the engine's back."""
    if isinstance(storage, MemoryStorage):
        storage.corrupt_for_test(partition, key, data)
        return storage
    assert isinstance(storage, RocksStorage) and path is not None
    storage.close()
    raw = Rdict(str(path))  # rocksdict detects raw mode and the column families
    raw[stored_key(partition, key)] = data
    raw.close()
    del raw
    return RocksStorage(path)


# --- get / put -------------------------------------------------------------


def test_get_missing_is_none(storage: Storage) -> None:
    assert storage.get(0, b"absent") is None
    assert storage.count_records() == 0


@pytest.mark.parametrize(
    "stored",
    [
        record(sibling(b"value")),
        record(
            sibling(b"a", node="n1", counter=3, timestamp=10),
            sibling(b"b", node="n2", counter=1, timestamp=11),
        ),
        record(sibling(None, expires_at_ms=99_000)),  # tombstone
        record(sibling(b"x", expires_at_ms=5_000), sibling(None, node="n2", expires_at_ms=7_000)),
        record(sibling(b"\x00" * 1000)),
    ],
    ids=["single", "siblings", "tombstone", "expiring-mixed", "binary-value"],
)
def test_put_get_round_trip(storage: Storage, stored: Record) -> None:
    storage.put(7, b"key", stored)
    assert storage.get(7, b"key") == stored
    assert storage.count_records() == 1


def test_overwrite_replaces(storage: Storage) -> None:
    storage.put(1, b"k", record(sibling(b"old")))
    storage.put(1, b"k", record(sibling(b"new", counter=2, timestamp=2)))
    assert storage.get(1, b"k") == record(sibling(b"new", counter=2, timestamp=2))


def test_partitions_are_isolated(storage: Storage) -> None:
    storage.put(1, b"same", record(sibling(b"one")))
    storage.put(2, b"same", record(sibling(b"two")))
    assert storage.get(1, b"same") == record(sibling(b"one"))
    assert storage.get(2, b"same") == record(sibling(b"two"))
    assert storage.get(3, b"same") is None


def test_scan_one_partition_in_key_order(storage: Storage) -> None:
    keys = [
        b"\x00",
        b"\x00\x00",
        b"\x00\xff",
        b"a",
        b"a\x00",
        b"b",
        b"\xff",
        b"\xff" * KEY_BYTES_MAX,
        b"\x00" * KEY_BYTES_MAX,
        b"\x7f" * KEY_BYTES_MAX,
    ]
    for partition in (0, 1, 255, 256, 65535):
        for index, key in enumerate(reversed(keys)):
            storage.put(partition, key, record(sibling(bytes([partition % 256, index]))))
    for partition in (0, 1, 255, 256, 65535):
        scanned = list(storage.scan(partition))
        assert [key for key, _ in scanned] == sorted(keys)
        assert all(
            rec.siblings[0].value is not None and rec.siblings[0].value[0] == partition % 256
            for _, rec in scanned
        )
    assert list(storage.scan(2)) == []
    assert list(storage.scan(65534)) == []


def test_scan_is_not_disturbed_by_concurrent_puts(storage: Storage) -> None:
    for key in (b"a", b"c"):
        storage.put(0, key, record())
    scan = storage.scan(0)
    assert next(scan)[0] == b"a"
    storage.put(0, b"b", record())
    remaining = [key for key, _ in scan]
    # Engines may or may not show the new key; they must not repeat or lose old ones.
    assert remaining in ([b"c"], [b"b", b"c"])


# --- expiry index ----------------------------------------------------------


def test_due_for_purge_is_oldest_first_and_limited(storage: Storage) -> None:
    storage.put(0, b"late", expiring(3_000))
    storage.put(5, b"early", expiring(1_000))
    storage.put(2, b"middle", expiring(2_000))
    storage.put(0, b"forever", record())
    storage.put(1, b"future", expiring(10_000))
    assert storage.due_for_purge(500, limit=10) == []
    assert storage.due_for_purge(2_000, limit=10) == [(5, b"early"), (2, b"middle")]
    assert storage.due_for_purge(5_000, limit=2) == [(5, b"early"), (2, b"middle")]
    assert storage.due_for_purge(5_000, limit=10) == [(5, b"early"), (2, b"middle"), (0, b"late")]


def test_purge_if_due_deletes_only_when_every_sibling_expired(storage: Storage) -> None:
    both_expire = record(
        sibling(b"a", expires_at_ms=1_000), sibling(b"b", node="n2", expires_at_ms=2_000)
    )
    storage.put(0, b"k", both_expire)
    assert storage.purge_if_due(0, b"k", 1_500) is False  # n2's sibling still lives
    assert storage.get(0, b"k") == both_expire
    assert storage.purge_if_due(0, b"k", 2_000) is True
    assert storage.get(0, b"k") is None
    assert storage.due_for_purge(10_000, limit=10) == []
    assert storage.purge_if_due(0, b"k", 10_000) is False  # already gone


def test_live_sibling_without_expiry_is_never_purged(storage: Storage) -> None:
    mixed = record(sibling(b"a", expires_at_ms=1_000), sibling(b"b", node="n2"))
    storage.put(0, b"k", mixed)
    assert storage.due_for_purge(10**12, limit=10) == []
    assert storage.purge_if_due(0, b"k", 10**12) is False
    assert storage.get(0, b"k") == mixed


def test_tombstone_purged_after_its_grace(storage: Storage) -> None:
    storage.put(4, b"deleted", record(sibling(None, expires_at_ms=50_000)))
    assert storage.due_for_purge(49_999, limit=10) == []
    assert storage.due_for_purge(50_000, limit=10) == [(4, b"deleted")]
    assert storage.purge_if_due(4, b"deleted", 50_000) is True
    assert storage.get(4, b"deleted") is None


def sweep_until_quiet(storage: Storage, now_ms: int) -> int:
    purged = 0
    for _ in range(100):
        due = storage.due_for_purge(now_ms, limit=2)
        if not due:
            return purged
        purged += sum(storage.purge_if_due(p, k, now_ms) for p, k in due)
    raise AssertionError("expiry index never drained")


def test_rewritten_without_expiry_is_never_purged_and_stale_entry_cleaned(storage: Storage) -> None:
    storage.put(0, b"k", expiring(1_000))
    storage.put(0, b"k", record(sibling(b"forever", counter=2, timestamp=2)))
    assert storage.due_for_purge(5_000, limit=10) == [(0, b"k")]
    assert storage.purge_if_due(0, b"k", 5_000) is False
    assert storage.get(0, b"k") == record(sibling(b"forever", counter=2, timestamp=2))
    assert storage.due_for_purge(5_000, limit=10) == []  # the stale entry is gone


def test_rewritten_with_later_expiry_survives_until_then(storage: Storage) -> None:
    storage.put(0, b"k", expiring(1_000))
    storage.put(0, b"k", expiring(9_000))
    assert sweep_until_quiet(storage, 5_000) == 0
    assert storage.get(0, b"k") == expiring(9_000)
    assert storage.due_for_purge(5_000, limit=10) == []
    assert storage.due_for_purge(9_000, limit=10) == [(0, b"k")]
    assert sweep_until_quiet(storage, 9_000) == 1
    assert storage.get(0, b"k") is None


def test_stale_entries_of_a_missing_record_are_cleaned(storage: Storage) -> None:
    storage.put(0, b"k", expiring(1_000))
    storage.put(0, b"k", expiring(2_000))
    storage.put(0, b"k", expiring(3_000))
    assert storage.due_for_purge(3_000, limit=10) == [(0, b"k")]
    assert storage.purge_if_due(0, b"k", 3_000) is True
    assert storage.due_for_purge(10_000, limit=10) == []


def test_put_of_an_already_expired_record_is_found(storage: Storage) -> None:
    storage.put(0, b"new", expiring(8_000))
    assert sweep_until_quiet(storage, 5_000) == 0  # moves RocksStorage's floor up
    storage.put(0, b"old", expiring(1_000))  # e.g. a late hint
    assert storage.due_for_purge(5_000, limit=10) == [(0, b"old")]


def test_corrupt_value_raises_storage_corruption(storage: Storage, tmp_path: Path) -> None:
    storage.put(3, b"good", record())
    storage = corrupt(storage, tmp_path / "db", 3, b"bad\xff", b"\x01\xc1garbage")
    try:
        with pytest.raises(StorageCorruption) as caught:
            storage.get(3, b"bad\xff")
        assert caught.value.partition == 3 and caught.value.key == b"bad\xff"
        assert "partition 3" in str(caught.value) and b"bad\xff".hex() in str(caught.value)
        with pytest.raises(StorageCorruption):
            list(storage.scan(3))
        assert storage.get(3, b"good") == record()
    finally:
        storage.close()


def test_closed_storage_refuses(storage: Storage) -> None:
    storage.close()
    storage.close()  # idempotent
    with pytest.raises(StorageClosed):
        storage.get(0, b"k")


# --- meta --------------------------------------------------------------------


def test_meta_round_trip_overwrite_and_delete(storage: Storage) -> None:
    assert storage.get_meta("hlc") is None
    storage.put_meta("hlc", b"\x00\x01")
    storage.put_meta("ring", b"")  # an empty value is a value, not an absence
    assert storage.get_meta("hlc") == b"\x00\x01" and storage.get_meta("ring") == b""
    storage.put_meta("hlc", b"\x02")
    assert storage.get_meta("hlc") == b"\x02"
    storage.delete_meta("hlc")
    storage.delete_meta("hlc")  # absent is fine
    assert storage.get_meta("hlc") is None and storage.get_meta("ring") == b""
    # Meta is not records: nothing shows in the partition its name would spell.
    assert list(storage.scan(int.from_bytes(b"ri", "big"))) == []


def test_meta_refuses_names_and_values_past_their_bounds(storage: Storage) -> None:
    longest = "m" * META_NAME_BYTES_MAX
    storage.put_meta(longest, b"x")
    assert storage.get_meta(longest) == b"x"
    for name in ("m" * (META_NAME_BYTES_MAX + 1), "é" * (META_NAME_BYTES_MAX // 2 + 1)):
        with pytest.raises(MetaTooLarge) as caught:
            storage.put_meta(name, b"x")
        assert caught.value.part == "name" and caught.value.max_bytes == META_NAME_BYTES_MAX
        assert caught.value.size_bytes == len(name.encode()) > META_NAME_BYTES_MAX
        with pytest.raises(MetaTooLarge):
            storage.get_meta(name)
    largest = bytes(META_VALUE_BYTES_MAX)
    storage.put_meta("tree", largest)
    assert storage.get_meta("tree") == largest
    with pytest.raises(MetaTooLarge, match="value of 'tree'") as caught:
        storage.put_meta("tree", largest + b"!")
    assert (caught.value.part, caught.value.size_bytes) == ("value", META_VALUE_BYTES_MAX + 1)
    assert storage.get_meta("tree") == largest  # the refused write changed nothing


def test_rocks_meta_is_durable_after_sync_without_a_close(rocks_path: Path, tmp_path: Path) -> None:
    storage = RocksStorage.open(rocks_path)
    try:
        storage.put_meta("hlc", (10**12).to_bytes(8, "big"))
        storage.put_meta("gone", b"x")
        storage.delete_meta("gone")
        storage.sync()
        shutil.copytree(rocks_path, tmp_path / "crashed")  # as a crash leaves it: only the WAL
    finally:
        storage.close()
    for path in (tmp_path / "crashed", rocks_path):
        reopened = RocksStorage(path)
        try:
            assert reopened.get_meta("hlc") == (10**12).to_bytes(8, "big")
            assert reopened.get_meta("gone") is None
        finally:
            reopened.close()


def test_open_storage_rejects_unknown_engine(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown storage engine"):
        open_storage("leveldb", tmp_path)


# --- RocksStorage only -----------------------------------------------------


def test_rocks_survives_reopen_with_its_options(rocks_path: Path) -> None:
    storage = RocksStorage.open(rocks_path)
    storage.put(9, b"k", expiring(1_000, b"kept"))
    storage.sync()
    assert storage.property_int("rocksdb.block-cache-capacity") == BLOCK_CACHE_BYTES_DEFAULT
    storage.close()
    reopened = RocksStorage.open(rocks_path)
    try:
        assert reopened.get(9, b"k") == expiring(1_000, b"kept")
        assert reopened.due_for_purge(1_000, limit=10) == [(9, b"k")]
        # The §6 trap: without column_families on reopen RocksDB falls back to an 8 MiB cache.
        assert reopened.property_int("rocksdb.block-cache-capacity") == BLOCK_CACHE_BYTES_DEFAULT
    finally:
        reopened.close()


def test_rocks_reopen_after_an_unfinished_scan_is_closed(rocks_path: Path) -> None:
    storage = RocksStorage.open(rocks_path)
    storage.put(0, b"a", record())
    storage.put(0, b"b", record())
    scan = storage.scan(0)
    next(scan)
    scan.close()  # an open iterator would keep the DB lock
    storage.close()
    RocksStorage(rocks_path).close()


def test_rocks_second_open_in_process_is_refused(rocks_path: Path) -> None:
    storage = RocksStorage.open(rocks_path)
    try:
        with pytest.raises(StorageLocked, match="locked") as caught:
            RocksStorage(rocks_path)
        assert caught.value.path == str(rocks_path)
    finally:
        storage.close()


def test_rocks_second_open_from_another_process_is_refused(rocks_path: Path) -> None:
    storage = RocksStorage.open(rocks_path)
    probe = (
        "import sys; from pathlib import Path\n"
        "from dynakv.storage import RocksStorage, StorageLocked\n"
        "try:\n    RocksStorage(Path(sys.argv[1]))\n"
        "except StorageLocked as exc:\n    print(exc.code); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe, str(rocks_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "StorageLocked"
    finally:
        storage.close()


def test_rocks_stores_raw_bytes_never_pickles(rocks_path: Path) -> None:
    stored = record(sibling(b"payload"))
    storage = RocksStorage.open(rocks_path)
    storage.put(0x0102, b"\x00raw\xff", stored)
    storage.put(0x0102, b"ttl", expiring(0x0A0B0C0D))
    storage.put_hinted(0x0304, b"h", stored, owner="n2", created_ms=0x0506)
    storage.put_meta("hlc", b"\x07")
    storage.close()
    raw = Rdict(str(rocks_path))
    expiry, hints, meta = (raw.get_column_family(name) for name in ("expiry", "hints", "meta"))
    try:
        assert dict(raw.items()) == {
            b"\x01\x02\x00raw\xff": encode_record(stored),
            b"\x01\x02ttl": encode_record(expiring(0x0A0B0C0D)),
            b"\x03\x04h": encode_record(stored),
        }
        assert list(expiry.keys()) == [b"\x00\x00\x00\x00\x0a\x0b\x0c\x0d\x01\x02ttl"]
        size = (1 + len(encode_record(stored))).to_bytes(4, "big")
        header = b"\x01" + (0x0506).to_bytes(8, "big") + size
        assert dict(hints.items()) == {b"\x02n2\x03\x04h": header}
        assert dict(meta.items()) == {b"hlc": b"\x07"}
    finally:
        raw.close()
        del expiry, hints, meta, raw


def latest_options(path: Path) -> str:
    return max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1])).read_text()


def test_rocks_bounds_its_open_files_wal_and_logs(rocks_path: Path) -> None:
    RocksStorage.open(rocks_path, write_buffer_bytes=8 << 20).close()
    options = latest_options(rocks_path)
    assert f"max_open_files={TABLE_FILES_OPEN_MAX}" in options and TABLE_FILES_OPEN_MAX == 512
    assert f"max_total_wal_size={4 * (8 << 20)}" in options
    assert f"keep_log_file_num={INFO_LOGS_KEPT}" in options
    assert "write_buffer_size=8388608" in options
    assert ROCKSDB_FILES_OPEN_MAX > TABLE_FILES_OPEN_MAX


def test_rocks_open_bytes_needed_counts_the_wal_to_replay(rocks_path: Path) -> None:
    assert wal_bytes(rocks_path) == 0
    storage = RocksStorage.open(rocks_path)
    for index in range(64):
        storage.put(0, index.to_bytes(2, "big"), record(sibling(bytes(16 * 1024))))
    storage.sync()
    assert wal_bytes(rocks_path) >= 64 * 16 * 1024
    assert open_bytes_needed(rocks_path) == wal_bytes(rocks_path) + OPEN_MARGIN_BYTES
    storage.close()  # flushes the memtable: nothing left to replay
    assert wal_bytes(rocks_path) < 16 * 1024


class FixedFs:
    def __init__(self, free_bytes: int) -> None:
        self.free_bytes = free_bytes

    def statvfs(self, path: Path) -> SimpleNamespace:
        return SimpleNamespace(f_bavail=self.free_bytes, f_blocks=1 << 40, f_frsize=1)


@pytest.mark.parametrize("short", [True, False])
def test_open_storage_releases_the_ballast_only_when_the_open_needs_it(
    tmp_path: Path, short: bool
) -> None:
    fs = FixedFs(free_bytes=1 << 30)
    guard = DiskGuard(
        tmp_path, node_id="n1", reserve_bytes=1 << 20, ballast_bytes=4096, statvfs=fs.statvfs
    )
    guard.refresh()
    assert (tmp_path / BALLAST_NAME).exists()
    fs.free_bytes = OPEN_MARGIN_BYTES - 1 if short else OPEN_MARGIN_BYTES
    open_storage("rocksdb", tmp_path / "db", disk=guard).close()
    assert (tmp_path / BALLAST_NAME).exists() is not short
    fs.free_bytes = 0
    open_storage("memory", tmp_path / "db", disk=guard).close()  # writes nothing: keeps it
    assert (tmp_path / BALLAST_NAME).exists() is not short


# --- both engines agree ----------------------------------------------------

PARTITIONS = st.sampled_from([0, 1, 65535])
KEYS = st.sampled_from([b"a", b"b", b"\x00", b"\xff\xff", b"a" * 40])
EXPIRIES = st.sampled_from([0, 100, 200, 300, 1_000])
SIBLINGS = st.builds(
    sibling,
    value=st.one_of(st.none(), st.binary(max_size=8)),
    node=st.sampled_from(["n1", "n2"]),
    counter=st.integers(1, 3),
    expires_at_ms=EXPIRIES,
)
RECORDS = st.lists(SIBLINGS, min_size=1, max_size=3, unique_by=lambda s: s.node).map(
    lambda siblings: Record(tuple(sorted(siblings, key=lambda s: s.node)))
)
NOW_MS = st.integers(0, 1_200)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), PARTITIONS, KEYS, RECORDS),
        st.tuples(st.just("due"), NOW_MS, st.integers(1, 4)),
        st.tuples(st.just("purge"), PARTITIONS, KEYS, NOW_MS),
        st.tuples(st.just("get"), PARTITIONS, KEYS),
        st.tuples(st.just("scan"), PARTITIONS),
    ),
    max_size=30,
)


def apply_operation(storage: Storage, operation: tuple[object, ...]) -> object:
    name, *args = operation
    calls: dict[str, Callable[..., object]] = {
        "put": storage.put,
        "due": storage.due_for_purge,
        "purge": storage.purge_if_due,
        "get": storage.get,
        "scan": lambda p: list(storage.scan(p)),
    }
    assert isinstance(name, str)
    return calls[name](*args)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_engines_agree(operations: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        memory, rocks = MemoryStorage(), RocksStorage.open(Path(directory) / "db")
        try:
            for operation in operations:
                assert apply_operation(memory, operation) == apply_operation(rocks, operation), (
                    operation
                )
            for partition in (0, 1, 65535):
                assert list(memory.scan(partition)) == list(rocks.scan(partition))
            assert memory.due_for_purge(10**9, 100) == rocks.due_for_purge(10**9, 100)
        finally:
            rocks.close()
