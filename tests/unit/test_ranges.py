"""Range reads (node.ranges): a replica's pages, and the coordinator's merge over replicas,
against a dumb model (every key of the range, sorted, merged over the replicas asked)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.api.backend import RangePage, RangeQuery
from dynakv.config import ClusterConfig, NodeSpec
from dynakv.core.consistency import Consistency
from dynakv.core.record import ConflictPolicy, Record, Sibling, merge
from dynakv.core.ring import Ring, RingNode
from dynakv.errors import PeerUnreachable, QuorumNotReached, RemoteError, RemoteProtocolError
from dynakv.net.messages import Message, Pong
from dynakv.node import ranges
from dynakv.node.coordinator import Coordinator
from dynakv.node.ranges import (
    RangeRead,
    RangeReader,
    RangeReadReply,
    RangeTooLong,
    check_range_read,
    handle_range,
    scan_range,
)
from dynakv.node.replica import LocalReplica
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.memory import MemoryStorage

NOW_MS = 1_700_000_000_000
PARTITION = 5
NODES = ("n1", "n2", "n3")


class Clock:
    def now_ms(self) -> int:
        return NOW_MS

    def monotonic_ms(self) -> float:
        return 0.0


def replica(node_id: str) -> LocalReplica:
    storage = MemoryStorage()
    return LocalReplica(
        node_id=node_id,
        storage=storage,
        committer=GroupCommitter(storage, durable=False),
        clock=Clock(),
        policy=ConflictPolicy.LWW,
        tombstone_grace_s=60,
        partition_count=1024,
        key_bytes_max=2048,
    )


def record(value: bytes | None, node: str, timestamp: int) -> Record:
    expires = NOW_MS + 60_000 if value is None else 0
    return Record((Sibling(value, node, timestamp, (), timestamp, expires),))


Route = Callable[[str, Message], Message | BaseException | None]


class Network:
    """Each node's replica; calls to a node run ``handle_range`` on it, unless ``route``
    answers first (a reply or an error: a failing or lying peer)."""

    def __init__(self, route: Route | None = None) -> None:
        self.replicas = {node: replica(node) for node in NODES}
        self.route = route
        self.sent: list[tuple[str, Message]] = []

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        self.sent.append((node_id, message))
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        outcome = self.route(node_id, message) if self.route is not None else None
        if outcome is None:
            assert isinstance(message, RangeRead)
            target = self.replicas[node_id]
            try:
                outcome = handle_range(message, "n1", target.storage, target)
            except Exception as exc:
                outcome = exc
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        return future

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message:
        return await self.start_call(node_id, message, timeout_ms)

    def put(self, node: str, key: bytes, stored: Record) -> None:
        self.replicas[node].storage.put(PARTITION, key, stored)


@functools.cache
def cluster() -> tuple[ClusterConfig, Ring]:
    specs = tuple(
        NodeSpec(n, f"z{n}", "127.0.0.1", 8000 + i, "127.0.0.1", 9000 + i)
        for i, n in enumerate(NODES)
    )
    ring = Ring.build([RingNode(n, f"z{n}") for n in NODES], 1024, 3)
    return ClusterConfig(name="t", nodes=specs), ring


def reader(network: Network) -> RangeReader:
    config, ring = cluster()
    coordinator = Coordinator(
        cluster=config,
        ring=ring,
        replica=network.replicas["n1"],
        peers=network,
    )
    return RangeReader(coordinator)


def query(
    low: bytes = b"",
    high: bytes | None = None,
    *,
    reverse: bool = False,
    consistency: Consistency = Consistency.QUORUM,
    limit: int = 1000,
    bytes_max: int = 1 << 20,
) -> RangeQuery:
    return RangeQuery(PARTITION, low, high, reverse, consistency, limit, bytes_max)


async def every_page(subject: RangeReader, first: RangeQuery) -> list[RangePage]:
    pages = [await subject.read(first)]
    while pages[-1].resume is not None:
        assert len(pages) < 10_000, "paging does not progress"
        resume = pages[-1].resume
        low, high = (first.low, resume) if first.reverse else (resume + b"\x00", first.high)
        pages.append(await subject.read(RangeQuery(PARTITION, low, high, *_rest(first))))
    return pages


def _rest(first: RangeQuery) -> tuple[bool, Consistency, int, int]:
    return first.reverse, first.consistency, first.limit, first.bytes_max


# --- the replica's side --------------------------------------------------------------------

keys = st.binary(min_size=1, max_size=4)
values = st.one_of(st.none(), st.binary(max_size=300))


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(keys, values, max_size=60),
    st.binary(max_size=3),
    st.one_of(st.none(), st.binary(min_size=1, max_size=3)),
    st.booleans(),
    st.integers(1, 7),
    st.integers(1, 900),
)
def test_a_replicas_pages_cover_the_range_in_order_once(
    contents: dict[bytes, bytes | None],
    low: bytes,
    high: bytes | None,
    reverse: bool,
    limit: int,
    bytes_max: int,
) -> None:
    subject = replica("n1")
    for index, (key, value) in enumerate(sorted(contents.items())):
        subject.storage.put(PARTITION, key, record(value, "n1", index + 1))
    expected = sorted(
        (key for key in contents if low <= key and (high is None or key < high)), reverse=reverse
    )
    seen: list[bytes] = []
    message = RangeRead(PARTITION, low, high, reverse, limit, bytes_max)
    for _ in range(1000):
        reply = scan_range(subject.storage, subject, message)
        assert 1 <= len(reply.records) <= limit or (not reply.records and reply.resume is None)
        seen.extend(key for key, _ in reply.records)
        if reply.resume is None:
            break
        if reverse:
            message = RangeRead(PARTITION, low, reply.resume, True, limit, bytes_max)
        else:
            message = RangeRead(PARTITION, reply.resume + b"\x00", high, False, limit, bytes_max)
    assert seen == expected


def test_a_page_is_cut_at_the_byte_bound_but_holds_at_least_one_record() -> None:
    subject = replica("n1")
    for index in range(5):
        subject.storage.put(PARTITION, b"k%d" % index, record(b"x" * 1000, "n1", index + 1))
    reply = scan_range(subject.storage, subject, RangeRead(PARTITION, b"", None, False, 100, 10))
    assert [key for key, _ in reply.records] == [b"k0"] and reply.resume == b"k0"
    reply = scan_range(subject.storage, subject, RangeRead(PARTITION, b"", None, False, 100, 2500))
    assert [key for key, _ in reply.records] == [b"k0", b"k1"] and reply.resume == b"k1"


OLD_REVERSE_EXAMINE_MAX = 65_536  # reverse reads were refused past this many keys


def test_a_reverse_read_longer_than_the_old_sweep_bound_is_served_from_the_top() -> None:
    subject = replica("n1")
    count = OLD_REVERSE_EXAMINE_MAX + 1
    for index in range(count):
        subject.storage.put(PARTITION, index.to_bytes(4, "big"), record(b"v", "n1", 1))
    top = [index.to_bytes(4, "big") for index in range(count - 1, count - 21, -1)]
    reply = scan_range(subject.storage, subject, RangeRead(PARTITION, b"", None, True, 10, 1000))
    assert [key for key, _ in reply.records] == top[:10] and reply.resume == top[9]
    reply = scan_range(subject.storage, subject, RangeRead(PARTITION, b"", top[9], True, 10, 1000))
    assert [key for key, _ in reply.records] == top[10:] and reply.resume == top[19]
    low = (100).to_bytes(4, "big")
    reply = scan_range(subject.storage, subject, RangeRead(PARTITION, low, None, True, 2, 1000))
    assert [key for key, _ in reply.records] == top[:2]


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("limit", [1, 3, 16, 40])
def test_a_read_many_sweeps_long_pages_to_the_end_in_order(
    monkeypatch: pytest.MonkeyPatch, limit: int, reverse: bool
) -> None:
    # Scaled down: 16 keys examined per request, storage read 5 at a time, 400 keys.
    monkeypatch.setattr(ranges, "RANGE_EXAMINE_MAX", 16)
    monkeypatch.setattr(ranges, "_CHUNK_RECORDS", 5)
    subject = replica("n1")
    stored = [index.to_bytes(2, "big") for index in range(400)]
    corrupt = set(stored[100:140])  # more than one sweep of keys that do not decode
    for index, key in enumerate(stored):
        subject.storage.put(PARTITION, key, record(b"v%d" % index, "n1", index + 1))
    assert isinstance(subject.storage, MemoryStorage)
    for key in corrupt:
        subject.storage._partitions[PARTITION][key] = b"not a record"
    low, high = stored[7] + b"\x01", stored[390]
    ordered = stored[::-1] if reverse else stored
    expected = [key for key in ordered if low <= key < high and key not in corrupt]
    seen: list[bytes] = []
    message = RangeRead(PARTITION, low, high, reverse, limit, 1 << 20)
    for _ in range(1000):
        reply = scan_range(subject.storage, subject, message)
        assert len(reply.records) <= limit
        seen.extend(key for key, _ in reply.records)
        if reply.resume is None:
            break
        if reverse:
            message = RangeRead(PARTITION, low, reply.resume, True, limit, 1 << 20)
        else:
            message = RangeRead(PARTITION, reply.resume + b"\x00", high, False, limit, 1 << 20)
    assert seen == expected
    network = Network()
    network.replicas["n1"] = subject
    for node in ("n2", "n3"):
        for index, key in enumerate(stored):
            network.put(node, key, record(b"v%d" % index, "n1", index + 1))
    first = query(low, high, reverse=reverse, limit=limit)
    pages = asyncio.run(every_page(reader(network), first))
    assert [key for page in pages for key, _ in page.entries] == [
        key for key in ordered if low <= key < high
    ]


@pytest.mark.parametrize(
    "message",
    [
        RangeRead(1024, b"", None, False, 10, 100),
        RangeRead(0, b"", None, False, 0, 100),
        RangeRead(0, b"", None, False, 1001, 100),
        RangeRead(0, b"", None, False, 10, 0),
        RangeRead(0, b"x" * 20_000, None, False, 10, 100),
    ],
)
def test_a_peers_range_read_out_of_bounds_is_refused(message: RangeRead) -> None:
    with pytest.raises(RemoteProtocolError):
        check_range_read(message, 1024, 2048)


# --- the coordinator's side ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(keys, values, st.sets(st.sampled_from(NODES), min_size=1), st.integers(1, 9)),
        max_size=40,
    ),
    st.booleans(),
    st.integers(1, 6),
)
def test_quorum_pages_are_the_merge_of_the_replicas_asked(
    writes: list[tuple[bytes, bytes | None, set[str], int]], reverse: bool, limit: int
) -> None:
    """n1 (local) and n2 are asked: each key's newest version on either is shown,
    tombstones and keys held only by n3 are not."""
    network = Network()
    model: dict[bytes, Record | None] = {}
    for key, value, holders, timestamp in writes:
        for node in sorted(holders):
            stored = network.replicas[node].storage.get(PARTITION, key)
            merged = merge(stored, record(value, node, timestamp), ConflictPolicy.LWW)
            assert merged is not None
            network.put(node, key, merged)
    for node in ("n1", "n2"):
        for key, stored in network.replicas[node].storage.scan(PARTITION):
            model[key] = merge(model.get(key), stored, ConflictPolicy.LWW)
    expected = [
        (key, visible)
        for key, merged in sorted(model.items(), reverse=reverse)
        if merged is not None and (visible := merged.visible_values(NOW_MS))
    ]
    pages = asyncio.run(every_page(reader(network), query(reverse=reverse, limit=limit)))
    assert [entry for page in pages for entry in page.entries] == expected
    assert all(page.partition_count == 1024 for page in pages)


def test_a_read_at_one_is_served_by_the_local_replica_alone() -> None:
    network = Network()
    network.put("n1", b"a", record(b"1", "n1", 1))
    network.put("n2", b"b", record(b"2", "n2", 1))
    page = asyncio.run(reader(network).read(query(consistency=Consistency.ONE)))
    assert page.entries == [(b"a", [b"1"])] and page.resume is None
    assert network.sent == []


def test_a_failed_replica_is_replaced_by_the_next() -> None:
    def route(node: str, message: Message) -> Message | BaseException | None:
        return PeerUnreachable(peer=node, reason="down") if node == "n2" else None

    network = Network(route)
    network.put("n3", b"c", record(b"3", "n3", 1))
    page = asyncio.run(reader(network).read(query()))
    assert page.entries == [(b"c", [b"3"])]
    assert [node for node, _ in network.sent] == ["n2", "n3"]


@pytest.mark.parametrize(
    "answer",
    [
        PeerUnreachable(peer="x", reason="down"),
        Pong(sender="x"),  # the wrong reply
        RangeReadReply([(b"zzz", record(b"v", "n2", 1))], None),  # outside [a, b)
    ],
)
def test_without_enough_good_replies_the_read_fails(answer: Message | BaseException) -> None:
    network = Network(lambda node, message: answer)
    with pytest.raises(QuorumNotReached):
        asyncio.run(reader(network).read(query(b"a", b"b")))


def test_an_empty_range_asks_nobody() -> None:
    network = Network()
    page = asyncio.run(reader(network).read(query(b"b", b"a")))
    assert page == RangePage([], None, 1024)
    assert network.sent == []


def test_a_replica_that_stopped_early_bounds_the_merged_page() -> None:
    """n2 stops after b; n1 holds c and d: the page ends at b, whatever n1 sent."""

    def route(node: str, message: Message) -> Message | BaseException | None:
        if node == "n2":
            return RangeReadReply([(b"b", record(b"2", "n2", 1))], b"b")
        return None

    network = Network(route)
    for key in (b"a", b"c", b"d"):
        network.put("n1", key, record(key, "n1", 1))
    page = asyncio.run(reader(network).read(query()))
    assert page.entries == [(b"a", [b"a"]), (b"b", [b"2"])] and page.resume == b"b"


def test_strong_is_read_as_a_quorum() -> None:
    network = Network()
    network.put("n2", b"a", record(b"2", "n2", 1))
    page = asyncio.run(reader(network).read(query(consistency=Consistency.STRONG)))
    assert page.entries == [(b"a", [b"2"])]
    assert [node for node, _ in network.sent] == ["n2"]  # n1 (local) and n2: a majority


def test_a_range_too_long_on_a_peer_is_the_answer_not_a_failed_replica() -> None:
    def route(node: str, message: Message) -> Message | BaseException | None:
        return RemoteError(peer=node, remote_code="RangeTooLong", message="too long")

    network = Network(route)
    with pytest.raises(RangeTooLong):
        asyncio.run(reader(network).read(query(reverse=True)))
