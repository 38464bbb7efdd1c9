"""Opening, closing and reading RocksDB for ``RocksStorage``: options, column
families, the handles one open yields, and bounded range reads.

Column families (one WriteBatch may span them all):

- ``default``: records (stored key -> encoded record), bloom filter.
- ``expiry``: the expiry index (index key -> empty value), compacted on deletions.
- ``hints``: hinted-handoff entries (hint key -> hint header), bloom filter (a
  hinted put reads the entry it replaces), compacted on deletions.
- ``meta``: small named durable values (name -> bytes).
- ``paxos``: per-key Paxos acceptor states (``paxos_state.py``: stored key ->
  opaque state), bloom filter (every prepare, propose and commit reads one).

Invariants: every open passes ``column_families`` with our options for every
family (DESIGN.md §6: otherwise RocksDB silently drops the block cache and
bloom filter on reopen); families missing from an older database are created.
A range read returns a bounded list and drops its iterator before returning
(a live iterator keeps the DB and its LOCK open). Must never: pickle (raw mode
everywhere), raise from ``close_handles``, or use
``ReadOptions.set_iterate_lower_bound`` (an *upper* bound in rocksdict 0.3.29).

Logs go to ``dynakv.storage.rocks``: one logger name for the whole engine.
"""

from __future__ import annotations

import logging
import os
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
)

from dynakv.storage.base import StorageError, StorageFull, StorageLocked
from dynakv.storage.diskspace import free_bytes, is_no_space

log = logging.getLogger("dynakv.storage.rocks")

RECORDS_FAMILY: Final = "default"
EXPIRY_FAMILY: Final = "expiry"
HINTS_FAMILY: Final = "hints"
META_FAMILY: Final = "meta"
PAXOS_FAMILY: Final = "paxos"
BLOCK_CACHE_BYTES_DEFAULT: Final = 64 * 1024 * 1024
# RocksDB's default. A flush writes one of these; RocksDB's own recovery from a
# background no-space error waits for this much free space.
WRITE_BUFFER_BYTES_DEFAULT: Final = 64 * 1024 * 1024
BLOOM_BITS_PER_KEY: Final = 10
BACKGROUND_JOBS_MAX: Final = 4
# The expiry index and the hints are queues (insert at the back, delete at the
# front): have RocksDB compact files that fill with tombstones so reads do not
# crawl them.
QUEUE_DELETION_WINDOW: Final = 1024
QUEUE_DELETION_TRIGGER: Final = 512
QUEUE_DELETION_RATIO: Final = 0.5
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
class Handles:
    """Everything one open yields. Holding any of these keeps the DB (and LOCK) open."""

    db: Rdict
    expiry: Rdict
    expiry_family: ColumnFamily
    hints: Rdict
    hints_family: ColumnFamily
    meta: Rdict
    meta_family: ColumnFamily
    paxos: Rdict
    paxos_family: ColumnFamily


@dataclass(frozen=True, slots=True)
class Settings:
    block_cache_bytes: int
    write_buffer_bytes: int


def _family_options(cache: Cache, settings: Settings, *, bloom: bool, queue: bool) -> Options:
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
    if queue:
        options.add_compact_on_deletion_collector_factory(
            QUEUE_DELETION_WINDOW, QUEUE_DELETION_TRIGGER, QUEUE_DELETION_RATIO
        )
    return options


def open_handles(path: Path, settings: Settings) -> Handles:
    """Open the database with every family; RocksDB's errors become ours."""
    cache = Cache(settings.block_cache_bytes)
    records_options = _family_options(cache, settings, bloom=True, queue=False)
    families = {
        RECORDS_FAMILY: records_options,
        EXPIRY_FAMILY: _family_options(cache, settings, bloom=False, queue=True),
        HINTS_FAMILY: _family_options(cache, settings, bloom=True, queue=True),
        META_FAMILY: _family_options(cache, settings, bloom=False, queue=False),
        PAXOS_FAMILY: _family_options(cache, settings, bloom=True, queue=False),
    }
    try:
        db = Rdict(str(path), records_options, column_families=families)
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
    return Handles(
        db=db,
        expiry=db.get_column_family(EXPIRY_FAMILY),
        expiry_family=db.get_column_family_handle(EXPIRY_FAMILY),
        hints=db.get_column_family(HINTS_FAMILY),
        hints_family=db.get_column_family_handle(HINTS_FAMILY),
        meta=db.get_column_family(META_FAMILY),
        meta_family=db.get_column_family_handle(META_FAMILY),
        paxos=db.get_column_family(PAXOS_FAMILY),
        paxos_family=db.get_column_family_handle(PAXOS_FAMILY),
    )


def close_handles(path: Path, handles: Handles) -> None:
    """Close the DB; a failure (its final flush on a full disk) is logged, not
    raised: acks waited for the WAL fsync, and the next open replays the WAL."""
    try:
        handles.db.close()
    except Exception as exc:
        log.warning(
            "storage close failed path=%s reason=%s (the WAL is replayed on open)", path, str(exc)
        )


def read_range(
    family: Rdict,
    start: bytes,
    end: bytes | None,
    *,
    limit: int,
    values: bool = True,
    reverse: bool = False,
) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` (key, value) of ``family`` with ``start <= key < end``, in key
    order (``reverse``: descending, from the last key below ``end``).

    ``end`` None reads to the end of the family; ``values=False`` leaves every
    value empty (a count need not load them).
    """
    assert limit > 0, limit
    if end is not None and start >= end:
        return []
    # No iterate lower bound: rocksdict 0.3.29's ``set_iterate_lower_bound`` sets an
    # upper bound (measured); a reverse read stops below ``start`` itself.
    read_options = ReadOptions()
    if end is not None:
        read_options.set_iterate_upper_bound(end)
    iterator = family.iter(read_options)
    try:
        if not reverse:
            iterator.seek(start)
        elif end is None:
            iterator.seek_to_last()
        else:
            iterator.seek_for_prev(end)  # the last key <= end; end itself is out of bounds
        items: list[tuple[bytes, bytes]] = []
        while iterator.valid() and len(items) < limit:
            key = iterator.key()
            value = iterator.value() if values else b""
            assert isinstance(key, bytes) and isinstance(value, bytes), (key, value)
            if reverse:
                if key < start:
                    break
                if end is None or key < end:
                    items.append((key, value))
                iterator.prev()
            else:
                items.append((key, value))
                iterator.next()
        return items
    finally:
        del iterator  # an iterator keeps the DB open (and locked)


def last_key(family: Rdict) -> bytes | None:
    """The greatest key of ``family``, or None when it is empty."""
    iterator = family.iter(ReadOptions())
    try:
        iterator.seek_to_last()
        if not iterator.valid():
            return None
        key = iterator.key()
        assert isinstance(key, bytes), type(key)
        return key
    finally:
        del iterator


def delete_key_range(
    batch: WriteBatch,
    family: Rdict,
    family_handle: ColumnFamily | None,
    start: bytes,
    end: bytes | None,
) -> None:
    """Add the deletion of ``start <= key < end`` in ``family`` to ``batch``.

    ``end`` None runs to the end of the key space, which a range delete cannot
    name: it stops at the family's last key (read now) and deletes that too.
    ``family_handle`` None is the default (records) family.
    """
    if end is None:
        last = last_key(family)
        if last is None or last < start:
            return
        end = last
        batch.delete(last, family_handle)
    batch.delete_range(start, end, family_handle)
