"""``RocksDatabase``: one RocksDB database's handles through opens, a full disk
and a close. ``RocksStorage`` asks it for handles to read or write, hands it
every batch to write, and lets it sync and close.

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
once per ``REOPEN_RETRY_INTERVAL_S``, never while a scan is open
(``scans_open``). The reopen runs on the caller's thread (the event loop) and
blocks it while it flushes and replays (a 64 MiB flush took ~0.5 s here).
``close`` never raises: on a full disk it logs, and the (fsynced) WAL is
replayed by the next open.

A write that failed changed nothing (RocksDB applies a batch to its memtable
only once its WAL append succeeded), so what callers keep in memory about the
data (the hint summary) stays true across a reopen.

Must never: hold a handle in a frame that raises, sync while a reopen swaps the
handles (the lock), or reopen under an open scan.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from rocksdict import WriteBatch, WriteOptions

from dynakv.storage.base import StorageClosed, StorageError, StorageFull, StorageLocked
from dynakv.storage.diskspace import free_bytes, is_no_space
from dynakv.storage.rocks_open import (
    Handles,
    Settings,
    close_handles,
    open_bytes_needed,
    open_handles,
)

log = logging.getLogger("dynakv.storage.rocks")

REOPEN_RETRY_INTERVAL_S: Final = 1.0
_WRITER_BROKEN_MARKER: Final = "writer has previous error"


class RocksDatabase:
    def __init__(self, path: Path, settings: Settings, monotonic_s: Callable[[], float]) -> None:
        self.path = path
        self._settings = settings
        self._monotonic_s = monotonic_s
        # Guards swapping the handles against ``sync`` on the commit thread.
        self._lock = threading.Lock()
        self._handles: Handles | None = open_handles(path, settings)
        self._closed = False
        # Set by a no-space failure (from either thread), cleared by a reopen.
        self.full_reason: str | None = None
        self._reopen_at_s = 0.0
        self.scans_open = 0  # an open iterator pins the handles: no reopen until done
        self.reopens_total = 0
        self._write_options = WriteOptions()
        self._write_options.sync = False

    def readable(self) -> Handles:
        handles = self._handles
        if handles is not None:
            return handles
        if self._closed:
            raise StorageClosed(f"RocksDB at {self.path} is closed", path=str(self.path))
        return self._reopen()  # an earlier reopen failed: reads need it too

    def writable(self) -> Handles:
        if self.full_reason is None:
            return self.readable()
        return self._reopen()

    def write(self, batch: WriteBatch) -> None:
        db = self.writable().db
        try:
            db.write(batch, self._write_options)
        except Exception as exc:
            del db  # the error must not pin the DB
            raise self._failure(exc, "write") from exc

    def sync(self) -> None:
        with self._lock:
            if self._handles is None and self._closed:
                raise StorageClosed(f"RocksDB at {self.path} is closed", path=str(self.path))
            if self._handles is None or self.full_reason is not None:
                raise self._full_error()  # a broken WAL writer cannot sync; a reopen will
            db = self._handles.db
            try:
                db.flush_wal(True)
            except Exception as exc:
                del db  # the error must not pin the DB
                raise self._failure(exc, "sync its WAL") from exc

    def close(self) -> bool:
        """Release the handles; idempotent; never raises. True on the first call."""
        with self._lock:
            handles, self._handles = self._handles, None
            already_closed, self._closed = self._closed, True
        if handles is not None:
            close_handles(self.path, handles)
            del handles  # the family handles hold the last references to the DB and its LOCK
        return not already_closed

    def _failure(self, exc: Exception, action: str) -> StorageError:
        """The typed error for a failed RocksDB write or sync; marks a full disk."""
        reason = str(exc)
        broken_after_full = self.full_reason is not None and _WRITER_BROKEN_MARKER in reason.lower()
        if not is_no_space(reason) and not broken_after_full:
            return StorageError(
                f"RocksDB at {self.path} could not {action}: {reason}",
                path=str(self.path),
                reason=reason,
            )
        if self.full_reason is None:
            log.warning(
                "storage out of space path=%s action=%s free_bytes=%d reason=%s",
                self.path,
                action,
                free_bytes(self.path),
                reason,
            )
            self.full_reason = reason
        return self._full_error()

    def _open_again(self) -> Handles:
        try:
            return open_handles(self.path, self._settings)
        except StorageLocked:
            # Something still references the old handles (an error's traceback
            # in a reference cycle, say): collect once, then try once more.
            gc.collect()
            return open_handles(self.path, self._settings)

    def _full_error(self) -> StorageFull:
        reason = self.full_reason or "reopening after a full disk"
        return StorageFull(path=str(self.path), free_bytes=free_bytes(self.path), reason=reason)

    def _reopen(self) -> Handles:
        """Close and reopen the database to clear RocksDB's sticky no-space error.

        Only when the free space covers a WAL replay, no scan is open and the
        last attempt is ``REOPEN_RETRY_INTERVAL_S`` old; else ``StorageFull``.
        Runs on the event loop's thread; the lock keeps ``sync`` off the handles.
        """
        if self._closed:
            raise StorageClosed(f"RocksDB at {self.path} is closed", path=str(self.path))
        now_s = self._monotonic_s()
        if now_s < self._reopen_at_s or self.scans_open > 0:
            raise self._full_error()
        self._reopen_at_s = now_s + REOPEN_RETRY_INTERVAL_S
        if free_bytes(self.path) < open_bytes_needed(self.path):
            raise self._full_error()
        with self._lock:
            old, self._handles = self._handles, None
            if old is not None:
                close_handles(self.path, old)
                del old
            try:
                handles = self._open_again()
            except StorageError as exc:
                log.error(
                    "storage reopen failed path=%s error=%s (will retry)", self.path, str(exc)
                )
                raise
            self._handles = handles
            self.full_reason = None
        self.reopens_total += 1
        log.info(
            "storage reopened after a full disk path=%s free_bytes=%d",
            self.path,
            free_bytes(self.path),
        )
        return handles
