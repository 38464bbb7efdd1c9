"""``RocksStorage``: the default engine, RocksDB through rocksdict.

Column families (``rocks_open.py``): ``default`` holds records, ``expiry`` the
expiry index, ``hints`` the hinted-handoff entries, ``meta`` small named
values, ``paxos`` the acceptor states. One WriteBatch spans the families a
change touches, so a record, its index entry and its hint (or its Paxos state)
are written (or purged) together; a change that touches one key of one family
(a record with no purge time) is a plain put, as atomic and cheaper. Key
layout and contract: ``base.py``, ``hints.py`` and ``paxos_state.py``. Opens,
a full disk and the close: ``rocks_database.py``; every write here goes
through its ``write`` (the plain put through the same failure mapping,
``_put_plain``), so a no-space failure is ``StorageFull`` on every write path.

Invariants and traps (DESIGN.md §6, plus what we measured on rocksdict 0.3.29):

- Raw mode everywhere (``Options(raw_mode=True)``, ``WriteBatch(raw_mode=True)``):
  keys and values are our bytes, verbatim; nothing is ever pickled.
- Writes go to the WAL without fsync; ``sync`` is ``flush_wal(True)``, which
  releases the GIL and runs on the group committer's thread.
- A column-family handle or a live iterator keeps the DB (and its LOCK) open
  after ``close``: no method here names a handle in a frame that may raise,
  range reads return lists (their iterator gone), and callers must finish or
  close their ``scan`` generators first.
- One process owns a DB (RocksDB's LOCK file); a second open raises
  ``StorageLocked``.
- The hint summary is rebuilt at open from one pass over the hints (an entry
  that does not decode is dropped and logged: anti-entropy repairs what it
  carried), then kept by every hint write after it succeeds.
- Bulk ingest (``put_raw_batch``) is one WriteBatch: SST ingestion
  (``SstFileWriter`` + ``ingest_external_file``) works in raw mode but measured
  no faster for 10k records of 100 B to 1 KiB (and 2x faster only at 4 KiB),
  bypasses the WAL, needs a second step for the expiry index and flushes the
  memtable when it overlaps the range.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Final

from rocksdict import ColumnFamily, Rdict, ReadOptions, WriteBatch

from dynakv.core.record import Record, encode_record
from dynakv.storage.base import (
    PARTITION_BYTES,
    DueEntries,
    StorageCorruption,
    StorageError,
    decode_stored,
    index_key,
    index_time_bound,
    key_after,
    meta_name_bytes,
    parse_index_key,
    partition_end,
    partition_prefix,
    stored_key,
)
from dynakv.storage.hints import (
    Hint,
    HintStats,
    HintSummary,
    decode_hint,
    encode_hint_header,
    hint_key,
    hint_range,
    hint_size_bytes,
    owner_range,
)
from dynakv.storage.paxos_state import check_paxos_state, paxos_key
from dynakv.storage.raw import RecordsDigest, decode_raw_batch
from dynakv.storage.rocks_database import REOPEN_RETRY_INTERVAL_S, RocksDatabase
from dynakv.storage.rocks_open import (
    BLOCK_CACHE_BYTES_DEFAULT,
    FILES_OPEN_MAX,
    INFO_LOGS_KEPT,
    OPEN_MARGIN_BYTES,
    TABLE_FILES_OPEN_MAX,
    WRITE_BUFFER_BYTES_DEFAULT,
    Settings,
    delete_key_range,
    open_bytes_needed,
    read_range,
    wal_bytes,
)

__all__ = [  # the engine's tunables and sizes, where callers and tests look for them
    "BLOCK_CACHE_BYTES_DEFAULT",
    "FILES_OPEN_MAX",
    "INFO_LOGS_KEPT",
    "OPEN_MARGIN_BYTES",
    "REOPEN_RETRY_INTERVAL_S",
    "TABLE_FILES_OPEN_MAX",
    "WRITE_BUFFER_BYTES_DEFAULT",
    "RocksStorage",
    "open_bytes_needed",
    "wal_bytes",
]

log = logging.getLogger(__name__)

# Range reads over a whole partition or the hints go a page at a time.
RANGE_PAGE_ITEMS: Final = 1024


class RocksStorage:
    def __init__(
        self,
        path: Path,
        *,
        block_cache_bytes: int = BLOCK_CACHE_BYTES_DEFAULT,
        write_buffer_bytes: int = WRITE_BUFFER_BYTES_DEFAULT,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        assert write_buffer_bytes > 0 and block_cache_bytes > 0
        self.path = path
        self._database = RocksDatabase(
            path, Settings(block_cache_bytes, write_buffer_bytes), monotonic_s
        )
        self._due = DueEntries()
        # No live index entry has a time below this: sweeps seek past the
        # tombstones of entries already purged. Lowered by puts of old times.
        self._index_floor_ms = 0
        try:
            self._hint_summary = self._load_hint_summary()
        except BaseException:
            self._database.close()
            raise
        log.info("storage opened engine=rocksdb path=%s", path)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        block_cache_bytes: int = BLOCK_CACHE_BYTES_DEFAULT,
        write_buffer_bytes: int = WRITE_BUFFER_BYTES_DEFAULT,
    ) -> RocksStorage:
        """Open (creating directories as needed) the database at ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, block_cache_bytes=block_cache_bytes, write_buffer_bytes=write_buffer_bytes)

    @property
    def full_reason(self) -> str | None:
        """Why writes are refused (RocksDB's no-space error), or None when they are not."""
        return self._database.full_reason

    @property
    def reopens_total(self) -> int:
        return self._database.reopens_total

    def get(self, partition: int, key: bytes) -> Record | None:
        data = self._database.readable().db.get(stored_key(partition, key))
        if data is None:
            return None
        assert isinstance(data, bytes), type(data)
        return decode_stored(partition, key, data)

    def put(self, partition: int, key: bytes, record: Record) -> None:
        purge_at_ms = record.purge_at_ms()
        if purge_at_ms is None:
            # No index entry: one plain put (a WriteBatch costs ~3 µs more, and the
            # common write, a value with no TTL, needs none).
            self._put_plain(stored_key(partition, key), encode_record(record))
            return
        batch = WriteBatch(raw_mode=True)
        # No local names a handle: a raised error's traceback would pin the DB
        # (and its LOCK) and block the reopen that clears a full disk.
        expiry_family = self._database.writable().expiry_family
        _add_record(batch, expiry_family, partition, key, encode_record(record), purge_at_ms)
        del expiry_family
        self._database.write(batch)
        self._lower_index_floor(purge_at_ms)

    def _put_plain(self, stored: bytes, data: bytes) -> None:
        """One key in the records family, as ``RocksDatabase.write`` writes a batch:
        unsynced WAL, and a failure typed (a full disk is ``StorageFull``)."""
        database = self._database
        db = database.writable().db
        try:
            db.put(stored, data, database._write_options)
        except Exception as exc:
            del db  # the error must not pin the DB
            raise database._failure(exc, "write") from exc

    def sync(self) -> None:
        self._database.sync()

    def due_for_purge(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        assert limit > 0, limit
        bound = index_time_bound(now_ms)
        start = self._index_floor_ms.to_bytes(len(bound), "big")
        entries = read_range(self._database.readable().expiry, start, bound, limit=limit)
        self._due.reset()
        due: list[tuple[int, bytes]] = []
        for index, _ in entries:
            first_seen = self._due.add(index)
            if first_seen is not None:
                due.append(first_seen)
        self._index_floor_ms = now_ms + 1 if not entries else parse_index_key(entries[0][0])[0]
        return due

    def purge_if_due(self, partition: int, key: bytes, now_ms: int) -> bool:
        record = self.get(partition, key)
        stale = self._due.pop(partition, key, now_ms)
        purge_at_ms = None if record is None else record.purge_at_ms()
        due = purge_at_ms is not None and purge_at_ms <= now_ms
        if not due and not stale:
            return False
        expiry_family = self._database.writable().expiry_family
        batch = WriteBatch(raw_mode=True)
        if due:
            assert purge_at_ms is not None
            batch.delete(stored_key(partition, key))
            stale = sorted({*stale, index_key(purge_at_ms, partition, key)})
        for index in stale:
            batch.delete(index, expiry_family)
        del expiry_family
        self._database.write(batch)
        return due

    def scan(self, partition: int) -> Generator[tuple[bytes, Record], None, None]:
        handles = self._database.readable()
        prefix = partition_prefix(partition)
        read_options = ReadOptions()
        end = partition_end(partition)
        if end is not None:
            read_options.set_iterate_upper_bound(end)
        iterator = handles.db.iter(read_options)
        self._database.scans_open += 1  # an open iterator pins these handles
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
            self._database.scans_open -= 1
            del iterator  # an iterator keeps the DB open (and locked)

    def count_records(self) -> int:
        return self.property_int("rocksdb.estimate-num-keys") or 0

    def property_int(self, name: str) -> int | None:
        """A RocksDB integer property of the records family (for metrics and tests)."""
        return self._database.readable().db.property_int_value(name)

    def close(self) -> None:
        """Release the engine; idempotent; never raises (a failed close is logged)."""
        if self._database.close():
            log.info("storage closed engine=rocksdb path=%s", self.path)

    # --- hinted handoff -----------------------------------------------------

    def put_hinted(
        self, partition: int, key: bytes, record: Record, *, owner: str, created_ms: int
    ) -> None:
        data = encode_record(record)
        hint = hint_key(owner, partition, key)
        size_bytes = hint_size_bytes(key, data)
        header = encode_hint_header(created_ms, size_bytes)
        replaced = self._hint_at(hint)
        batch = WriteBatch(raw_mode=True)
        purge_at_ms = record.purge_at_ms()
        handles = self._database.writable()
        _add_record(batch, handles.expiry_family, partition, key, data, purge_at_ms)
        batch.put(hint, header, handles.hints_family)
        del handles
        self._database.write(batch)
        self._lower_index_floor(purge_at_ms)
        if replaced is not None:
            self._hint_summary.remove(owner, replaced.created_ms, replaced.size_bytes)
        self._hint_summary.add(owner, created_ms, size_bytes)

    def hints_for(
        self, owner: str, *, limit: int, after: tuple[int, bytes] | None = None
    ) -> list[Hint]:
        start, end = owner_range(owner)
        if after is not None:
            start = key_after(hint_key(owner, *after))
        entries = read_range(self._database.readable().hints, start, end, limit=limit)
        return [decode_hint(hint, header) for hint, header in entries]

    def delete_hint(self, owner: str, partition: int, key: bytes) -> bool:
        hint = hint_key(owner, partition, key)
        old = self._hint_at(hint)
        if old is None:
            return False
        batch = WriteBatch(raw_mode=True)
        batch.delete(hint, self._database.writable().hints_family)
        self._database.write(batch)
        self._hint_summary.remove(owner, old.created_ms, old.size_bytes)
        return True

    def hint_summary(self) -> dict[str, HintStats]:
        return self._hint_summary.stats()

    @property
    def hints_bytes_total(self) -> int:
        return self._hint_summary.bytes_total

    # --- ranges -------------------------------------------------------------

    def scan_raw(
        self, partition: int, *, after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        prefix = partition_prefix(partition)
        start = prefix if after is None else key_after(stored_key(partition, after))
        entries = read_range(
            self._database.readable().db, start, partition_end(partition), limit=limit
        )
        return [(stored[PARTITION_BYTES:], data) for stored, data in entries]

    def scan_raw_reverse(
        self, partition: int, *, before: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        end = partition_end(partition) if before is None else stored_key(partition, before)
        entries = read_range(
            self._database.readable().db,
            partition_prefix(partition),
            end,
            limit=limit,
            reverse=True,
        )
        return [(stored[PARTITION_BYTES:], data) for stored, data in entries]

    def put_raw_batch(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        partition_prefix(partition)
        purge_times = decode_raw_batch(partition, items)
        if not items:
            return
        batch = WriteBatch(raw_mode=True)
        expiry_family = self._database.writable().expiry_family
        for (key, data), purge_at_ms in zip(items, purge_times, strict=True):
            _add_record(batch, expiry_family, partition, key, data, purge_at_ms)
        del expiry_family
        self._database.write(batch)
        self._lower_index_floor(min((t for t in purge_times if t is not None), default=None))

    def delete_partition(self, partition: int) -> None:
        start, end = partition_prefix(partition), partition_end(partition)
        doomed = [
            decode_hint(hint, header)
            for owner in self._hint_summary.stats()
            for page in self._pages("hints", *hint_range(owner, partition))
            for hint, header in page
        ]
        batch = WriteBatch(raw_mode=True)
        handles = self._database.writable()
        delete_key_range(batch, handles.db, None, start, end)
        delete_key_range(batch, handles.paxos, handles.paxos_family, start, end)
        for owner in sorted({hint.owner for hint in doomed}):
            batch.delete_range(*hint_range(owner, partition), handles.hints_family)
        del handles
        self._database.write(batch)
        for hint in doomed:
            self._hint_summary.remove(hint.owner, hint.created_ms, hint.size_bytes)
        log.info(
            "storage dropped partition=%d hints_dropped=%d path=%s",
            partition,
            len(doomed),
            self.path,
        )

    def partition_digest(self, partition: int) -> tuple[int, bytes]:
        digest = RecordsDigest()
        for page in self._pages("records", partition_prefix(partition), partition_end(partition)):
            for stored, data in page:
                digest.add(stored[PARTITION_BYTES:], data)
        return digest.result()

    def count_partition(self, partition: int) -> int:
        start, end = partition_prefix(partition), partition_end(partition)
        return sum(len(page) for page in self._pages("records", start, end, values=False))

    # --- Paxos acceptor state -------------------------------------------------

    def get_paxos(self, partition: int, key: bytes) -> bytes | None:
        state = self._database.readable().paxos.get(paxos_key(partition, key))
        assert state is None or isinstance(state, bytes), type(state)
        return state

    def put_paxos(
        self, partition: int, key: bytes, state: bytes, *, record: Record | None = None
    ) -> None:
        check_paxos_state(partition, key, state)
        data = None if record is None else encode_record(record)
        purge_at_ms = None if record is None else record.purge_at_ms()
        batch = WriteBatch(raw_mode=True)
        handles = self._database.writable()
        batch.put(paxos_key(partition, key), state, handles.paxos_family)
        if data is not None:
            _add_record(batch, handles.expiry_family, partition, key, data, purge_at_ms)
        del handles
        self._database.write(batch)
        self._lower_index_floor(purge_at_ms)

    def delete_paxos(self, partition: int, key: bytes) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.delete(paxos_key(partition, key), self._database.writable().paxos_family)
        self._database.write(batch)

    def scan_paxos(
        self, partition: int, *, after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        prefix = partition_prefix(partition)
        start = prefix if after is None else key_after(paxos_key(partition, after))
        entries = read_range(
            self._database.readable().paxos, start, partition_end(partition), limit=limit
        )
        return [(stored[PARTITION_BYTES:], state) for stored, state in entries]

    # --- meta ---------------------------------------------------------------

    def put_meta(self, name: str, value: bytes) -> None:
        stored_name = meta_name_bytes(name, value)
        batch = WriteBatch(raw_mode=True)
        batch.put(stored_name, value, self._database.writable().meta_family)
        self._database.write(batch)

    def get_meta(self, name: str) -> bytes | None:
        value = self._database.readable().meta.get(meta_name_bytes(name))
        assert value is None or isinstance(value, bytes), type(value)
        return value

    def delete_meta(self, name: str) -> None:
        stored_name = meta_name_bytes(name)
        batch = WriteBatch(raw_mode=True)
        batch.delete(stored_name, self._database.writable().meta_family)
        self._database.write(batch)

    # --- helpers ------------------------------------------------------------

    def _lower_index_floor(self, purge_at_ms: int | None) -> None:
        if purge_at_ms is not None and purge_at_ms < self._index_floor_ms:
            self._index_floor_ms = purge_at_ms

    def _hint_at(self, hint: bytes) -> Hint | None:
        header = self._database.readable().hints.get(hint)
        if header is None:
            return None
        assert isinstance(header, bytes), type(header)
        return decode_hint(hint, header)

    def _family(self, name: str) -> Rdict:
        handles = self._database.readable()
        return handles.hints if name == "hints" else handles.db

    def _pages(
        self, family: str, start: bytes, end: bytes | None, *, values: bool = True
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        """A range of ``records`` or ``hints``, one page at a time; no iterator
        (nor handle) is held between pages."""
        while True:
            page = read_range(
                self._family(family), start, end, limit=RANGE_PAGE_ITEMS, values=values
            )
            if page:
                yield page
            if len(page) < RANGE_PAGE_ITEMS:
                return
            start = key_after(page[-1][0])

    def _load_hint_summary(self) -> HintSummary:
        """The summary of the stored hints; drops (and logs) entries that do not decode."""
        summary = HintSummary()
        corrupt: list[bytes] = []
        for page in self._pages("hints", b"", None):
            for hint, header in page:
                try:
                    decoded = decode_hint(hint, header)
                except StorageCorruption:
                    corrupt.append(hint)
                    continue
                summary.add(decoded.owner, decoded.created_ms, decoded.size_bytes)
        if corrupt:
            log.error(
                "storage dropping undecodable hints count=%d first=%s path=%s",
                len(corrupt),
                corrupt[0][:64].hex(),
                self.path,
            )
            batch = WriteBatch(raw_mode=True)
            for hint in corrupt:
                batch.delete(hint, self._database.writable().hints_family)
            try:
                self._database.write(batch)
            except StorageError as exc:  # they stay out of the summary; the next open retries
                log.warning("storage could not drop undecodable hints reason=%s", exc.message)
        return summary


def _add_record(
    batch: WriteBatch,
    expiry_family: ColumnFamily,
    partition: int,
    key: bytes,
    data: bytes,
    purge_at_ms: int | None,
) -> None:
    """Add a stored record and, when it may be purged, its index entry to ``batch``."""
    batch.put(stored_key(partition, key), data)
    if purge_at_ms is not None:
        batch.put(index_key(purge_at_ms, partition, key), b"", expiry_family)
