"""This node's replica: its own copy of the keys it holds, and how writes land on it.

Owns every read-merge-write against local storage. Each one runs with no
``await`` between reading the old record and putting the new one, so on the
single event-loop thread it is atomic per key. A write is acknowledged only
after the group committer reports it durable.

The coordinating replica mints new writes (``write_new``): it folds the
context's and the stored record's timestamps into its HLC first, so a write
that saw another always carries a larger timestamp. Other replicas only merge
(``apply``), which is a join, so order and duplication do not matter.
Must never: acknowledge before durable, or decode anything with pickle.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from dynakv.core.record import (
    ConflictPolicy,
    Context,
    Record,
    Sibling,
    make_write,
    merge,
    record_problem,
)
from dynakv.core.ring import partition_of
from dynakv.core.versions import Hlc, hlc_physical_ms
from dynakv.errors import InvalidRequest, RemoteProtocolError
from dynakv.net.messages import Message, ReadReply, ReadRequest, WriteReply, WriteRequest
from dynakv.node.clock import Clock
from dynakv.storage.base import Storage

log = logging.getLogger(__name__)


class Committer(Protocol):
    """Group commit as the replica sees it: ``storage.group_commit.GroupCommitter``,
    or the simulator's, which loses unsynced writes on a simulated crash."""

    async def durable(self) -> None: ...

    def durable_future(self) -> asyncio.Future[None] | None: ...


@dataclass(frozen=True, slots=True)
class NewWrite:
    record: Record  # the replica's record after the write (what is sent to the others)
    written: Sibling  # the write itself


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
        clock_offset_ms_max: int = 60_000,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.committer = committer
        self.clock = clock
        self.policy = policy
        self.tombstone_grace_s = tombstone_grace_s
        self.hlc = Hlc()
        self.partition_count = partition_count
        self.clock_offset_ms_max = clock_offset_ms_max
        self.key_bytes_max = key_bytes_max

    def read(self, partition: int, key: bytes) -> Record | None:
        return self.storage.get(partition, key)

    def write_new(
        self,
        partition: int,
        key: bytes,
        *,
        value: bytes | None,
        context: Context,
        ttl_s: int,
    ) -> NewWrite:
        """Mint one write on top of ``context`` and put it (not yet durable)."""
        now_ms = self.clock.now_ms()
        ahead_ms = hlc_physical_ms(context.max_timestamp) - now_ms
        if ahead_ms > self.clock_offset_ms_max:
            raise InvalidRequest(
                f"context is {ahead_ms} ms ahead of this node's clock; the limit is "
                f"{self.clock_offset_ms_max} ms (clock_offset_ms_max)",
                field="X-Dynakv-Context",
                ahead_ms=ahead_ms,
                max=self.clock_offset_ms_max,
            )
        local = self.storage.get(partition, key)
        self.hlc.observe(context.max_timestamp)
        if local is not None:
            self.hlc.observe(local.max_timestamp())
        timestamp = self.hlc.tick(now_ms)
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
        )
        self.storage.put(partition, key, record)
        written = next(
            s for s in record.siblings if s.timestamp == timestamp and s.node == self.node_id
        )
        return NewWrite(record=record, written=written)

    def apply(self, partition: int, key: bytes, incoming: Record) -> Record:
        """Merge a record from elsewhere into ours; put only if it changed anything."""
        local = self.storage.get(partition, key)
        self.hlc.observe(incoming.max_timestamp())
        merged = merge(local, incoming, self.policy)
        assert merged is not None
        if merged != local:
            self.storage.put(partition, key, merged)
        return merged

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
            return ReadReply(record=self.read(message.partition, message.key))
        if isinstance(message, WriteRequest):
            self._check_address(message.partition, message.key)
            problem = record_problem(message.record)
            if problem is not None:
                raise RemoteProtocolError(f"invalid record from peer: {problem}")
            self.apply(message.partition, message.key, message.record)
            return _after(self.committer.durable_future(), WriteReply())
        raise AssertionError(f"not a replica message: {type(message).__name__}")


def _bad_address(
    partition: int, key: bytes, partition_count: int, key_bytes_max: int
) -> str | None:
    if not 1 <= len(key) <= key_bytes_max:
        return f"key of {len(key)} bytes is outside 1..{key_bytes_max}"
    if partition != partition_of(key, partition_count):
        return f"partition {partition} is not the key's partition"
    return None


def _after(
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
