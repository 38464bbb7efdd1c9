"""GroupCommitter: shared syncs, next-sync semantics, failures, bounds, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dynakv.core.record import Record, Sibling
from dynakv.errors import Overloaded
from dynakv.storage import MemoryStorage, RocksStorage, StorageClosed, StorageFull, SyncFailed
from dynakv.storage.group_commit import GroupCommitter

DEADLINE_S = 10.0


def a_record(value: bytes = b"v") -> Record:
    return Record((Sibling(value=value, node="n1", counter=1, past=(), timestamp=1),))


class GatedStorage(MemoryStorage):
    """A memory engine whose syncs are observable and, when ``gated``, wait for the test.

    ``covered_puts`` is how many puts the last *finished* sync covered: the
    puts made before that sync started.
    """

    def __init__(self, *, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.lock = threading.Lock()
        self.puts = 0
        self.syncs_started = 0
        self.syncs_finished = 0
        self.covered_puts = 0
        self.gates: list[threading.Event] = []
        self.failures: list[Exception] = []  # raised by the next syncs, in order

    def put(self, partition: int, key: bytes, record: Record) -> None:
        super().put(partition, key, record)
        with self.lock:
            self.puts += 1

    def sync(self) -> None:
        with self.lock:
            self.syncs_started += 1
            covering = self.puts
            gate = threading.Event()
            if not self.gated:
                gate.set()
            self.gates.append(gate)
            failure = self.failures.pop(0) if self.failures else None
        assert gate.wait(DEADLINE_S), "the test never released this sync"
        if failure is not None:
            raise failure
        with self.lock:
            self.syncs_finished += 1
            self.covered_puts = max(self.covered_puts, covering)

    def release(self, sync_number: int) -> None:
        with self.lock:
            self.gates[sync_number - 1].set()

    def open_all(self) -> None:
        """Release every sync, running or future."""
        with self.lock:
            self.gated = False
            for gate in self.gates:
                gate.set()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for a condition, yielding to the loop and the commit thread, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def test_concurrent_waiters_share_one_sync() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=True)
        committer = GroupCommitter(storage)
        committer.start()
        storage.put(0, b"first", a_record())
        first = asyncio.create_task(committer.durable())
        await until(lambda: storage.syncs_started == 1, "the first sync to start")

        async def writer(index: int) -> int:
            storage.put(0, index.to_bytes(4, "big"), a_record())
            put_number = storage.puts
            await committer.durable()
            return put_number

        writers = [asyncio.create_task(writer(i)) for i in range(500)]
        await until(lambda: committer.stats().waiters_pending == 501, "all waiters to queue")
        storage.release(1)
        await first
        await until(lambda: storage.syncs_started == 2, "the shared second sync to start")
        storage.release(2)
        put_numbers = await asyncio.gather(*writers)
        assert storage.syncs_started == 2
        assert max(put_numbers) <= storage.covered_puts == 501
        stats = committer.stats()
        assert (stats.syncs_total, stats.writes_total, stats.batch_size_max) == (2, 501, 500)
        assert stats.last_batch_size == 500 and stats.writes_per_sync == 250.5
        assert stats.waiters_pending == 0 and stats.sync_failures_total == 0
        await committer.close()

    asyncio.run(main())


def test_waiter_arriving_during_a_sync_waits_for_the_next() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=True)
        committer = GroupCommitter(storage)
        committer.start()
        storage.put(0, b"a", a_record())
        early = asyncio.create_task(committer.durable())
        await until(lambda: storage.syncs_started == 1, "sync 1 to start")
        storage.put(0, b"b", a_record())  # after sync 1 started: sync 1 may miss it
        late = asyncio.create_task(committer.durable())
        await until(lambda: committer.stats().waiters_pending == 2, "the late waiter to queue")
        storage.release(1)
        await early
        assert not late.done(), "sync 1 started before the late call; it must not count"
        await until(lambda: storage.syncs_started == 2, "sync 2 to start")
        assert not late.done()
        storage.release(2)
        await late
        assert storage.covered_puts == 2
        await committer.close()

    asyncio.run(main())


def test_free_running_writers_are_all_covered() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=False)
        committer = GroupCommitter(storage)
        committer.start()

        async def writer(index: int) -> None:
            for round_number in range(20):
                storage.put(index, round_number.to_bytes(2, "big"), a_record())
                put_number = storage.puts
                await committer.durable()
                assert storage.covered_puts >= put_number

        await asyncio.gather(*(writer(i) for i in range(64)))
        stats = committer.stats()
        assert stats.writes_total == 64 * 20 and stats.syncs_total == storage.syncs_finished
        await committer.close()

    asyncio.run(main())


def test_sync_failure_reaches_its_waiters_and_the_next_sync_recovers() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=False)
        storage.failures.append(OSError(5, "Input/output error"))
        committer = GroupCommitter(storage)
        committer.start()
        results = await asyncio.gather(
            committer.durable(), committer.durable(), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed, "the failed sync's waiters must hear about it"
        for failure in failed:
            assert isinstance(failure, SyncFailed)
            assert isinstance(failure.__cause__, OSError)
            assert "Input/output error" in str(failure)
        await committer.durable()  # the next sync succeeds
        assert committer.stats().sync_failures_total == 1
        await committer.close()

    asyncio.run(main())


def test_overloaded_past_waiters_max() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=True)
        committer = GroupCommitter(storage, waiters_max=3)
        committer.start()
        waiters = [asyncio.create_task(committer.durable()) for _ in range(3)]
        await until(lambda: committer.stats().waiters_pending == 3, "three waiters")
        with pytest.raises(Overloaded) as caught:
            await committer.durable()
        assert caught.value.resource == "group_commit_waiters" and caught.value.limit == 3
        storage.open_all()
        await asyncio.gather(*waiters)
        await committer.durable()  # room again once the syncs finished
        await committer.close()

    asyncio.run(main())


def test_cancelled_waiter_does_not_disturb_others() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=True)
        committer = GroupCommitter(storage)
        committer.start()
        cancelled = asyncio.create_task(committer.durable())
        kept = asyncio.create_task(committer.durable())
        await until(lambda: committer.stats().waiters_pending == 2, "two waiters")
        cancelled.cancel()
        storage.open_all()
        await kept
        assert cancelled.cancelled()
        await committer.close()
        assert committer.stats().waiters_pending == 0

    asyncio.run(main())


def test_close_drains_waiters_then_refuses() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=True)
        committer = GroupCommitter(storage)
        committer.start()
        waiter = asyncio.create_task(committer.durable())
        await until(lambda: storage.syncs_started == 1, "sync 1 to start")
        late = asyncio.create_task(committer.durable())
        await until(lambda: committer.stats().waiters_pending == 2, "the late waiter")
        closing = asyncio.create_task(committer.close())
        closing_too = asyncio.create_task(committer.close())
        await asyncio.sleep(0)
        assert not closing.done() and not closing_too.done()
        with pytest.raises(StorageClosed):
            await committer.durable()
        storage.release(1)
        await until(lambda: storage.syncs_started == 2, "the final sync")
        assert not closing.done()
        storage.release(2)
        await closing
        await closing_too
        assert waiter.done() and late.done() and late.exception() is None
        assert storage.syncs_finished == 2
        await committer.close()  # idempotent

    asyncio.run(main())


def test_not_durable_mode_returns_at_once() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=True)
        committer = GroupCommitter(storage, durable=False)
        committer.start()
        await asyncio.gather(*(committer.durable() for _ in range(10)))
        await committer.close()
        assert storage.syncs_started == 0 and committer.stats().syncs_total == 0

    asyncio.run(main())


def test_group_commit_over_rocks(tmp_path: Path) -> None:
    async def main() -> None:
        storage = RocksStorage.open(tmp_path / "db")
        committer = GroupCommitter(storage)
        committer.start()

        async def writer(index: int) -> None:
            for round_number in range(10):
                storage.put(index, round_number.to_bytes(2, "big"), a_record())
                await committer.durable()

        await asyncio.gather(*(writer(i) for i in range(32)))
        await committer.close()
        stats = committer.stats()
        assert stats.writes_total == 320 and 1 <= stats.syncs_total <= 320
        assert storage.get(31, (9).to_bytes(2, "big")) == a_record()
        storage.close()

    asyncio.run(main())


def test_a_full_disk_fails_waiters_with_storage_full_and_close_is_clean() -> None:
    async def main() -> None:
        storage = GatedStorage(gated=False)
        full = StorageFull(path="/data/db", free_bytes=4096, reason="No space left on device")
        storage.failures.append(full)
        committer = GroupCommitter(storage)
        committer.start()
        storage.put(0, b"k", a_record())
        results = await asyncio.gather(
            committer.durable(), committer.durable(), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed, "the failed sync's waiters must hear about it"
        for failure in failed:
            assert isinstance(failure, StorageFull) and not isinstance(failure, SyncFailed)
            assert failure is not full and failure.__cause__ is full
            assert failure.http_status == 507
            assert (failure.path, failure.free_bytes) == ("/data/db", 4096)
        assert len({id(f) for f in failed}) == len(failed), "one error object per waiter"
        storage.failures.append(full)  # the final sync of a graceful stop fails too
        storage.gated = True
        syncs_before = storage.syncs_started
        waiter = asyncio.create_task(committer.durable())
        await until(lambda: storage.syncs_started == syncs_before + 1, "the final sync")
        closing = asyncio.create_task(committer.close())
        storage.open_all()
        await closing  # must not raise
        assert isinstance(waiter.exception(), StorageFull)
        assert committer.stats().sync_failures_total == 2

    asyncio.run(main())
