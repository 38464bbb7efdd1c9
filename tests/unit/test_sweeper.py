"""Sweeper: purges what is due, keeps what lives, respects its batch bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynakv.core.record import Record, Sibling
from dynakv.storage import MemoryStorage, Storage, open_storage
from dynakv.storage.sweeper import Sweeper


def sibling(value: bytes | None, *, node: str = "n1", expires_at_ms: int = 0) -> Sibling:
    return Sibling(
        value=value, node=node, counter=1, past=(), timestamp=1, expires_at_ms=expires_at_ms
    )


def expiring(at_ms: int) -> Record:
    return Record((sibling(b"v", expires_at_ms=at_ms),))


@pytest.fixture(params=["memory", "rocksdb"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    engine = open_storage(request.param, tmp_path / "db")
    request.addfinalizer(engine.close)
    return engine


def test_sweep_removes_due_and_keeps_live(storage: Storage) -> None:
    storage.put(0, b"expired", expiring(1_000))
    storage.put(1, b"tombstone", Record((sibling(None, expires_at_ms=2_000),)))
    storage.put(0, b"later", expiring(9_000))
    storage.put(2, b"forever", Record((sibling(b"v"),)))
    storage.put(3, b"mixed", Record((sibling(b"a", expires_at_ms=1_000), sibling(b"b", node="n2"))))
    storage.put(4, b"rewritten", expiring(1_500))
    storage.put(4, b"rewritten", Record((sibling(b"kept"),)))
    sweeper = Sweeper(storage, batch_max=100)
    assert sweeper.sweep_once(5_000) == 2
    assert storage.get(0, b"expired") is None and storage.get(1, b"tombstone") is None
    assert storage.get(0, b"later") == expiring(9_000)
    assert storage.get(2, b"forever") is not None and storage.get(3, b"mixed") is not None
    assert storage.get(4, b"rewritten") == Record((sibling(b"kept"),))
    assert sweeper.stale_total == 1
    assert sweeper.sweep_once(5_000) == 0
    assert sweeper.sweep_once(9_000) == 1 and storage.get(0, b"later") is None
    assert sweeper.purged_total == 3


def test_sweep_respects_batch_max(storage: Storage) -> None:
    for index in range(25):
        storage.put(index % 3, index.to_bytes(2, "big"), expiring(1_000 + index))
    sweeper = Sweeper(storage, batch_max=10)
    assert [sweeper.sweep_once(10_000) for _ in range(4)] == [10, 10, 5, 0]
    if isinstance(storage, MemoryStorage):  # RocksDB's count is an estimate
        assert storage.count_records() == 0
    assert all(storage.get(index % 3, index.to_bytes(2, "big")) is None for index in range(25))


def test_sweep_purges_oldest_first(storage: Storage) -> None:
    storage.put(0, b"newer", expiring(2_000))
    storage.put(0, b"older", expiring(1_000))
    assert Sweeper(storage, batch_max=1).sweep_once(3_000) == 1
    assert storage.get(0, b"older") is None and storage.get(0, b"newer") is not None


def test_corrupt_record_is_skipped_not_deleted() -> None:
    storage = MemoryStorage()
    storage.put(0, b"bad", expiring(1_000))
    storage.put(0, b"good", expiring(1_000))
    storage.corrupt_for_test(0, b"bad", b"\x01garbage")
    sweeper = Sweeper(storage, batch_max=10)
    assert sweeper.sweep_once(2_000) == 1
    assert sweeper.corrupt_total == 1
    assert storage.due_for_purge(2_000, limit=10) == [(0, b"bad")]  # left for repair
