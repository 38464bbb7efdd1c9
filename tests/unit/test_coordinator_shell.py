"""The coordinator shell over a fake network: answers in, results and errors out."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

import pytest

from dynakv.config import ClusterConfig, NodeSpec
from dynakv.core.consistency import Consistency
from dynakv.core.record import ConflictPolicy, Context
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.errors import (
    InvalidRequest,
    OutcomeUnknown,
    PeerUnreachable,
    QuorumNotReached,
    RemoteError,
    RpcTimeout,
)
from dynakv.net.messages import (
    CoordinateWrite,
    Message,
    Pong,
    ReadReply,
    ReadRequest,
    WriteReply,
    WriteRequest,
)
from dynakv.node.coordinator import Coordinator
from dynakv.node.replica import LocalReplica
from dynakv.storage.base import SyncFailed
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.memory import MemoryStorage

Answer = Callable[[str, Message], Message | BaseException]


class FakePeers:
    """Answers every call at once with ``answer(node, message)`` (a reply or an error)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent: list[tuple[str, Message]] = []

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        self.sent.append((node_id, message))
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        outcome = self.answer(node_id, message)
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        return future

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message:
        return await self.start_call(node_id, message, timeout_ms)


class Clock:
    def now_ms(self) -> int:
        return 1_000_000

    def monotonic_ms(self) -> float:
        return 0.0


def coordinator(answer: Answer) -> tuple[Coordinator, FakePeers]:
    nodes = tuple(
        NodeSpec(f"n{i}", f"z{i}", "127.0.0.1", 8000 + i, "127.0.0.1", 9000 + i) for i in (1, 2, 3)
    )
    cluster = ClusterConfig(name="t", nodes=nodes)
    ring = Ring.build([RingNode(n.node_id, n.zone) for n in nodes], 1024, 3)
    storage = MemoryStorage()
    replica = LocalReplica(
        node_id="n1",
        storage=storage,
        committer=GroupCommitter(storage, durable=False),
        clock=Clock(),
        policy=ConflictPolicy.LWW,
        tombstone_grace_s=60,
        partition_count=1024,
        key_bytes_max=2048,
    )
    peers = FakePeers(answer)
    return Coordinator(cluster=cluster, ring=ring, replica=replica, peers=peers), peers


def healthy(node: str, message: Message) -> Message:
    if isinstance(message, WriteRequest):
        return WriteReply()
    assert isinstance(message, ReadRequest)
    return ReadReply(record=None)


def test_a_quorum_write_reaches_every_replica_and_returns_the_write_context() -> None:
    async def scenario() -> None:
        subject, peers = coordinator(healthy)
        context = await subject.write(b"k", b"v", Consistency.QUORUM, 0, Context())
        assert context.clock == (("n1", context.max_timestamp),)  # dot counter >= its HLC time
        assert sorted(node for node, _ in peers.sent) == ["n2", "n3"]
        result = await subject.read(b"k", Consistency.ALL)
        assert result.values == [b"v"]
        # Both peers answered "no record": read repair sends them the value.
        assert subject.repairs_sent == 2

    asyncio.run(scenario())


def test_quorum_requests_leave_no_reference_cycles_for_the_collector() -> None:
    """Every object a request made is freed by reference counting once it is
    answered: a cycle per request (as two closures that call each other make)
    left each request's coordination and futures to the cyclic collector, whose
    passes over them cost more CPU than the requests (docs/benchmarks.md)."""

    async def scenario() -> int:
        subject, _ = coordinator(healthy)
        await subject.write(b"warm", b"v", Consistency.QUORUM, 0, Context())
        await asyncio.sleep(0)
        gc.collect()
        gc.disable()
        try:
            for i in range(20):
                key = b"k%d" % i
                await subject.write(key, b"v", Consistency.QUORUM, 0, Context())
                await subject.read(key, Consistency.QUORUM)
                await subject.read(key, Consistency.ALL)
            await asyncio.sleep(0)  # the last answers' callbacks run
            return gc.collect()
        finally:
            gc.enable()

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (PeerUnreachable(peer="x", reason="refused"), QuorumNotReached),
        (RpcTimeout(peer="x", timeout_ms=5), OutcomeUnknown),
        (Pong(sender="x"), QuorumNotReached),  # the wrong reply is not an ack
        # A replica that put the record but could not sync it may still surface it.
        (RemoteError(peer="x", remote_code="StorageFull", message="full"), OutcomeUnknown),
        (RemoteError(peer="x", remote_code="SyncFailed", message="eio"), OutcomeUnknown),
        (RemoteError(peer="x", remote_code="InsufficientStorage", message="low"), QuorumNotReached),
    ],
)
def test_write_failures_are_definite_or_unknown(
    failure: Message | BaseException, expected: type[Exception]
) -> None:
    async def scenario() -> None:
        subject, _ = coordinator(lambda node, message: failure)
        with pytest.raises(expected) as raised:
            await subject.write(b"k", b"v", Consistency.QUORUM, 0, Context())
        assert (raised.value.required, raised.value.acked) == (2, 1)  # type: ignore[attr-defined]
        # The local replica kept it: no rollback, as documented.
        assert subject.replica.read(*_address(subject, b"k")) is not None

    asyncio.run(scenario())


def test_a_read_whose_peers_answer_nonsense_fails_cleanly() -> None:
    async def scenario() -> None:
        subject, _ = coordinator(lambda node, message: Pong(sender=node))
        with pytest.raises(QuorumNotReached):
            await subject.read(b"k", Consistency.QUORUM)

    asyncio.run(scenario())


def _address(subject: Coordinator, key: bytes) -> tuple[int, bytes]:
    return partition_of(key, subject.ring.partition_count), key


def test_a_forwarded_write_with_a_bad_level_is_an_invalid_request() -> None:
    async def scenario() -> None:
        subject, _ = coordinator(healthy)
        forwarded = CoordinateWrite(
            key=b"k", value=b"v", consistency="sometimes", context=Context(), ttl_s=0
        )
        with pytest.raises(InvalidRequest) as refused:
            await subject.handle_coordinate(forwarded)
        assert refused.value.field == "consistency"

    asyncio.run(scenario())


class FailingCommitter:
    """A group commit whose sync fails after the put: the write is not durable."""

    async def durable(self) -> None:
        raise SyncFailed(reason="EIO")

    def durable_future(self) -> asyncio.Future[None] | None:
        raise AssertionError("not used by the coordinating write")


def test_a_local_sync_failure_after_the_put_is_an_unknown_outcome_not_a_failure() -> None:
    async def scenario() -> None:
        subject, peers = coordinator(healthy)
        subject.replica.committer = FailingCommitter()
        with pytest.raises(OutcomeUnknown, match="local sync failed") as raised:
            await subject.write(b"k", b"v", Consistency.QUORUM, 0, Context())
        assert raised.value.acked == 0
        assert peers.sent == [], "never replicated: persist before send"

    asyncio.run(scenario())
