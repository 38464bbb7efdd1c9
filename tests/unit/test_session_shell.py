"""The coordinator shell's idempotent writes and session reads, on three real
replicas (in-memory storage) joined by an in-process network that can cut a node."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from dynakv.config import ClusterConfig, NodeSpec
from dynakv.core.consistency import Consistency
from dynakv.core.idempotency import idempotency_hash
from dynakv.core.record import ConflictPolicy, Context
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.core.session import EMPTY_SESSION, SessionToken, observe, session_key_hash
from dynakv.errors import InvalidRequest, OutcomeUnknown, RpcTimeout
from dynakv.net.messages import Message
from dynakv.node.coordinator import Coordinator
from dynakv.node.replica import LocalReplica
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.memory import MemoryStorage

NODES = ("n1", "n2", "n3")
KEY = b"k"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def now_ms(self) -> int:
        return self.now

    def monotonic_ms(self) -> float:
        return float(self.now)


class Net:
    """Calls go straight to the target replica's handler; a node in ``cut`` times out."""

    def __init__(self) -> None:
        self.replicas: dict[str, LocalReplica] = {}
        self.cut: set[str] = set()
        self.reads: list[str] = []

    def peers(self, sender: str) -> Peers:
        return Peers(self, sender)


class Peers:
    def __init__(self, net: Net, sender: str) -> None:
        self.net = net
        self.sender = sender

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        if type(message).__name__ == "ReadRequest":
            self.net.reads.append(node_id)
        if node_id in self.net.cut:
            future.set_exception(RpcTimeout(peer=node_id, timeout_ms=timeout_ms))
            return future
        answer = self.net.replicas[node_id].handle(message, self.sender)
        if isinstance(answer, asyncio.Future):
            return answer
        future.set_result(answer)
        return future

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message:
        return await self.start_call(node_id, message, timeout_ms)


def cluster(policy: ConflictPolicy) -> tuple[dict[str, Coordinator], Net, Clock]:
    specs = tuple(
        NodeSpec(n, f"z{i}", "127.0.0.1", 8000 + i, "127.0.0.1", 9000 + i)
        for i, n in enumerate(NODES)
    )
    config = ClusterConfig(name="t", nodes=specs, conflict_policy=policy)
    ring = Ring.build([RingNode(s.node_id, s.zone) for s in specs], 64, 3)
    clock = Clock()
    net = Net()
    coordinators = {}
    for node_id in NODES:
        storage = MemoryStorage()
        replica = LocalReplica(
            node_id=node_id,
            storage=storage,
            committer=GroupCommitter(storage, durable=False),
            clock=clock,
            policy=policy,
            tombstone_grace_s=60,
            partition_count=64,
            key_bytes_max=2048,
        )
        net.replicas[node_id] = replica
        coordinators[node_id] = Coordinator(
            cluster=config, ring=ring, replica=replica, peers=net.peers(node_id)
        )
    return coordinators, net, clock


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def local_siblings(net: Net, node_id: str) -> int:
    record = net.replicas[node_id].read(partition_of(KEY, 64), KEY)
    return 0 if record is None else len(record.siblings)


def test_a_retry_at_another_replica_that_got_the_original_is_not_applied_again() -> None:
    async def scenario() -> None:
        nodes, net, clock = cluster(ConflictPolicy.SIBLINGS)
        key_hash = idempotency_hash(b"retry-1")
        first = await nodes["n1"].write(
            KEY, b"v", Consistency.QUORUM, 0, Context(), idempotency_hash=key_hash
        )
        clock.now += 5
        again = await nodes["n2"].write(
            KEY, b"v", Consistency.QUORUM, 0, Context(), idempotency_hash=key_hash
        )
        assert again == first, "the retry answers the original's context"
        assert [local_siblings(net, n) for n in NODES] == [1, 1, 1]
        # Without the key the same write is a second version (siblings policy).
        await nodes["n2"].write(KEY, b"v", Consistency.QUORUM, 0, Context())
        assert local_siblings(net, "n2") == 2

    run(scenario)


def test_a_504_then_a_retry_at_a_replica_that_missed_it_reads_as_one_value() -> None:
    async def scenario() -> None:
        nodes, net, clock = cluster(ConflictPolicy.SIBLINGS)
        key_hash = idempotency_hash(b"retry-2")
        net.cut = {"n2", "n3"}
        with pytest.raises(OutcomeUnknown):
            await nodes["n1"].write(
                KEY, b"v", Consistency.QUORUM, 0, Context(), idempotency_hash=key_hash
            )
        net.cut = {"n1"}  # n1 (holding the original) pauses; the client retries at n2
        clock.now += 5
        await nodes["n2"].write(
            KEY, b"v", Consistency.QUORUM, 0, Context(), idempotency_hash=key_hash
        )
        net.cut = set()
        result = await nodes["n3"].read(KEY, Consistency.ALL)  # merges and repairs all
        assert result.values == [b"v"], "two copies of one write read as one value"
        assert local_siblings(net, "n3") == 2
        # A third attempt anywhere is answered, not minted.
        await nodes["n3"].write(
            KEY, b"v", Consistency.QUORUM, 0, Context(), idempotency_hash=key_hash
        )
        assert local_siblings(net, "n3") == 2
        # A write on the read's context supersedes both copies.
        await nodes["n3"].write(KEY, b"w", Consistency.ALL, 0, result.context)
        assert [local_siblings(net, n) for n in NODES] == [1, 1, 1]

    run(scenario)


def test_a_session_reads_its_write_where_a_one_read_misses_it() -> None:
    async def scenario() -> None:
        nodes, net, clock = cluster(ConflictPolicy.LWW)
        await nodes["n1"].write(KEY, b"old", Consistency.ALL, 0, Context())
        net.cut = {"n3"}  # n3 misses the session's write
        clock.now += 5
        written = await nodes["n1"].write(
            KEY, b"new", Consistency.QUORUM, 0, Context(), session=EMPTY_SESSION
        )
        token = observe(EMPTY_SESSION, session_key_hash(KEY), written.clock, written.max_timestamp)
        net.cut = set()
        assert (await nodes["n3"].read(KEY, Consistency.ONE)).values == [b"old"], "n3 lags"
        net.reads.clear()
        result = await nodes["n3"].read_session(KEY, token)
        assert result.values == [b"new"]
        assert len(net.reads) == 1 and net.reads[0] in ("n1", "n2"), "itself, then one more"
        # The lagging local replica was caught up: the next session read is local.
        net.reads.clear()
        assert (await nodes["n3"].read_session(KEY, token)).values == [b"new"]
        assert net.reads == []

    run(scenario)


def test_a_session_falls_back_to_a_quorum_when_no_single_replica_will_do() -> None:
    async def scenario() -> None:
        nodes, net, _ = cluster(ConflictPolicy.SIBLINGS)
        net.cut = {"n2", "n3"}
        with pytest.raises(OutcomeUnknown):
            await nodes["n1"].write(KEY, b"v", Consistency.QUORUM, 0, Context())
        written = nodes["n1"].replica.read(partition_of(KEY, 64), KEY)
        assert written is not None
        token = observe(EMPTY_SESSION, session_key_hash(KEY), written.clock(), 0)
        net.cut = {"n1"}  # only the replicas that lack it answer
        net.reads.clear()
        result = await nodes["n3"].read_session(KEY, token)
        assert result.values == [], "nothing reachable has it: the quorum's answer"
        assert net.reads.count("n2") == 2, "n2 alone first, then in the quorum read"
        # A key unknown to a token that evicted entries goes to a quorum at once.
        evicted = SessionToken(token.entries, token.max_timestamp, evicted=True)
        net.cut = set()
        net.reads.clear()
        await nodes["n3"].read_session(b"other", evicted)
        assert sorted(net.reads) == ["n1", "n2"]

    run(scenario)


def test_a_session_write_outranks_everything_the_session_saw() -> None:
    async def scenario() -> None:
        nodes, _, clock = cluster(ConflictPolicy.LWW)
        ahead = (clock.now + 30_000) << 16  # another node's clock, 30 s ahead
        token = SessionToken((), ahead, False)
        written = await nodes["n2"].write(
            KEY, b"v", Consistency.QUORUM, 0, Context(), session=token
        )
        assert written.max_timestamp > ahead
        too_far = SessionToken((), (clock.now + 3_600_000) << 16, False)
        with pytest.raises(InvalidRequest) as caught:
            await nodes["n2"].write(KEY, b"v", Consistency.QUORUM, 0, Context(), session=too_far)
        assert caught.value.facts()["field"] == "X-Dynakv-Session"
        with pytest.raises(InvalidRequest):
            await nodes["n2"].read_session(KEY, too_far)

    run(scenario)
