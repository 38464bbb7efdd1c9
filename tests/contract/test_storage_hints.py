"""Hinted handoff in storage, against every engine: a hint is written with its
record atomically, listed per owner in (partition, key) order and paged,
summarised per owner (rebuilt identically at open), and deleted without its
record. Plus RocksDB crash atomicity (a torn WAL) and a property test of both
engines against a dict model.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Rdict, WriteBatch

from dynakv.core.record import Record, encode_record
from dynakv.storage import (
    Hint,
    HintStats,
    MemoryStorage,
    RocksStorage,
    Storage,
    StorageCorruption,
    StorageFull,
)
from dynakv.storage.hints import HINT_AGE_RESOLUTION_MS, hint_key
from tests.contract.test_storage_contract import expiring, record, sibling

OWNERS = ["n1", "n1x", "n10", "n2", "é"]  # a prefix of another, longer-but-smaller, non-ASCII


def size_of(key: bytes, stored: Record) -> int:
    return len(key) + len(encode_record(stored))


def all_hints(storage: Storage, owner: str, page: int = 1000) -> list[Hint]:
    hints: list[Hint] = []
    after: tuple[int, bytes] | None = None
    for _ in range(10_000):
        batch = storage.hints_for(owner, limit=page, after=after)
        hints.extend(batch)
        if len(batch) < page:
            return hints
        after = (batch[-1].partition, batch[-1].key)
    raise AssertionError("hints_for never ended")


def summary_from_listing(storage: Storage) -> dict[str, HintStats]:
    summary: dict[str, HintStats] = {}
    for owner in sorted(storage.hint_summary()):
        hints = all_hints(storage, owner)
        oldest = min(h.created_ms for h in hints)
        summary[owner] = HintStats(
            count=len(hints),
            size_bytes=sum(h.size_bytes for h in hints),
            oldest_created_ms=oldest - oldest % HINT_AGE_RESOLUTION_MS,
        )
    return summary


# --- both engines ------------------------------------------------------------


def test_put_hinted_stores_record_hint_and_expiry_entry(storage: Storage) -> None:
    stored = expiring(5_000, b"for n2")
    storage.put_hinted(3, b"k", stored, owner="n2", created_ms=1_234)
    assert storage.get(3, b"k") == stored
    assert storage.hints_for("n2", limit=10) == [
        Hint(owner="n2", partition=3, key=b"k", created_ms=1_234, size_bytes=size_of(b"k", stored))
    ]
    assert storage.hints_for("n3", limit=10) == []
    assert storage.hint_summary() == {
        "n2": HintStats(count=1, size_bytes=size_of(b"k", stored), oldest_created_ms=1_000)
    }
    assert storage.hints_bytes_total == size_of(b"k", stored)
    assert storage.due_for_purge(5_000, limit=10) == [(3, b"k")]


def test_hints_for_is_per_owner_in_partition_then_key_order_and_pages(storage: Storage) -> None:
    keys = [b"", b"\x00", b"a", b"a\x00", b"b", b"\xff", b"\xff" * 40]
    expected: dict[str, list[tuple[int, bytes]]] = {owner: [] for owner in OWNERS}
    for owner_index, owner in enumerate(OWNERS):
        for partition in (65535, 0, 1, 256):
            for key in reversed(keys):
                if (partition + len(key) + owner_index) % 3 == 0:
                    continue  # owners hold different sets
                storage.put_hinted(partition, key, record(), owner=owner, created_ms=7)
                expected[owner].append((partition, key))
    for owner in OWNERS:
        want = sorted(expected[owner])
        assert [(h.partition, h.key) for h in all_hints(storage, owner, page=1000)] == want
        for page in (1, 2, 5):
            listed = all_hints(storage, owner, page=page)
            assert [(h.partition, h.key) for h in listed] == want
            assert {h.owner for h in listed} == {owner}
    # ``after`` need not name a stored hint.
    after = storage.hints_for("n1", limit=100, after=(0, b"a\x00\x00"))
    assert [(h.partition, h.key) for h in after] == [
        e for e in sorted(expected["n1"]) if e > (0, b"a\x00\x00")
    ]
    assert storage.hints_for("n1", limit=100, after=(65535, b"\xff" * 41)) == []
    assert storage.hints_for("nobody", limit=10) == []
    assert list(storage.hint_summary()) == sorted(OWNERS)


def test_a_second_hint_for_the_same_key_replaces_the_first(storage: Storage) -> None:
    first, second = record(sibling(b"one")), record(sibling(b"two" * 10, counter=2))
    storage.put_hinted(1, b"k", first, owner="n2", created_ms=1_000)
    storage.put_hinted(1, b"k", second, owner="n2", created_ms=9_500)
    assert storage.get(1, b"k") == second
    assert storage.hints_for("n2", limit=10) == [
        Hint("n2", 1, b"k", created_ms=9_500, size_bytes=size_of(b"k", second))
    ]
    assert storage.hint_summary() == {
        "n2": HintStats(count=1, size_bytes=size_of(b"k", second), oldest_created_ms=9_000)
    }


def test_delete_hint_keeps_the_record_and_other_owners_hints(storage: Storage) -> None:
    stored = record(sibling(b"shared"))
    storage.put_hinted(2, b"k", stored, owner="n2", created_ms=1_000)
    storage.put_hinted(2, b"k", stored, owner="n3", created_ms=2_000)
    assert storage.delete_hint("n2", 2, b"k") is True
    assert storage.delete_hint("n2", 2, b"k") is False  # already gone
    assert storage.delete_hint("n4", 2, b"k") is False
    assert storage.get(2, b"k") == stored
    assert storage.hints_for("n2", limit=10) == []
    assert [h.owner for h in storage.hints_for("n3", limit=10)] == ["n3"]
    assert list(storage.hint_summary()) == ["n3"]
    assert storage.delete_hint("n3", 2, b"k") is True
    assert storage.get(2, b"k") == stored
    assert storage.hint_summary() == {} and storage.hints_bytes_total == 0


def test_summary_oldest_moves_up_as_the_oldest_hints_go(storage: Storage) -> None:
    for index, created_ms in enumerate([5_500, 1_200, 1_900, 3_000]):
        storage.put_hinted(0, bytes([index]), record(), owner="n2", created_ms=created_ms)
    assert storage.hint_summary()["n2"].oldest_created_ms == 1_000
    storage.delete_hint("n2", 0, b"\x01")  # 1_200: another hint still in second 1
    assert storage.hint_summary()["n2"].oldest_created_ms == 1_000
    storage.delete_hint("n2", 0, b"\x02")  # 1_900
    assert storage.hint_summary()["n2"].oldest_created_ms == 3_000
    storage.delete_hint("n2", 0, b"\x03")
    assert storage.hint_summary()["n2"] == HintStats(
        count=1, size_bytes=size_of(b"\x00", record()), oldest_created_ms=5_000
    )


def test_a_failed_hinted_put_writes_neither_record_nor_hint(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.put_hinted(0, b"before", record(), owner="n2", created_ms=1_000)
    summary = storage.hint_summary()

    def fail(*args: object) -> None:
        raise StorageFull(path="simulated", free_bytes=0, reason="simulated")

    # The step that changes the data: RocksDB's one batch write, the memory engine's first change.
    if isinstance(storage, RocksStorage):
        monkeypatch.setattr(storage._database, "write", fail)
    else:
        monkeypatch.setattr(storage, "_store", fail)
    with pytest.raises(StorageFull):
        storage.put_hinted(0, b"k", expiring(10), owner="n2", created_ms=2_000)
    monkeypatch.undo()
    assert storage.get(0, b"k") is None
    assert [h.key for h in storage.hints_for("n2", limit=10)] == [b"before"]
    assert storage.hint_summary() == summary
    assert storage.due_for_purge(10, limit=10) == []


# --- RocksStorage only -------------------------------------------------------


def test_rocks_writes_record_index_entry_and_hint_in_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = RocksStorage.open(tmp_path / "db")
    try:
        batch_sizes: list[int] = []
        write = storage._database.write

        def spy(batch: WriteBatch) -> None:
            batch_sizes.append(batch.len())
            write(batch)

        monkeypatch.setattr(storage._database, "write", spy)
        storage.put_hinted(0, b"k", expiring(10), owner="n2", created_ms=1)
        assert batch_sizes == [3]
    finally:
        storage.close()


def test_rocks_summary_and_hints_rebuilt_identically_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    rng = random.Random(7)
    storage = RocksStorage.open(path)
    for _ in range(400):
        owner, partition = rng.choice(OWNERS), rng.choice([0, 5, 65535])
        key = rng.randbytes(rng.randint(0, 3))
        if rng.random() < 0.25:
            storage.delete_hint(owner, partition, key)
        else:
            value = rng.randbytes(rng.randint(0, 50))
            created_ms = rng.randint(0, 100_000)
            storage.put_hinted(
                partition, key, record(sibling(value)), owner=owner, created_ms=created_ms
            )
    summary = storage.hint_summary()
    listed = {owner: all_hints(storage, owner) for owner in OWNERS}
    assert summary == summary_from_listing(storage)
    storage.close()
    reopened = RocksStorage.open(path)
    try:
        assert reopened.hint_summary() == summary
        assert reopened.hints_bytes_total == sum(s.size_bytes for s in summary.values())
        assert {owner: all_hints(reopened, owner) for owner in OWNERS} == listed
    finally:
        reopened.close()


def test_rocks_open_drops_a_hint_that_does_not_decode(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = RocksStorage.open(path)
    storage.put_hinted(0, b"good", record(), owner="n2", created_ms=1_000)
    storage.close()
    raw = Rdict(str(path))
    hints = raw.get_column_family("hints")
    hints[hint_key("n2", 0, b"bad")] = b"\x09garbage"
    hints[b"\x05n"] = b""  # a key too short to name an owner and partition
    raw.close()
    del hints, raw
    reopened = RocksStorage.open(path)
    try:
        assert [h.key for h in reopened.hints_for("n2", limit=10)] == [b"good"]
        assert reopened.hint_summary()["n2"].count == 1
    finally:
        reopened.close()
    raw = Rdict(str(path))  # and they are gone from disk
    hints = raw.get_column_family("hints")
    try:
        assert list(hints.keys()) == [hint_key("n2", 0, b"good")]
    finally:
        raw.close()
        del hints, raw


def test_rocks_hints_for_reports_a_corrupt_hint(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = RocksStorage.open(path)
    try:
        storage.put_hinted(4, b"k", record(), owner="n2", created_ms=1)
        batch = WriteBatch(raw_mode=True)  # rot after the open's check
        batch.put(hint_key("n2", 4, b"k"), b"\x01short", storage._database.readable().hints_family)
        storage._database.write(batch)
        with pytest.raises(StorageCorruption) as caught:
            storage.hints_for("n2", limit=10)
        assert caught.value.partition == 4 and caught.value.key == b"k"
    finally:
        storage.close()


@pytest.mark.parametrize("seed", range(3))
def test_rocks_a_torn_wal_never_leaves_a_record_without_its_hint(tmp_path: Path, seed: int) -> None:
    """Crash between appends: cut the WAL of a live copy anywhere; what replays
    holds every hinted write whole (record and hint) or not at all, in order."""
    rng = random.Random(seed)
    path, copy = tmp_path / "db", tmp_path / "copy"
    storage = RocksStorage.open(path)
    written: list[tuple[str, int, bytes]] = []
    try:
        for index in range(300):
            owner, partition, key = rng.choice(OWNERS), index % 3, index.to_bytes(2, "big")
            value = rng.randbytes(rng.randint(1, 300))
            storage.put_hinted(
                partition, key, record(sibling(value)), owner=owner, created_ms=index
            )
            written.append((owner, partition, key))
        storage.sync()
        shutil.copytree(path, copy)  # the WAL holds it all: nothing was flushed yet
    finally:
        storage.close()
    (wal,) = copy.glob("*.log")
    cuts = sorted(rng.randrange(wal.stat().st_size) for _ in range(6))
    seen_counts = []
    for cut in cuts:
        torn = tmp_path / f"torn-{cut}"
        shutil.copytree(copy, torn)
        with (torn / wal.name).open("r+b") as file:
            file.truncate(cut)
        crashed = RocksStorage(torn)
        try:
            hinted = {(h.owner, h.partition, h.key) for o in OWNERS for h in all_hints(crashed, o)}
            present = [crashed.get(p, k) is not None for _, p, k in written]
            assert present == [w in hinted for w in written], "a record without its hint"
            count = sum(present)
            assert present == [True] * count + [False] * (len(written) - count), "not a prefix"
            assert crashed.hint_summary() == summary_from_listing(crashed)
            seen_counts.append(count)
        finally:
            crashed.close()
    assert seen_counts == sorted(seen_counts) and seen_counts[-1] < len(written)


# --- both engines agree with a dict model -------------------------------------

HINT_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("hint"),
            st.sampled_from(OWNERS[:3]),
            st.sampled_from([0, 1, 65535]),
            st.sampled_from([b"", b"a", b"b", b"\xff"]),
            st.binary(max_size=6),
            st.integers(0, 5_000),
        ),
        st.tuples(
            st.just("delete"),
            st.sampled_from(OWNERS[:3]),
            st.sampled_from([0, 1, 65535]),
            st.sampled_from([b"", b"a", b"b", b"\xff"]),
        ),
        st.tuples(st.just("reopen")),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=HINT_OPERATIONS, page=st.integers(1, 4))
def test_hints_agree_with_a_dict_model(operations: list[tuple[object, ...]], page: int) -> None:
    model: dict[tuple[str, int, bytes], tuple[int, int]] = {}  # -> (created_ms, size_bytes)
    records: dict[tuple[int, bytes], Record] = {}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "db"
        memory, rocks = MemoryStorage(), RocksStorage.open(path)
        try:
            for operation in operations:
                if operation[0] == "hint":
                    _, owner, partition, key, value, created_ms = operation
                    assert isinstance(owner, str) and isinstance(partition, int)
                    assert isinstance(key, bytes) and isinstance(value, bytes)
                    assert isinstance(created_ms, int)
                    stored = record(sibling(value))
                    for engine in (memory, rocks):
                        engine.put_hinted(
                            partition, key, stored, owner=owner, created_ms=created_ms
                        )
                    model[(owner, partition, key)] = (created_ms, size_of(key, stored))
                    records[(partition, key)] = stored
                elif operation[0] == "delete":
                    _, owner, partition, key = operation
                    assert isinstance(owner, str) and isinstance(partition, int)
                    assert isinstance(key, bytes)
                    existed = (owner, partition, key) in model
                    assert memory.delete_hint(owner, partition, key) is existed
                    assert rocks.delete_hint(owner, partition, key) is existed
                    model.pop((owner, partition, key), None)
                else:
                    rocks.close()
                    rocks = RocksStorage.open(path)
            for engine in (memory, rocks):
                for owner in OWNERS:
                    want = [
                        Hint(o, p, k, *model[(o, p, k)]) for o, p, k in sorted(model) if o == owner
                    ]
                    assert all_hints(engine, owner, page=page) == want
                assert engine.hint_summary() == summary_from_listing(engine)
                assert engine.hints_bytes_total == sum(size for _, size in model.values())
                for (partition, key), stored in records.items():
                    assert engine.get(partition, key) == stored  # deleting hints kept them all
        finally:
            rocks.close()
