"""The deleted-table purge: each node removes its local records of deleted tables.

DeleteTable only changes the catalog; the table's items stay under its table id,
invisible to every operation (a new table of the same name gets a new id). This
node's ``TablePurger`` reads the catalog every ``catalog_poll_ms`` (at ``quorum``:
any version is safe, ``dynamo.deleted``), and when a pass is due
(``deleted.PurgeSchedule``) walks every partition of its storage, records and
then Paxos acceptor states, removing those of deleted table ids.

Raw removal, not tombstones. Nothing can read a deleted id's keys, so nothing
needs a tombstone to hide them; a tombstone would cost a write per item on every
replica and hold the disk until its grace ran out. A record is removed locally,
and the Merkle tree is told (``on_remove(partition, key, old stored bytes)``,
wired to ``TreeKeeper.on_write_raw(..., None)``), so the tree equals the data
and two replicas that both purged compare equal. A copy pulled back by
anti-entropy or a hint from a replica that has not purged yet is as invisible as
before, and is removed by this node's next pass (``again_ms`` after a pass that
removed anything, else every ``recheck_ms``); once every replica has purged, no
copy is left anywhere to bring back. Nothing is remembered across a restart:
the catalog says what to purge, so a node that was down, or stopped part-way
through a pass, purges on its first pass after it starts.

The storage API has no single-key delete: a key is removed by writing an
already-expired tombstone over it and purging it (``purge_if_due``), in one
step with no ``await``, so nothing interleaves.

Bounds: a page of ``page_keys`` keys per step, ``sleep_ms(0)`` between steps
(about ``page_keys`` keys examined or seeks made), at most
``removals_per_s`` removals a second; one pass at a time. Must never: remove a
key whose table id the catalog does not show deleted, or keep a Merkle tree
that disagrees with storage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from dynakv.api.backend import KvBackend
from dynakv.core.consistency import Consistency
from dynakv.core.record import Record, Sibling
from dynakv.dynamo import tables
from dynakv.dynamo.deleted import DeletedTables, PurgeSchedule, plan_page, seek_after
from dynakv.dynamo.tables import Catalog
from dynakv.errors import DynakvError
from dynakv.node.metrics import mark_not_native
from dynakv.storage.base import Storage, StorageError

log = logging.getLogger(__name__)

# Written over a key to remove it: a tombstone expired since 1970, purged at once.
_GONE: Final = Record((Sibling(None, "purge", 1, (), 0, expires_at_ms=1),))
OnRemove = Callable[[int, bytes, bytes], None]


QUORUM_READ_EVERY: Final = 60  # catalog reads: one at quorum in 60 (5 min at 5 s)


@dataclass(frozen=True, slots=True)
class PurgeSettings:
    catalog_poll_ms: int = 5_000
    again_ms: int = 10_000
    recheck_ms: int = 30_000
    busy_factor: int = 100
    page_keys: int = 128
    removals_per_s: int = 20_000

    def __post_init__(self) -> None:
        assert min(self.catalog_poll_ms, self.page_keys, self.removals_per_s) >= 1, self
        assert min(self.again_ms, self.recheck_ms, self.busy_factor) >= 0, self


@dataclass(slots=True)
class _Pass:
    """One pass's running totals."""

    deleted: DeletedTables
    records: int = 0
    paxos_states: int = 0
    work: int = 0  # keys examined and seeks made since the last yield

    @property
    def removed(self) -> int:
        return self.records + self.paxos_states


class TablePurger:
    """Removes this node's records of deleted tables (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        *,
        partition_count: int,
        key_bytes_max: int,
        read_catalog: Callable[[], Awaitable[Catalog]],
        sleep_ms: Callable[[float], Awaitable[None]],
        now_ms: Callable[[], int],
        monotonic_ms: Callable[[], float],
        on_remove: OnRemove | None = None,
        settings: PurgeSettings | None = None,
    ) -> None:
        self.storage = storage
        self.partition_count = partition_count
        self.key_bytes_max = key_bytes_max
        self.settings = settings or PurgeSettings()
        self._read_catalog = read_catalog
        self._sleep_ms = sleep_ms
        self._now_ms = now_ms
        self._monotonic_ms = monotonic_ms
        self._on_remove = on_remove
        self.schedule = PurgeSchedule(
            again_ms=self.settings.again_ms,
            recheck_ms=self.settings.recheck_ms,
            busy_factor=self.settings.busy_factor,
        )
        self.deleted_tables = 0
        self.passes_total = 0
        self.records_removed_total = 0
        self.paxos_states_removed_total = 0
        self.catalog_failures_total = 0
        self.last_pass: dict[str, Any] | None = None
        self._failing = False

    async def run_forever(self) -> None:
        """Poll the catalog and purge when due, until cancelled."""
        mark_not_native()  # the catalog reads are not client requests
        while True:
            try:
                await self.run_once()
            except StorageError as exc:
                log.warning("dynamodb purge pass stopped: %s", exc)
            except Exception:
                log.exception("dynamodb purge failed")
            await self._sleep_ms(self.settings.catalog_poll_ms)

    async def run_once(self) -> bool:
        """Read the catalog; run a pass if one is due. True if a pass ran."""
        try:
            catalog = await self._read_catalog()
        except DynakvError as exc:
            self.catalog_failures_total += 1
            if not self._failing:  # once per streak: a node starting up meets one
                log.info("dynamodb purge cannot read the catalog yet: %s", exc)
            self._failing = True
            return False
        self._failing = False
        deleted = DeletedTables.of(catalog)
        self.deleted_tables = deleted.count
        if not self.schedule.due(deleted, self._monotonic_ms()):
            return False
        await self.run_pass(deleted)
        return True

    async def run_pass(self, deleted: DeletedTables) -> _Pass:
        """Remove every local record and Paxos state of the ``deleted`` ids."""
        started_ms = self._monotonic_ms()
        done = _Pass(deleted)
        for partition in range(self.partition_count):
            await self._partition(done, partition, paxos=False)
            await self._partition(done, partition, paxos=True)
        ended_ms = self._monotonic_ms()
        self.schedule.completed(deleted, started_ms, ended_ms, done.removed)
        self.passes_total += 1
        self.last_pass = {
            "deleted_tables": deleted.count,
            "records_removed": done.records,
            "paxos_states_removed": done.paxos_states,
            "duration_ms": round(ended_ms - started_ms, 1),
        }
        if done.removed:
            log.info(
                "dynamodb purge removed records=%d paxos_states=%d deleted_tables=%d",
                done.records,
                done.paxos_states,
                deleted.count,
            )
        return done

    async def _partition(self, done: _Pass, partition: int, *, paxos: bool) -> None:
        first = done.deleted.next_deleted(1)
        if first is None:
            return
        after: bytes | None = seek_after(first, self.key_bytes_max)
        page_keys = self.settings.page_keys
        while after is not None:  # ends: every step moves ``after`` past the keys it saw
            page = self._page(partition, after, paxos)
            keys = [key for key, _ in page]
            plan = plan_page(
                keys, done.deleted, full=len(page) == page_keys, key_bytes_max=self.key_bytes_max
            )
            assert plan.next_after is None or plan.next_after > after, "the walk went back"
            for key, stored in page[: plan.doomed]:
                self._remove(partition, key, stored, paxos)
            if paxos:
                done.paxos_states += plan.doomed
            else:
                done.records += plan.doomed
            after = plan.next_after
            done.work += len(page) + 1
            if plan.doomed or done.work >= page_keys:
                done.work = 0
                await self._sleep_ms(1000 * plan.doomed / self.settings.removals_per_s)

    def _page(self, partition: int, after: bytes, paxos: bool) -> list[tuple[bytes, bytes]]:
        limit = self.settings.page_keys
        if paxos:
            return self.storage.scan_paxos(partition, after=after, limit=limit)
        return self.storage.scan_raw(partition, after=after, limit=limit)

    def _remove(self, partition: int, key: bytes, stored: bytes, paxos: bool) -> None:
        if paxos:
            self.storage.delete_paxos(partition, key)
            self.paxos_states_removed_total += 1
            return
        self.storage.put(partition, key, _GONE)
        removed = self.storage.purge_if_due(partition, key, self._now_ms())
        assert removed, "an expired tombstone is always due"
        self.records_removed_total += 1
        if self._on_remove is not None:
            self._on_remove(partition, key, stored)

    def status(self) -> dict[str, Any]:
        return {
            "deleted_tables": self.deleted_tables,
            "passes": self.passes_total,
            "records_removed": self.records_removed_total,
            "paxos_states_removed": self.paxos_states_removed_total,
            "catalog_failures": self.catalog_failures_total,
            "last_pass": self.last_pass,
        }


def catalog_reader(
    backend: KvBackend, quorum_every: int = QUORUM_READ_EVERY
) -> Callable[[], Awaitable[Catalog]]:
    """Reads the catalog through ``backend``: at ``quorum`` on the first read, after a
    failed one, and every ``quorum_every`` reads; at ``one`` in between (on a home
    replica of the catalog, a local read: no RPC every few seconds). A stale copy only
    delays a purge: table ids are never reused, so an older catalog names fewer
    deleted ids, never a live one; the quorum reads (with their read repair) bound
    the delay, and a node that was down reads at quorum as it starts."""
    assert quorum_every >= 1
    reads = 0

    async def read() -> Catalog:
        nonlocal reads
        consistency = Consistency.QUORUM if reads % quorum_every == 0 else Consistency.ONE
        try:
            result = await backend.get(tables.CATALOG_KEY, consistency)
        except BaseException:
            reads = 0  # the next one at quorum again
            raise
        reads += 1
        if not result.values:
            return tables.EMPTY_CATALOG
        return tables.decode_catalog(max(result.values))

    return read
