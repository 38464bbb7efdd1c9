"""A simulated disk: what survives a crash, and a group commit in virtual time.

``SimStorage`` is a ``MemoryStorage`` (the live view a node reads) plus the
durable image: every write a node makes lands in the volatile layer, and
``sync()`` makes all of them durable at once. That covers every write path
a node has: records (puts, hinted puts, streamed raw batches, the sweeper's
purges, a dropped partition), hints (kept with their record; deleted once
delivered or expired), Paxos acceptor states (with or without the committed
record beside them), and meta (the HLC high-water mark, the claimant's
register, the installed ring, the Merkle trees' clean-stop stamp). A crash
keeps exactly the durable image (``DiskImage``); a restarted node is built
over it (``SimStorage(image)``). ``put_paxos`` with a record, and
``put_hinted`` (record and hint), are one batch each: after a crash, both or
neither.

``SimCommitter`` is the ``Committer`` Protocol: a waiter resolves after one
seeded 0.2-2 ms virtual fsync that calls ``storage.sync()``, serving every
waiter queued meanwhile (group commit); a crash drops pending waiters
unresolved.

Invariants: what a restarted node reads is exactly what was synced before
the crash, for records, hints, acceptor states and meta alike; a deletion
(purge, partition drop, hint delivered) is a write like any other and is
lost unsynced. Must never: let an unsynced write survive a crash, or lose a
synced one (``ack-before-sync`` and ``acceptor-forgets-on-restart`` are
planted on purpose, outside this class's rules).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dynakv.core.record import Record, decode_record
from dynakv.sim.loop import VirtualLoop
from dynakv.storage.memory import MemoryStorage

FSYNC_MS_MIN = 0.2
FSYNC_MS_MAX = 2.0
Address = tuple[int, bytes]  # (partition, key)
HintAddress = tuple[str, int, bytes]  # (owner, partition, key)


@dataclass
class DiskImage:
    """What a node's disk holds durably: records, acceptor states (None: deleted), meta,
    and hints (their creation time; the record is the one stored at the address)."""

    records: dict[Address, Record] = field(default_factory=dict)
    paxos: dict[Address, bytes | None] = field(default_factory=dict)
    meta: dict[str, bytes | None] = field(default_factory=dict)
    hints: dict[HintAddress, int] = field(default_factory=dict)


class SimStorage(MemoryStorage):
    """``MemoryStorage`` whose writes are lost on a crash unless ``sync`` ran after them."""

    # Told of every record put over a live one: (partition, key, old, new). The
    # simulator's checker of "a replica never goes back" (observation only).
    on_replace: Callable[[int, bytes, Record, Record], None] | None = None

    def __init__(self, image: DiskImage | None = None) -> None:
        super().__init__()
        image = image if image is not None else DiskImage()
        self.durable: dict[Address, Record] = dict(image.records)
        self.durable_paxos: dict[Address, bytes | None] = dict(image.paxos)
        self.durable_meta: dict[str, bytes | None] = dict(image.meta)
        self.durable_hints: dict[HintAddress, int] = dict(image.hints)
        self.unsynced: dict[Address, Record | None] = {}  # None: deleted
        self.unsynced_paxos: dict[Address, bytes | None] = {}
        self.unsynced_meta: dict[str, bytes | None] = {}
        self.unsynced_hints: dict[HintAddress, int | None] = {}
        self.syncs = 0  # a write made after the last sync is lost if the node crashes
        for (partition, key), record in sorted(self.durable.items()):
            super().put(partition, key, record)
        for (partition, key), state in sorted(self.durable_paxos.items()):
            if state is not None:
                super().put_paxos(partition, key, state)
        for name, value in sorted(self.durable_meta.items()):
            if value is not None:
                super().put_meta(name, value)
        for (owner, partition, key), created_ms in sorted(self.durable_hints.items()):
            hinted = self.durable.get((partition, key))
            if hinted is not None:  # else purged since: handoff would drop the hint
                super().put_hinted(partition, key, hinted, owner=owner, created_ms=created_ms)

    def image(self) -> DiskImage:
        """What survives a crash now."""
        return DiskImage(
            dict(self.durable),
            dict(self.durable_paxos),
            dict(self.durable_meta),
            dict(self.durable_hints),
        )

    def _observe(self, partition: int, key: bytes, record: Record) -> None:
        if self.on_replace is not None:
            old = super().get(partition, key)
            if old is not None:
                self.on_replace(partition, key, old, record)

    def put(self, partition: int, key: bytes, record: Record) -> None:
        self._observe(partition, key, record)
        super().put(partition, key, record)
        self.unsynced[(partition, key)] = record

    def put_paxos(
        self, partition: int, key: bytes, state: bytes, *, record: Record | None = None
    ) -> None:
        if record is not None:
            self._observe(partition, key, record)
        super().put_paxos(partition, key, state, record=record)
        self.unsynced_paxos[(partition, key)] = bytes(state)
        if record is not None:
            self.unsynced[(partition, key)] = record

    def delete_paxos(self, partition: int, key: bytes) -> None:
        super().delete_paxos(partition, key)
        self.unsynced_paxos[(partition, key)] = None

    def put_hinted(
        self, partition: int, key: bytes, record: Record, *, owner: str, created_ms: int
    ) -> None:
        self._observe(partition, key, record)
        super().put_hinted(partition, key, record, owner=owner, created_ms=created_ms)
        self.unsynced[(partition, key)] = record
        self.unsynced_hints[(owner, partition, key)] = created_ms

    def delete_hint(self, owner: str, partition: int, key: bytes) -> bool:
        deleted = super().delete_hint(owner, partition, key)
        if deleted:
            self.unsynced_hints[(owner, partition, key)] = None
        return deleted

    def put_raw_batch(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        if self.on_replace is not None:
            for key, data in items:
                self._observe(partition, key, decode_record(data))
        super().put_raw_batch(partition, items)
        for key, _ in items:
            self.unsynced[(partition, key)] = super().get(partition, key)

    def delete_partition(self, partition: int) -> None:
        """Every record, acceptor state and hint of ``partition`` goes (each was put
        through this class, so each is in the durable or the unsynced layer)."""
        super().delete_partition(partition)
        for address in [*self.durable, *self.unsynced]:
            if address[0] == partition:
                self.unsynced[address] = None
        for address in [*self.durable_paxos, *self.unsynced_paxos]:
            if address[0] == partition:
                self.unsynced_paxos[address] = None
        for hint in [*self.durable_hints, *self.unsynced_hints]:
            if hint[1] == partition:
                self.unsynced_hints[hint] = None

    def purge_if_due(self, partition: int, key: bytes, now_ms: int) -> bool:
        purged = super().purge_if_due(partition, key, now_ms)
        if purged:
            self.unsynced[(partition, key)] = None
        return purged

    def put_meta(self, name: str, value: bytes) -> None:
        super().put_meta(name, value)
        self.unsynced_meta[name] = bytes(value)

    def delete_meta(self, name: str) -> None:
        super().delete_meta(name)
        self.unsynced_meta[name] = None

    def sync(self) -> None:
        super().sync()
        for address, record in self.unsynced.items():
            if record is None:
                self.durable.pop(address, None)
            else:
                self.durable[address] = record
        for hint, created_ms in self.unsynced_hints.items():
            if created_ms is None:
                self.durable_hints.pop(hint, None)
            else:
                self.durable_hints[hint] = created_ms
        self.durable_paxos.update(self.unsynced_paxos)
        self.durable_meta.update(self.unsynced_meta)
        self.unsynced.clear()
        self.unsynced_paxos.clear()
        self.unsynced_meta.clear()
        self.unsynced_hints.clear()
        self.syncs += 1


class CommitterLike(Protocol):
    async def durable(self) -> None: ...

    def durable_future(self) -> asyncio.Future[None] | None: ...

    def crash(self) -> None: ...


class SimCommitter:
    """Group commit in virtual time: one seeded fsync delay serves every waiter queued."""

    def __init__(self, storage: SimStorage, loop: VirtualLoop, rng: random.Random) -> None:
        self.storage = storage
        self.loop = loop
        self.rng = rng
        self.waiters: list[asyncio.Future[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.crashed = False

    async def durable(self) -> None:
        waiter = self.durable_future()
        if waiter is not None:
            await waiter

    def durable_future(self) -> asyncio.Future[None] | None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self.crashed:
            return waiter  # never resolves: the process is gone
        self.waiters.append(waiter)
        if self.timer is None:
            delay_ms = self.rng.uniform(FSYNC_MS_MIN, FSYNC_MS_MAX)
            self.timer = self.loop.call_later(delay_ms / 1000, self.sync_now)
        return waiter

    def sync_now(self) -> None:
        self.timer = None
        self.storage.sync()
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def crash(self) -> None:
        self.crashed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiters.clear()


class AckBeforeSyncCommitter(SimCommitter):
    """PLANTED BUG: acknowledges at once; the fsync happens only every 10 virtual seconds."""

    def durable_future(self) -> asyncio.Future[None] | None:
        if self.timer is None and not self.crashed:
            self.timer = self.loop.call_later(10.0, self.sync_now)
        return None
