"""``GroupCommitter``: concurrent writes share one fsync.

The node puts a record (not yet durable), then ``await committer.durable()``
before acknowledging. One commit thread runs ``storage.sync()`` back to back;
every waiter that arrives while a sync runs joins the *next* sync, so a
handful of fsyncs cover any number of concurrent writes.

Invariants:

- ``durable()`` returns only after a sync that started after the call has
  completed, so every put made before the call is durable. (The thread takes
  the pending batch under the lock, then starts the sync.)
- Waiters are resolved on the event loop (``call_soon_threadsafe``); a failed
  sync fails each of its waiters with ``SyncFailed`` (cause attached), or,
  when the storage is out of space, with ``StorageFull`` (507, cause
  attached): either way their writes are not known to be durable.
- Bounded: at most ``waiters_max`` unresolved waiters; past it ``Overloaded``.
- The thread touches only the storage's ``sync`` and this object's lock; all
  other state lives on the loop thread.
- ``close`` never raises because a sync failed (a graceful stop on a full
  disk): the failure went to the waiters of that sync.

With ``durable=False`` (``NodeConfig.durable``) ``durable()`` returns at once.

``stats()`` counts syncs, writes and time in sync, and two histograms for
metrics (``SYNC_SECONDS_BUCKETS``, ``WRITES_PER_SYNC_BUCKETS``: a count per
bucket, the last past every bound), all updated once per sync on the loop.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from dynakv.errors import Overloaded
from dynakv.storage.base import Storage, StorageClosed, StorageError, StorageFull, SyncFailed

log = logging.getLogger(__name__)

WAITERS_MAX_DEFAULT: Final = 16384
# Upper bounds (inclusive) of the stats' histogram buckets.
SYNC_SECONDS_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
WRITES_PER_SYNC_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


@dataclass(frozen=True, slots=True)
class GroupCommitStats:
    syncs_total: int
    sync_failures_total: int
    writes_total: int  # waiters made durable (or failed) by a sync
    batch_size_max: int  # most waiters one sync served
    last_batch_size: int
    sync_seconds_total: float  # time spent inside storage.sync()
    waiters_pending: int
    # Syncs per bucket of SYNC_SECONDS_BUCKETS / WRITES_PER_SYNC_BUCKETS, one more past the last.
    sync_seconds_counts: tuple[int, ...] = ()
    writes_per_sync_counts: tuple[int, ...] = ()

    @property
    def writes_per_sync(self) -> float:
        return self.writes_total / self.syncs_total if self.syncs_total else 0.0


class GroupCommitter:
    def __init__(
        self, storage: Storage, *, durable: bool = True, waiters_max: int = WAITERS_MAX_DEFAULT
    ) -> None:
        assert waiters_max > 0, waiters_max
        self._storage = storage
        self._durable = durable
        self._waiters_max = waiters_max
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        # Guarded by _wakeup's lock: the batch for the next sync, and the stop flag.
        self._wakeup = threading.Condition()
        self._pending: list[asyncio.Future[None]] = []
        self._stop_requested = False
        # Loop-thread state.
        self._unresolved = 0
        self._syncs_total = 0
        self._sync_failures_total = 0
        self._writes_total = 0
        self._batch_size_max = 0
        self._last_batch_size = 0
        self._sync_seconds_total = 0.0
        self._sync_seconds_counts = [0] * (len(SYNC_SECONDS_BUCKETS) + 1)
        self._writes_per_sync_counts = [0] * (len(WRITES_PER_SYNC_BUCKETS) + 1)

    def start(self) -> None:
        """Start the commit thread; call from the running event loop."""
        assert self._thread is None, "start() called twice"
        self._loop = asyncio.get_running_loop()
        if not self._durable:
            return
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="dynakv-group-commit", daemon=True)
        self._thread.start()

    async def durable(self) -> None:
        """Return once everything put before this call is durable."""
        waiter = self.durable_future()
        if waiter is not None:
            await waiter

    def durable_future(self) -> asyncio.Future[None] | None:
        """``durable`` without a coroutine: a Future resolved once everything put
        before this call is durable, or None when it already is (``durable=False``).
        Raises ``StorageClosed`` or ``Overloaded`` at once."""
        if not self._durable:
            return None
        if self._closing:
            raise StorageClosed("group committer is closed")
        assert self._loop is not None, "start() was not called"
        if self._unresolved >= self._waiters_max:
            raise Overloaded(resource="group_commit_waiters", limit=self._waiters_max)
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._unresolved += 1
        with self._wakeup:
            self._pending.append(waiter)
            if len(self._pending) == 1:  # the thread waits only while nothing is pending
                self._wakeup.notify()
        return waiter

    async def close(self) -> None:
        """Refuse new waiters, let the final sync finish, stop the thread (idempotent)."""
        if not self._closing:
            self._closing = True
            with self._wakeup:
                self._stop_requested = True
                self._wakeup.notify()
        if self._thread is None or self._stopped is None:
            return
        await self._stopped
        self._thread.join()
        assert self._unresolved == 0, self._unresolved

    def stats(self) -> GroupCommitStats:
        return GroupCommitStats(
            syncs_total=self._syncs_total,
            sync_failures_total=self._sync_failures_total,
            writes_total=self._writes_total,
            batch_size_max=self._batch_size_max,
            last_batch_size=self._last_batch_size,
            sync_seconds_total=self._sync_seconds_total,
            waiters_pending=self._unresolved,
            sync_seconds_counts=tuple(self._sync_seconds_counts),
            writes_per_sync_counts=tuple(self._writes_per_sync_counts),
        )

    # --- the commit thread -------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            with self._wakeup:
                while not self._pending and not self._stop_requested:
                    self._wakeup.wait()
                if not self._pending:
                    break  # stop requested and every waiter served
                batch, self._pending = self._pending, []
            # Everything put before these waiters called durable() is in the
            # WAL buffer now: the sync below starts after all of their calls.
            started = time.monotonic()
            error: BaseException | None = None
            try:
                self._storage.sync()
            except Exception as exc:
                error = exc
            elapsed_s = time.monotonic() - started
            if not self._call_on_loop(loop, self._resolve, batch, error, elapsed_s):
                return
        self._call_on_loop(loop, self._set_stopped)

    @staticmethod
    def _call_on_loop(
        loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object
    ) -> bool:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed without close(): nobody is left to tell
            log.warning("group commit thread stopping: event loop is closed")
            return False
        return True

    # --- back on the loop --------------------------------------------------

    def _resolve(
        self, batch: list[asyncio.Future[None]], error: BaseException | None, elapsed_s: float
    ) -> None:
        self._unresolved -= len(batch)
        assert self._unresolved >= 0, self._unresolved
        self._syncs_total += 1
        self._writes_total += len(batch)
        self._last_batch_size = len(batch)
        self._batch_size_max = max(self._batch_size_max, len(batch))
        self._sync_seconds_total += elapsed_s
        self._sync_seconds_counts[bisect.bisect_left(SYNC_SECONDS_BUCKETS, elapsed_s)] += 1
        self._writes_per_sync_counts[bisect.bisect_left(WRITES_PER_SYNC_BUCKETS, len(batch))] += 1
        if error is not None:
            self._sync_failures_total += 1
            # The text, not the object: a kept log record must not pin the storage.
            log.error("group commit sync failed waiters=%d error=%s", len(batch), repr(error))
        for waiter in batch:
            if waiter.done():  # its caller was cancelled; nothing to tell
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(_waiter_failure(error))

    def _set_stopped(self) -> None:
        assert self._stopped is not None
        if not self._stopped.done():
            self._stopped.set_result(None)


def _waiter_failure(error: BaseException) -> StorageError:
    """A fresh error per waiter (one exception object must not be raised in many tasks)."""
    failure: StorageError
    if isinstance(error, StorageFull):
        failure = StorageFull(path=error.path, free_bytes=error.free_bytes, reason=error.reason)
    else:
        failure = SyncFailed(reason=repr(error))
    failure.__cause__ = error
    return failure
