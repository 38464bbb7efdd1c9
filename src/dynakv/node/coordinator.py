"""The coordinator: carries one client get/put/delete across the key's replicas.

Write path: a node in the key's preference list coordinates (any other node
forwards the write to one that is, since only a replica may mint the write's
dot). It mints the write locally, waits until that is durable (persist before
send), sends the new record to the other replicas and answers once the
``Tally`` says so: W durable acks, a definite ``QuorumNotReached``, or
``OutcomeUnknown`` when a replica may have applied it but did not answer.

Read path: ``one`` on a replica is a local read. Otherwise every replica is
asked, the first R replies are merged and answered, and every replica that
replied with a stale record, including late ones, gets the merged record
(read repair), bounded by ``read_repair_inflight_max``.

Replies still outstanding when a request is decided keep running in the
background, each bounded by the RPC timeout; nothing here waits unbounded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from dynakv.api.backend import GetResult
from dynakv.config import ClusterConfig
from dynakv.core.consistency import Consistency
from dynakv.core.quorum import Outcome, ReadTally, Tally
from dynakv.core.record import Context, Record, context_of, merge
from dynakv.core.ring import Ring, partition_of
from dynakv.errors import (
    DynakvError,
    OutcomeUnknown,
    Overloaded,
    PeerUnreachable,
    QuorumNotReached,
    RemoteError,
    RpcTimeout,
    rebuild_error,
)
from dynakv.net.messages import (
    CoordinateWrite,
    CoordinateWriteReply,
    Message,
    ReadReply,
    ReadRequest,
    WriteRequest,
)
from dynakv.net.rpc import PeerPool
from dynakv.node.replica import LocalReplica

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(
        self, *, cluster: ClusterConfig, ring: Ring, replica: LocalReplica, peers: PeerPool
    ) -> None:
        self.cluster = cluster
        self.ring = ring
        self.replica = replica
        self.peers = peers
        self.node_id = replica.node_id
        self.rpc_timeout_ms = cluster.timing.rpc_timeout_ms
        self.request_timeout_ms = cluster.timing.request_timeout_ms
        self._background: set[asyncio.Future[Message]] = set()
        self._inflight = 0
        self._repairs_inflight = 0
        self.repairs_sent = 0

    # -- writes -------------------------------------------------------------

    async def write(
        self,
        key: bytes,
        value: bytes | None,
        consistency: Consistency,
        ttl_s: int,
        context: Context,
    ) -> Context:
        partition = partition_of(key, self.ring.partition_count)
        preference_list = self.ring.preference_list(partition)
        if self.node_id not in preference_list:
            return await self._forward_write(preference_list, key, value, consistency, ttl_s,
                                             context)
        self._admit()
        try:
            new = self.replica.write_new(partition, key, value=value, context=context,
                                         ttl_s=ttl_s)
            await self.replica.durable()
            tally = Tally(preference_list, consistency.required(len(preference_list)))
            tally.on_success(self.node_id)
            request = WriteRequest(partition=partition, key=key, record=new.record)
            await self._fan_out(tally, request, on_reply=None)
            self._raise_unless_succeeded(tally, consistency)
        finally:
            self._inflight -= 1
        return Context(clock=new.written.clock(), max_timestamp=new.written.timestamp)

    async def handle_coordinate(self, message: CoordinateWrite) -> CoordinateWriteReply:
        """A write forwarded by a node outside the key's preference list."""
        new_context = await self.write(
            message.key, message.value, Consistency(message.consistency), message.ttl_s,
            message.context,
        )
        return CoordinateWriteReply(context=new_context)

    async def _forward_write(
        self,
        preference_list: tuple[str, ...],
        key: bytes,
        value: bytes | None,
        consistency: Consistency,
        ttl_s: int,
        context: Context,
    ) -> Context:
        request = CoordinateWrite(key=key, value=value, consistency=consistency.value,
                                  context=context, ttl_s=ttl_s)
        for node_id in preference_list:
            try:
                # Outlast the remote coordinator's own deadline, so its verdict
                # (success, 503 or 504) arrives rather than a local timeout.
                reply = await self.peers.call(node_id, request,
                                              self.request_timeout_ms + self.rpc_timeout_ms)
            except PeerUnreachable:
                continue  # never delivered: safe to try the next replica
            except RpcTimeout as exc:
                raise OutcomeUnknown(required=consistency.required(len(preference_list)),
                                     acked=0, consistency=consistency.value,
                                     timeout_ms=exc.timeout_ms) from exc
            except RemoteError as exc:
                raise _remote_to_local(exc) from exc
            assert isinstance(reply, CoordinateWriteReply), type(reply)
            return reply.context
        raise QuorumNotReached(required=consistency.required(len(preference_list)), acked=0,
                               consistency=consistency.value)

    # -- reads --------------------------------------------------------------

    async def read(self, key: bytes, consistency: Consistency) -> GetResult:
        partition = partition_of(key, self.ring.partition_count)
        preference_list = self.ring.preference_list(partition)
        local_is_replica = self.node_id in preference_list
        if consistency is Consistency.ONE and local_is_replica:
            return self._result(self.replica.read(partition, key))
        self._admit()
        try:
            tally = ReadTally(preference_list, consistency.required(len(preference_list)))
            state = _ReadState(self, partition, key)
            if local_is_replica:
                state.replies[self.node_id] = self.replica.read(partition, key)
                tally.on_success(self.node_id)
            await self._fan_out(tally, ReadRequest(partition=partition, key=key),
                                on_reply=state.on_reply)
            if tally.outcome() is not Outcome.SUCCEEDED:
                raise QuorumNotReached(required=tally.required, acked=tally.acked,
                                       consistency=consistency.value)
            merged = state.decide()
        finally:
            self._inflight -= 1
        return self._result(merged)

    def _result(self, record: Record | None) -> GetResult:
        now_ms = self.replica.clock.now_ms()
        values = record.visible_values(now_ms) if record is not None else []
        return GetResult(values=values, context=context_of(record))

    def repair(self, node_id: str, partition: int, key: bytes, record: Record) -> None:
        """Send ``record`` to a replica that answered with something older."""
        if node_id == self.node_id:
            self.replica.apply(partition, key, record)
            return
        if self._repairs_inflight >= self.cluster.limits.read_repair_inflight_max:
            log.debug("read repair shed node=%s partition=%d", node_id, partition)
            return
        self._repairs_inflight += 1
        self.repairs_sent += 1
        future = self.peers.start_call(node_id, WriteRequest(partition, key, record),
                                       self.rpc_timeout_ms)
        self._track(future)
        future.add_done_callback(functools.partial(self._on_repaired, node_id))

    def _on_repaired(self, node_id: str, future: asyncio.Future[Message]) -> None:
        self._repairs_inflight -= 1
        if not future.cancelled() and (error := future.exception()) is not None:
            log.debug("read repair failed node=%s error=%r", node_id, error)

    # -- fan-out machinery -----------------------------------------------------
    # Calls are Futures with callbacks, not tasks: a task per replica per request
    # cost more than the rest of the coordinator's work (see docs/benchmarks.md).

    async def _fan_out(
        self,
        tally: Tally,
        request: Message,
        on_reply: Callable[[str, Message], None] | None,
    ) -> None:
        """Send ``request`` to every pending replica; return once the tally decides."""
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[None] | None = None
        if tally.outcome() is Outcome.PENDING:
            decided = loop.create_future()
        # Otherwise decided already (W=1 on the coordinator): replicate in the background.
        for node_id in sorted(tally.pending):
            future = self.peers.start_call(node_id, request, self.rpc_timeout_ms)
            self._track(future)
            future.add_done_callback(
                functools.partial(self._on_answer, tally, node_id, on_reply, decided))
        if decided is None or decided.done():
            return
        timer = loop.call_later(self.request_timeout_ms / 1000, _on_deadline, tally, decided)
        try:
            await decided
        finally:
            timer.cancel()

    def _on_answer(
        self,
        tally: Tally,
        node_id: str,
        on_reply: Callable[[str, Message], None] | None,
        decided: asyncio.Future[None] | None,
        future: asyncio.Future[Message],
    ) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or isinstance(error, RpcTimeout):
            outcome = _report(tally, node_id, Tally.on_unknown_failure)
        elif error is not None:
            # Not delivered (PeerUnreachable, Overloaded, too large) or refused
            # (RemoteError): that replica certainly did not apply it.
            log.debug("replica call failed node=%s error=%r", node_id, error)
            outcome = _report(tally, node_id, Tally.on_definite_failure)
        else:
            if on_reply is not None:
                on_reply(node_id, future.result())
            outcome = _report(tally, node_id, Tally.on_success)
        if outcome is not Outcome.PENDING and decided is not None and not decided.done():
            decided.set_result(None)

    def _track(self, future: asyncio.Future[Message]) -> None:
        # Keep a reference until done: a call that had to connect runs as a task,
        # and the event loop holds tasks only weakly.
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    def _admit(self) -> None:
        limit = self.cluster.limits.coordinator_inflight_max
        if self._inflight >= limit:
            raise Overloaded(resource="coordinator_inflight", limit=limit)
        self._inflight += 1

    def _raise_unless_succeeded(self, tally: Tally, consistency: Consistency) -> None:
        outcome = tally.outcome()
        if outcome is Outcome.SUCCEEDED:
            return
        if outcome is Outcome.UNKNOWN:
            raise OutcomeUnknown(required=tally.required, acked=tally.acked,
                                 consistency=consistency.value,
                                 timeout_ms=min(self.rpc_timeout_ms, self.request_timeout_ms))
        assert outcome is Outcome.FAILED, outcome
        raise QuorumNotReached(required=tally.required, acked=tally.acked,
                               consistency=consistency.value)

    async def close(self) -> None:
        for future in list(self._background):
            future.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _on_deadline(tally: Tally, decided: asyncio.Future[None]) -> None:
    if not decided.done():
        tally.on_deadline()
        decided.set_result(None)


def _report(tally: Tally, node_id: str, event: Callable[[Tally, str], Outcome]) -> Outcome:
    # After the deadline the tally already counted this replica as unknown.
    if node_id not in tally.pending:
        return tally.outcome()
    return event(tally, node_id)


def _remote_to_local(exc: RemoteError) -> DynakvError:
    return rebuild_error(exc.remote_code, exc.remote_message, exc.remote_facts)


class _ReadState:
    """Replies of one read; repairs stale replicas once the merged record is known."""

    __slots__ = ("coordinator", "key", "merged", "partition", "replies")

    def __init__(self, coordinator: Coordinator, partition: int, key: bytes) -> None:
        self.coordinator = coordinator
        self.partition = partition
        self.key = key
        self.replies: dict[str, Record | None] = {}
        self.merged: Record | None = None

    def on_reply(self, node_id: str, reply: Message) -> None:
        assert isinstance(reply, ReadReply), type(reply)
        if self.merged is not None:  # a late reply: repair it against the answer given
            self._repair_if_stale(node_id, reply.record, self.merged)
        self.replies[node_id] = reply.record

    def decide(self) -> Record | None:
        merged: Record | None = None
        for record in self.replies.values():
            merged = merge(merged, record, self.coordinator.replica.policy)
        self.merged = merged
        if merged is not None:
            for node_id, record in sorted(self.replies.items()):
                self._repair_if_stale(node_id, record, merged)
        return merged

    def _repair_if_stale(self, node_id: str, record: Record | None, merged: Record) -> None:
        if record != merged:
            self.coordinator.repair(node_id, self.partition, self.key, merged)
