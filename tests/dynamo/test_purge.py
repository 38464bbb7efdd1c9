"""The deleted-table purge: which keys are doomed (against a dumb reference model), a
whole pass over an in-memory store (records, Paxos states and Merkle trees follow; no
other table's key is touched), its bounded steps, and when passes run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.consistency import Consistency
from dynakv.core.record import ConflictPolicy, Record, Sibling
from dynakv.dynamo import tables
from dynakv.dynamo.deleted import (
    DeletedTables,
    PurgeSchedule,
    plan_page,
    seek_after,
    table_id_of,
    table_start,
)
from dynakv.dynamo.items import ITEM_KEY_PREFIX
from dynakv.dynamo.purge import PurgeSettings, TablePurger, catalog_reader
from dynakv.dynamo.tables import Catalog, TableDefinition
from dynakv.errors import QuorumNotReached
from dynakv.node.merkle_trees import TreeKeeper
from dynakv.node.metrics import RequestMetrics
from dynakv.storage.memory import MemoryStorage
from tests.dynamo.test_router_metrics import MeasuredBackend

KEY_BYTES_MAX = 48
PARTITIONS = 3
IDS_MAX = 7


def definition(name: str, table_id: int) -> TableDefinition:
    return TableDefinition(name, table_id, "pk", "S", None, None, 0, "PAY_PER_REQUEST")


def catalog(live: set[int], next_id: int) -> Catalog:
    found = {f"t{table_id}": definition(f"t{table_id}", table_id) for table_id in sorted(live)}
    return Catalog(found, {}, next_id)


def record(value: bytes, expires_at_ms: int = 0) -> Record:
    return Record((Sibling(value, "n1", 1, (), 5, expires_at_ms),))


def item_key(table_id: int, rest: bytes) -> bytes:
    return table_start(table_id) + rest


catalogs = st.integers(1, IDS_MAX + 1).flatmap(
    lambda next_id: st.tuples(
        st.sets(st.integers(1, max(1, next_id - 1))).map(
            lambda live: {i for i in live if i < next_id}
        ),
        st.just(next_id),
    )
)
suffixes = st.binary(max_size=6)
keys = st.one_of(
    st.builds(item_key, st.integers(0, IDS_MAX + 2), suffixes),
    st.builds(item_key, st.sampled_from([255, 256, 65_535, 1 << 40]), suffixes),
    st.binary(max_size=12),  # native keys, and item keys cut short
    st.just(tables.CATALOG_KEY),
    st.builds(lambda rest: ITEM_KEY_PREFIX + rest, st.binary(max_size=7)),
)


# --- the pure half -------------------------------------------------------------------------


@given(catalogs, st.integers(-2, IDS_MAX + 4))
def test_deleted_ids_match_the_definition(shape: tuple[set[int], int], table_id: int) -> None:
    live, next_id = shape
    deleted = DeletedTables.of(catalog(live, next_id))
    reference = set(range(1, next_id)) - live
    assert deleted.is_deleted(table_id) == (table_id in reference)
    assert deleted.count == len(reference)
    later = [i for i in sorted(reference) if i >= table_id]
    assert deleted.next_deleted(table_id) == (later[0] if later else None)


@given(st.integers(1, 1 << 20), st.binary(max_size=KEY_BYTES_MAX))
def test_seek_after_starts_a_scan_exactly_at_the_table(table_id: int, key: bytes) -> None:
    after = seek_after(table_id, KEY_BYTES_MAX)
    assert after < table_start(table_id)
    # Every key within the bound sorts after ``after`` exactly when it is at or past the start.
    assert (key > after) == (key >= table_start(table_id))
    start = table_start(table_id)
    if start[-1]:
        greatest_below = start[:-1] + bytes((start[-1] - 1,))
        greatest_below += b"\xff" * (KEY_BYTES_MAX - len(greatest_below))
    else:  # x[:-1] is below x + 0x00 and nothing lies between them
        greatest_below = start[:-1]
    assert greatest_below <= after < start  # the last key that could precede the table


@given(catalogs, st.lists(keys, max_size=30, unique=True), st.booleans())
def test_a_page_dooms_only_leading_keys_of_deleted_tables(
    shape: tuple[set[int], int], page: list[bytes], full: bool
) -> None:
    deleted = DeletedTables.of(catalog(*shape))
    page.sort()
    plan = plan_page(page, deleted, full=full, key_bytes_max=KEY_BYTES_MAX)
    for key in page[: plan.doomed]:
        table_id = table_id_of(key)
        assert table_id is not None and deleted.is_deleted(table_id)
    if plan.doomed < len(page):
        stopped = table_id_of(page[plan.doomed])
        assert stopped is None or not deleted.is_deleted(stopped)
    if plan.next_after is not None and page:
        assert plan.next_after >= page[max(0, plan.doomed - 1)]


# --- a whole pass --------------------------------------------------------------------------


class Loop:
    """Injected time: ``sleep_ms`` advances the clock and counts the yields."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    async def sleep_ms(self, ms: float) -> None:
        self.sleeps.append(ms)
        self.now += ms

    def monotonic_ms(self) -> float:
        return self.now

    def now_ms(self) -> int:
        return int(self.now)


def purger(
    storage: MemoryStorage,
    read: Any,
    loop: Loop,
    *,
    on_remove: Any = None,
    page_keys: int = 3,
) -> TablePurger:
    return TablePurger(
        storage,
        partition_count=PARTITIONS,
        key_bytes_max=KEY_BYTES_MAX,
        read_catalog=read,
        sleep_ms=loop.sleep_ms,
        now_ms=loop.now_ms,
        monotonic_ms=loop.monotonic_ms,
        on_remove=on_remove,
        settings=PurgeSettings(page_keys=page_keys, removals_per_s=1000),
    )


def fill(storage: MemoryStorage, stored: list[tuple[int, bytes, bool]]) -> None:
    for partition, key, with_ttl in stored:
        storage.put(partition, key, record(b"v" + key, 5_000_000_000_000 if with_ttl else 0))
        storage.put_paxos(partition, key, b"state-" + key)


def everything(storage: MemoryStorage) -> tuple[set[tuple[int, bytes]], set[tuple[int, bytes]]]:
    records = {(p, k) for p in range(PARTITIONS) for k, _ in storage.scan_raw(p, limit=10_000)}
    states = {(p, k) for p in range(PARTITIONS) for k, _ in storage.scan_paxos(p, limit=10_000)}
    return records, states


def survives(key: bytes, deleted: DeletedTables) -> bool:
    table_id = table_id_of(key)
    return table_id is None or not deleted.is_deleted(table_id)


@settings(max_examples=150, deadline=None)
@given(
    catalogs,
    st.lists(st.tuples(st.integers(0, PARTITIONS - 1), keys, st.booleans()), max_size=60),
    st.integers(1, 5),
)
def test_a_pass_removes_exactly_the_deleted_tables_keys(
    shape: tuple[set[int], int], stored: list[tuple[int, bytes, bool]], page_keys: int
) -> None:
    storage = MemoryStorage()
    fill(storage, stored)
    trees = TreeKeeper(storage, page_keys=4)
    for partition in range(PARTITIONS):
        built(trees, partition)
    before = {(p, k): data for p in range(PARTITIONS) for k, data in storage.scan_raw(p, limit=999)}
    removed: list[tuple[int, bytes, bytes]] = []

    def on_remove(partition: int, key: bytes, old: bytes) -> None:
        removed.append((partition, key, old))
        trees.on_write_raw(partition, key, old, None)

    deleted = DeletedTables.of(catalog(*shape))
    loop = Loop()
    done = asyncio.run(
        purger(storage, None, loop, on_remove=on_remove, page_keys=page_keys).run_pass(deleted)
    )

    records, states = everything(storage)
    assert records == {address for address in before if survives(address[1], deleted)}
    assert states == records  # every key had a state beside its record
    gone = {address: data for address, data in before.items() if address not in records}
    assert {(p, k): old for p, k, old in removed} == gone and len(removed) == len(gone)
    assert done.records == done.paxos_states == len(gone)
    fresh = TreeKeeper(storage, page_keys=4)
    for partition in range(PARTITIONS):
        tree = trees.tree(partition)
        assert tree is not None
        assert tree.root() == built(fresh, partition).root()
        assert tree.key_count == built(fresh, partition).key_count
    # A removed record's old expiry entry is stale: the sweeper finds nothing to purge there.
    for partition, key in storage.due_for_purge(1 << 50, 10_000):
        if not survives(key, deleted):
            assert not storage.purge_if_due(partition, key, 1 << 50)
    assert all(survives(key, deleted) for _, key in storage.due_for_purge(1 << 50, 10_000))


def built(keeper: TreeKeeper, partition: int) -> Any:
    while (tree := keeper.build_step(partition)) is None:
        pass
    return tree


def test_a_pass_yields_between_bounded_steps() -> None:
    storage = MemoryStorage()
    doomed = [(0, item_key(2, b"k%04d" % i), False) for i in range(50)]
    live = [(0, item_key(3, b"k%04d" % i), False) for i in range(50)]
    fill(storage, doomed + live)
    scans_between_yields: list[int] = []
    calls = {"scans": 0}
    real_scan, real_paxos = storage.scan_raw, storage.scan_paxos

    def scan_raw(partition: int, *, after: bytes | None = None, limit: int) -> Any:
        calls["scans"] += 1
        return real_scan(partition, after=after, limit=limit)

    def scan_paxos(partition: int, *, after: bytes | None = None, limit: int) -> Any:
        calls["scans"] += 1
        return real_paxos(partition, after=after, limit=limit)

    storage.scan_raw = scan_raw  # type: ignore[method-assign]
    storage.scan_paxos = scan_paxos  # type: ignore[method-assign]
    loop = Loop()

    async def sleep_ms(ms: float) -> None:
        scans_between_yields.append(calls["scans"])
        calls["scans"] = 0
        await loop.sleep_ms(ms)

    running = purger(storage, None, loop, page_keys=8)
    running._sleep_ms = sleep_ms
    asyncio.run(running.run_pass(DeletedTables.of(catalog({1, 3}, 4))))
    assert running.records_removed_total == 50
    assert max(scans_between_yields) <= 8
    # Paced: 100 removals (records and states) at 1000 a second is 100 ms of sleeps.
    assert sum(loop.sleeps) == pytest.approx(100)
    records, _ = everything(storage)
    assert records == {(0, key) for _, key, _ in live}


# --- when passes run -----------------------------------------------------------------------


def test_the_schedule() -> None:
    schedule = PurgeSchedule(again_ms=10, recheck_ms=100, busy_factor=10)
    none = DeletedTables(frozenset({1, 2}), 3)
    one = DeletedTables(frozenset({2}), 3)
    assert not schedule.due(none, 0)  # nothing deleted: never a pass
    assert schedule.due(one, 0)  # not purged yet: at once
    schedule.completed(one, 0, 1, removed=5)
    assert not schedule.due(one, 10) and schedule.due(one, 11)  # removed some: again soon
    schedule.completed(one, 11, 12, removed=0)
    assert not schedule.due(one, 111) and schedule.due(one, 112)  # clean: recheck
    created = DeletedTables(frozenset({2, 3, 4}), 5)
    assert not schedule.due(created, 50)  # new live tables change nothing
    assert schedule.due(DeletedTables(frozenset({2, 4}), 5), 50)  # a new deletion: at once
    assert schedule.due(DeletedTables(frozenset(), 5), 50)  # a table deleted since
    schedule.completed(one, 200, 250, removed=0)  # a slow pass: the next waits longer
    assert not schedule.due(one, 700) and schedule.due(one, 750)


def test_run_once_reads_the_catalog_and_purges_when_due() -> None:
    storage = MemoryStorage()
    fill(storage, [(1, item_key(1, b"a"), False), (1, item_key(2, b"b"), False)])
    current = {"catalog": catalog({1, 2}, 3)}
    failing: dict[str, BaseException | None] = {"error": None}

    async def read() -> Catalog:
        if failing["error"] is not None:
            raise failing["error"]
        return current["catalog"]

    loop = Loop()
    running = purger(storage, read, loop)

    async def scenario() -> list[bool]:
        ran = [await running.run_once()]  # nothing deleted
        current["catalog"] = catalog({2}, 3)
        ran.append(await running.run_once())  # table 1 deleted: at once
        ran.append(await running.run_once())  # removed some: not again yet
        loop.now += 10_000
        ran.append(await running.run_once())  # again, finds nothing
        loop.now += 29_000
        ran.append(await running.run_once())  # clean, recheck not due
        failing["error"] = QuorumNotReached(required=2, acked=1, consistency="quorum")
        loop.now += 60_000
        ran.append(await running.run_once())  # the catalog cannot be read: no pass
        return ran

    assert asyncio.run(scenario()) == [False, True, False, True, False, False]
    assert running.status() | {"last_pass": None} == {
        "deleted_tables": 1,
        "passes": 2,
        "records_removed": 1,
        "paxos_states_removed": 1,
        "catalog_failures": 1,
        "last_pass": None,
    }
    assert everything(storage)[0] == {(1, item_key(2, b"b"))}


def test_the_catalog_is_read_through_the_backend_and_not_counted() -> None:
    metrics = RequestMetrics(recording=True)
    backend = MeasuredBackend(metrics)
    backend.policy = ConflictPolicy.LWW
    read = catalog_reader(backend)
    assert asyncio.run(read()) == tables.EMPTY_CATALOG
    stored = catalog({2}, 4)

    async def store() -> None:
        await backend.put(
            tables.CATALOG_KEY, tables.encode_catalog(stored), Consistency.QUORUM, 0, _context()
        )

    asyncio.run(store())
    assert asyncio.run(read()) == stored
    before = dict(metrics.requests())
    storage = MemoryStorage()
    loop = Loop()
    cycles = {"left": 2}

    async def sleep_ms(ms: float) -> None:
        cycles["left"] -= 1
        if cycles["left"] < 0:
            raise asyncio.CancelledError

    running = purger(storage, read, loop)
    running._sleep_ms = sleep_ms
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(running.run_forever())
    assert running.passes_total == 1
    assert metrics.requests() == before  # the purge's catalog reads are not client requests


def _context() -> Any:
    from dynakv.core.record import EMPTY_CONTEXT

    return EMPTY_CONTEXT


def test_the_catalog_is_read_at_quorum_first_after_a_failure_and_every_nth_read() -> None:
    seen: list[Consistency] = []
    fail = {"next": False}

    class Recording(MeasuredBackend):
        async def get(self, key: bytes, consistency: Consistency) -> Any:
            seen.append(consistency)
            if fail["next"]:
                fail["next"] = False
                raise QuorumNotReached(required=2, acked=1, consistency=consistency.value)
            return await super().get(key, consistency)

    read = catalog_reader(Recording(RequestMetrics(recording=False)), quorum_every=3)

    async def reads(count: int) -> None:
        for _ in range(count):
            await read()

    asyncio.run(reads(4))
    fail["next"] = True
    with pytest.raises(QuorumNotReached):
        asyncio.run(read())
    asyncio.run(reads(2))
    quorum, one = Consistency.QUORUM, Consistency.ONE
    assert seen == [quorum, one, one, quorum, one, quorum, one]
