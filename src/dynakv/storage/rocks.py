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

A full file system (measured on a loop-mounted ext4; rocksdict raises a bare
``Exception`` with RocksDB's status text):

- A write that cannot append to the WAL raises ``IO error: No space left on
  device: While appending to file: .../NNNNNN.log`` (``.sst`` when a background
  flush ran out first), and so do later writes (RocksDB's background error).
  Reads go on.
- A ``flush_wal`` after that (the group committer runs one at once) breaks the
  WAL writer for good (``IO error: Writer has previous error.``): RocksDB's own
  recovery then fails as "Fatal/Unrecoverable" even once space is freed, and
  ``close`` raises. Only a reopen clears it. (With no ``flush_wal``, RocksDB
  resumes by itself ~5 s after the free space reaches one write buffer.)
- The LOCK is released once no Python object references the old handles: an
  error's traceback can pin them, so no frame that raises holds a handle and
  logs carry error text, never error objects.
- An open replays the WAL into a new table file and needs about the WAL's size
  free; short of it, it fails with ``No space left on device`` and leaves the
  database as it was.

So every no-space failure is ``StorageFull`` (507); writes and syncs are then
refused without touching RocksDB until a write (or a read, after a failed
reopen) reopens the database: once the free space covers a WAL replay, at most
once per ``REOPEN_RETRY_INTERVAL_S``, never while a ``scan`` is open. The reopen
runs on the caller's thread (the event loop) and blocks it while it flushes
and replays (a 64 MiB flush took ~0.5 s here). ``close`` never raises: on a
full disk it logs, and the (fsynced) WAL is replayed by the next open.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Generator
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
    StorageFull,
    StorageLocked,
    decode_stored,
    index_key,
    index_time_bound,
    parse_index_key,
    partition_prefix,
    stored_key,
)
from dynakv.storage.diskspace import free_bytes, is_no_space

log = logging.getLogger(__name__)

RECORDS_FAMILY: Final = "default"
EXPIRY_FAMILY: Final = "expiry"
BLOCK_CACHE_BYTES_DEFAULT: Final = 64 * 1024 * 1024
# RocksDB's default. A flush writes one of these; RocksDB's own recovery from a
# background no-space error waits for this much free space.
WRITE_BUFFER_BYTES_DEFAULT: Final = 64 * 1024 * 1024
BLOOM_BITS_PER_KEY: Final = 10
BACKGROUND_JOBS_MAX: Final = 4
# The expiry index is a queue (insert at the back, delete at the front): have
# RocksDB compact files that fill with tombstones so sweeps do not crawl them.
EXPIRY_DELETION_WINDOW: Final = 1024
EXPIRY_DELETION_TRIGGER: Final = 512
EXPIRY_DELETION_RATIO: Final = 0.5
# Table files kept open (max_open_files); FILES_OPEN_MAX adds WALs, MANIFEST,
# info LOG, LOCK and directories: the descriptors to budget for the engine.
TABLE_FILES_OPEN_MAX: Final = 512
FILES_OPEN_MAX: Final = TABLE_FILES_OPEN_MAX + 32
# Total WAL kept (max_total_wal_size): past it RocksDB flushes the families
# that pin old WAL files (the expiry index), bounding what an open replays.
WAL_BYTES_PER_WRITE_BUFFER: Final = 4
# RocksDB's info LOG rolls at this size and keeps this many old files.
INFO_LOG_BYTES_MAX: Final = 16 * 1024 * 1024
INFO_LOGS_KEPT: Final = 4
# Beyond the WAL's own size, an open writes a MANIFEST, an OPTIONS file, an
# info LOG, our config file and the start of a new WAL.
OPEN_MARGIN_BYTES: Final = 16 * 1024 * 1024
REOPEN_RETRY_INTERVAL_S: Final = 1.0
_WRITER_BROKEN_MARKER: Final = "writer has previous error"


def wal_bytes(path: Path) -> int:
    """Bytes of write-ahead log an open of the database at ``path`` would replay."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    return sum(e.stat().st_size for e in entries if e.name.endswith(".log") and e.is_file())


def open_bytes_needed(path: Path) -> int:
    """Free bytes an open of the database at ``path`` may write (WAL replay + margin)."""
    return wal_bytes(path) + OPEN_MARGIN_BYTES


@dataclass(slots=True)
class _Handles:
    db: Rdict
    expiry: Rdict
    expiry_family: ColumnFamily


@dataclass(frozen=True, slots=True)
class _Settings:
    block_cache_bytes: int
    write_buffer_bytes: int


def _family_options(cache: Cache, settings: _Settings, *, bloom: bool) -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    options.set_max_background_jobs(BACKGROUND_JOBS_MAX)
    options.set_max_open_files(TABLE_FILES_OPEN_MAX)
    options.set_write_buffer_size(settings.write_buffer_bytes)
    options.set_max_total_wal_size(WAL_BYTES_PER_WRITE_BUFFER * settings.write_buffer_bytes)
    options.set_max_log_file_size(INFO_LOG_BYTES_MAX)
    options.set_keep_log_file_num(INFO_LOGS_KEPT)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    if bloom:
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    options.set_block_based_table_factory(table)
    return options


def _open_handles(path: Path, settings: _Settings) -> _Handles:
    cache = Cache(settings.block_cache_bytes)
    records_options = _family_options(cache, settings, bloom=True)
    expiry_options = _family_options(cache, settings, bloom=False)
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
        if is_no_space(reason):
            raise StorageFull(
                path=str(path),
                free_bytes=free_bytes(path),
                reason=f"open needs about {open_bytes_needed(path)} bytes free: {reason}",
            ) from exc
        raise StorageError(
            f"cannot open RocksDB at {path}: {reason}", path=str(path), reason=reason
        ) from exc
    return _Handles(
        db=db,
        expiry=db.get_column_family(EXPIRY_FAMILY),
        expiry_family=db.get_column_family_handle(EXPIRY_FAMILY),
    )


def _close_handles(path: Path, handles: _Handles) -> None:
    """Close the DB; a failure (its final flush on a full disk) is logged, not
    raised: acks waited for the WAL fsync, and the next open replays the WAL."""
    try:
        handles.db.close()
    except Exception as exc:
        log.warning(
            "storage close failed path=%s reason=%s (the WAL is replayed on open)", path, str(exc)
        )


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
        self._settings = _Settings(block_cache_bytes, write_buffer_bytes)
        self._monotonic_s = monotonic_s
        # Guards swapping the handles against ``sync`` on the commit thread.
        self._lock = threading.Lock()
        self._handles: _Handles | None = _open_handles(path, self._settings)
        self._closed = False
        # Set by a no-space failure (from either thread), cleared by a reopen.
        self._full_reason: str | None = None
        self._reopen_at_s = 0.0
        self._scans_open = 0
        self.reopens_total = 0
        self._write_options = WriteOptions()
        self._write_options.sync = False
        self._due = DueEntries()
        # No live index entry has a time below this: sweeps seek past the
        # tombstones of entries already purged. Lowered by puts of old times.
        self._index_floor_ms = 0
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
        return self._full_reason

    def get(self, partition: int, key: bytes) -> Record | None:
        data = self._readable().db.get(stored_key(partition, key))
        if data is None:
            return None
        assert isinstance(data, bytes), type(data)
        return decode_stored(partition, key, data)

    def put(self, partition: int, key: bytes, record: Record) -> None:
        # No local names the handles: a raised error's traceback would pin the
        # DB (and its LOCK) and block the reopen that clears a full disk.
        expiry_family = self._writable().expiry_family
        batch = WriteBatch(raw_mode=True)
        batch.put(stored_key(partition, key), encode_record(record))
        purge_at_ms = record.purge_at_ms()
        if purge_at_ms is not None:
            batch.put(index_key(purge_at_ms, partition, key), b"", expiry_family)
        del expiry_family
        self._write(batch)
        if purge_at_ms is not None and purge_at_ms < self._index_floor_ms:
            self._index_floor_ms = purge_at_ms

    def sync(self) -> None:
        with self._lock:
            if self._handles is None and self._closed:
                raise StorageClosed(f"RocksDB at {self.path} is closed", path=str(self.path))
            if self._handles is None or self._full_reason is not None:
                raise self._full_error()  # a broken WAL writer cannot sync; a reopen will
            db = self._handles.db
            try:
                db.flush_wal(True)
            except Exception as exc:
                del db  # see put: the error must not pin the DB
                raise self._failure(exc, "sync its WAL") from exc

    def due_for_purge(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        handles = self._readable()
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
        record = self.get(partition, key)
        stale = self._due.pop(partition, key, now_ms)
        purge_at_ms = None if record is None else record.purge_at_ms()
        due = purge_at_ms is not None and purge_at_ms <= now_ms
        if not due and not stale:
            return False
        expiry_family = self._writable().expiry_family
        batch = WriteBatch(raw_mode=True)
        if due:
            assert purge_at_ms is not None
            batch.delete(stored_key(partition, key))
            stale = sorted({*stale, index_key(purge_at_ms, partition, key)})
        for index in stale:
            batch.delete(index, expiry_family)
        del expiry_family
        self._write(batch)
        return due

    def scan(self, partition: int) -> Generator[tuple[bytes, Record], None, None]:
        handles = self._readable()
        prefix = partition_prefix(partition)
        read_options = ReadOptions()
        if partition + 1 < PARTITIONS_MAX:
            read_options.set_iterate_upper_bound(partition_prefix(partition + 1))
        iterator = handles.db.iter(read_options)
        self._scans_open += 1  # an open iterator pins these handles: no reopen until done
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
            self._scans_open -= 1
            del iterator  # an iterator keeps the DB open (and locked)

    def count_records(self) -> int:
        return self.property_int("rocksdb.estimate-num-keys") or 0

    def property_int(self, name: str) -> int | None:
        """A RocksDB integer property of the records family (for metrics and tests)."""
        return self._readable().db.property_int_value(name)

    def close(self) -> None:
        """Release the engine; idempotent; never raises (see ``_close_handles``)."""
        with self._lock:
            handles, self._handles = self._handles, None
            already_closed, self._closed = self._closed, True
        if handles is not None:
            _close_handles(self.path, handles)
            del handles  # the family handles hold the last references to the DB and its LOCK
        if not already_closed:
            log.info("storage closed engine=rocksdb path=%s", self.path)

    # --- the full-disk state ------------------------------------------------

    def _readable(self) -> _Handles:
        handles = self._handles
        if handles is not None:
            return handles
        if self._closed:
            raise StorageClosed(f"RocksDB at {self.path} is closed", path=str(self.path))
        return self._reopen()  # an earlier reopen failed: reads need it too

    def _writable(self) -> _Handles:
        if self._full_reason is None:
            return self._readable()
        return self._reopen()

    def _write(self, batch: WriteBatch) -> None:
        db = self._writable().db
        try:
            db.write(batch, self._write_options)
        except Exception as exc:
            del db  # see put: the error must not pin the DB
            raise self._failure(exc, "write") from exc

    def _failure(self, exc: Exception, action: str) -> StorageError:
        """The typed error for a failed RocksDB write or sync; marks a full disk."""
        reason = str(exc)
        broken_after_full = (
            self._full_reason is not None and _WRITER_BROKEN_MARKER in reason.lower()
        )
        if not is_no_space(reason) and not broken_after_full:
            return StorageError(
                f"RocksDB at {self.path} could not {action}: {reason}",
                path=str(self.path),
                reason=reason,
            )
        if self._full_reason is None:
            log.warning(
                "storage out of space path=%s action=%s free_bytes=%d reason=%s",
                self.path,
                action,
                free_bytes(self.path),
                reason,
            )
            self._full_reason = reason
        return self._full_error()

    def _open_again(self) -> _Handles:
        try:
            return _open_handles(self.path, self._settings)
        except StorageLocked:
            # Something still references the old handles (an error's traceback
            # in a reference cycle, say): collect once, then try once more.
            gc.collect()
            return _open_handles(self.path, self._settings)

    def _full_error(self) -> StorageFull:
        reason = self._full_reason or "reopening after a full disk"
        return StorageFull(path=str(self.path), free_bytes=free_bytes(self.path), reason=reason)

    def _reopen(self) -> _Handles:
        """Close and reopen the database to clear RocksDB's sticky no-space error.

        Only when the free space covers a WAL replay, no scan is open and the
        last attempt is ``REOPEN_RETRY_INTERVAL_S`` old; else ``StorageFull``.
        Runs on the event loop's thread; the lock keeps ``sync`` off the handles.
        """
        if self._closed:
            raise StorageClosed(f"RocksDB at {self.path} is closed", path=str(self.path))
        now_s = self._monotonic_s()
        if now_s < self._reopen_at_s or self._scans_open > 0:
            raise self._full_error()
        self._reopen_at_s = now_s + REOPEN_RETRY_INTERVAL_S
        if free_bytes(self.path) < open_bytes_needed(self.path):
            raise self._full_error()
        with self._lock:
            old, self._handles = self._handles, None
            if old is not None:
                _close_handles(self.path, old)
                del old
            try:
                handles = self._open_again()
            except StorageError as exc:
                log.error(
                    "storage reopen failed path=%s error=%s (will retry)", self.path, str(exc)
                )
                raise
            self._handles = handles
            self._full_reason = None
        self.reopens_total += 1
        log.info(
            "storage reopened after a full disk path=%s free_bytes=%d",
            self.path,
            free_bytes(self.path),
        )
        return handles
