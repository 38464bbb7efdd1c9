"""``MemoryStorage``: the in-process engine for tests and the simulator.

Same contract and key layout as ``RocksStorage`` (see ``base.py``), with
plain dicts and a sorted list. Values are kept *encoded*, so the simulator
exercises the same encode/decode path (and corruption handling) as a real
node. ``sync`` is a no-op: the simulator models lost unsynced writes itself.
Loses everything when the process ends; never use it for real data.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator

from dynakv.core.record import Record, encode_record
from dynakv.storage.base import (
    DueEntries,
    StorageClosed,
    decode_stored,
    index_key,
    index_time_bound,
    partition_prefix,
)


class MemoryStorage:
    def __init__(self) -> None:
        self._partitions: dict[int, dict[bytes, bytes]] = {}
        self._index: list[bytes] = []  # sorted index keys; values are implicit
        self._due = DueEntries()
        self._closed = False

    def get(self, partition: int, key: bytes) -> Record | None:
        self._check_open()
        partition_prefix(partition)  # asserts the range
        data = self._partitions.get(partition, {}).get(key)
        if data is None:
            return None
        return decode_stored(partition, key, data)

    def put(self, partition: int, key: bytes, record: Record) -> None:
        self._check_open()
        assert isinstance(key, bytes), type(key)
        data = encode_record(record)
        purge_at_ms = record.purge_at_ms()
        # Build the index key first so a bad purge time fails before any change.
        index = None if purge_at_ms is None else index_key(purge_at_ms, partition, key)
        self._partitions.setdefault(partition, {})[key] = data
        if index is not None:
            self._index_add(index)

    def sync(self) -> None:
        self._check_open()

    def due_for_purge(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        self._check_open()
        assert limit > 0, limit
        end = bisect.bisect_left(self._index, index_time_bound(now_ms))
        self._due.reset()
        due: list[tuple[int, bytes]] = []
        for index in self._index[: min(end, limit)]:
            first_seen = self._due.add(index)
            if first_seen is not None:
                due.append(first_seen)
        return due

    def purge_if_due(self, partition: int, key: bytes, now_ms: int) -> bool:
        record = self.get(partition, key)
        stale = self._due.pop(partition, key, now_ms)
        purge_at_ms = None if record is None else record.purge_at_ms()
        if purge_at_ms is not None and purge_at_ms <= now_ms:
            del self._partitions[partition][key]
            for index in {*stale, index_key(purge_at_ms, partition, key)}:
                self._index_remove(index)
            return True
        for index in stale:
            self._index_remove(index)
        return False

    def scan(self, partition: int) -> Generator[tuple[bytes, Record], None, None]:
        self._check_open()
        partition_prefix(partition)
        # Snapshot, like a RocksDB iterator: later puts do not disturb the scan.
        items = sorted(self._partitions.get(partition, {}).items())
        for key, data in items:
            yield key, decode_stored(partition, key, data)

    def count_records(self) -> int:
        self._check_open()
        return sum(len(records) for records in self._partitions.values())

    def close(self) -> None:
        self._closed = True

    def corrupt_for_test(self, partition: int, key: bytes, data: bytes) -> None:
        """Overwrite a stored value with raw bytes (tests of corruption handling)."""
        self._partitions.setdefault(partition, {})[key] = data

    def _index_add(self, index: bytes) -> None:
        position = bisect.bisect_left(self._index, index)
        if position == len(self._index) or self._index[position] != index:
            self._index.insert(position, index)

    def _index_remove(self, index: bytes) -> None:
        position = bisect.bisect_left(self._index, index)
        if position < len(self._index) and self._index[position] == index:
            del self._index[position]

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosed("memory storage is closed")
