"""Query and Scan, the shell: run a ``queries.ReadPlan`` as range reads on a ``RangeBackend``.

A Query reads pages of one partition (``RangeQuery`` with ``partition``
None: the partition of its partition key) until ``Limit`` items are
evaluated, 1 MB of items is read (``queries.PAGE_BYTES_MAX``), or the range
ends. A Scan does the same over each ring partition of its segment in
order, reading ``SCAN_PREFETCH`` partitions' first pages at once (most are
empty or small), so an empty table costs Q / ``SCAN_PREFETCH`` rounds, not
Q. The ``LastEvaluatedKey`` is the key attributes of the last item
evaluated (or, when a page of only deleted items ran out the rounds, of the
last key passed), and is left out once the range is exhausted.

Consistency: ``ConsistentRead=false`` reads one replica (``one``);
``true`` merges a majority (``quorum``). Items whose TTL has passed are
skipped, not counted.

``ItemCounter`` keeps DescribeTable's approximate ``ItemCount`` and
``TableSizeBytes``: a table's figures are recounted by a full Scan (at
``one``) in the background when DescribeTable finds them older than
``COUNT_REFRESH_MS``; one count runs at a time per node.

Bounds: at most ``PAGES_MAX`` follow-up range reads per request beyond each
partition's first; ``SCAN_PREFETCH`` range reads at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from dynakv.api.backend import RangeBackend, RangePage, RangeQuery
from dynakv.core.consistency import Consistency
from dynakv.core.ring import partition_of
from dynakv.dynamo.encoding import decode_item
from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.items import is_expired
from dynakv.dynamo.queries import (
    PAGE_BYTES_MAX,
    ReadOptions,
    ReadPlan,
    judge,
    key_attributes,
    render_page,
    scan_plan,
    segment_partitions,
)
from dynakv.dynamo.tables import TableDefinition
from dynakv.dynamo.values import Item

log = logging.getLogger(__name__)

RANGE_PAGE_RECORDS: Final = 1000
PAGES_MAX: Final = 256
SCAN_PREFETCH: Final = 8
COUNT_REFRESH_MS: Final = 5 * 60 * 1000
COUNT_PAGES_MAX: Final = 100_000  # 1 MB each: a count stops after about 100 GB
KEY_BYTES_UNBOUNDED: Final = 1 << 20  # a Scan body without a start key checks no key size


@dataclass(slots=True)
class _Accumulator:
    """The items a request has evaluated so far, and where it stopped."""

    table: TableDefinition
    options: ReadOptions
    now_s: int
    items: list[Item] = field(default_factory=list)
    scanned: int = 0
    bytes_read: int = 0
    stopped_at: bytes | None = None

    def wants(self) -> int:
        """How many more records a range read may bring."""
        if self.options.limit is None:
            return RANGE_PAGE_RECORDS
        return max(1, min(RANGE_PAGE_RECORDS, self.options.limit - self.scanned))

    def consume(self, entries: list[tuple[bytes, list[bytes]]]) -> bool:
        """Evaluate a page's entries in order; True once a limit stops the request
        (``stopped_at`` is then the last key evaluated)."""
        for key, values in entries:
            value = max(values)  # siblings (``siblings`` policy only): the greatest shows
            item = decode_item(value)
            if is_expired(self.table, item, self.now_s):
                continue
            self.scanned += 1
            self.bytes_read += len(value)
            judged = judge(self.options, item)
            if judged is not None:
                self.items.append(judged)
            limit = self.options.limit
            if (limit is not None and self.scanned >= limit) or self.bytes_read >= PAGE_BYTES_MAX:
                self.stopped_at = key
                return True
        return False

    def answer(self, last_key: bytes | None) -> dict[str, Any]:
        last = None if last_key is None else key_attributes(self.table, last_key)
        return render_page(self.items, self.scanned, last, self.options.count_only)


def _level(options: ReadOptions) -> Consistency:
    return Consistency.QUORUM if options.consistent else Consistency.ONE


def _last_key(accumulator: _Accumulator, page: RangePage) -> bytes | None:
    """Where the next request starts: None when the page ended the range there."""
    stopped = accumulator.stopped_at
    assert stopped is not None
    if page.resume is None and page.entries and page.entries[-1][0] == stopped:
        return None
    return stopped


async def run_query(backend: RangeBackend, plan: ReadPlan, now_s: int) -> dict[str, Any]:
    """One Query page (see the module docstring)."""
    accumulator = _Accumulator(plan.table, plan.options, now_s)
    low, high = plan.low, plan.high
    for _ in range(PAGES_MAX):
        page = await backend.read_range(
            RangeQuery(
                None,
                low,
                high,
                plan.reverse,
                _level(plan.options),
                accumulator.wants(),
                PAGE_BYTES_MAX - accumulator.bytes_read,
            )
        )
        if accumulator.consume(page.entries):
            return accumulator.answer(_last_key(accumulator, page))
        if page.resume is None:
            return accumulator.answer(None)
        if plan.reverse:
            high = page.resume
        else:
            low = page.resume + b"\x00"
    return accumulator.answer(page.resume)


class Scanner:
    """Runs Scans; remembers the ring's partition count (it never changes)."""

    def __init__(self, backend: RangeBackend) -> None:
        self._backend = backend
        self._partition_count: int | None = None

    async def partition_count(self) -> int:
        if self._partition_count is None:
            # An empty range is answered without asking a replica: only Q comes back.
            page = await self._backend.read_range(
                RangeQuery(0, b"\x01", b"\x01", False, Consistency.ONE, 1, 1)
            )
            self._partition_count = page.partition_count
        return self._partition_count

    def _read(
        self, plan: ReadPlan, partition: int, low: bytes, accumulator: _Accumulator
    ) -> asyncio.Future[RangePage]:
        query = RangeQuery(
            partition,
            low,
            plan.high,
            False,
            _level(plan.options),
            accumulator.wants(),
            PAGE_BYTES_MAX - accumulator.bytes_read,
        )
        return asyncio.ensure_future(self._backend.read_range(query))

    async def run(self, plan: ReadPlan, now_s: int) -> dict[str, Any]:
        """One Scan page (see the module docstring)."""
        accumulator, last_key = await self.scan(plan, now_s)
        return accumulator.answer(last_key)

    async def scan(self, plan: ReadPlan, now_s: int) -> tuple[_Accumulator, bytes | None]:
        """One Scan page's items, and the key the next page starts after (None: done)."""
        accumulator = _Accumulator(plan.table, plan.options, now_s)
        partition_count = await self.partition_count()
        partitions = segment_partitions(plan.segment, partition_count)
        first_low = plan.low
        if plan.start_after is not None:
            start = partition_of(plan.start_after, partition_count)
            if start not in partitions:
                raise ValidationException(
                    "The provided starting key is invalid: it is not in the Scan's segment"
                )
            partitions = range(start, partitions.stop)
            first_low = plan.start_after + b"\x00"
        pages_left = PAGES_MAX
        for batch_start in range(partitions.start, partitions.stop, SCAN_PREFETCH):
            batch = range(batch_start, min(batch_start + SCAN_PREFETCH, partitions.stop))
            reads = [
                self._read(plan, p, first_low if p == partitions.start else plan.low, accumulator)
                for p in batch
            ]
            try:
                for partition, read in zip(batch, reads, strict=True):
                    page = await read
                    while True:
                        if accumulator.consume(page.entries):
                            last = _last_key(accumulator, page)
                            if last is None and partition + 1 < partitions.stop:
                                last = accumulator.stopped_at  # later partitions remain
                            return accumulator, last
                        if page.resume is None:
                            break
                        if pages_left == 0:
                            return accumulator, page.resume
                        pages_left -= 1
                        page = await self._read(plan, partition, page.resume + b"\x00", accumulator)
            finally:
                for read in reads:
                    read.cancel()
        return accumulator, None


@dataclass(frozen=True, slots=True)
class _Count:
    items: int = 0
    size_bytes: int = 0
    counted_at_ms: float = float("-inf")


class ItemCounter:
    """DescribeTable's approximate counts, refreshed in the background (one count at a time)."""

    def __init__(
        self, scanner: Scanner, now_s: Callable[[], int], monotonic_ms: Callable[[], float]
    ) -> None:
        self._scanner = scanner
        self._now_s = now_s
        self._monotonic_ms = monotonic_ms
        self._counts: dict[int, _Count] = {}
        self._running: asyncio.Task[None] | None = None

    def figures(self, table: TableDefinition) -> tuple[int, int]:
        """(ItemCount, TableSizeBytes) as last counted; starts a recount when they are
        older than ``COUNT_REFRESH_MS`` and no count runs."""
        count = self._counts.get(table.table_id, _Count())
        stale = self._monotonic_ms() - count.counted_at_ms >= COUNT_REFRESH_MS
        if stale and self._running is None:
            self._running = asyncio.ensure_future(self._recount(table))
            self._running.add_done_callback(self._finished)
        return count.items, count.size_bytes

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running = None
        if not task.cancelled() and (error := task.exception()) is not None:
            log.info("dynamodb item count failed error=%r", error)

    async def _recount(self, table: TableDefinition) -> None:
        options = ReadOptions(None, None, True, None, False)
        plan = scan_plan(table, {}, KEY_BYTES_UNBOUNDED)
        items = size_bytes = 0
        start: bytes | None = None
        for _ in range(COUNT_PAGES_MAX):
            page_plan = ReadPlan(table, plan.low, plan.high, False, start, options)
            accumulator, start = await self._scanner.scan(page_plan, self._now_s())
            items += accumulator.scanned
            size_bytes += accumulator.bytes_read
            if start is None:
                break
        self._counts[table.table_id] = _Count(items, size_bytes, self._monotonic_ms())
        log.debug("dynamodb item count table=%s items=%d", table.name, items)

    def forget(self, table: TableDefinition) -> None:
        """Drop a deleted table's figures."""
        self._counts.pop(table.table_id, None)
