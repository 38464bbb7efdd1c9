"""A simulated disk: what survives a crash, and a group commit in virtual time.

``SimStorage`` is a ``MemoryStorage`` (the live view a node reads) plus the
durable image: every write a node makes (a record, a Paxos acceptor state
with or without the committed record beside it, a meta value such as the
HLC high-water mark) lands in the volatile layer, and ``sync()`` makes all
of them durable at once. A crash keeps exactly the durable image
(``DiskImage``); a restarted node is built over it (``SimStorage(image)``).
``put_paxos`` with a record is one batch: after a crash, both or neither.

``SimCommitter`` is the ``Committer`` Protocol: a waiter resolves after one
seeded 0.2-2 ms virtual fsync that calls ``storage.sync()``, serving every
waiter queued meanwhile (group commit); a crash drops pending waiters
unresolved.

Invariants: what a restarted node reads is exactly what was synced before
the crash, for records, acceptor states and meta alike (a hinted record
like any other; the hint itself is not kept, since no handoff runs). The
write paths the simulator does not model (raw batches from streaming,
partition drops, the sweeper's purges) refuse with an assertion rather than
silently escape the crash model. Must never: let an unsynced write survive a crash,
or lose a synced one (``ack-before-sync`` and ``acceptor-forgets-on-restart``
are planted on purpose, outside this class's rules).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Protocol

from dynakv.core.record import Record
from dynakv.sim.loop import VirtualLoop
from dynakv.storage.memory import MemoryStorage

FSYNC_MS_MIN = 0.2
FSYNC_MS_MAX = 2.0
Address = tuple[int, bytes]  # (partition, key)


@dataclass
class DiskImage:
    """What a node's disk holds durably: records, acceptor states (None: deleted), meta."""

    records: dict[Address, Record] = field(default_factory=dict)
    paxos: dict[Address, bytes | None] = field(default_factory=dict)
    meta: dict[str, bytes | None] = field(default_factory=dict)


class SimStorage(MemoryStorage):
    """``MemoryStorage`` whose writes are lost on a crash unless ``sync`` ran after them."""

    def __init__(self, image: DiskImage | None = None) -> None:
        super().__init__()
        image = image if image is not None else DiskImage()
        self.durable: dict[Address, Record] = dict(image.records)
        self.durable_paxos: dict[Address, bytes | None] = dict(image.paxos)
        self.durable_meta: dict[str, bytes | None] = dict(image.meta)
        self.unsynced: dict[Address, Record] = {}
        self.unsynced_paxos: dict[Address, bytes | None] = {}
        self.unsynced_meta: dict[str, bytes | None] = {}
        self.syncs = 0  # a write made after the last sync is lost if the node crashes
        for (partition, key), record in sorted(self.durable.items()):
            super().put(partition, key, record)
        for (partition, key), state in sorted(self.durable_paxos.items()):
            if state is not None:
                super().put_paxos(partition, key, state)
        for name, value in sorted(self.durable_meta.items()):
            if value is not None:
                super().put_meta(name, value)

    def image(self) -> DiskImage:
        """What survives a crash now."""
        return DiskImage(dict(self.durable), dict(self.durable_paxos), dict(self.durable_meta))

    def put(self, partition: int, key: bytes, record: Record) -> None:
        super().put(partition, key, record)
        self.unsynced[(partition, key)] = record

    def put_paxos(
        self, partition: int, key: bytes, state: bytes, *, record: Record | None = None
    ) -> None:
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
        """The record is modelled like any put; the hint beside it is not kept across a
        crash (no handoff runs in the simulator, so nothing reads it)."""
        super().put_hinted(partition, key, record, owner=owner, created_ms=created_ms)
        self.unsynced[(partition, key)] = record

    def put_meta(self, name: str, value: bytes) -> None:
        super().put_meta(name, value)
        self.unsynced_meta[name] = bytes(value)

    def delete_meta(self, name: str) -> None:
        super().delete_meta(name)
        self.unsynced_meta[name] = None

    def sync(self) -> None:
        super().sync()
        self.durable.update(self.unsynced)
        self.durable_paxos.update(self.unsynced_paxos)
        self.durable_meta.update(self.unsynced_meta)
        self.unsynced.clear()
        self.unsynced_paxos.clear()
        self.unsynced_meta.clear()
        self.syncs += 1

    # -- not modelled: fail loudly rather than escape the crash model ----------------

    def put_raw_batch(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        raise AssertionError("raw batches are not modelled by the simulated disk")

    def delete_partition(self, partition: int) -> None:
        raise AssertionError("partition drops are not modelled by the simulated disk")

    def purge_if_due(self, partition: int, key: bytes, now_ms: int) -> bool:
        raise AssertionError("purges are not modelled by the simulated disk")


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
