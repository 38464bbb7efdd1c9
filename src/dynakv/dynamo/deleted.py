"""Which stored keys belong to deleted tables, and when to look for them: the pure half
of the purge (``dynamo.purge`` is the shell that reads and removes).

A table's items are stored under ``items.ITEM_KEY_PREFIX`` + its table id (8 bytes,
big endian) + the encoded key values, so one table's items are one contiguous run of
keys in every partition, in table id order. A table id is never reused
(``tables.Catalog.next_table_id`` only grows) and a table is created atomically, so a
catalog names the deleted ids exactly: every id from 1 below ``next_table_id`` that no
live table holds (``DeletedTables``). Any older catalog names a subset of them, never
a live table's id: a node may purge by whatever catalog it last read.

``plan_page`` walks one page of a partition's keys (records or Paxos states) in key
order: the leading keys of deleted tables are to be removed, and at the first key of
any other table the walk jumps to the next deleted id past it (``seek_after``), so a
pass costs a seek per run of live items, not a read of them. ``PurgeSchedule``
decides when a pass is due.

Invariants: ``plan_page`` never dooms a key whose table id is not deleted, nor any key
outside the item keys (native keys, the catalog); the next position it returns is
past every key it looked at, so a walk ends. Must never: do I/O, or read a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dynakv.dynamo.items import ITEM_KEY_PREFIX, TABLE_ID_BYTES
from dynakv.dynamo.tables import Catalog

_ID_START: Final = len(ITEM_KEY_PREFIX)
_ID_END: Final = _ID_START + TABLE_ID_BYTES


@dataclass(frozen=True, slots=True)
class DeletedTables:
    """The table ids a catalog shows deleted: 1 to ``next_id`` - 1, except ``live``."""

    live: frozenset[int]
    next_id: int

    def __post_init__(self) -> None:
        assert self.next_id >= 1, self.next_id

    @classmethod
    def of(cls, catalog: Catalog) -> DeletedTables:
        live = frozenset(definition.table_id for definition in catalog.tables.values())
        assert all(1 <= table_id < catalog.next_table_id for table_id in live), live
        return cls(live, catalog.next_table_id)

    def is_deleted(self, table_id: int) -> bool:
        return 1 <= table_id < self.next_id and table_id not in self.live

    def next_deleted(self, table_id: int) -> int | None:
        """The least deleted id at or after ``table_id``, or None."""
        candidate = max(1, table_id)
        while candidate < self.next_id:  # at most len(live) + 1 steps
            if candidate not in self.live:
                return candidate
            candidate += 1
        return None

    @property
    def count(self) -> int:
        return self.next_id - 1 - len(self.live)


def table_id_of(key: bytes) -> int | None:
    """The table id of an item key; None for any other key (or one too short to hold one)."""
    if len(key) < _ID_END or not key.startswith(ITEM_KEY_PREFIX):
        return None
    return int.from_bytes(key[_ID_START:_ID_END], "big")


def table_start(table_id: int) -> bytes:
    """The least key a table's items may have."""
    return ITEM_KEY_PREFIX + table_id.to_bytes(TABLE_ID_BYTES, "big")


def seek_after(table_id: int, key_bytes_max: int) -> bytes:
    """An ``after`` for ``Storage.scan_raw`` whose scan starts at the table's first key:
    below ``table_start`` and above every key of length at most ``key_bytes_max`` that
    sorts before it."""
    assert table_id >= 1, table_id
    start = table_start(table_id)
    if start[-1] == 0:
        return start[:-1]  # nothing sorts strictly between x and x + 0x00
    below = start[:-1] + bytes((start[-1] - 1,))
    return below + b"\xff" * (key_bytes_max + 1)


@dataclass(frozen=True, slots=True)
class PagePlan:
    """Remove the page's first ``doomed`` keys; go on scanning after ``next_after``
    (None: this partition has no more keys of deleted tables)."""

    doomed: int
    next_after: bytes | None


def plan_page(
    keys: Sequence[bytes], deleted: DeletedTables, *, full: bool, key_bytes_max: int
) -> PagePlan:
    """What to do with one page of keys (in key order) read after a position this walk
    chose; ``full``: the page held as many keys as asked, so more may follow it."""
    for index, key in enumerate(keys):
        table_id = table_id_of(key)
        if table_id is None:
            if key.startswith(ITEM_KEY_PREFIX):
                return PagePlan(index, key)  # malformed item key: step over it
            return PagePlan(index, None)  # past the item keys: nothing more to find
        if deleted.is_deleted(table_id):
            continue
        target = deleted.next_deleted(table_id + 1)
        if target is None:
            return PagePlan(index, None)
        # ``max``: a key longer than ``key_bytes_max`` (a lowered limit) must not be met again.
        return PagePlan(index, max(seek_after(target, key_bytes_max), key))
    if full and keys:
        return PagePlan(len(keys), keys[-1])
    return PagePlan(len(keys), None)


@dataclass(slots=True)
class PurgeSchedule:
    """When a pass is due, given the deleted ids the last catalog named.

    A pass runs: at once when the catalog names deleted ids the last pass did not
    purge (the node started, or a table was deleted); ``again_ms`` after a pass that
    removed anything (writes in flight under a node's cached catalog, copies pulled
    back from a replica that has not purged yet); otherwise every ``recheck_ms``, or
    ``busy_factor`` times the last pass's duration if longer (a pass takes at most
    about 1 / ``busy_factor`` of the time). No deleted ids: no pass.
    """

    again_ms: int
    recheck_ms: int
    busy_factor: int
    purged: DeletedTables | None = None  # what the last completed pass purged
    last_end_ms: float = float("-inf")
    last_duration_ms: float = 0.0
    last_removed: int = 0

    def due(self, deleted: DeletedTables, now_ms: float) -> bool:
        if deleted.count == 0:
            return False
        if self.purged is None or not _covers(self.purged, deleted):
            return True
        wait_ms: float = self.again_ms if self.last_removed else self.recheck_ms
        wait_ms = max(wait_ms, self.busy_factor * self.last_duration_ms)
        return now_ms - self.last_end_ms >= wait_ms

    def completed(
        self, deleted: DeletedTables, started_ms: float, ended_ms: float, removed: int
    ) -> None:
        assert ended_ms >= started_ms, (started_ms, ended_ms)
        self.purged = deleted
        self.last_end_ms = ended_ms
        self.last_duration_ms = ended_ms - started_ms
        self.last_removed = removed


def _covers(purged: DeletedTables, deleted: DeletedTables) -> bool:
    """Every id ``deleted`` names was purged by the pass over ``purged``: none of the
    ids live then is deleted now, and every id created since is still live."""
    if any(deleted.is_deleted(table_id) for table_id in purged.live):
        return False
    created = range(purged.next_id, deleted.next_id)
    if len(created) > len(deleted.live):
        return False
    return all(table_id in deleted.live for table_id in created)
