"""``Sweeper``: purges records whose every sibling has expired.

Reads the oldest due entries of the storage's expiry index and purges each
key if it is still due (``purge_if_due`` re-reads the record, so a record
rewritten without expiry, or with a later one, survives). Pure with respect
to time: ``now_ms`` is an argument; the node calls ``sweep_once`` on a timer.
Bounded: one call examines at most ``batch_max`` index entries.

A corrupt record is logged and counted, never deleted: it stays for an
operator (and anti-entropy) to repair. A storage out of space (``StorageFull``)
ends the sweep quietly: one WARNING when sweeps start stopping for it, one INFO
when a sweep completes again; the next sweep retries (and lets the engine
reopen once space is back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dynakv.core.record import Record
from dynakv.storage.base import Storage, StorageCorruption, StorageFull

# Told of every purge, with the record that was purged (Merkle trees keep up).
OnPurge = Callable[[int, bytes, Record], None]

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, storage: Storage, batch_max: int, on_purge: OnPurge | None = None) -> None:
        assert batch_max > 0, batch_max
        self._storage = storage
        self._on_purge = on_purge
        self._batch_max = batch_max
        self.purged_total = 0
        self.stale_total = 0  # due keys that turned out not to be due (index entry dropped)
        self.corrupt_total = 0
        self.full_total = 0  # sweeps cut short by a storage out of space
        self._stopped_by_full = False

    def sweep_once(self, now_ms: int) -> int:
        """Purge what is due at ``now_ms``; returns how many records were purged."""
        try:
            purged = self._sweep(now_ms)
        except StorageFull as exc:
            self.full_total += 1
            if not self._stopped_by_full:
                log.warning("sweep stopped: storage out of space reason=%s", exc.reason)
            self._stopped_by_full = True
            return 0
        if self._stopped_by_full:
            log.info("sweep running again: storage has space")
            self._stopped_by_full = False
        return purged

    def _sweep(self, now_ms: int) -> int:
        purged = 0
        for partition, key in self._storage.due_for_purge(now_ms, self._batch_max):
            try:
                before = self._storage.get(partition, key) if self._on_purge else None
                if self._storage.purge_if_due(partition, key, now_ms):
                    if self._on_purge is not None and before is not None:
                        self._on_purge(partition, key, before)
                    purged += 1
                    self.purged_total += 1  # counted as it happens: a full disk may cut in
                else:
                    self.stale_total += 1
            except StorageCorruption as exc:
                self.corrupt_total += 1
                log.error(
                    "sweep skipped corrupt record partition=%d key=%s reason=%s",
                    partition,
                    key[:64].hex(),
                    exc.reason,
                )
        return purged
