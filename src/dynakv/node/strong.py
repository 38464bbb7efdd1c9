"""The strong path's shell: drives ``core.lwt`` for one linearizable read or write.

``StrongPath.read`` and ``StrongPath.write`` build a ``StrongOperation`` over
the key's home replicas (``core.homes``: the ring's preference list, or the
old and the new list with joint majorities while an open ring change moves
the key's partition, re-read before every round; never fallbacks), start
it at a ballot from this node's HLC, carry out its actions (``Send`` over
``Peers.start_call``, or in-process to this node's ``Acceptor`` when it is a
home replica; ``Retry`` after a random delay in the given range; ``Done``),
and feed back every answer. Any node may propose: the write's dot is this
node's, minted on top of the current record (and, on a home replica, this
replica's own record, so the node's earlier dots for the key stay covered
only by writes that saw them).

Answers follow ``net.rpc``'s contract (``acceptor.failure_is_definite``): a
refusal, ``PeerUnreachable`` or a node the failure detector holds down (not
asked) is definite; a timeout, or an acceptor that put but could not sync,
is unknown; an invalid reply is a definite failure. So a minority side with
definite failures answers 503 at once; with timeouts, within the request's
deadline (``request_timeout_ms``), never later. Results: ``Found`` ->
``GetResult`` with the ETag; ``Written`` -> the new context and ETag;
``ConditionFailed`` -> ``PreconditionFailed`` (412) with the current ETag;
``Unavailable`` -> ``QuorumNotReached`` and ``Contended`` -> ``Contended``
(503); ``Unknown`` -> ``OutcomeUnknown`` (504).

Every timestamp this node mints (ballots, writes) comes from the replica's
HLC and raises its persisted high-water mark as ``write_new`` does; nothing
is sent until a raised mark is durable. Bounds: ``coordinator_inflight_max``
operations, ``rounds_max`` rounds each, the request deadline, one call per
home replica per phase. Calls still out when an operation ends finish in the
background, each bounded by the RPC timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from dynakv.api.backend import GetResult, WriteResult
from dynakv.config import ClusterConfig
from dynakv.core import lwt
from dynakv.core.claim import RingChange
from dynakv.core.etag import Condition, IfAbsent
from dynakv.core.homes import Homes, homes_of
from dynakv.core.lwt import Action, Retry, StrongOperation
from dynakv.core.paxos import (
    ZERO_BALLOT,
    Ballot,
    PxAccepted,
    PxCommitted,
    PxPromise,
    PxReject,
    PxRequest,
    PxSnapshot,
)
from dynakv.core.record import Context, Record, Sibling, context_of, make_write, merge
from dynakv.core.ring import Ring, partition_of
from dynakv.core.versions import hlc_ceiling
from dynakv.errors import (
    Contended as ContendedError,
)
from dynakv.errors import (
    DynakvError,
    OutcomeUnknown,
    Overloaded,
    PeerUnreachable,
    PreconditionFailed,
    QuorumNotReached,
)
from dynakv.net.messages import Message
from dynakv.node.acceptor import Acceptor, failure_is_definite, reply_problem
from dynakv.node.coordinator import Peers
from dynakv.node.replica import LocalReplica

log = logging.getLogger(__name__)

ROUNDS_MAX_DEFAULT: Final = 8
_REPLIES: Final = (PxPromise, PxReject, PxAccepted, PxCommitted, PxSnapshot)


@dataclass(frozen=True, slots=True)
class _Write:
    value: bytes | None  # None: a tombstone
    ttl_s: int  # 0: no expiry


class _Run:
    """One operation's answers, in arrival order, and what this node minted for it."""

    __slots__ = ("inbox", "mark_raised", "minted", "waiter")

    def __init__(self) -> None:
        self.inbox: deque[tuple[str, PxRequest, asyncio.Future[Message]]] = deque()
        self.waiter: asyncio.Future[bool] | None = None  # True: answered; False: deadline
        self.minted: Sibling | None = None  # the write this operation proposes
        self.mark_raised = False  # a tick raised the HLC high-water mark: sync before sending

    def answered(self, node: str, request: PxRequest, future: asyncio.Future[Message]) -> None:
        self.inbox.append((node, request, future))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(True)


class StrongPath:
    """Linearizable reads and (conditional) writes over per-key Paxos."""

    def __init__(
        self,
        *,
        cluster: ClusterConfig,
        ring: Ring,
        replica: LocalReplica,
        acceptor: Acceptor,
        peers: Peers,
        rng: random.Random,
        is_down: Callable[[str], bool] = lambda node_id: False,
        rounds_max: int = ROUNDS_MAX_DEFAULT,
    ) -> None:
        """``is_down``: whether the failure detector holds a node down now (it is not
        asked; it counts as a definite failure at once)."""
        self.cluster = cluster
        self._ring = ring
        self._ring_since_ms = replica.clock.now_ms()
        # The change coordinators route by while one is OPEN (set by node.assembly).
        self.routing: Callable[[], RingChange | None] = lambda: None
        self.replica = replica
        self.acceptor = acceptor
        self.peers = peers
        self.rng = rng
        self.is_down = is_down
        self.rounds_max = rounds_max
        self.node_id = replica.node_id
        self.rpc_timeout_ms = cluster.timing.rpc_timeout_ms
        self.request_timeout_ms = cluster.timing.request_timeout_ms
        self._background: set[asyncio.Future[Message]] = set()
        self._inflight = 0
        self.results: dict[str, int] = {}  # answers by kind, for status

    @property
    def ring(self) -> Ring:
        return self._ring

    @ring.setter
    def ring(self, ring: Ring) -> None:
        self._ring = ring
        self._ring_since_ms = self.replica.clock.now_ms()

    def snapshot_reads(self) -> bool:
        """Whether a read may start with snapshots (``core.lwt``): only while the home
        replicas are settled. During a ring change, and until every node has had time
        to install the new ring, two proposers can hold different home lists whose
        majorities need not meet; snapshot reads promise nothing, so they would not
        even fence off the other list's proposers. Those reads prepare instead."""
        if self.routing() is not None:
            return False
        settle_ms = 2 * (self.request_timeout_ms + self.rpc_timeout_ms)
        return self.replica.clock.now_ms() - self._ring_since_ms >= settle_ms

    # -- the API -----------------------------------------------------------------------

    async def read(self, key: bytes) -> GetResult:
        """The key's current value, linearizably; with its context and ETag."""
        operation = await self._run(key, _Run(), None, None)
        result = operation.result
        if not isinstance(result, lwt.Found):
            raise self._error(operation, None)
        record = result.record
        values = record.visible_values(self.replica.clock.now_ms()) if record is not None else []
        return GetResult(values=values, context=context_of(record), etag=result.etag)

    async def write(
        self, key: bytes, value: bytes | None, *, condition: Condition | None, ttl_s: int
    ) -> WriteResult:
        """Write ``value`` (None: delete) on top of the current version if ``condition``
        holds on it; ``PreconditionFailed`` (nothing written) if not."""
        run = _Run()
        operation = await self._run(key, run, _Write(value, ttl_s), condition)
        result = operation.result
        if not isinstance(result, lwt.Written):
            raise self._error(operation, condition)
        written = run.minted
        assert written is not None and written in result.record.siblings, "ours was chosen"
        context = Context(clock=written.clock(), max_timestamp=written.timestamp)
        return WriteResult(context=context, etag=result.etag)

    def status(self) -> dict[str, object]:
        return {"inflight": self._inflight, "results": dict(sorted(self.results.items()))}

    async def close(self) -> None:
        for future in list(self._background):
            future.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- driving one operation ---------------------------------------------------------

    async def _run(
        self, key: bytes, run: _Run, write: _Write | None, condition: Condition | None
    ) -> StrongOperation:
        """Drive one operation to its answer (``operation.result`` is set)."""
        limit = self.cluster.limits.coordinator_inflight_max
        if self._inflight >= limit:
            raise Overloaded(resource="strong_inflight", limit=limit)
        self._inflight += 1
        try:
            operation = await self._drive(key, run, write, condition)
        finally:
            self._inflight -= 1
        kind = type(operation.result).__name__
        self.results[kind] = self.results.get(kind, 0) + 1
        return operation

    async def _drive(
        self, key: bytes, run: _Run, write: _Write | None, condition: Condition | None
    ) -> StrongOperation:
        partition = partition_of(key, self.ring.partition_count)
        homes = self._homes(partition)
        replicas = homes.targets
        operation = StrongOperation(
            partition=partition,
            key=key,
            homes=homes,
            policy=self.replica.policy,
            mint=None if write is None else self._minter(run, partition, key, write, replicas),
            condition=condition,
            rounds_max=self.rounds_max,
            snapshot_reads=self.snapshot_reads(),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_ms / 1000
        actions = operation.start(self._ballot(ZERO_BALLOT, run), self.replica.clock.now_ms())
        # Each pass consumes an answer, a retry or the deadline; answers are at most
        # one per home replica per phase (three phases and refreshes per round).
        for _ in range(4 * len(replicas) * (self.rounds_max + 1) + 4):
            retry = await self._carry(run, actions)
            if operation.result is not None:
                return operation
            if retry is not None:
                actions = await self._retry(run, operation, retry, deadline)
            else:
                actions = await self._next_answers(run, operation, deadline)
        raise AssertionError("a strong operation outlived its bound on answers")

    async def _carry(self, run: _Run, actions: list[Action]) -> Retry | None:
        """Send what ``actions`` asks for (once a raised HLC mark is durable)."""
        if run.mark_raised:
            run.mark_raised = False
            await self.replica.durable()  # SyncFailed/StorageFull: nothing was sent
        retry = None
        for action in actions:
            if isinstance(action, lwt.Send):
                self._send(run, action.node, action.message)
            elif isinstance(action, Retry):
                retry = action
            else:
                assert isinstance(action, lwt.Done), action
        return retry

    async def _next_answers(
        self, run: _Run, operation: StrongOperation, deadline: float
    ) -> list[Action]:
        if not run.inbox:
            # A timer, not asyncio.timeout: the HTTP connection runs a request on its
            # own stack until it first suspends, outside any task.
            loop = asyncio.get_running_loop()
            waiter = run.waiter = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                answered = await waiter
            finally:
                timer.cancel()
                run.waiter = None
            if not answered:
                return operation.on_deadline()
        actions: list[Action] = []
        while run.inbox and operation.result is None:
            node, request, future = run.inbox.popleft()
            actions.extend(self._feed(operation, node, request, future))
        return actions

    async def _retry(
        self, run: _Run, operation: StrongOperation, retry: Retry, deadline: float
    ) -> list[Action]:
        loop = asyncio.get_running_loop()
        delay_s = self.rng.randint(retry.after_ms_min, retry.after_ms_max) / 1000
        if loop.time() + delay_s >= deadline:
            return operation.on_deadline()  # it could not start in time: answer now
        await asyncio.sleep(delay_s)
        try:
            ballot = self._ballot(retry.ballot_floor, run)
        except ContendedError:
            if operation.may_have_written:
                return operation.on_deadline()  # Unknown: ours may still be chosen
            raise
        operation.rehome(self._homes(operation.partition))
        return operation.start(ballot, self.replica.clock.now_ms())

    def _homes(self, partition: int) -> Homes:
        """Whom a round on ``partition`` asks: joint majorities while a change moves it."""
        return homes_of(self.ring, self.routing(), partition)

    def _send(self, run: _Run, node: str, request: PxRequest) -> None:
        loop = asyncio.get_running_loop()
        if node == self.node_id:
            future = self._local_call(loop, request)
        elif self.is_down(node):
            future = loop.create_future()
            future.set_exception(PeerUnreachable(peer=node, reason="the detector holds it down"))
        else:
            future = self.peers.start_call(node, request, self.rpc_timeout_ms)
            # Hold a reference until done: a call that had to connect runs as a
            # task, and the event loop holds tasks only weakly.
            self._background.add(future)
            future.add_done_callback(self._background.discard)
        future.add_done_callback(functools.partial(run.answered, node, request))
        future.add_done_callback(_read_outcome)

    def _local_call(
        self, loop: asyncio.AbstractEventLoop, request: PxRequest
    ) -> asyncio.Future[Message]:
        future: asyncio.Future[Message] = loop.create_future()
        try:
            answer = self.acceptor.handle(request, self.node_id)
        except DynakvError as exc:
            future.set_exception(exc)
            return future
        if isinstance(answer, asyncio.Future):
            return answer
        future.set_result(answer)
        return future

    def _feed(
        self,
        operation: StrongOperation,
        node: str,
        request: PxRequest,
        future: asyncio.Future[Message],
    ) -> list[Action]:
        if future.cancelled():
            return operation.on_failure(node, request, definite=False)
        error = future.exception()
        if error is not None:
            log.debug("paxos call failed node=%s error=%r", node, error)
            return operation.on_failure(node, request, definite=failure_is_definite(error))
        reply = future.result()
        if not isinstance(reply, _REPLIES):
            log.warning("replica answered paxos with %s node=%s", type(reply).__name__, node)
            return operation.on_failure(node, request, definite=True)
        problem = reply_problem(self.replica, node, reply)
        if problem is not None:
            log.warning("invalid paxos reply node=%s problem=%s", node, problem)
            return operation.on_failure(node, request, definite=True)
        return operation.on_message(node, reply)

    # -- time and minting --------------------------------------------------------------

    def _ceiling(self) -> int:
        now_ms = self.replica.clock.now_ms()
        return hlc_ceiling(now_ms, self.replica.bounds.clock_offset_ms_max)

    def _ballot(self, floor: Ballot, run: _Run) -> Ballot:
        """A ballot above ``floor`` and above every timestamp this node has seen."""
        if not self.replica.hlc.observe(floor.timestamp, self._ceiling()):
            raise ContendedError(rounds=0, reason="a rival's ballot is ahead of this node's clock")
        return Ballot(self._tick(self.replica.clock.now_ms(), run), self.node_id)

    def _tick(self, now_ms: int, run: _Run) -> int:
        # The replica's tick keeps the persisted high-water mark ahead of every
        # timestamp minted, so a restarted node never repeats one.
        timestamp, raised = self.replica.tick(now_ms)
        run.mark_raised = run.mark_raised or raised
        return timestamp

    def _minter(
        self,
        run: _Run,
        partition: int,
        key: bytes,
        write: _Write,
        replicas: tuple[str, ...],
    ) -> lwt.Mint:
        replica = self.replica
        local_is_home = self.node_id in replicas
        value, ttl_s = write.value, write.ttl_s

        def mint(current: Record | None) -> Record:
            now_ms = replica.clock.now_ms()
            if value is not None and replica.disk_guard is not None:
                replica.disk_guard.check_value_write()
            base = current
            if local_is_home:
                base = merge(current, replica.read(partition, key), replica.policy)
            if base is not None and not replica.hlc.observe(base.max_timestamp(), self._ceiling()):
                raise ContendedError(rounds=0, reason="the key's record is ahead of this clock")
            timestamp = self._tick(now_ms, run)
            if value is None:
                expires_at_ms = now_ms + replica.tombstone_grace_s * 1000
            else:
                expires_at_ms = now_ms + ttl_s * 1000 if ttl_s > 0 else 0
            record = make_write(
                base,
                node_id=self.node_id,
                value=value,
                context=context_of(base),
                timestamp=timestamp,
                expires_at_ms=expires_at_ms,
                policy=replica.policy,
            )
            run.minted = next(
                s for s in record.siblings if s.timestamp == timestamp and s.node == self.node_id
            )
            return record

        return mint

    # -- results -----------------------------------------------------------------------

    def _error(self, operation: StrongOperation, condition: Condition | None) -> DynakvError:
        result = operation.result
        if isinstance(result, lwt.ConditionFailed):
            return PreconditionFailed(
                condition=describe_condition(condition), current_etag=result.etag
            )
        if isinstance(result, lwt.Unavailable):
            return QuorumNotReached(
                required=result.required, acked=result.answered, consistency="strong"
            )
        if isinstance(result, lwt.Contended):
            return ContendedError(rounds=result.rounds)
        if isinstance(result, lwt.Unknown):
            return OutcomeUnknown(
                required=operation.quorum,
                acked=0,
                consistency="strong",
                timeout_ms=self.request_timeout_ms,
                reason=result.reason,
            )
        raise AssertionError(f"not an error result: {result!r}")


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def describe_condition(condition: Condition | None) -> str:
    """The condition as its HTTP header reads."""
    if condition is None:
        return "(none)"
    if isinstance(condition, IfAbsent):
        return "If-None-Match: *"
    return f'If-Match: "{condition.etag}"'


def _read_outcome(future: asyncio.Future[Message]) -> None:
    """Mark a call's outcome read: an answer arriving after its operation ended (or a
    call failed at once for a node held down) is not an unhandled error."""
    if not future.cancelled():
        future.exception()
