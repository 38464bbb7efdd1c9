"""This node's replica: its own copy of the keys it holds, and how writes land on it.

Owns every read-merge-write against local storage. Each one runs with no
``await`` between reading the old record and putting the new one, so on the
single event-loop thread it is atomic per key. A write is acknowledged only
after the group committer reports it durable.

The coordinating replica mints new writes (``write_new``): it folds the
context's and the stored record's timestamps into its HLC first, so a write
that saw another always carries a larger timestamp. Other replicas only merge
(``apply``), which is a join, so order and duplication do not matter.

Everything from outside is checked where it enters, against ``RecordBounds``
and this node's own wall clock: a client's context (400 naming the field), a
peer's record (the request is refused and the peer reported in status), and a
record read from disk (quarantined: logged, reported, treated as absent, so it
is never served or propagated and the next write or repair replaces it). The
HLC never adopts a time more than ``clock_offset_ms_max`` ahead of the wall
clock. With a disk guard, a record carrying a live value is refused while the
disk is below its reserve; tombstones and reads go on.

The HLC never goes back across a restart: before minting a timestamp past
the persisted high-water mark (meta ``hlc_high_water_ms``), the replica
raises the mark ``HLC_HIGH_WATER_STEP_MS`` past it, in the same WAL as the
record, so every write that became durable lies below a durable mark; a
restarted node's HLC starts at the mark (at most one step ahead of its
wall clock). So a dot is never reused, even after its key was purged and
the wall clock stepped back.
Must never: acknowledge before durable, or decode anything with pickle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dynakv.core.idempotency import IdempotencyKey
from dynakv.core.record import (
    ConflictPolicy,
    Context,
    Record,
    RecordBounds,
    Sibling,
    applied_context,
    context_bounds_problem,
    make_write,
    merge,
    record_bounds_problem,
    record_problem,
)
from dynakv.core.ring import partition_of
from dynakv.core.versions import LOGICAL_BITS, Hlc, hlc_ceiling, hlc_physical_ms
from dynakv.errors import InsufficientStorage, InvalidRequest, Overloaded, RemoteProtocolError
from dynakv.net.messages import Message, ReadReply, ReadRequest, WriteReply, WriteRequest
from dynakv.node.clock import Clock
from dynakv.node.intake import PeerOffenses, Quarantine
from dynakv.node.merkle_trees import TreeKeeper
from dynakv.storage.base import Storage, StorageCorruption

log = logging.getLogger(__name__)

HLC_HIGH_WATER_META = "hlc_high_water_ms"
HLC_HIGH_WATER_STEP_MS = 1000


class Committer(Protocol):
    """Group commit as the replica sees it: ``storage.group_commit.GroupCommitter``,
    or the simulator's, which loses unsynced writes on a simulated crash."""

    async def durable(self) -> None: ...

    def durable_future(self) -> asyncio.Future[None] | None: ...


class DiskGuard(Protocol):
    """``storage.diskspace.DiskGuard`` as the replica sees it."""

    def check_value_write(self) -> None:
        """Raise ``InsufficientStorage`` while the disk is below its reserve."""


@dataclass(frozen=True, slots=True)
class NewWrite:
    record: Record  # the replica's record after the write (what is sent to the others)
    written: Sibling  # the write itself
    # False: a retry of a write already minted here under its idempotency key;
    # ``record`` is the stored one (still to be replicated), nothing was put.
    applied: bool = True
    replayed_context: Context | None = None  # for a retry: the original's context

    @property
    def context(self) -> Context:
        """What the client gets back: the write's clock and timestamp."""
        if self.replayed_context is not None:
            return self.replayed_context
        return Context(clock=self.written.clock(), max_timestamp=self.written.timestamp)


class LocalReplica:
    def __init__(
        self,
        *,
        node_id: str,
        storage: Storage,
        committer: Committer,
        clock: Clock,
        policy: ConflictPolicy,
        tombstone_grace_s: int,
        partition_count: int,
        key_bytes_max: int,
        bounds: RecordBounds | None = None,
        disk_guard: DiskGuard | None = None,
        hints_bytes_max: int = 1 << 30,
        trees: TreeKeeper | None = None,
    ) -> None:
        """``trees``: the Merkle trees anti-entropy compares, kept on every put."""
        self.node_id = node_id
        self.storage = storage
        self.committer = committer
        self.clock = clock
        self.policy = policy
        self.tombstone_grace_s = tombstone_grace_s
        stored = storage.get_meta(HLC_HIGH_WATER_META)
        self.hlc_high_water_ms = int.from_bytes(stored, "big") if stored else 0
        self.hlc = Hlc(self.hlc_high_water_ms << LOGICAL_BITS)
        self.partition_count = partition_count
        self.bounds = bounds if bounds is not None else RecordBounds()
        self.key_bytes_max = key_bytes_max
        self.disk_guard = disk_guard
        self.hints_bytes_max = hints_bytes_max
        self.trees = trees
        self.offenses = PeerOffenses()
        self.quarantine = Quarantine()
        # The ring epoch this node routes by, said in every reply (the node sets it).
        self.ring_epoch: Callable[[], int] = lambda: 0

    def read(self, partition: int, key: bytes) -> Record | None:
        """This replica's record of ``key``; a stored record that breaks the rules
        is quarantined and read as absent."""
        return self._read_checked(partition, key, self.clock.now_ms())

    def _read_checked(self, partition: int, key: bytes, now_ms: int) -> Record | None:
        try:
            record = self.storage.get(partition, key)
        except StorageCorruption as exc:
            self.quarantine.add(partition, key, exc.reason)
            if self.trees is not None:
                self.trees.invalidate(partition)
            return None
        if record is None:
            return None
        problem = record_bounds_problem(record, self.bounds, now_ms, check_values=False)
        if problem is not None:
            self.quarantine.add(partition, key, problem)
            if self.trees is not None:
                self.trees.invalidate(partition)
            return None
        return record

    def check_peer_record(self, sender: str, record: Record) -> str | None:
        """Why a record a peer sent (in a write or a read reply) must be refused, or
        None. A refusal is reported against ``sender``."""
        now_ms = self.clock.now_ms()
        problem = record_problem(record) or record_bounds_problem(record, self.bounds, now_ms)
        if problem is not None:
            self.offenses.note(sender, problem, now_ms)
        return problem

    def _put(
        self, partition: int, key: bytes, record: Record, old: Record | None, *, owner: str = ""
    ) -> None:
        """Store ``record`` over ``old``; with ``owner``, as a fallback's hinted copy
        (record and hint in one batch). Either way the key leaves quarantine and
        the Merkle tree learns the change."""
        if owner:
            if self.storage.hints_bytes_total >= self.hints_bytes_max:
                raise Overloaded(resource="hints_bytes", limit=self.hints_bytes_max)
            now_ms = self.clock.now_ms()
            self.storage.put_hinted(partition, key, record, owner=owner, created_ms=now_ms)
        else:
            self.storage.put(partition, key, record)
        self.quarantine.release(partition, key)
        if self.trees is not None:
            self.trees.on_write(partition, key, old, record)

    def write_new(
        self,
        partition: int,
        key: bytes,
        *,
        value: bytes | None,
        context: Context,
        ttl_s: int,
        idempotency: IdempotencyKey | None = None,
    ) -> NewWrite:
        """Mint one write on top of ``context`` and put it (not yet durable).

        With ``idempotency``: if this replica's record already holds a write minted
        under that key and not expired, nothing is minted or put; the answer
        carries the stored record (to replicate again) and the original's context.
        """
        now_ms = self.clock.now_ms()
        problem = context_bounds_problem(context, self.bounds, now_ms)
        if problem is not None:
            raise InvalidRequest(
                problem, field="X-Dynakv-Context", max_ms=self.bounds.clock_offset_ms_max
            )
        if value is not None and self.disk_guard is not None:
            self.disk_guard.check_value_write()
        local = self._read_checked(partition, key, now_ms)
        if idempotency is not None and local is not None:
            physical_ms = max(now_ms, hlc_physical_ms(self.hlc.last))
            replayed = applied_context(local, idempotency.hash, physical_ms)
            if replayed is not None:
                return _replayed(local, replayed)
        ceiling = hlc_ceiling(now_ms, self.bounds.clock_offset_ms_max)
        observed = self.hlc.observe(context.max_timestamp, ceiling)
        if local is not None:
            observed = self.hlc.observe(local.max_timestamp(), ceiling) and observed
        assert observed, "contexts and stored records were checked against the ceiling"
        timestamp, _ = self.tick(now_ms)
        if value is None:
            expires_at_ms = now_ms + self.tombstone_grace_s * 1000
        else:
            expires_at_ms = now_ms + ttl_s * 1000 if ttl_s > 0 else 0
        record = make_write(
            local,
            node_id=self.node_id,
            value=value,
            context=context,
            timestamp=timestamp,
            expires_at_ms=expires_at_ms,
            policy=self.policy,
            idempotency_hash=0 if idempotency is None else idempotency.hash,
            idempotency_expires_at_ms=(
                0 if idempotency is None else hlc_physical_ms(timestamp) + idempotency.window_ms
            ),
        )
        self._put(partition, key, record, local)
        written = next(
            s for s in record.siblings if s.timestamp == timestamp and s.node == self.node_id
        )
        return NewWrite(record=record, written=written)

    def tick(self, now_ms: int) -> tuple[int, bool]:
        """A new HLC timestamp to mint with, and whether the persisted high-water
        mark had to be raised for it (then the mark is in the WAL, durable with
        the next group commit, before anything minted with it is sent)."""
        timestamp = self.hlc.tick(now_ms)
        if hlc_physical_ms(timestamp) < self.hlc_high_water_ms:
            return timestamp, False
        self.hlc_high_water_ms = hlc_physical_ms(timestamp) + HLC_HIGH_WATER_STEP_MS
        self.storage.put_meta(HLC_HIGH_WATER_META, self.hlc_high_water_ms.to_bytes(8, "big"))
        return timestamp, True

    def apply(self, partition: int, key: bytes, incoming: Record, *, hint_for: str = "") -> Record:
        """Merge a record from elsewhere (checked by ``check_peer_record``) into
        ours; put only if it changed anything. With ``hint_for`` this node is a
        fallback: the record and a hint naming that home replica are written in
        one batch (even when the record did not change: the owner still needs it)."""
        local = self.read(partition, key)
        ceiling = hlc_ceiling(self.clock.now_ms(), self.bounds.clock_offset_ms_max)
        # A record checked a moment ago may sit a tick past a ceiling that has
        # not moved since; it is not adopted into the clock, only merged.
        self.hlc.observe(incoming.max_timestamp(), ceiling)
        merged = merge(local, incoming, self.policy)
        assert merged is not None
        if merged != local or hint_for:
            if self.disk_guard is not None:
                self._check_disk(merged, local)
            self._put(partition, key, merged, local, owner=hint_for)
        return merged

    def _check_disk(self, merged: Record, local: Record | None) -> None:
        """Refuse a merge that stores a value this replica did not hold while the
        disk is below its reserve. The guard is asked first: it is cheap, and the
        comparison of dots is needed only when it refuses."""
        assert self.disk_guard is not None
        try:
            self.disk_guard.check_value_write()
        except InsufficientStorage:
            if carries_new_values(merged, local):
                raise

    def _check_address(self, partition: int, key: bytes) -> None:
        """A peer's (partition, key) must be one this cluster could have sent:
        the wrong partition would plant a record no read can reach."""
        problem = _bad_address(partition, key, self.partition_count, self.key_bytes_max)
        if problem is not None:
            raise RemoteProtocolError(f"invalid request from peer: {problem}")

    async def durable(self) -> None:
        await self.committer.durable()

    def handle(self, message: Message, sender: str) -> Message | asyncio.Future[Message]:
        """The RPC handler for replica messages: a read answers at once; a merge
        answers with a Future that resolves once it is durable (no task per request)."""
        if isinstance(message, ReadRequest):
            self._check_address(message.partition, message.key)
            return ReadReply(self.read(message.partition, message.key), self.ring_epoch())
        if isinstance(message, WriteRequest):
            self._check_address(message.partition, message.key)
            problem = self.check_peer_record(sender, message.record)
            if problem is not None:
                raise RemoteProtocolError(f"invalid record from peer {sender}: {problem}")
            hint_for = message.hint_for
            if hint_for == self.node_id:
                hint_for = ""  # the owner itself: a plain write
            elif hint_for and len(hint_for) > self.bounds.node_id_bytes_max:
                raise RemoteProtocolError(f"hint for a node id of {len(hint_for)} characters")
            self.apply(message.partition, message.key, message.record, hint_for=hint_for)
            return reply_when_durable(
                self.committer.durable_future(), WriteReply(self.ring_epoch())
            )
        raise AssertionError(f"not a replica message: {type(message).__name__}")


def _replayed(local: Record, context: Context) -> NewWrite:
    """A retry's answer: nothing minted; the stored record goes out again. ``written``
    is the original write when it is still a sibling (else the record's first)."""
    dots = dict(context.clock)
    original = next((s for s in local.siblings if dots.get(s.node) == s.counter), local.siblings[0])
    return NewWrite(record=local, written=original, applied=False, replayed_context=context)


def carries_new_values(merged: Record, local: Record | None) -> bool:
    """The merge stores a value this replica did not hold (tombstones always pass)."""
    held = set() if local is None else {(s.node, s.counter) for s in local.siblings}
    return any(s.value is not None and (s.node, s.counter) not in held for s in merged.siblings)


def _bad_address(
    partition: int, key: bytes, partition_count: int, key_bytes_max: int
) -> str | None:
    if not 1 <= len(key) <= key_bytes_max:
        return f"key of {len(key)} bytes is outside 1..{key_bytes_max}"
    if partition != partition_of(key, partition_count):
        return f"partition {partition} is not the key's partition"
    return None


def reply_when_durable(
    waiter: asyncio.Future[None] | None, reply: Message
) -> Message | asyncio.Future[Message]:
    """``reply`` once ``waiter`` resolves (at once if there is nothing to wait for)."""
    if waiter is None:
        return reply
    answer: asyncio.Future[Message] = waiter.get_loop().create_future()

    def on_durable(done: asyncio.Future[None]) -> None:
        if answer.done():
            return
        if done.cancelled():
            answer.cancel()
        elif (error := done.exception()) is not None:
            answer.set_exception(error)
        else:
            answer.set_result(reply)

    waiter.add_done_callback(on_durable)
    return answer
