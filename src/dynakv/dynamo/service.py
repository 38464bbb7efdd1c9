"""The DynamoDB operations on a ``KvBackend``: the shell around ``tables``, ``items``, ``batches``.

``DynamoService.call(operation, body)`` answers one operation's JSON body
with its JSON answer, or raises a ``DynamoError`` / ``DynakvError``. Data
lives in the backend like any other (partitioned, replicated, hinted,
repaired), under reserved keys (``api.errors.RESERVED_KEY_PREFIX``) that the
native API refuses:

- the catalog (``tables.CATALOG_KEY``) is read with ``strong`` and written
  with ``write_strong`` ``If-Match`` the version read (``If-None-Match: *``
  the first time), retried on a lost race; each node caches it for at most
  ``CATALOG_CACHE_MS`` for item operations, and reads it afresh when a table
  is not in its copy, so a table is usable on every node once CreateTable
  answered;
- an item is one record (``items.item_key``); reads use ``quorum``
  (``ConsistentRead=true``: ``strong``); unconditional PutItem / DeleteItem
  write at ``quorum``; every write whose outcome depends on the current item
  (a condition, an update, ReturnValues) is a compare-and-set on the strong
  path: read it with ``strong``, apply, write ``If-Match`` that version (or
  ``If-None-Match: *``), and start over if another write got in between, at
  most ``RMW_ROUNDS_MAX`` times. So each item's conditional and
  read-modify-write operations are linearizable.

Items whose TTL attribute (UpdateTimeToLive) is a number of epoch seconds at
or before now are absent to every read and condition; the record is stored
with the matching node TTL so the node's sweeper drops it.

Bounds: a batch is at most 100 reads or 25 writes, run at once; a catalog
refresh is shared by all the requests that wait for it; CAS loops end after
``RMW_ROUNDS_MAX`` rounds with ``Contended`` (503, retried by the SDKs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from dynakv.api.backend import GetResult, KvBackend, RangeBackend
from dynakv.config import Limits
from dynakv.core.consistency import Consistency
from dynakv.core.etag import Condition, IfAbsent, IfMatch
from dynakv.core.record import EMPTY_CONTEXT
from dynakv.dynamo import tables
from dynakv.dynamo.batches import (
    read_batch_get,
    read_batch_write,
    render_batch_get,
    render_batch_write,
)
from dynakv.dynamo.encoding import decode_item
from dynakv.dynamo.errors import InternalServerError
from dynakv.dynamo.expressions import project
from dynakv.dynamo.items import (
    ItemRead,
    ItemWrite,
    WriteOutcome,
    apply_write,
    is_expired,
    read_delete,
    read_get,
    read_put,
    read_update,
    storage_ttl_s,
)
from dynakv.dynamo.queries import query_plan, scan_plan
from dynakv.dynamo.reads import ItemCounter, Scanner, run_query
from dynakv.dynamo.tables import Catalog, TableDefinition
from dynakv.dynamo.values import Item, render_item
from dynakv.errors import (
    Contended,
    DynakvError,
    OutcomeUnknown,
    PreconditionFailed,
    RpcError,
    UnavailableError,
)

log = logging.getLogger(__name__)

RMW_ROUNDS_MAX: Final = 8
EVENTUAL_READ: Final = Consistency.QUORUM
WEAK_WRITE: Final = Consistency.QUORUM
_T = TypeVar("_T")
# Failures that leave a batch entry unprocessed (the SDK retries it) rather than failing it.
_RETRYABLE: Final = (UnavailableError, OutcomeUnknown, RpcError)


def _newest_value(result: GetResult) -> bytes | None:
    """The one value a read shows. Strong writes and ``lww`` leave one; under ``siblings``
    concurrent weak writes can leave several, and the greatest encoding is shown."""
    if not result.values:
        return None
    return max(result.values)


class DynamoService:
    """DynamoDB's operations over one backend (see the module docstring)."""

    def __init__(
        self,
        backend: KvBackend,
        limits: Limits,
        *,
        now_ms: Callable[[], int],
        monotonic_ms: Callable[[], float],
    ) -> None:
        self._backend = backend
        self._limits = limits
        self._now_ms = now_ms
        self._monotonic_ms = monotonic_ms
        self._catalog: Catalog = tables.EMPTY_CATALOG
        self._catalog_read_at_ms = float("-inf")
        self._refreshing: asyncio.Future[Catalog] | None = None
        self._operations: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "CreateTable": self.create_table,
            "DeleteTable": self.delete_table,
            "DescribeTable": self.describe_table,
            "ListTables": self.list_tables,
            "UpdateTimeToLive": self.update_time_to_live,
            "DescribeTimeToLive": self.describe_time_to_live,
            "PutItem": self.put_item,
            "GetItem": self.get_item,
            "DeleteItem": self.delete_item,
            "UpdateItem": self.update_item,
            "BatchGetItem": self.batch_get_item,
            "BatchWriteItem": self.batch_write_item,
        }
        self._ranges: RangeBackend | None = None
        self._counter: ItemCounter | None = None
        if isinstance(backend, RangeBackend):  # Query, Scan and item counts need range reads
            self._ranges = backend
            self._scanner = Scanner(backend)
            self._counter = ItemCounter(self._scanner, self._now_s, monotonic_ms)
            self._operations["Query"] = self.query
            self._operations["Scan"] = self.scan
        self.operations: frozenset[str] = frozenset(self._operations)

    def _now_s(self) -> int:
        return self._now_ms() // 1000

    async def call(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        assert operation in self._operations, operation
        return await self._operations[operation](body)

    # --- the catalog -------------------------------------------------------------------------

    async def _read_catalog(self) -> tuple[Catalog, str | None]:
        result = await self._backend.get(tables.CATALOG_KEY, Consistency.STRONG)
        value = _newest_value(result)
        catalog = tables.EMPTY_CATALOG if value is None else tables.decode_catalog(value)
        self._remember(catalog)
        return catalog, result.etag

    def _remember(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._catalog_read_at_ms = self._monotonic_ms()

    async def _fresh_catalog(self) -> Catalog:
        """A catalog read now; concurrent callers share one read."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_catalog_only())
            self._refreshing.add_done_callback(self._refreshed)
        return await asyncio.shield(self._refreshing)

    async def _read_catalog_only(self) -> Catalog:
        catalog, _ = await self._read_catalog()
        return catalog

    def _refreshed(self, future: asyncio.Future[Catalog]) -> None:
        self._refreshing = None
        if not future.cancelled():
            future.exception()  # retrieved: each waiter gets it from its own await

    async def _table(self, name: str) -> TableDefinition:
        """The table's definition for an item operation: cached, or read afresh."""
        tables.check_table_name(name)
        age_ms = self._monotonic_ms() - self._catalog_read_at_ms
        definition = self._catalog.tables.get(name)
        if definition is not None and age_ms < tables.CATALOG_CACHE_MS:
            return definition
        return tables.find_table(await self._fresh_catalog(), name)

    async def _change_catalog(self, change: Callable[[Catalog], tuple[Catalog, _T]]) -> _T:
        for _ in range(RMW_ROUNDS_MAX):
            catalog, etag = await self._read_catalog()
            changed, answer = change(catalog)
            condition: Condition = IfAbsent() if etag is None else IfMatch(etag)
            encoded = tables.encode_catalog(changed)
            assert len(encoded) <= self._limits.value_bytes_max, len(encoded)
            try:
                await self._backend.write_strong(
                    tables.CATALOG_KEY, encoded, condition=condition, ttl_s=0
                )
            except PreconditionFailed:
                continue  # another node changed the catalog since we read it: again
            self._remember(changed)
            return answer
        raise Contended(rounds=RMW_ROUNDS_MAX, reason="other catalog changes kept winning")

    # --- table operations --------------------------------------------------------------------

    async def create_table(self, body: dict[str, Any]) -> dict[str, Any]:
        now_ms = self._now_ms()
        definition = await self._change_catalog(lambda c: tables.create_table(c, body, now_ms))
        return {"TableDescription": tables.describe_table(definition)}

    async def delete_table(self, body: dict[str, Any]) -> dict[str, Any]:
        name = tables.table_name(body)
        now_ms = self._now_ms()
        definition = await self._change_catalog(lambda c: tables.delete_table(c, name, now_ms))
        if self._counter is not None:
            self._counter.forget(definition)
        return {"TableDescription": tables.describe_table(definition, "DELETING")}

    async def describe_table(self, body: dict[str, Any]) -> dict[str, Any]:
        name = tables.table_name(body)
        catalog, _ = await self._read_catalog()
        definition = tables.find_table(catalog, name)
        items, size_bytes = (0, 0) if self._counter is None else self._counter.figures(definition)
        return {"Table": tables.describe_table(definition, item_count=items, size_bytes=size_bytes)}

    async def list_tables(self, body: dict[str, Any]) -> dict[str, Any]:
        catalog, _ = await self._read_catalog()
        return tables.list_tables(catalog, body)

    async def update_time_to_live(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._change_catalog(lambda c: tables.update_time_to_live(c, body))

    async def describe_time_to_live(self, body: dict[str, Any]) -> dict[str, Any]:
        name = tables.table_name(body)
        catalog, _ = await self._read_catalog()
        return tables.describe_time_to_live(tables.find_table(catalog, name))

    # --- items -------------------------------------------------------------------------------

    def _visible(self, table: TableDefinition, value: bytes | None) -> Item | None:
        if value is None:
            return None
        item = decode_item(value)
        if is_expired(table, item, self._now_ms() // 1000):
            return None
        return item

    async def _get(self, read: ItemRead) -> Item | None:
        level = Consistency.STRONG if read.consistent else EVENTUAL_READ
        result = await self._backend.get(read.key, level)
        item = self._visible(read.table, _newest_value(result))
        if item is not None and read.projection is not None:
            return project(read.projection, item)
        return item

    def _ttl_s(self, outcome: WriteOutcome, table: TableDefinition) -> int:
        if outcome.item is None:
            return 0
        now_s = self._now_ms() // 1000
        return storage_ttl_s(table, outcome.item, now_s, self._limits.ttl_s_max)

    async def _write(self, write: ItemWrite) -> WriteOutcome:
        """One item write: straight at ``quorum``, or compare-and-set on the strong path."""
        if not write.reads_current:
            outcome = apply_write(write, None)
            if outcome.encoded is None:
                await self._backend.delete(write.key, WEAK_WRITE, EMPTY_CONTEXT)
            else:
                ttl_s = self._ttl_s(outcome, write.table)
                await self._backend.put(
                    write.key, outcome.encoded, WEAK_WRITE, ttl_s, EMPTY_CONTEXT
                )
            return outcome
        for _ in range(RMW_ROUNDS_MAX):
            result = await self._backend.get(write.key, Consistency.STRONG)
            current = self._visible(write.table, _newest_value(result))
            outcome = apply_write(write, current)
            if outcome.encoded is None and result.etag is None:
                return outcome  # deleting what is not there: nothing to write
            condition: Condition = IfAbsent() if result.etag is None else IfMatch(result.etag)
            try:
                await self._backend.write_strong(
                    write.key,
                    outcome.encoded,
                    condition=condition,
                    ttl_s=self._ttl_s(outcome, write.table),
                )
            except PreconditionFailed:
                continue  # the item changed since we read it: judge again on the new one
            return outcome
        raise Contended(rounds=RMW_ROUNDS_MAX, reason="other writes to the item kept winning")

    @staticmethod
    def _written(outcome: WriteOutcome) -> dict[str, Any]:
        if outcome.attributes is None:
            return {}
        return {"Attributes": render_item(outcome.attributes)}

    async def get_item(self, body: dict[str, Any]) -> dict[str, Any]:
        table = await self._table(tables.table_name(body))
        item = await self._get(read_get(table, body, self._limits.key_bytes_max))
        return {} if item is None else {"Item": render_item(item)}

    async def put_item(self, body: dict[str, Any]) -> dict[str, Any]:
        table = await self._table(tables.table_name(body))
        limits = self._limits
        write = read_put(table, body, limits.key_bytes_max, limits.value_bytes_max)
        return self._written(await self._write(write))

    async def delete_item(self, body: dict[str, Any]) -> dict[str, Any]:
        table = await self._table(tables.table_name(body))
        limits = self._limits
        write = read_delete(table, body, limits.key_bytes_max, limits.value_bytes_max)
        return self._written(await self._write(write))

    async def update_item(self, body: dict[str, Any]) -> dict[str, Any]:
        table = await self._table(tables.table_name(body))
        limits = self._limits
        write = read_update(table, body, limits.key_bytes_max, limits.value_bytes_max)
        return self._written(await self._write(write))

    # --- Query and Scan (range reads: reads.py) ------------------------------------------------

    async def query(self, body: dict[str, Any]) -> dict[str, Any]:
        table = await self._table(tables.table_name(body))
        plan = query_plan(table, body, self._limits.key_bytes_max)
        assert self._ranges is not None
        return await run_query(self._ranges, plan, self._now_s())

    async def scan(self, body: dict[str, Any]) -> dict[str, Any]:
        table = await self._table(tables.table_name(body))
        plan = scan_plan(table, body, self._limits.key_bytes_max)
        return await self._scanner.run(plan, self._now_s())

    # --- batches -----------------------------------------------------------------------------

    async def _tables_of(self, body: dict[str, Any]) -> dict[str, TableDefinition]:
        request_items = body.get("RequestItems")
        names = sorted(request_items) if isinstance(request_items, dict) else []
        found: dict[str, TableDefinition] = {}
        for name in names[: tables.TABLES_MAX]:
            found[name] = await self._table(name)
        return found

    async def batch_get_item(self, body: dict[str, Any]) -> dict[str, Any]:
        found = await self._tables_of(body)
        entries, parameters = read_batch_get(body, found.__getitem__, self._limits.key_bytes_max)
        results = await asyncio.gather(
            *(self._get(entry.read) for entry in entries), return_exceptions=True
        )
        return render_batch_get(entries, [_unprocessed_or_raise(r) for r in results], parameters)

    async def batch_write_item(self, body: dict[str, Any]) -> dict[str, Any]:
        found = await self._tables_of(body)
        limits = self._limits
        entries = read_batch_write(
            body, found.__getitem__, limits.key_bytes_max, limits.value_bytes_max
        )
        for entry in entries:
            apply_write(entry.write, None)  # size checks: a bad batch writes nothing
        results = await asyncio.gather(
            *(self._write(entry.write) for entry in entries), return_exceptions=True
        )
        failures = [_unprocessed_or_raise(result) for result in results]
        return render_batch_write(
            entries, [f if isinstance(f, BaseException) else None for f in failures]
        )


def _unprocessed_or_raise(result: _T | BaseException) -> _T | BaseException:
    """A batch entry's result, or the failure that leaves it unprocessed; bugs propagate."""
    if isinstance(result, _RETRYABLE):
        log.info("dynamodb batch entry unprocessed error=%s", type(result).__name__)
        return result
    if isinstance(result, DynakvError):
        return result  # e.g. a node rebuilding after a long absence: the client may retry
    if isinstance(result, BaseException):
        if isinstance(result, asyncio.CancelledError):
            raise result
        raise InternalServerError(f"internal error ({type(result).__name__})") from result
    return result
