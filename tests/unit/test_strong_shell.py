"""The strong path's shell and the acceptor, on three in-process nodes and a fake network.

Each node is a real ``LocalReplica`` on ``MemoryStorage`` with its
``Acceptor`` and ``StrongPath``; ``FakeNetwork`` delivers a call by running
the target's acceptor (so persist-then-reply is the real code), after an
optional random delay, and injects failures per link: unreachable
(``PeerUnreachable``: definite), silent (``RpcTimeout`` without delivering)
and lost replies (delivered and applied, then ``RpcTimeout``: unknown).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest

from dynakv.api.connection import _continue
from dynakv.config import ClusterConfig, NodeSpec, Timing
from dynakv.core import paxos
from dynakv.core.etag import IfAbsent, IfMatch, etag_of
from dynakv.core.paxos import Ballot, PxPrepare, PxPropose
from dynakv.core.record import ConflictPolicy, Context
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.errors import (
    Contended,
    OutcomeUnknown,
    PeerUnreachable,
    PreconditionFailed,
    QuorumNotReached,
    RemoteProtocolError,
    RpcTimeout,
)
from dynakv.net.messages import Message
from dynakv.node.acceptor import Acceptor
from dynakv.node.replica import LocalReplica
from dynakv.node.strong import StrongPath
from dynakv.storage.base import StorageCorruption, SyncFailed
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.memory import MemoryStorage

NODES = ("n1", "n2", "n3")
PARTITIONS = 64
EPOCH_MS = 1_800_000_000_000


class Clock:
    """Wall time moving with the monotonic clock from a fixed epoch."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now_ms(self) -> int:
        return EPOCH_MS + int((time.monotonic() - self._start) * 1000)

    def monotonic_ms(self) -> float:
        return time.monotonic() * 1000.0


class FakeNetwork:
    """Calls between the nodes' acceptors, with per-link faults and random delays."""

    def __init__(self, seed: int = 0, delay_ms_max: float = 0.0) -> None:
        self.acceptors: dict[str, Acceptor] = {}
        self.rng = random.Random(seed)
        self.delay_ms_max = delay_ms_max
        self.unreachable: set[str] = set()  # calls fail at once: never delivered
        self.silent: set[str] = set()  # calls time out: never delivered
        self.lose_replies: Callable[[str, Message], bool] = lambda node, message: False
        self.delivered: list[tuple[str, str, str]] = []  # sender, target, message type

    def peers(self, sender: str) -> FakePeers:
        return FakePeers(self, sender)

    def call(self, sender: str, target: str, message: Message) -> asyncio.Future[Message]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        if target in self.unreachable:
            future.set_exception(PeerUnreachable(peer=target, reason="refused"))
            return future
        if target in self.silent:
            future.set_exception(RpcTimeout(peer=target, timeout_ms=1))
            return future
        delay_s = self.rng.uniform(0, self.delay_ms_max) / 1000
        loop.call_later(delay_s, self._deliver, sender, target, message, future)
        return future

    def _deliver(
        self, sender: str, target: str, message: Message, future: asyncio.Future[Message]
    ) -> None:
        self.delivered.append((sender, target, type(message).__name__))
        assert isinstance(message, PxPrepare | PxPropose | paxos.PxCommit | paxos.PxRead)
        lost = self.lose_replies(target, message)
        try:
            answer = self.acceptors[target].handle(message, sender)
        except Exception as exc:  # the server turns it into an ErrorReply
            future.set_exception(exc)
            return
        if lost:
            future.set_exception(RpcTimeout(peer=target, timeout_ms=1))
        elif isinstance(answer, asyncio.Future):
            answer.add_done_callback(lambda done: future.set_result(done.result()))
        else:
            future.set_result(answer)


class FakePeers:
    def __init__(self, network: FakeNetwork, sender: str) -> None:
        self.network = network
        self.sender = sender

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        return self.network.call(self.sender, node_id, message)

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message:
        return await self.start_call(node_id, message, timeout_ms)


class Cluster:
    def __init__(
        self,
        *,
        seed: int = 0,
        delay_ms_max: float = 0.0,
        request_timeout_ms: int = 2000,
        policy: ConflictPolicy = ConflictPolicy.LWW,
    ) -> None:
        specs = tuple(
            NodeSpec(n, f"z{i}", "127.0.0.1", 8000 + i, "127.0.0.1", 9000 + i)
            for i, n in enumerate(NODES)
        )
        timing = Timing(request_timeout_ms=request_timeout_ms, rpc_timeout_ms=1500)
        config = ClusterConfig(
            name="t", nodes=specs, partitions=PARTITIONS, timing=timing, conflict_policy=policy
        )
        ring = Ring.build([RingNode(s.node_id, s.zone) for s in specs], PARTITIONS, 3)
        self.network = FakeNetwork(seed, delay_ms_max)
        self.clock = Clock()
        self.replicas: dict[str, LocalReplica] = {}
        self.paths: dict[str, StrongPath] = {}
        for index, node in enumerate(NODES):
            storage = MemoryStorage()
            replica = LocalReplica(
                node_id=node,
                storage=storage,
                committer=GroupCommitter(storage, durable=False),
                clock=self.clock,
                policy=policy,
                tombstone_grace_s=60,
                partition_count=PARTITIONS,
                key_bytes_max=2048,
                bounds=config.record_bounds(),
            )
            acceptor = Acceptor(replica)
            self.replicas[node] = replica
            self.network.acceptors[node] = acceptor
            self.paths[node] = StrongPath(
                cluster=config,
                ring=ring,
                replica=replica,
                acceptor=acceptor,
                peers=self.network.peers(node),
                rng=random.Random(seed * 10 + index),
            )

    def __getitem__(self, node: str) -> StrongPath:
        return self.paths[node]


def run(scenario: Callable[[], object]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def address(key: bytes) -> tuple[int, bytes]:
    return partition_of(key, PARTITIONS), key


# --- reads and writes ------------------------------------------------------------------------


def test_a_strong_write_is_read_back_from_every_node_with_its_etag() -> None:
    async def scenario() -> None:
        cluster = Cluster()
        assert (await cluster["n1"].read(b"k")).values == []
        written = await cluster["n1"].write(b"k", b"v1", condition=None, ttl_s=0)
        assert written.etag is not None
        for node in NODES:
            result = await cluster[node].read(b"k")
            assert (result.values, result.etag) == ([b"v1"], written.etag)
        # Committed into the regular record on every replica, so quorum reads see it.
        for replica in cluster.replicas.values():
            record = replica.read(*address(b"k"))
            assert record is not None and record.visible_values(cluster.clock.now_ms()) == [b"v1"]
        # The context names the write: its clock covers the dot this node minted.
        assert written.context.clock[0][0] == "n1"

    run(scenario)


def test_compare_and_set_succeeds_on_the_current_etag_and_412s_on_a_stale_one() -> None:
    async def scenario() -> None:
        cluster = Cluster()
        first = await cluster["n1"].write(b"k", b"a", condition=None, ttl_s=0)
        assert first.etag is not None
        second = await cluster["n2"].write(b"k", b"b", condition=IfMatch(first.etag), ttl_s=0)
        assert second.etag not in (None, first.etag)
        with pytest.raises(PreconditionFailed) as failed:
            await cluster["n3"].write(b"k", b"c", condition=IfMatch(first.etag), ttl_s=0)
        assert failed.value.current_etag == second.etag
        assert failed.value.http_status == 412
        assert (await cluster["n3"].read(b"k")).values == [b"b"]

    run(scenario)


def test_create_only_twice_the_second_gets_412_with_the_first_ones_etag() -> None:
    async def scenario() -> None:
        cluster = Cluster()
        created = await cluster["n1"].write(b"k", b"first", condition=IfAbsent(), ttl_s=0)
        with pytest.raises(PreconditionFailed) as failed:
            await cluster["n2"].write(b"k", b"second", condition=IfAbsent(), ttl_s=0)
        assert failed.value.current_etag == created.etag
        assert failed.value.condition == "If-None-Match: *"
        # A strong delete leaves no visible value: create-only works again.
        deleted = await cluster["n3"].write(
            b"k", None, condition=IfMatch(str(created.etag)), ttl_s=0
        )
        assert deleted.etag is None
        again = await cluster["n2"].write(b"k", b"third", condition=IfAbsent(), ttl_s=0)
        assert (await cluster["n1"].read(b"k")).etag == again.etag

    run(scenario)


def test_a_strong_write_with_a_ttl_expires() -> None:
    async def scenario() -> None:
        cluster = Cluster()
        await cluster["n1"].write(b"k", b"v", condition=None, ttl_s=1)
        record = cluster.replicas["n2"].read(*address(b"k"))
        assert record is not None
        (sibling,) = record.siblings
        assert 0 < sibling.expires_at_ms - cluster.clock.now_ms() <= 1000

    run(scenario)


def test_a_weak_write_is_seen_by_strong_reads_and_conditions() -> None:
    async def scenario() -> None:
        cluster = Cluster()
        await cluster["n1"].write(b"k", b"strong", condition=None, ttl_s=0)
        # A weak (quorum-less) write lands on one replica only, after the commit.
        weak = cluster.replicas["n2"].write_new(
            *address(b"k"), value=b"weak", context=Context(), ttl_s=0
        )
        cluster.network.unreachable.add("n3")  # so n2 is in every quorum
        read = await cluster["n1"].read(b"k")
        assert read.values == [b"weak"]
        assert read.etag == etag_of(weak.record, cluster.clock.now_ms())
        # The read absorbed it into the chain: n1's committed state now holds it.
        state = cluster.network.acceptors["n1"].state(*address(b"k"))
        assert state.committed is not None
        assert state.committed.proposal.record.visible_values(cluster.clock.now_ms()) == [b"weak"]
        cluster.network.unreachable.clear()
        updated = await cluster["n3"].write(
            b"k", b"cas", condition=IfMatch(str(read.etag)), ttl_s=0
        )
        assert (await cluster["n2"].read(b"k")).etag == updated.etag

    run(scenario)


# --- failures --------------------------------------------------------------------------------


def test_the_minority_side_answers_503_at_once_when_failures_are_definite() -> None:
    async def scenario() -> None:
        cluster = Cluster(request_timeout_ms=5000)
        cluster.network.unreachable.update({"n2", "n3"})
        for attempt in (
            cluster["n1"].read(b"k"),
            cluster["n1"].write(b"k", b"v", condition=None, ttl_s=0),
        ):
            started = time.monotonic()
            with pytest.raises(QuorumNotReached) as refused:
                await attempt
            assert time.monotonic() - started < 0.5, "did not wait for the 5 s deadline"
            assert (refused.value.required, refused.value.acked) == (2, 1)
            assert refused.value.consistency == "strong"
        # Nothing was accepted anywhere: the write never got past prepare.
        assert cluster.network.acceptors["n1"].state(*address(b"k")).accepted is None

    run(scenario)


def test_nodes_the_detector_holds_down_are_not_asked() -> None:
    async def scenario() -> None:
        cluster = Cluster(request_timeout_ms=5000)
        cluster["n1"].is_down = lambda node: node != "n1"
        with pytest.raises(QuorumNotReached):
            await cluster["n1"].read(b"k")
        assert [d for d in cluster.network.delivered if d[0] == "n1"] == []

    run(scenario)


def test_silent_peers_answer_503_by_the_deadline_never_later() -> None:
    async def scenario() -> None:
        cluster = Cluster(request_timeout_ms=300)
        cluster.network.silent.update({"n2", "n3"})
        started = time.monotonic()
        with pytest.raises(QuorumNotReached):
            await cluster["n1"].read(b"k")
        assert time.monotonic() - started < 1.0

    run(scenario)


def test_a_propose_whose_answers_are_lost_is_unknown_never_failed() -> None:
    async def scenario() -> None:
        cluster = Cluster(request_timeout_ms=300)
        network = cluster.network

        def lose(node: str, message: Message) -> bool:
            if isinstance(message, PxPropose) and node != "n1":
                network.silent.update({"n2", "n3"})  # and nothing more gets through
                return True
            return False

        network.lose_replies = lose
        with pytest.raises(OutcomeUnknown) as unknown:
            await cluster["n1"].write(b"k", b"v", condition=None, ttl_s=0)
        assert unknown.value.http_status == 504 and unknown.value.consistency == "strong"
        # n2 got the propose and accepted it: once the network heals, a later strong
        # read finishes the in-progress proposal and the write becomes visible.
        network.silent.clear()
        network.lose_replies = lambda node, message: False
        assert (await cluster["n3"].read(b"k")).values == [b"v"]

    run(scenario)


def test_concurrent_compare_and_set_increments_lose_no_update() -> None:
    async def scenario() -> None:
        cluster = Cluster(seed=7, delay_ms_max=3.0)
        successes = 0
        outcomes: dict[str, int] = {}

        async def incrementer(node: str) -> None:
            nonlocal successes
            for _ in range(40):
                if successes >= 30:
                    return
                try:
                    current = await cluster[node].read(b"counter")
                    value = int(current.values[0]) + 1 if current.values else 1
                    condition = IfMatch(current.etag) if current.etag else IfAbsent()
                    await cluster[node].write(
                        b"counter", str(value).encode(), condition=condition, ttl_s=0
                    )
                except (PreconditionFailed, Contended, OutcomeUnknown) as exc:
                    # 412 and 503: nothing written. 504: a lost race's proposal the
                    # history no longer tells about (more than HISTORY_MAX writes won
                    # meanwhile): it may have been applied, so it bounds the count.
                    outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
                    continue
                successes += 1

        await asyncio.gather(*(incrementer(node) for node in NODES for _ in range(2)))
        final = await cluster["n2"].read(b"counter")
        count = int(final.values[0])
        unknown = outcomes.get("OutcomeUnknown", 0)
        assert successes >= 10, outcomes
        assert outcomes.get("PreconditionFailed", 0) > 0, "the clients really raced"
        assert successes <= count <= successes + unknown, (count, successes, outcomes)

    run(scenario)


# --- the acceptor ----------------------------------------------------------------------------


def test_the_acceptor_persists_its_promise_before_it_replies() -> None:
    async def scenario() -> None:
        cluster = Cluster()
        replica = cluster.replicas["n1"]
        held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        class HeldCommitter:
            async def durable(self) -> None:
                await held

            def durable_future(self) -> asyncio.Future[None] | None:
                return held

        replica.committer = HeldCommitter()
        ballot = Ballot(cluster.clock.now_ms() << 16, "n2")
        answer = cluster.network.acceptors["n1"].handle(PxPrepare(*address(b"k"), ballot), "n2")
        assert isinstance(answer, asyncio.Future)
        stored = replica.storage.get_paxos(*address(b"k"))
        assert stored is not None and paxos.decode_state(stored).promised == ballot
        await asyncio.sleep(0)
        assert not answer.done(), "no reply before the state is durable"
        held.set_result(None)
        assert isinstance(await answer, paxos.PxPromise)

    run(scenario)


def test_a_commit_reaches_the_merkle_trees_as_any_stored_record_does() -> None:
    async def scenario() -> None:
        cluster = Cluster()
        noted: list[tuple[int, bytes, object, object]] = []

        class Trees:
            def on_write(self, partition: int, key: bytes, old: object, new: object) -> None:
                noted.append((partition, key, old, new))

        replica = cluster.replicas["n2"]
        replica.trees = Trees()  # type: ignore[assignment]
        await cluster["n1"].write(b"k", b"v1", condition=None, ttl_s=0)
        stored = replica.read(*address(b"k"))
        assert noted == [(*address(b"k"), None, stored)]
        await cluster["n1"].write(b"k", b"v2", condition=None, ttl_s=0)
        assert noted[-1] == (*address(b"k"), stored, replica.read(*address(b"k")))

    run(scenario)


def test_the_acceptor_refuses_what_breaks_the_rules() -> None:
    cluster = Cluster()
    acceptor = cluster.network.acceptors["n1"]
    partition, key = address(b"k")
    now_ms = cluster.clock.now_ms()
    with pytest.raises(RemoteProtocolError, match="partition"):
        acceptor.handle(
            PxPrepare((partition + 1) % PARTITIONS, key, Ballot(now_ms << 16, "n2")), "n2"
        )
    with pytest.raises(RemoteProtocolError, match="ahead of this node's clock"):
        acceptor.handle(PxPrepare(partition, key, Ballot((now_ms + 3_600_000) << 16, "n2")), "n2")
    with pytest.raises(RemoteProtocolError, match="zero ballot"):
        acceptor.handle(PxPrepare(partition, key, Ballot(0, "")), "n2")
    cluster.replicas["n1"].storage.put_paxos(partition, key, b"\x01garbage")
    with pytest.raises(StorageCorruption):
        acceptor.handle(PxPrepare(partition, key, Ballot(now_ms << 16, "n2")), "n2")


def test_acceptors_that_cannot_sync_an_accept_make_the_write_unknown() -> None:
    async def scenario() -> None:
        cluster = Cluster(request_timeout_ms=300)

        class FailsOnceAccepted:
            """Syncs promises; the sync after an accept (and every later one) fails."""

            def __init__(self, replica: LocalReplica) -> None:
                self.replica = replica

            async def durable(self) -> None:
                return None

            def durable_future(self) -> asyncio.Future[None] | None:
                stored = self.replica.storage.get_paxos(*address(b"k"))
                if stored is not None and paxos.decode_state(stored).accepted is not None:
                    raise SyncFailed(reason="EIO")
                return None

        for node in ("n1", "n2"):  # the local acceptor and one peer
            cluster.replicas[node].committer = FailsOnceAccepted(cluster.replicas[node])
        with pytest.raises(OutcomeUnknown):
            await cluster["n1"].write(b"k", b"v", condition=None, ttl_s=0)

    run(scenario)


def test_the_driver_runs_outside_a_task_as_the_http_connection_steps_it() -> None:
    """``HttpConnection`` runs a request on a callback's stack until it first
    suspends, and only then hands it to a task: nothing may need a current task."""

    async def scenario() -> None:
        cluster = Cluster(request_timeout_ms=300)
        cluster.network.silent.add("n3")  # some answers never come: the deadline timer runs
        loop = asyncio.get_running_loop()
        answers: asyncio.Future[list[bytes]] = loop.create_future()
        tasks: list[asyncio.Task[None]] = []

        async def request() -> None:
            await cluster["n1"].write(b"k", b"v", condition=None, ttl_s=0)
            answers.set_result((await cluster["n2"].read(b"k")).values)

        def step_outside_a_task() -> None:
            assert asyncio.current_task() is None
            coroutine = request()
            try:
                yielded = coroutine.send(None)
            except StopIteration:
                return
            tasks.append(loop.create_task(_continue(coroutine, yielded)))

        loop.call_soon(step_outside_a_task)
        assert await asyncio.wait_for(answers, 5) == [b"v"]

    run(scenario)


def test_reads_start_with_snapshots_only_once_the_home_replicas_are_settled() -> None:
    async def scenario() -> None:
        cluster = Cluster(request_timeout_ms=20, delay_ms_max=0)
        path = cluster["n1"]
        settle_s = 2 * (path.request_timeout_ms + path.rpc_timeout_ms) / 1000
        await path.write(b"k", b"v", condition=None, ttl_s=0)
        cluster.network.delivered.clear()
        await path.read(b"k")  # the ring was installed just now: prepare
        assert {kind for _, _, kind in cluster.network.delivered} == {"PxPrepare"}
        path._ring_since_ms -= int(settle_s * 1000)  # as if settle_s had passed
        assert path.snapshot_reads()
        cluster.network.delivered.clear()
        await path.read(b"k")
        assert {kind for _, _, kind in cluster.network.delivered} == {"PxRead"}
        path.routing = lambda: "a change is OPEN"
        assert not path.snapshot_reads()
        path.routing = lambda: None
        assert path.snapshot_reads()
        path.ring = path.ring  # a ring (re)installed: settle again
        assert not path.snapshot_reads()

    run(scenario)
