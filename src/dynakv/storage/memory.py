"""``MemoryStorage``: the in-process engine for tests and the simulator.

Same contract and key layout as ``RocksStorage`` (see ``base.py``,
``hints.py`` and ``paxos_state.py``), with plain dicts and sorted lists. Values are kept *encoded*,
so the simulator exercises the same encode/decode path (and corruption
handling) as a real node. ``sync`` is a no-op: the simulator models lost
unsynced writes itself. Every write checks all it needs before changing
anything, so a refused write changes nothing (RocksDB's atomic batch).
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
    key_after,
    meta_name_bytes,
    partition_prefix,
)
from dynakv.storage.hints import (
    Hint,
    HintStats,
    HintSummary,
    decode_hint,
    encode_hint_header,
    hint_key,
    hint_size_bytes,
    owner_prefix,
)
from dynakv.storage.paxos_state import check_paxos_state
from dynakv.storage.raw import RecordsDigest, decode_raw_batch


class MemoryStorage:
    def __init__(self) -> None:
        self._partitions: dict[int, dict[bytes, bytes]] = {}
        self._index: list[bytes] = []  # sorted index keys; values are implicit
        self._due = DueEntries()
        self._hints: dict[bytes, bytes] = {}  # hint key -> header
        self._hint_keys: list[bytes] = []  # sorted keys of _hints
        self._hint_summary = HintSummary()
        self._meta: dict[str, bytes] = {}
        self._paxos: dict[int, dict[bytes, bytes]] = {}  # partition -> key -> state
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
        self._store(partition, key, encode_record(record), record.purge_at_ms())

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
                _sorted_remove(self._index, index)
            return True
        for index in stale:
            _sorted_remove(self._index, index)
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

    # --- hinted handoff -----------------------------------------------------

    def put_hinted(
        self, partition: int, key: bytes, record: Record, *, owner: str, created_ms: int
    ) -> None:
        self._check_open()
        data = encode_record(record)
        hint = hint_key(owner, partition, key)
        size_bytes = hint_size_bytes(key, data)
        header = encode_hint_header(created_ms, size_bytes)
        self._store(partition, key, data, record.purge_at_ms())
        self._forget_hint(hint)
        self._hints[hint] = header
        _sorted_add(self._hint_keys, hint)
        self._hint_summary.add(owner, created_ms, size_bytes)

    def hints_for(
        self, owner: str, *, limit: int, after: tuple[int, bytes] | None = None
    ) -> list[Hint]:
        self._check_open()
        assert limit > 0, limit
        prefix = owner_prefix(owner)
        start = prefix if after is None else key_after(hint_key(owner, *after))
        position = bisect.bisect_left(self._hint_keys, start)
        hints: list[Hint] = []
        for hint in self._hint_keys[position : position + limit]:
            if not hint.startswith(prefix):
                break
            hints.append(decode_hint(hint, self._hints[hint]))
        return hints

    def delete_hint(self, owner: str, partition: int, key: bytes) -> bool:
        self._check_open()
        return self._forget_hint(hint_key(owner, partition, key))

    def hint_summary(self) -> dict[str, HintStats]:
        return self._hint_summary.stats()

    @property
    def hints_bytes_total(self) -> int:
        return self._hint_summary.bytes_total

    # --- ranges -------------------------------------------------------------

    def scan_raw(
        self, partition: int, *, after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        self._check_open()
        assert limit > 0, limit
        partition_prefix(partition)
        records = self._partitions.get(partition, {})
        keys = sorted(records)
        position = 0 if after is None else bisect.bisect_right(keys, after)
        return [(key, records[key]) for key in keys[position : position + limit]]

    def scan_raw_reverse(
        self, partition: int, *, before: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        self._check_open()
        assert limit > 0, limit
        partition_prefix(partition)
        records = self._partitions.get(partition, {})
        keys = sorted(records)
        end = len(keys) if before is None else bisect.bisect_left(keys, before)
        return [(key, records[key]) for key in reversed(keys[max(0, end - limit) : end])]

    def put_raw_batch(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        self._check_open()
        partition_prefix(partition)
        purge_times = decode_raw_batch(partition, items)
        for (key, data), purge_at_ms in zip(items, purge_times, strict=True):
            self._store(partition, key, data, purge_at_ms)

    def delete_partition(self, partition: int) -> None:
        self._check_open()
        partition_prefix(partition)
        self._partitions.pop(partition, None)
        self._paxos.pop(partition, None)
        # Expiry-index entries stay: the sweep finds them stale, as in RocksDB.
        for owner in self._hint_summary.stats():
            start = hint_key(owner, partition, b"")
            position = bisect.bisect_left(self._hint_keys, start)
            doomed = []
            for hint in self._hint_keys[position:]:
                if not hint.startswith(start):
                    break
                doomed.append(hint)
            for hint in doomed:
                self._forget_hint(hint)

    def partition_digest(self, partition: int) -> tuple[int, bytes]:
        self._check_open()
        partition_prefix(partition)
        digest = RecordsDigest()
        for key, data in sorted(self._partitions.get(partition, {}).items()):
            digest.add(key, data)
        return digest.result()

    def count_partition(self, partition: int) -> int:
        self._check_open()
        partition_prefix(partition)
        return len(self._partitions.get(partition, {}))

    # --- Paxos acceptor state -------------------------------------------------

    def get_paxos(self, partition: int, key: bytes) -> bytes | None:
        self._check_open()
        partition_prefix(partition)
        return self._paxos.get(partition, {}).get(key)

    def put_paxos(
        self, partition: int, key: bytes, state: bytes, *, record: Record | None = None
    ) -> None:
        self._check_open()
        assert isinstance(key, bytes), type(key)
        partition_prefix(partition)
        check_paxos_state(partition, key, state)
        if record is not None:  # checks all it needs before its first change
            self._store(partition, key, encode_record(record), record.purge_at_ms())
        self._paxos.setdefault(partition, {})[key] = bytes(state)

    def delete_paxos(self, partition: int, key: bytes) -> None:
        self._check_open()
        partition_prefix(partition)
        states = self._paxos.get(partition, {})
        states.pop(key, None)
        if not states:
            self._paxos.pop(partition, None)

    def scan_paxos(
        self, partition: int, *, after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        self._check_open()
        assert limit > 0, limit
        partition_prefix(partition)
        states = self._paxos.get(partition, {})
        keys = sorted(states)
        position = 0 if after is None else bisect.bisect_right(keys, after)
        return [(key, states[key]) for key in keys[position : position + limit]]

    # --- meta ---------------------------------------------------------------

    def put_meta(self, name: str, value: bytes) -> None:
        self._check_open()
        meta_name_bytes(name, value)
        self._meta[name] = bytes(value)

    def get_meta(self, name: str) -> bytes | None:
        self._check_open()
        meta_name_bytes(name)
        return self._meta.get(name)

    def delete_meta(self, name: str) -> None:
        self._check_open()
        meta_name_bytes(name)
        self._meta.pop(name, None)

    # --- helpers ------------------------------------------------------------

    def corrupt_for_test(self, partition: int, key: bytes, data: bytes) -> None:
        """Overwrite a stored value with raw bytes (tests of corruption handling)."""
        self._partitions.setdefault(partition, {})[key] = data

    def _store(self, partition: int, key: bytes, data: bytes, purge_at_ms: int | None) -> None:
        # Build the index key first so a bad purge time fails before any change.
        index = None if purge_at_ms is None else index_key(purge_at_ms, partition, key)
        self._partitions.setdefault(partition, {})[key] = data
        if index is not None:
            _sorted_add(self._index, index)

    def _forget_hint(self, hint: bytes) -> bool:
        header = self._hints.pop(hint, None)
        if header is None:
            return False
        _sorted_remove(self._hint_keys, hint)
        old = decode_hint(hint, header)
        self._hint_summary.remove(old.owner, old.created_ms, old.size_bytes)
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosed("memory storage is closed")


def _sorted_add(keys: list[bytes], key: bytes) -> None:
    position = bisect.bisect_left(keys, key)
    if position == len(keys) or keys[position] != key:
        keys.insert(position, key)


def _sorted_remove(keys: list[bytes], key: bytes) -> None:
    position = bisect.bisect_left(keys, key)
    if position < len(keys) and keys[position] == key:
        del keys[position]
