"""The coordinator's shell: drives ``core.coordinator`` for one client request.

The protocol (who is asked, when a request is decided, what is repaired)
is pure in ``core.coordinator``; this module carries out its actions over
RPC, feeds the answers back, and turns the outcome into a result or an
error. Write path: a node outside the key's preference list forwards the
write to a replica (only a replica may mint the write's dot); the
coordinating replica mints it, waits for the group commit (persist before
send), then drives a ``WriteCoordination``. Read path: ``one`` on a replica
is a local read; otherwise a ``ReadCoordination`` asks the other replicas,
and its repairs go out bounded by ``read_repair_inflight_max``.

Idempotent writes pass their key to ``write_new``, which answers a retry it
knows without minting; the stored record is replicated at the requested level
all the same (the original may have reached fewer replicas than asked).
Session reads (``read_session``, rules in ``core.session``) ask one replica at
a time, the local one first, and answer from the first whose record is as new
as the session's token; otherwise, or when the token cannot tell, a quorum
read. Session writes fold the token's newest timestamp into the context.

Routing: by ``ring`` (replaced when a newer ring is installed), except for a
partition that an open ring change moves (``routing()``, the claimant's
chosen change): its writes go to the change's write targets under the joint
quorum and its reads to the old list (``core.claim.RingChange``), without
fallbacks.

Calls are Futures with callbacks, not tasks (a task per replica per request
cost more than the rest of the work); calls still outstanding when a
request is decided finish in the background, each bounded by the RPC
timeout. Nothing here waits unbounded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dynakv.api.backend import GetResult
from dynakv.config import ClusterConfig
from dynakv.core.claim import RingChange
from dynakv.core.consistency import WEAK_LEVELS, Consistency, parse_consistency
from dynakv.core.coordinator import ReadCoordination, ReplicaWrite, WriteCoordination
from dynakv.core.etag import etag_of
from dynakv.core.gossip_messages import GossipMessage
from dynakv.core.idempotency import IdempotencyKey
from dynakv.core.quorum import Outcome, Tally
from dynakv.core.record import Context, Record, context_of
from dynakv.core.ring import Ring, partition_of
from dynakv.core.session import HEADER as SESSION_HEADER
from dynakv.core.session import (
    SessionToken,
    needs_quorum,
    read_candidates,
    requirement,
    satisfies,
    session_bounds_problem,
    session_key_hash,
)
from dynakv.errors import (
    DynakvError,
    InsufficientStorage,
    InvalidRequest,
    KeyTooLarge,
    OutcomeUnknown,
    Overloaded,
    PeerUnreachable,
    QuorumNotReached,
    RemoteError,
    RemoteProtocolError,
    RpcTimeout,
    ValueTooLarge,
    rebuild_error,
)
from dynakv.net.messages import (
    ANTI_ENTROPY_REQUESTS,
    CLAIMANT_MESSAGES,
    GOSSIP_MESSAGES,
    PAXOS_REQUESTS,
    CoordinateWrite,
    CoordinateWriteReply,
    Message,
    Ping,
    Pong,
    ReadReply,
    ReadRequest,
    WriteReply,
    WriteRequest,
)
from dynakv.net.rpc import HandlerResult
from dynakv.node.replica import LocalReplica
from dynakv.storage.base import StorageFull, SyncFailed

log = logging.getLogger(__name__)


class Peers(Protocol):
    """What the coordinator needs from the network: ``net.rpc.PeerPool``, or the
    simulator's in-memory network. Errors follow ``net.rpc``'s contract."""

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]: ...

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message: ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where one write goes, all from one ring: the targets, the joint quorum's groups
    (only during a ring change, when no fallback stands in), and that ring."""

    targets: tuple[str, ...]
    groups: tuple[tuple[frozenset[str], int], ...]
    ring: Ring


class Coordinator:
    def __init__(
        self,
        *,
        cluster: ClusterConfig,
        ring: Ring,
        replica: LocalReplica,
        peers: Peers,
        is_down: Callable[[str], bool] = lambda node_id: False,
    ) -> None:
        """``is_down``: whether the failure detector holds a node down now (its
        writes then go to a fallback at once, with a hint)."""
        self.cluster = cluster
        self.ring = ring
        self.replica = replica
        self.peers = peers
        self.is_down = is_down
        # The open ring change coordinators route by (the claimant's), if any.
        self.routing: Callable[[], RingChange | None] = lambda: None
        # Told of a peer's ring epoch newer than ours (membership fetches that ring).
        self.on_epoch: Callable[[str, int], None] = lambda node_id, epoch: None
        self.node_id = replica.node_id
        self.rpc_timeout_ms = cluster.timing.rpc_timeout_ms
        self.request_timeout_ms = cluster.timing.request_timeout_ms
        self._background: set[asyncio.Future[Message]] = set()
        # Ring.fallbacks per partition of one ring (a ring is immutable; at most
        # partition_count entries): every weak write and quorum read needs them.
        self._fallbacks_ring: Ring | None = None
        self._fallbacks_by_partition: dict[int, tuple[str, ...]] = {}
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
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context:
        """``idempotency_hash``: the write's ``Idempotency-Key`` (0: none); ``session``:
        a session write, whose token's newest timestamp the write must outrank."""
        partition = partition_of(key, self.ring.partition_count)
        # One ring for the whole write: a newer one may be installed while it waits.
        route = self._write_route(partition, consistency)
        preference_list, groups = route.targets, route.groups
        if session is not None:
            context = self._session_context(context, session)
        if self.node_id not in preference_list:
            return await self._forward_write(
                preference_list, key, value, consistency, ttl_s, context, idempotency_hash
            )
        idempotency = None
        if idempotency_hash:
            window_ms = self.cluster.timing.idempotency_window_s * 1000
            idempotency = IdempotencyKey(idempotency_hash, window_ms)
        self._admit()
        try:
            new = self.replica.write_new(
                partition, key, value=value, context=context, ttl_s=ttl_s, idempotency=idempotency
            )
            try:
                await self.replica.durable()
            except (SyncFailed, StorageFull) as exc:
                # Put but not made durable: readable here now, maybe lost on a
                # crash. That is an unknown outcome, never a failure.
                raise OutcomeUnknown(
                    required=consistency.required(len(preference_list)),
                    acked=0,
                    consistency=consistency.value,
                    timeout_ms=0,
                    reason=f"the local sync failed after the put ({exc.code})",
                ) from exc
            coordination = WriteCoordination(
                preference_list=preference_list,
                local_node=self.node_id,
                required=consistency.required(len(preference_list)),
                partition=partition,
                key=key,
                record=new.record,
                fallbacks=() if groups else self._fallbacks(route.ring, partition),
                down=self._held_down(preference_list),
                groups=groups,
            )
            await self._fan_out(
                _write_calls(coordination.start(), route.ring.epoch),
                functools.partial(_on_write_answer, coordination, route.ring.epoch),
                coordination.on_deadline,
                coordination.outcome,
            )
            self._raise_unless_succeeded(coordination.tally, consistency)
        finally:
            self._inflight -= 1
        return new.context

    def _session_context(self, context: Context, session: SessionToken) -> Context:
        """The context a session write mints on: the client's, stamped past every
        timestamp the session saw (checked like a context's)."""
        problem = session_bounds_problem(session, self.replica.bounds, self.replica.clock.now_ms())
        if problem is not None:
            raise InvalidRequest(problem, field=SESSION_HEADER)
        if session.max_timestamp <= context.max_timestamp:
            return context
        return Context(clock=context.clock, max_timestamp=session.max_timestamp)

    def _moving(self, ring: Ring, partition: int) -> RingChange | None:
        """The open ring change, if it moves ``partition`` (its replicas differ)."""
        change = self.routing()
        if change is None or change.old.epoch != ring.epoch:
            return None
        current = set(ring.preference_list(partition))
        if (
            set(change.write_targets(partition))
            == current
            == set(change.new.preference_list(partition))
        ):
            return None
        return change

    def _write_route(self, partition: int, consistency: Consistency) -> Route:
        """Who takes a write of ``partition``, and (during a change) the joint quorum."""
        ring = self.ring
        change = self._moving(ring, partition)
        if change is None:
            return Route(ring.preference_list(partition), (), ring)
        old, new = change.read_targets(partition), change.new.preference_list(partition)
        needed = consistency.required(len(new))
        groups = tuple((frozenset(nodes), min(needed, len(nodes))) for nodes in (old, new) if nodes)
        return Route(change.write_targets(partition), groups, ring)

    def _read_route(self, partition: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Who is read for ``partition``, and the fallbacks (none during a change)."""
        ring = self.ring
        change = self._moving(ring, partition)
        if change is None:
            return ring.preference_list(partition), self._fallbacks(ring, partition)
        return change.read_targets(partition), ()

    def _fallbacks(self, ring: Ring, partition: int) -> tuple[str, ...]:
        """``ring.fallbacks(partition)``, computed once per partition of each ring."""
        if ring is not self._fallbacks_ring:
            self._fallbacks_ring = ring
            self._fallbacks_by_partition = {}
        found = self._fallbacks_by_partition.get(partition)
        if found is None:
            found = self._fallbacks_by_partition[partition] = ring.fallbacks(partition)
        return found

    async def handle_coordinate(self, message: CoordinateWrite) -> CoordinateWriteReply:
        """A write forwarded by a node outside the key's preference list. Its fields
        get the checks a client's request gets at the HTTP layer (the context's
        are in ``write_new``)."""
        # The level is a peer's string: a bad one is InvalidRequest naming the field,
        # as for a client, not a ValueError.
        limits = self.cluster.limits
        consistency = parse_consistency(message.consistency)
        if consistency not in WEAK_LEVELS:
            raise InvalidRequest(
                "a forwarded write runs at one, quorum or all; strong writes go through "
                "the strong path",
                field="consistency",
            )
        if not 1 <= len(message.key) <= limits.key_bytes_max:
            raise KeyTooLarge(size=len(message.key), max=limits.key_bytes_max)
        if message.value is not None and len(message.value) > limits.value_bytes_max:
            raise ValueTooLarge(size=len(message.value), max=limits.value_bytes_max)
        if not 0 <= message.ttl_s <= limits.ttl_s_max:
            raise InvalidRequest(
                f"ttl must be in 0..{limits.ttl_s_max} seconds; got {message.ttl_s}",
                field="ttl",
                max=limits.ttl_s_max,
            )
        new_context = await self.write(
            message.key,
            message.value,
            consistency,
            message.ttl_s,
            message.context,
            idempotency_hash=message.idempotency_hash,
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
        idempotency_hash: int = 0,
    ) -> Context:
        request = CoordinateWrite(
            key=key,
            value=value,
            consistency=consistency.value,
            context=context,
            ttl_s=ttl_s,
            idempotency_hash=idempotency_hash,
            epoch=self.ring.epoch,
        )
        for node_id in preference_list:
            try:
                # Outlast the remote coordinator's own deadline, so its verdict
                # (success, 503 or 504) arrives rather than a local timeout.
                reply = await self.peers.call(
                    node_id, request, self.request_timeout_ms + self.rpc_timeout_ms
                )
            except PeerUnreachable:
                continue  # never delivered: safe to try the next replica
            except RpcTimeout as exc:
                raise OutcomeUnknown(
                    required=consistency.required(len(preference_list)),
                    acked=0,
                    consistency=consistency.value,
                    timeout_ms=exc.timeout_ms,
                ) from exc
            except RemoteError as exc:
                raise _remote_to_local(exc) from exc
            if not isinstance(reply, CoordinateWriteReply):
                raise RemoteProtocolError(
                    f"replica {node_id} answered a forwarded write with {type(reply).__name__}"
                )
            return reply.context
        raise QuorumNotReached(
            required=consistency.required(len(preference_list)),
            acked=0,
            consistency=consistency.value,
        )

    # -- reads --------------------------------------------------------------

    async def read(self, key: bytes, consistency: Consistency) -> GetResult:
        partition = partition_of(key, self.ring.partition_count)
        preference_list, fallbacks = self._read_route(partition)
        local_is_replica = self.node_id in preference_list
        if consistency is Consistency.ONE and local_is_replica:
            return self._result(self.replica.read(partition, key))
        self._admit()
        try:
            coordination = ReadCoordination(
                preference_list=preference_list,
                required=consistency.required(len(preference_list)),
                partition=partition,
                key=key,
                policy=self.replica.policy,
                fallbacks=fallbacks,
                down=self._held_down(preference_list),
            )
            local = self.replica.read(partition, key) if local_is_replica else None
            reads = coordination.start(self.node_id if local_is_replica else None, local)
            await self._fan_out(
                [(r.node, ReadRequest(r.partition, r.key, self.ring.epoch)) for r in reads],
                functools.partial(self._on_read_answer, coordination),
                coordination.on_deadline,
                coordination.outcome,
            )
            if coordination.outcome() is not Outcome.SUCCEEDED:
                raise QuorumNotReached(
                    required=coordination.tally.required,
                    acked=coordination.tally.acked,
                    consistency=consistency.value,
                )
            merged, repairs = coordination.decide()
            self._repair(repairs)
        finally:
            self._inflight -= 1
        return self._result(merged)

    async def read_session(self, key: bytes, session: SessionToken) -> GetResult:
        """A session read: the first replica (local first, then the next live one,
        one at a time) whose record is as new as ``session`` has seen of ``key``
        answers; else a quorum read (which also repairs the replicas it asked)."""
        problem = session_bounds_problem(session, self.replica.bounds, self.replica.clock.now_ms())
        if problem is not None:
            raise InvalidRequest(problem, field=SESSION_HEADER)
        partition = partition_of(key, self.ring.partition_count)
        preference_list, _ = self._read_route(partition)
        key_hash = session_key_hash(key)
        if not needs_quorum(session, key_hash):
            entry = requirement(session, key_hash)
            down = self._held_down(preference_list)
            for node_id in read_candidates(preference_list, self.node_id, down):
                found, record = await self._read_one(node_id, partition, key)
                if found and satisfies(record, entry, self.replica.policy):
                    lagging = node_id != self.node_id and self.node_id in preference_list
                    if lagging and record is not None:
                        # The local replica lags the session: catch it up.
                        self._repair([ReplicaWrite(self.node_id, partition, key, record)])
                    return self._result(record)
        return await self.read(key, Consistency.QUORUM)

    async def _read_one(
        self, node_id: str, partition: int, key: bytes
    ) -> tuple[bool, Record | None]:
        """(answered, record) of one replica; a failure or bad record is (False, None).
        A remote replica gets a quarter of the request's time, so two tries and the
        quorum read still fit in about one request timeout."""
        if node_id == self.node_id:
            return True, self.replica.read(partition, key)
        timeout_ms = max(1, min(self.rpc_timeout_ms, self.request_timeout_ms // 4))
        self._admit()
        try:
            request = ReadRequest(partition, key, self.ring.epoch)
            reply = await self.peers.call(node_id, request, timeout_ms)
        except DynakvError as exc:
            log.debug("session read failed node=%s error=%r", node_id, exc)
            return False, None
        finally:
            self._inflight -= 1
        if not isinstance(reply, ReadReply):
            return False, None
        if reply.record is not None and self.replica.check_peer_record(node_id, reply.record):
            return False, None
        return True, reply.record

    def _on_read_answer(
        self, coordination: ReadCoordination, node_id: str, future: asyncio.Future[Message]
    ) -> Answer:
        error = _call_error(future)
        if error is not None:
            log.debug("replica read failed node=%s error=%r", node_id, error)
            return coordination.on_failure(node_id), []
        reply = future.result()
        if not isinstance(reply, ReadReply):
            log.warning("replica answered a read with %s node=%s", type(reply).__name__, node_id)
            return coordination.on_failure(node_id), []
        if reply.record is not None and self.replica.check_peer_record(node_id, reply.record):
            # Out of bounds (e.g. a clock far ahead): never merged, served or repaired.
            return coordination.on_failure(node_id), []
        self._repair(coordination.on_reply(node_id, reply.record))
        return coordination.outcome(), []

    def _result(self, record: Record | None) -> GetResult:
        now_ms = self.replica.clock.now_ms()
        values = record.visible_values(now_ms) if record is not None else []
        return GetResult(values=values, context=context_of(record), etag=etag_of(record, now_ms))

    def _repair(self, repairs: list[ReplicaWrite]) -> None:
        """Send the merged record to each replica that answered with something older."""
        for repair in repairs:
            if repair.node == self.node_id:
                try:
                    self.replica.apply(repair.partition, repair.key, repair.record)
                except (InsufficientStorage, StorageFull):
                    # Below the disk reserve: the read is still answered; the
                    # repair waits for a later read or anti-entropy.
                    log.debug("local read repair skipped: disk low partition=%d", repair.partition)
                continue
            if self._repairs_inflight >= self.cluster.limits.read_repair_inflight_max:
                log.debug("read repair shed node=%s partition=%d", repair.node, repair.partition)
                continue
            self._repairs_inflight += 1
            self.repairs_sent += 1
            future = self.peers.start_call(
                repair.node,
                WriteRequest(repair.partition, repair.key, repair.record, epoch=self.ring.epoch),
                self.rpc_timeout_ms,
            )
            self._track(future)
            future.add_done_callback(functools.partial(self._on_repaired, repair.node))

    def _on_repaired(self, node_id: str, future: asyncio.Future[Message]) -> None:
        self._repairs_inflight -= 1
        if not future.cancelled() and (error := future.exception()) is not None:
            log.debug("read repair failed node=%s error=%r", node_id, error)

    # -- fan-out machinery -----------------------------------------------------

    async def _fan_out(
        self,
        calls: list[tuple[str, Message]],
        on_answer: Callable[[str, asyncio.Future[Message]], Answer],
        on_deadline: Callable[[], Outcome],
        outcome: Callable[[], Outcome],
    ) -> None:
        """Send every call; return once ``outcome()`` is decided or the deadline passes.
        An answer may bring further calls (a fallback for a failed replica): they go
        out at once, bounded by the coordination (each fallback is used once).

        Already decided (W=1 on the coordinator): the calls go out in the background.
        """
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[None] | None = None
        if outcome() is Outcome.PENDING:
            decided = loop.create_future()
        fan_out = _FanOut(self, on_answer, decided)
        for node_id, message in calls:
            fan_out.send(node_id, message)
        if decided is None or decided.done():
            return
        timer = loop.call_later(self.request_timeout_ms / 1000, _deadline, on_deadline, decided)
        try:
            await decided
        finally:
            timer.cancel()

    def _track(self, future: asyncio.Future[Message]) -> None:
        # Keep a reference until done: a call that had to connect runs as a task,
        # and the event loop holds tasks only weakly. A plain Future (the hot path,
        # a connected peer) is held by its connection until answered or timed out,
        # so it costs no set entry and no callback here.
        if isinstance(future, asyncio.Task):
            self._background.add(future)
            future.add_done_callback(self._background.discard)

    def _held_down(self, nodes: tuple[str, ...]) -> frozenset[str]:
        """Which of ``nodes`` the failure detector holds down now."""
        return frozenset(node for node in nodes if self.is_down(node))

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
            raise OutcomeUnknown(
                required=tally.required,
                acked=tally.acked,
                consistency=consistency.value,
                timeout_ms=min(self.rpc_timeout_ms, self.request_timeout_ms),
            )
        assert outcome is Outcome.FAILED, outcome
        raise QuorumNotReached(
            required=tally.required, acked=tally.acked, consistency=consistency.value
        )

    async def close(self) -> None:
        for future in list(self._background):
            future.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


# An answer's effect: the coordination's outcome, and further calls to make.
Answer = tuple[Outcome, list[tuple[str, Message]]]


class _FanOut:
    """One request's calls in flight and what their answers do.

    Each call's Future holds this object through its done callback; this object
    holds no call, so a request leaves no reference cycle behind and its
    coordination is freed by reference counting the moment the last answer is
    in. (Two nested functions that call each other form a cycle through their
    closure cells: every quorum request then left its coordination, records and
    futures to the cyclic collector, whose passes over tens of thousands of
    such objects cost more CPU than the requests themselves.)
    """

    __slots__ = ("coordinator", "decided", "on_answer")

    def __init__(
        self,
        coordinator: Coordinator,
        on_answer: Callable[[str, asyncio.Future[Message]], Answer],
        decided: asyncio.Future[None] | None,
    ) -> None:
        self.coordinator = coordinator
        self.on_answer = on_answer
        self.decided = decided

    def send(self, node_id: str, message: Message) -> None:
        coordinator = self.coordinator
        future = coordinator.peers.start_call(node_id, message, coordinator.rpc_timeout_ms)
        coordinator._track(future)
        future.add_done_callback(functools.partial(self.answered, node_id))

    def answered(self, node_id: str, future: asyncio.Future[Message]) -> None:
        if not future.cancelled() and future.exception() is None:
            epoch = getattr(future.result(), "epoch", 0)
            if epoch > self.coordinator.ring.epoch:
                self.coordinator.on_epoch(node_id, epoch)
        result, more = self.on_answer(node_id, future)
        for next_node, message in more:
            self.send(next_node, message)
        decided = self.decided
        if result is not Outcome.PENDING and decided is not None and not decided.done():
            decided.set_result(None)


def _write_calls(writes: list[ReplicaWrite], epoch: int) -> list[tuple[str, Message]]:
    return [(w.node, WriteRequest(w.partition, w.key, w.record, w.hint_for, epoch)) for w in writes]


def _deadline(on_deadline: Callable[[], Outcome], decided: asyncio.Future[None]) -> None:
    if not decided.done():
        on_deadline()
        decided.set_result(None)


def _call_error(future: asyncio.Future[Message]) -> BaseException | None:
    if future.cancelled():
        return RpcTimeout(peer="?", timeout_ms=0)  # we gave up on it: unknown
    return future.exception()


def _on_write_answer(
    coordination: WriteCoordination, epoch: int, node_id: str, future: asyncio.Future[Message]
) -> Answer:
    error = _call_error(future)
    if error is None and isinstance(future.result(), WriteReply):
        return coordination.on_ack(node_id), []
    if error is None:  # a peer answering with the wrong message did not ack
        log.warning(
            "replica answered a write with %s node=%s", type(future.result()).__name__, node_id
        )
        outcome, writes = coordination.on_failure(node_id, definite=True)
        return outcome, _write_calls(writes, epoch)
    log.debug("replica write failed node=%s error=%r", node_id, error)
    # RpcTimeout: sent, no answer, maybe applied. A replica whose sync failed
    # (SyncFailed, StorageFull) had put the record but could not make it
    # durable: it may surface later, so that is unknown too. Anything else
    # (PeerUnreachable, Overloaded, too large, other RemoteErrors) certainly
    # did not apply it.
    maybe_applied = isinstance(error, RpcTimeout) or (
        isinstance(error, RemoteError) and error.remote_code in _SYNC_FAILURE_CODES
    )
    outcome, writes = coordination.on_failure(node_id, definite=not maybe_applied)
    return outcome, _write_calls(writes, epoch)


_SYNC_FAILURE_CODES = frozenset({"SyncFailed", "StorageFull"})


def _remote_to_local(exc: RemoteError) -> DynakvError:
    return rebuild_error(exc.remote_code, exc.remote_message, exc.remote_facts)


def dispatch_rpc(
    message: Message,
    *,
    sender: str,
    node_id: str,
    replica: LocalReplica,
    coordinator: Coordinator,
    gossip: Callable[[GossipMessage, str], Message] | None = None,
    anti_entropy: Callable[[Any, str], Awaitable[Message]] | None = None,
    paxos: Callable[[Any, str], HandlerResult] | None = None,
    claimant: Callable[[Any, str], Message] | None = None,
) -> HandlerResult:
    """A node's answer to one RPC request from member ``sender`` (the real node
    and the simulator share it)."""
    if isinstance(message, ReadRequest | WriteRequest):
        return replica.handle(message, sender)
    services: tuple[tuple[tuple[type, ...], Callable[[Any, str], Any] | None, str], ...] = (
        (PAXOS_REQUESTS, paxos, "consensus"),
        (ANTI_ENTROPY_REQUESTS, anti_entropy, "anti-entropy"),
        (GOSSIP_MESSAGES, gossip, "membership"),
        (CLAIMANT_MESSAGES, claimant, "ring changes"),
    )
    for kinds, handler, what in services:
        if isinstance(message, kinds):
            if handler is None:
                raise InvalidRequest(f"this node runs no {what}", field="message")
            result: HandlerResult = handler(message, sender)
            return result
    if isinstance(message, CoordinateWrite):
        return coordinator.handle_coordinate(message)
    if isinstance(message, Ping):
        return Pong(sender=node_id)
    raise InvalidRequest(f"unexpected message {type(message).__name__}", field="message")
