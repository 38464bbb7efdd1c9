"""``RocksStorage``: the default engine, RocksDB through rocksdict.

Column families: ``default`` holds records (stored key -> encoded record),
``expiry`` holds the expiry index (index key -> empty value); one WriteBatch
spans both, so a record and its index entry are written or purged together.
Key layout and contract: ``base.py``.

Invariants and traps (DESIGN.md §6, plus what we measured on rocksdict 0.3.29):

- Raw mode everywhere (``Options(raw_mode=True)``, ``WriteBatch(raw_mode=True)``):
  keys and values are our bytes, verbatim; nothing is ever pickled.
- Every open passes ``column_families`` with our options, or RocksDB silently
  drops the block cache and bloom filter on reopen.
- Writes go to the WAL without fsync; ``sync`` is ``flush_wal(True)``, which
  releases the GIL and runs on the group committer's thread.
- ``ReadOptions.set_iterate_lower_bound`` acts as an *upper* bound in this
  rocksdict version: never use it; ``seek`` to the start instead.
- A column-family handle or a live iterator keeps the DB (and its LOCK) open
  after ``close``: close drops our handles; callers must finish or close their
  ``scan`` generators first.
- One process owns a DB (RocksDB's LOCK file); a second open raises
  ``StorageLocked``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rocksdict import (
    BlockBasedOptions,
    Cache,
    ColumnFamily,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from dynakv.core.record import Record, encode_record
from dynakv.storage.base import (
    PARTITIONS_MAX,
    DueEntries,
    StorageClosed,
    StorageError,
    StorageLocked,
    decode_stored,
    index_key,
    index_time_bound,
    parse_index_key,
    partition_prefix,
    stored_key,
)

log = logging.getLogger(__name__)

RECORDS_FAMILY: Final = "default"
EXPIRY_FAMILY: Final = "expiry"
BLOCK_CACHE_BYTES_DEFAULT: Final = 64 * 1024 * 1024
BLOOM_BITS_PER_KEY: Final = 10
BACKGROUND_JOBS_MAX: Final = 4
# The expiry index is a queue (insert at the back, delete at the front): have
# RocksDB compact files that fill with tombstones so sweeps do not crawl them.
EXPIRY_DELETION_WINDOW: Final = 1024
EXPIRY_DELETION_TRIGGER: Final = 512
EXPIRY_DELETION_RATIO: Final = 0.5


@dataclass(slots=True)
class _Handles:
    db: Rdict
    expiry: Rdict
    expiry_family: ColumnFamily


def _family_options(cache: Cache, *, bloom: bool) -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    options.set_max_background_jobs(BACKGROUND_JOBS_MAX)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    if bloom:
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    options.set_block_based_table_factory(table)
    return options


class RocksStorage:
    def __init__(self, path: Path, *, block_cache_bytes: int = BLOCK_CACHE_BYTES_DEFAULT) -> None:
        self.path = path
        cache = Cache(block_cache_bytes)
        records_options = _family_options(cache, bloom=True)
        expiry_options = _family_options(cache, bloom=False)
        expiry_options.add_compact_on_deletion_collector_factory(
            EXPIRY_DELETION_WINDOW, EXPIRY_DELETION_TRIGGER, EXPIRY_DELETION_RATIO
        )
        try:
            db = Rdict(
                str(path),
                records_options,
                column_families={RECORDS_FAMILY: records_options, EXPIRY_FAMILY: expiry_options},
            )
        except Exception as exc:  # rocksdict raises a bare Exception carrying RocksDB's status
            reason = str(exc)
            if "lock" in reason.lower():
                raise StorageLocked(path=str(path), reason=reason) from exc
            raise StorageError(
                f"cannot open RocksDB at {path}: {reason}", path=str(path), reason=reason
            ) from exc
        self._handles: _Handles | None = _Handles(
            db=db,
            expiry=db.get_column_family(EXPIRY_FAMILY),
            expiry_family=db.get_column_family_handle(EXPIRY_FAMILY),
        )
        self._write_options = WriteOptions()
        self._write_options.sync = False
        self._due = DueEntries()
        # No live index entry has a time below this: sweeps seek past the
        # tombstones of entries already purged. Lowered by puts of old times.
        self._index_floor_ms = 0
        log.info("storage opened engine=rocksdb path=%s", path)

    @classmethod
    def open(
        cls, path: Path, *, block_cache_bytes: int = BLOCK_CACHE_BYTES_DEFAULT
    ) -> RocksStorage:
        """Open (creating directories as needed) the database at ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, block_cache_bytes=block_cache_bytes)

    def get(self, partition: int, key: bytes) -> Record | None:
        data = self._open().db.get(stored_key(partition, key))
        if data is None:
            return None
        assert isinstance(data, bytes), type(data)
        return decode_stored(partition, key, data)

    def put(self, partition: int, key: bytes, record: Record) -> None:
        handles = self._open()
        batch = WriteBatch(raw_mode=True)
        batch.put(stored_key(partition, key), encode_record(record))
        purge_at_ms = record.purge_at_ms()
        if purge_at_ms is not None:
            batch.put(index_key(purge_at_ms, partition, key), b"", handles.expiry_family)
        handles.db.write(batch, self._write_options)
        if purge_at_ms is not None and purge_at_ms < self._index_floor_ms:
            self._index_floor_ms = purge_at_ms

    def sync(self) -> None:
        self._open().db.flush_wal(True)

    def due_for_purge(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        handles = self._open()
        assert limit > 0, limit
        bound = index_time_bound(now_ms)
        read_options = ReadOptions()
        read_options.set_iterate_upper_bound(bound)
        iterator = handles.expiry.iter(read_options)
        iterator.seek(self._index_floor_ms.to_bytes(len(bound), "big"))
        self._due.reset()
        due: list[tuple[int, bytes]] = []
        first_time_ms: int | None = None
        examined = 0
        while iterator.valid() and examined < limit:
            index = iterator.key()
            assert isinstance(index, bytes) and index < bound, index
            if first_time_ms is None:
                first_time_ms = parse_index_key(index)[0]
            first_seen = self._due.add(index)
            if first_seen is not None:
                due.append(first_seen)
            examined += 1
            iterator.next()
        del iterator
        self._index_floor_ms = now_ms + 1 if first_time_ms is None else first_time_ms
        return due

    def purge_if_due(self, partition: int, key: bytes, now_ms: int) -> bool:
        handles = self._open()
        record = self.get(partition, key)
        stale = self._due.pop(partition, key, now_ms)
        purge_at_ms = None if record is None else record.purge_at_ms()
        batch = WriteBatch(raw_mode=True)
        due = purge_at_ms is not None and purge_at_ms <= now_ms
        if due:
            assert purge_at_ms is not None
            batch.delete(stored_key(partition, key))
            stale = sorted({*stale, index_key(purge_at_ms, partition, key)})
        for index in stale:
            batch.delete(index, handles.expiry_family)
        if not batch.is_empty():
            handles.db.write(batch, self._write_options)
        return due

    def scan(self, partition: int) -> Generator[tuple[bytes, Record], None, None]:
        handles = self._open()
        prefix = partition_prefix(partition)
        read_options = ReadOptions()
        if partition + 1 < PARTITIONS_MAX:
            read_options.set_iterate_upper_bound(partition_prefix(partition + 1))
        iterator = handles.db.iter(read_options)
        try:
            iterator.seek(prefix)
            while iterator.valid():
                stored = iterator.key()
                assert isinstance(stored, bytes), type(stored)
                if not stored.startswith(prefix):
                    break
                key = stored[len(prefix) :]
                value = iterator.value()
                assert isinstance(value, bytes), type(value)
                yield key, decode_stored(partition, key, value)
                iterator.next()
        finally:
            del iterator  # an iterator keeps the DB open (and locked)

    def count_records(self) -> int:
        return self.property_int("rocksdb.estimate-num-keys") or 0

    def property_int(self, name: str) -> int | None:
        """A RocksDB integer property of the records family (for metrics and tests)."""
        return self._open().db.property_int_value(name)

    def close(self) -> None:
        handles, self._handles = self._handles, None
        if handles is None:
            return
        handles.db.close()
        # Dropping the family handles releases the last references to the DB and its LOCK.
        del handles
        log.info("storage closed engine=rocksdb path=%s", self.path)

    def _open(self) -> _Handles:
        handles = self._handles
        if handles is None:
            raise StorageClosed(f"RocksDB at {self.path} is closed", path=str(self.path))
        return handles
