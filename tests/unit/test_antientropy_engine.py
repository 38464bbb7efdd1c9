"""The anti-entropy engine: two or three nodes in one process, joined by a fake network.

Each node is a ``MemoryStorage``, a ``LocalReplica`` whose puts call the
``TreeKeeper`` (as ``replica.py`` does once wired), and an ``AntiEntropy``
engine. The fake network sends every message through msgspec both ways (so
the messages really encode), answers with the peer's ``handle``, turns a
handler's error into a ``RemoteError`` as ``net.rpc`` does, and can fail or
tamper with chosen calls. Time is a fake clock that ``sleep_ms`` advances.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import pytest

from dynakv.core.antientropy import ExchangeLimits
from dynakv.core.merkle import PartitionTree, TreeShape, record_digest
from dynakv.core.record import (
    ConflictPolicy,
    Context,
    Record,
    Sibling,
    context_of,
    encode_record,
    merge,
)
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.errors import DynakvError, Overloaded, PeerUnreachable, RemoteError, RpcTimeout
from dynakv.node.antientropy import (
    ANTI_ENTROPY_REQUESTS,
    AntiEntropy,
    AntiEntropyMessage,
    AntiEntropyRequest,
    AntiEntropySettings,
    RepairPull,
    RepairPullReply,
    RepairPush,
    RepairPushReply,
    RoundOutcome,
)
from dynakv.node.merkle_trees import META_CLEAN, TreeKeeper
from dynakv.node.replica import LocalReplica
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.memory import MemoryStorage

PARTITIONS = 16
GRACE_S = 3600
START_MS = 1_700_000_000_000
SHAPE = TreeShape(4, 2)
SMALL = AntiEntropySettings(
    exchange=ExchangeLimits(
        nodes_per_message_max=16, entries_per_message_max=3, keys_per_round_max=1000
    ),
    repair_keys_per_message_max=2,
    repair_bytes_per_message_max=300,
    rate_bytes_per_s=1 << 30,
    burst_bytes=1 << 30,
    confirm_settle_ms=1000,
    confirm_ttl_ms=60_000,
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AntiEntropyMessage)
T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = START_MS

    def now_ms(self) -> int:
        return self.now

    def monotonic_ms(self) -> float:
        return float(self.now)


@dataclass
class Node:
    node_id: str
    storage: MemoryStorage
    replica: LocalReplica
    trees: TreeKeeper
    engine: AntiEntropy


Failure = Callable[[str, str, AntiEntropyRequest], BaseException | None]


class FakePeers:
    def __init__(self, cluster: Cluster, sender: str) -> None:
        self.cluster = cluster
        self.sender = sender

    async def call(self, node_id: str, message: AntiEntropyRequest, timeout_ms: int) -> object:
        cluster = self.cluster
        cluster.calls.append((self.sender, node_id, message))
        if cluster.fail is not None and (error := cluster.fail(self.sender, node_id, message)):
            raise error
        request = _decoder.decode(_encoder.encode(message))
        assert isinstance(request, ANTI_ENTROPY_REQUESTS) and request == message
        try:
            reply = await cluster[node_id].engine.handle(request, self.sender)
        except DynakvError as exc:
            raise RemoteError(peer=node_id, remote_code=exc.code, message=exc.message) from exc
        if cluster.tamper is not None:
            reply = cluster.tamper(reply)
        return _decoder.decode(_encoder.encode(reply))


class Cluster:
    def __init__(
        self,
        node_ids: Sequence[str],
        *,
        policy: ConflictPolicy = ConflictPolicy.LWW,
        settings: AntiEntropySettings = SMALL,
        page_keys: int = 2,
        recent_writes_max: int = 1000,
    ) -> None:
        self.clock = FakeClock()
        self.recent_writes_max = recent_writes_max
        self.policy = policy
        self.settings = settings
        self.page_keys = page_keys
        self.ring = Ring.build(
            [RingNode(node_id, f"z{i}") for i, node_id in enumerate(node_ids)],
            PARTITIONS,
            len(node_ids),
        )
        self.dead: set[str] = set()
        self.sleeps: list[int] = []
        self.calls: list[tuple[str, str, AntiEntropyRequest]] = []
        self.fail: Failure | None = None
        self.tamper: Callable[[Any], Any] | None = None
        self.nodes = {node_id: self.make_node(node_id) for node_id in node_ids}

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def make_node(self, node_id: str, storage: MemoryStorage | None = None) -> Node:
        storage = storage if storage is not None else MemoryStorage()
        trees = TreeKeeper(
            storage, shape=SHAPE, page_keys=self.page_keys, recent_writes_max=self.recent_writes_max
        )
        replica = LocalReplica(
            trees=trees,
            node_id=node_id,
            storage=storage,
            committer=GroupCommitter(storage, durable=False),
            clock=self.clock,
            policy=self.policy,
            tombstone_grace_s=GRACE_S,
            partition_count=PARTITIONS,
            key_bytes_max=2048,
        )
        engine = AntiEntropy(
            replica=replica,
            trees=trees,
            peers=FakePeers(self, node_id),
            ring=lambda: self.ring,
            is_live=lambda peer: peer not in self.dead,
            now_ms=self.clock.now_ms,
            sleep_ms=self.sleep_ms,
            settings=self.settings,
        )
        return Node(node_id, storage, replica, trees, engine)

    def wipe(self, node_id: str) -> Node:
        """The node restarts with an empty data directory."""
        self.nodes[node_id] = self.make_node(node_id)
        return self.nodes[node_id]

    async def sleep_ms(self, delay_ms: int) -> None:
        self.sleeps.append(delay_ms)
        self.clock.now += delay_ms
        await asyncio.sleep(0)

    def write(
        self,
        node_id: str,
        key: bytes,
        value: bytes | None,
        *,
        to: Sequence[str] = (),
        with_context: bool = False,
    ) -> Record:
        """Mint a write on ``node_id`` and merge it into the replicas ``to``."""
        self.clock.now += 1
        replica, partition = self[node_id].replica, partition_of(key, PARTITIONS)
        context = context_of(replica.read(partition, key)) if with_context else Context()
        record = replica.write_new(partition, key, value=value, context=context, ttl_s=0).record
        for other in to:
            self[other].replica.apply(partition, key, record)
        return record

    def content(self, node_id: str) -> dict[bytes, Record]:
        storage = self[node_id].storage
        return {key: record for p in range(PARTITIONS) for key, record in storage.scan(p)}

    def merged(self) -> dict[bytes, Record]:
        """The reference model: every node's records, merged key by key."""
        model: dict[bytes, Record] = {}
        for node_id in self.nodes:
            for key, record in self.content(node_id).items():
                merged = merge(model.get(key), record, self.policy)
                assert merged is not None
                model[key] = merged
        return model

    def assert_trees_fresh(self, node_id: str) -> int:
        """Every ready tree equals a build from a scan; returns how many were checked."""
        node, checked = self[node_id], 0
        for partition in range(PARTITIONS):
            tree = node.trees.tree(partition)
            if tree is None:
                continue
            scan = node.storage.scan_raw(partition, limit=1 << 20)
            fresh = PartitionTree.build(((k, record_digest(v)) for k, v in scan), SHAPE)
            assert (tree.root(), tree.key_count) == (fresh.root(), fresh.key_count), partition
            checked += 1
        return checked


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def keys_of(count: int, prefix: bytes = b"k") -> list[bytes]:
    return [prefix + str(i).encode() for i in range(count)]


def size_of(records: dict[bytes, Record]) -> int:
    return sum(len(encode_record(record)) for record in records.values())


# -- restoring and converging ---------------------------------------------------


def test_a_wiped_replica_is_restored_and_the_report_counts_what_it_lacked() -> None:
    cluster = Cluster(["a", "b", "c"])
    for i, key in enumerate(keys_of(40)):
        cluster.write("a", key, b"v%d" % i, to=["b", "c"])
    cluster.write("b", b"k3", None, to=["a", "c"])  # a tombstone is restored too
    expected = cluster.content("c")
    cluster.wipe("c")

    report = run(cluster["c"].engine.repair())

    assert cluster.content("c") == expected
    assert report.totals["keys_pulled"] == len(expected) == 40
    assert report.totals["bytes_pulled"] == size_of(expected)
    assert (report.totals["keys_pushed"], report.rounds_failed, report.rounds_partial) == (0, 0, 0)
    assert report.partitions == PARTITIONS and report.keys_moved == 40
    assert report.to_dict()["bytes_moved"] == size_of(expected)
    assert cluster.assert_trees_fresh("c") == PARTITIONS


def test_a_wiped_replica_is_restored_by_its_peers_rounds_alone() -> None:
    cluster = Cluster(["a", "b"])
    for key in keys_of(25):
        cluster.write("a", key, b"value-" + key, to=["b"])
    expected = cluster.content("b")
    cluster.wipe("b")

    pushed = 0
    for partition in range(PARTITIONS):
        report = run(cluster["a"].engine.run_round(partition, "b"))
        assert report.complete and report.keys_pulled == 0
        pushed += report.keys_pushed
    assert pushed == 25 and cluster.content("b") == expected


def test_one_repair_on_one_node_brings_three_divergent_replicas_to_the_merge() -> None:
    cluster = Cluster(["a", "b", "c"], policy=ConflictPolicy.SIBLINGS)
    for i, key in enumerate(keys_of(12)):
        cluster.write(["a", "b", "c"][i % 3], key, b"only-here")
    for key in keys_of(4, b"both"):  # concurrent writes: siblings everywhere after repair
        cluster.write("b", key, b"from-b")
        cluster.write("c", key, b"from-c")
    cluster.write("a", b"k0", None, with_context=True)  # a deletes its own key
    model = cluster.merged()
    assert any(len(record.siblings) == 2 for record in model.values())

    report = run(cluster["a"].engine.repair())

    for node_id in "abc":
        assert cluster.content(node_id) == model, node_id
        cluster.assert_trees_fresh(node_id)
    assert report.rounds_failed == 0 and report.totals["refused"] == 0
    # A second pass carried what later peers brought to the peers met before them.
    assert report.rounds_total > 2 * PARTITIONS


# -- failures, refusals, expiry -------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [PeerUnreachable(peer="b", reason="refused"), RpcTimeout(peer="b", timeout_ms=5000)],
)
@pytest.mark.parametrize("failing_call", [1, 3, 6, 9])
def test_a_peer_failing_mid_round_ends_it_failed_and_partial_with_nothing_half_applied(
    error: DynakvError, failing_call: int
) -> None:
    cluster = Cluster(["a", "b"])
    for key in keys_of(150, b"x"):
        cluster.write("b", key, b"b-only")
    for key in keys_of(20, b"y"):
        cluster.write("a", key, b"a-only")
    before_a = cluster.content("a")
    b_records = cluster.content("b")
    partition = max(
        range(PARTITIONS), key=lambda p: sum(partition_of(k, PARTITIONS) == p for k in b_records)
    )
    seen = 0

    def fail(sender: str, node_id: str, message: AntiEntropyRequest) -> BaseException | None:
        nonlocal seen
        seen += 1
        return error if seen == failing_call else None

    cluster.fail = fail
    report = run(cluster["a"].engine.run_round(partition, "b"))

    assert report.outcome is RoundOutcome.FAILED and not report.complete
    assert report.error is not None and error.code in report.error
    after_a = cluster.content("a")
    for key, record in after_a.items():  # every key is as it was, or wholly b's record
        assert record in (before_a.get(key), b_records.get(key)), key
    assert report.keys_pulled == len(after_a) - len(before_a)
    cluster.assert_trees_fresh("a")

    cluster.fail = None  # the next round finishes the job
    again = run(cluster["a"].engine.run_round(partition, "b"))
    assert again.complete and again.outcome is not RoundOutcome.FAILED
    assert run(cluster["a"].engine.run_round(partition, "b")).outcome is RoundOutcome.IN_SYNC


def _from_the_future(record: Record, ahead_ms: int) -> Record:
    sibling = record.siblings[0]
    late = msgspec.structs.replace(sibling, timestamp=sibling.timestamp + (ahead_ms << 16))
    return Record((late,))


def test_a_record_a_peer_sends_out_of_bounds_is_refused_and_counted() -> None:
    cluster = Cluster(["a", "b"])
    cluster.write("b", b"k1", b"honest")
    partition = partition_of(b"k1", PARTITIONS)

    def tamper(reply: Any) -> Any:
        if isinstance(reply, RepairPullReply):
            records = tuple((k, _from_the_future(r, 3_600_000)) for k, r in reply.records)
            return RepairPullReply(records, reply.served, reply.expired)
        return reply

    cluster.tamper = tamper
    report = run(cluster["a"].engine.run_round(partition, "b"))

    assert (report.refused, report.keys_pulled, report.outcome) == (1, 0, RoundOutcome.REPAIRED)
    assert cluster.content("a") == {}
    assert cluster["a"].replica.offenses.refused_total == 1


def test_a_pushed_record_out_of_bounds_is_refused_and_the_rest_merged() -> None:
    cluster = Cluster(["a", "b"])
    good = cluster.write("a", b"k1", b"fine")
    bad = _from_the_future(cluster.write("a", b"k2", b"late"), 3_600_000)
    partition = partition_of(b"k1", PARTITIONS)
    other = partition_of(b"k2", PARTITIONS)
    push = RepairPush(partition, ((b"k1", good),))
    reply = run(cluster["b"].engine.handle(push, "a"))
    assert isinstance(reply, RepairPushReply) and (reply.applied, reply.refused) == (1, 0)
    reply = run(cluster["b"].engine.handle(RepairPush(other, ((b"k2", bad),)), "a"))
    assert isinstance(reply, RepairPushReply) and (reply.applied, reply.refused) == (0, 1)
    assert cluster.content("b") == {b"k1": good}
    assert cluster["b"].replica.offenses.refused_total == 1


def test_requests_naming_keys_of_another_partition_are_refused_whole() -> None:
    cluster = Cluster(["a", "b"])
    record = cluster.write("a", b"k1", b"v")
    wrong = (partition_of(b"k1", PARTITIONS) + 1) % PARTITIONS
    with pytest.raises(DynakvError, match="partition"):
        run(cluster["b"].engine.handle(RepairPush(wrong, ((b"k1", record),)), "a"))
    with pytest.raises(DynakvError, match="out of range"):
        run(cluster["b"].engine.handle(RepairPull(PARTITIONS, (b"k1",), 100), "a"))
    assert cluster.content("b") == {}


def test_a_tombstone_past_its_purge_time_is_never_pulled_back() -> None:
    cluster = Cluster(["a", "b"])
    cluster.write("a", b"gone", None)  # b never saw it (or purged it already)
    cluster.write("a", b"kept", b"v")
    cluster.clock.now += GRACE_S * 1000 + 1  # a's tombstone is due for purge

    pulled = run(cluster["b"].engine.repair())
    assert cluster.content("b") == {b"kept": cluster.content("a")[b"kept"]}
    assert (pulled.totals["expired_skipped"], pulled.totals["keys_pulled"]) == (1, 1)

    cluster.wipe("b")  # and a does not push it either
    pushed = run(cluster["a"].engine.repair())
    assert b"gone" not in cluster.content("b")
    assert (pushed.totals["expired_skipped"], pushed.totals["keys_pushed"]) == (1, 1)


# -- pacing, bounds, scheduling -------------------------------------------------


def test_the_rate_limit_paces_a_large_repair() -> None:
    rate, burst = 10_000, 2_000
    paced = AntiEntropySettings(
        exchange=SMALL.exchange,
        repair_keys_per_message_max=8,
        repair_bytes_per_message_max=4_000,
        rate_bytes_per_s=rate,
        burst_bytes=burst,
    )
    cluster = Cluster(["a", "b"], settings=paced)
    for key in keys_of(100):
        cluster.write("b", key, b"x" * 400)
    for key in keys_of(30, b"mine"):
        cluster.write("a", key, b"y" * 300)
    started_ms = cluster.clock.now

    report = run(cluster["a"].engine.repair())

    moved = report.bytes_moved
    assert moved == size_of(cluster.content("b"))  # b's 100 pulled, a's 30 pushed
    waited_ms = report.totals["waited_ms"]
    assert waited_ms == sum(cluster.sleeps) == cluster.clock.now - started_ms
    # The bucket lets the burst through at once, then rate bytes per second
    # (each wait rounds up to a whole millisecond).
    ideal_ms = (moved - burst) * 1000 // rate
    assert ideal_ms <= waited_ms <= ideal_ms + len(cluster.sleeps)
    for _, _, message in cluster.calls:
        if isinstance(message, RepairPush):
            assert len(message.records) <= 8
            size = sum(len(encode_record(r)) for _, r in message.records)
            assert size <= 4_000 or len(message.records) == 1


def test_run_forever_walks_every_pair_and_skips_dead_peers() -> None:
    cluster = Cluster(["a", "b", "c"])
    cluster.dead.add("c")
    for key in keys_of(10):
        cluster.write("b", key, b"v")

    async def scenario() -> None:
        task = asyncio.create_task(cluster["a"].engine.run_forever(interval_ms=100))
        for _ in range(10_000):  # a bounded wait for PARTITIONS rounds
            if len(cluster["a"].engine.recent_rounds) >= 20:
                break
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run(scenario())
    rounds = list(cluster["a"].engine.recent_rounds)
    assert {r.peer for r in rounds} == {"b"}
    assert [r.partition for r in rounds[:PARTITIONS]] == list(range(PARTITIONS))
    assert cluster.content("a") == cluster.content("b")


def test_a_second_repair_while_one_runs_is_refused() -> None:
    cluster = Cluster(["a", "b"])
    for key in keys_of(50):  # b's trees take pages to build: the first repair yields
        cluster.write("b", key, b"v")

    async def scenario() -> None:
        first = asyncio.create_task(cluster["a"].engine.repair())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await cluster["a"].engine.repair()
        await first

    run(scenario())


# -- tombstone confirmations ----------------------------------------------------


def test_a_tombstone_is_confirmed_only_after_settled_equal_rounds_with_every_replica() -> None:
    cluster = Cluster(["a", "b", "c"])
    cluster.write("a", b"dead", b"v", to=["b", "c"])
    tombstone = cluster.write("a", b"dead", None, to=["b", "c"], with_context=True)
    partition = partition_of(b"dead", PARTITIONS)
    engine = cluster["a"].engine
    digest = record_digest(encode_record(tombstone))

    assert not engine.tombstone_confirmed(partition, b"dead", digest)  # no round yet
    assert run(engine.run_round(partition, "b")).outcome is RoundOutcome.IN_SYNC
    cluster.clock.now += 2000
    assert not engine.tombstone_confirmed(partition, b"dead", digest)  # c never confirmed
    assert run(engine.run_round(partition, "c")).outcome is RoundOutcome.IN_SYNC
    assert not engine.tombstone_confirmed(partition, b"dead", digest)  # c's is not settled
    cluster.clock.now += 1000
    assert engine.tombstone_confirmed(partition, b"dead", digest)
    assert engine.tombstone_purgeable_early(partition, b"dead", tombstone)
    assert not engine.tombstone_confirmed(partition, b"dead", b"\x00" * 16)  # another record
    cluster.clock.now += 60_000
    assert not engine.tombstone_confirmed(partition, b"dead", digest)  # too old


def test_a_write_after_the_round_voids_the_confirmation_of_that_key_only() -> None:
    cluster = Cluster(["a", "b"])
    tombstones = {key: cluster.write("a", key, None, to=["b"]) for key in (b"t1", b"t2")}
    partition = partition_of(b"t1", PARTITIONS)
    other_key = next(k for k in keys_of(200, b"o") if partition_of(k, PARTITIONS) == partition)
    engine = cluster["a"].engine
    for p in {partition, partition_of(b"t2", PARTITIONS)}:
        run(engine.run_round(p, "b"))
    cluster.clock.now += 1500
    cluster.write("a", other_key, b"new")  # another key of the partition: t1 stays confirmed
    digest = record_digest(encode_record(tombstones[b"t1"]))
    assert engine.tombstone_confirmed(partition, b"t1", digest)
    value = cluster.write("a", b"t1", b"back", with_context=True)
    assert not engine.tombstone_purgeable_early(partition, b"t1", value)
    assert not engine.tombstone_confirmed(partition, b"t1", digest)


def test_a_key_that_left_the_write_log_is_judged_by_its_partitions_floor() -> None:
    cluster = Cluster(["a", "b"], recent_writes_max=4)
    tombstone = cluster.write("a", b"t", None, to=["b"])
    partition = partition_of(b"t", PARTITIONS)
    others = [k for k in keys_of(300, b"o") if partition_of(k, PARTITIONS) == partition][:4]
    engine = cluster["a"].engine
    run(engine.run_round(partition, "b"))
    cluster.clock.now += 1500
    digest = record_digest(encode_record(tombstone))
    assert engine.tombstone_confirmed(partition, b"t", digest)
    cluster.write("a", b"t", b"back", with_context=True)
    for key in others:  # push b"t" out of the write log: only the partition's floor is left
        cluster.write("a", key, b"v")
    assert cluster["a"].trees.last_write(partition, b"t")[1] is None
    assert not engine.tombstone_confirmed(partition, b"t", digest)


def test_an_early_purge_stays_purged_through_later_rounds() -> None:
    cluster = Cluster(["a", "b"])
    tombstone = cluster.write("a", b"t", None, to=["b"])
    cluster.write("a", b"live", b"v", to=["b"])
    partition = partition_of(b"t", PARTITIONS)
    a, b = cluster["a"], cluster["b"]
    run(a.engine.run_round(partition, "b"))
    run(b.engine.run_round(partition, "a"))
    cluster.clock.now += 1500
    assert a.engine.tombstone_purgeable_early(partition, b"t", tombstone)
    purge_at_ms = tombstone.purge_at_ms()
    assert purge_at_ms is not None and purge_at_ms > cluster.clock.now  # early indeed
    assert a.storage.purge_if_due(partition, b"t", purge_at_ms)  # the sweeper, early
    a.trees.on_write(partition, b"t", tombstone, None)

    pull = run(a.engine.run_round(partition, "b"))  # b still holds it: a does not take it
    push = run(b.engine.run_round(partition, "a"))  # b's is confirmed: not pushed to a
    assert b"t" not in cluster.content("a") and b"t" in cluster.content("b")
    assert (pull.expired_skipped, pull.keys_pulled) == (1, 0)
    assert (push.expired_skipped, push.keys_pushed) == (1, 0)
    pushes = [m for sender, _, m in cluster.calls if sender == "b" and isinstance(m, RepairPush)]
    assert all(key != b"t" for push_message in pushes for key, _ in push_message.records)
    assert cluster.content("a")[b"live"] == cluster.content("b")[b"live"]


class CountingCommitter:
    def __init__(self) -> None:
        self.syncs = 0

    async def durable(self) -> None:
        self.syncs += 1

    def durable_future(self) -> asyncio.Future[None] | None:
        raise AssertionError("not used by anti-entropy")


def test_a_root_is_answered_only_after_a_sync() -> None:
    # An equal root confirms tombstones: what it hashes must be durable on the peer.
    cluster = Cluster(["a", "b"])
    cluster.write("a", b"t", None, to=["b"])
    committer = CountingCommitter()
    cluster["b"].replica.committer = committer
    assert run(cluster["a"].engine.run_round(partition_of(b"t", PARTITIONS), "b")).complete
    assert committer.syncs == 1


def test_a_single_replica_never_confirms() -> None:
    cluster = Cluster(["a"])
    tombstone = cluster.write("a", b"t", None)
    partition = partition_of(b"t", PARTITIONS)
    report = run(cluster["a"].engine.repair())
    assert report.rounds_total == 0 and report.partitions == PARTITIONS
    cluster.clock.now += 10_000
    digest = record_digest(encode_record(tombstone))
    assert not cluster["a"].engine.tombstone_confirmed(partition, b"t", digest)


def test_a_rebuilt_tree_forgets_its_confirmations() -> None:
    cluster = Cluster(["a", "b"])
    tombstone = cluster.write("a", b"t", None, to=["b"])
    partition = partition_of(b"t", PARTITIONS)
    engine = cluster["a"].engine
    run(engine.run_round(partition, "b"))
    cluster.clock.now += 1500
    digest = record_digest(encode_record(tombstone))
    assert engine.tombstone_confirmed(partition, b"t", digest)
    cluster["a"].trees.invalidate(partition)
    run(engine.run_round(partition, "b"))  # rebuilt: a new epoch, a fresh confirmation
    assert not engine.tombstone_confirmed(partition, b"t", digest)
    cluster.clock.now += 1500
    assert engine.tombstone_confirmed(partition, b"t", digest)


# -- trees: persistence and consistency -----------------------------------------


def test_saved_trees_are_trusted_after_a_clean_stop_and_only_once() -> None:
    cluster = Cluster(["a", "b"])
    for key in keys_of(30):
        cluster.write("a", key, b"v" + key)
    run(cluster["a"].engine.repair())  # builds every tree of a
    storage, trees = cluster["a"].storage, cluster["a"].trees
    roots = {p: trees.tree(p).root() for p in range(PARTITIONS)}  # type: ignore[union-attr]
    assert trees.save(stamp=77) == PARTITIONS

    restarted = TreeKeeper(storage, shape=SHAPE, page_keys=2)
    assert restarted.load() == PARTITIONS
    assert {p: restarted.tree(p).root() for p in range(PARTITIONS)} == roots  # type: ignore[union-attr]
    assert restarted.built_total == 0 and storage.get_meta(META_CLEAN) is None

    again = TreeKeeper(storage, shape=SHAPE, page_keys=2)
    assert again.load() == 0 and again.tree(0) is None  # a crash since: rebuild
    assert storage.get_meta("ae.tree.0") is None and storage.get_meta("ae.trees") is None


def test_an_unclean_or_damaged_save_is_rebuilt_from_a_scan() -> None:
    cluster = Cluster(["a", "b"])
    for key in keys_of(20):
        cluster.write("a", key, b"v")
    run(cluster["a"].engine.repair())
    storage, trees = cluster["a"].storage, cluster["a"].trees
    trees.save(stamp=5)
    blob = storage.get_meta("ae.tree.3")
    assert blob is not None
    storage.put_meta("ae.tree.3", blob[:-1] + bytes([blob[-1] ^ 1]))
    storage.put_meta("ae.tree.4", PartitionTree(SHAPE).to_bytes(6))  # another save's stamp
    restarted = TreeKeeper(storage, shape=SHAPE, page_keys=2)
    assert restarted.load() == PARTITIONS - 2
    assert restarted.tree(3) is None and restarted.tree(4) is None

    trees.save(stamp=9)
    storage.delete_meta(META_CLEAN)  # the stop did not finish
    cold = TreeKeeper(storage, shape=SHAPE, page_keys=2)
    assert cold.load() == 0
    cluster.nodes["a"] = node = cluster.make_node("a", storage)
    node.trees = node.replica.trees = node.engine.trees = cold
    report = run(node.engine.repair())
    assert report.rounds_failed == 0 and cold.built_total == PARTITIONS
    cluster.assert_trees_fresh("a")


def test_a_write_during_an_incremental_build_lands_in_the_tree() -> None:
    cluster = Cluster(["a", "b"], page_keys=3)
    keys = [k for k in keys_of(400) if partition_of(k, PARTITIONS) == 5][:20]
    for key in keys:
        cluster.write("a", key, b"old")
    trees = cluster["a"].trees
    assert trees.build_step(5) is None and trees.build_step(5) is None  # 6 keys in
    for key in keys[::3]:  # before and after the cursor
        cluster.write("a", key, b"new", with_context=True)
    cluster.write("a", keys[0], None, with_context=True)
    while trees.build_step(5) is None:
        pass
    assert cluster.assert_trees_fresh("a") == 1


def test_the_engine_module_never_imports_the_network_package() -> None:
    # net.messages imports the repair messages from it: an import the other way is a cycle.
    code = (
        "import sys, dynakv.node.antientropy; "
        "sys.exit(any(m.startswith('dynakv.net') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_messages_are_tagged_and_round_trip() -> None:
    record = Record((Sibling(value=b"v", node="a", counter=1, past=(), timestamp=1 << 16),))
    for message in (
        RepairPull(1, (b"k",), 10),
        RepairPullReply(((b"k", record),), 2, 1),
        RepairPush(1, ((b"k", record),)),
    ):
        assert _decoder.decode(_encoder.encode(message)) == message
