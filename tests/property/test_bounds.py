"""Numbers at and beyond every limit, from clients, peers and the disk: each is
refused with a clear error naming what was wrong, or handled; never a crash,
never an internal error, never stored when refused (issue 5, item 2)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.record import (
    ConflictPolicy,
    Context,
    Record,
    RecordBounds,
    Sibling,
    context_bounds_problem,
    decode_context,
    encode_context,
    encode_record,
    record_bounds_problem,
)
from dynakv.core.ring import partition_of
from dynakv.core.versions import LOGICAL_BITS, hlc_ceiling
from dynakv.errors import InvalidRequest, RemoteProtocolError
from dynakv.net.messages import ReadReply, ReadRequest, WriteReply, WriteRequest
from dynakv.node.replica import LocalReplica
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.memory import MemoryStorage

NOW_MS = 1_800_000_000_000
BOUNDS = RecordBounds(
    clock_offset_ms_max=60_000,
    expiry_ahead_ms_max=86_400_000,
    value_bytes_max=64,
    siblings_max=4,
    clock_entries_max=4,
    node_id_bytes_max=8,
)
CEILING = hlc_ceiling(NOW_MS, BOUNDS.clock_offset_ms_max)
KEY = b"edge"
PARTITIONS = 1024
PARTITION = partition_of(KEY, PARTITIONS)
U64_MAX = 2**64 - 1

# The interesting values of a 64-bit field: 0, 1, now, the ceiling and one past it,
# the signed and unsigned edges of msgpack, and negative ones.
EDGES = [
    -(2**63),
    -1,
    0,
    1,
    NOW_MS << LOGICAL_BITS,
    CEILING - 1,
    CEILING,
    CEILING + 1,
    2**63 - 1,
    2**63,
    U64_MAX,
]
edge_ints = st.sampled_from(EDGES) | st.integers(-(2**63), U64_MAX)
node_ids = st.sampled_from(["n1", "n2", "n3", "", "x" * 8, "x" * 9, "n" * 300])


class Clock:
    def __init__(self) -> None:
        self.now = NOW_MS

    def now_ms(self) -> int:
        return self.now

    def monotonic_ms(self) -> float:
        return 0.0


def replica() -> LocalReplica:
    storage = MemoryStorage()
    return LocalReplica(
        node_id="n1",
        storage=storage,
        committer=GroupCommitter(storage, durable=False),
        clock=Clock(),
        policy=ConflictPolicy.LWW,
        tombstone_grace_s=60,
        partition_count=PARTITIONS,
        key_bytes_max=2048,
        bounds=BOUNDS,
    )


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    ids = sorted(set(draw(st.lists(node_ids, max_size=6))))
    clock = tuple((node_id, draw(edge_ints)) for node_id in ids)
    return Context(clock=clock, max_timestamp=draw(edge_ints))


@st.composite
def siblings(draw: st.DrawFn) -> Sibling:
    past_ids = sorted(set(draw(st.lists(node_ids, max_size=6))))
    return Sibling(
        value=draw(st.none() | st.binary(max_size=80)),
        node=draw(node_ids),
        counter=draw(edge_ints),
        past=tuple((node_id, draw(edge_ints)) for node_id in past_ids),
        timestamp=draw(edge_ints),
        expires_at_ms=draw(st.sampled_from([0, NOW_MS, NOW_MS + 86_460_000, U64_MAX]) | edge_ints),
    )


def wire_safe(context: Context) -> bool:
    """msgpack carries -2**63..2**64-1: anything else cannot even reach us."""
    values = [context.max_timestamp, *(c for _, c in context.clock)]
    return all(-(2**63) <= v <= U64_MAX for v in values)


@settings(max_examples=300, deadline=None)
@given(context=contexts(), value=st.none() | st.binary(max_size=8))
def test_a_client_context_is_refused_naming_the_field_or_the_write_is_sound(
    context: Context, value: bytes | None
) -> None:
    subject = replica()
    token = encode_context(context)
    try:
        decoded = decode_context(token)
        written = subject.write_new(PARTITION, KEY, value=value, context=decoded, ttl_s=0)
    except InvalidRequest as refused:
        assert refused.field == "X-Dynakv-Context", refused
        assert subject.read(PARTITION, KEY) is None, "nothing stored"
        assert subject.hlc.last <= CEILING
        return
    # Accepted: every number is in bounds, the record encodes, the clock stayed sane,
    # and the key stays writable with the context it returned.
    assert context_bounds_problem(decoded, BOUNDS, NOW_MS) is None
    encode_record(written.record)
    assert subject.hlc.last <= CEILING + 1
    # A write minted at the very edge lies one tick past this millisecond's
    # ceiling: the next millisecond's ceiling covers it.
    assert isinstance(subject.clock, Clock)
    subject.clock.now += 1
    follow_up = Context(clock=written.written.clock(), max_timestamp=written.written.timestamp)
    subject.write_new(PARTITION, KEY, value=b"again", context=follow_up, ttl_s=0)


@settings(max_examples=300, deadline=None)
@given(record_siblings=st.lists(siblings(), min_size=0, max_size=6))
def test_a_peer_record_is_refused_and_reported_or_merged(record_siblings: list[Sibling]) -> None:
    subject = replica()
    ordered = sorted(record_siblings, key=lambda s: (s.node, s.counter))
    record = Record(tuple(ordered))
    try:
        answer = subject.handle(WriteRequest(PARTITION, KEY, record), "n2")
    except RemoteProtocolError as refused:
        assert "peer n2" in refused.message
        assert subject.read(PARTITION, KEY) is None, "nothing stored"
        assert subject.offenses.status()["peers"]["n2"]["refused"] == 1
        assert subject.hlc.last <= CEILING
        return
    assert answer == WriteReply()
    assert record_bounds_problem(record, BOUNDS, NOW_MS) is None
    stored = subject.read(PARTITION, KEY)
    assert stored is not None
    encode_record(stored)
    # The stored key stays writable on top of what it holds.
    subject.write_new(PARTITION, KEY, value=b"next", context=Context(), ttl_s=0)


@pytest.mark.parametrize(
    ("field", "sibling"),
    [
        ("timestamp", Sibling(b"v", "n2", 1, (), CEILING + 1)),
        ("dot counter", Sibling(b"v", "n2", U64_MAX, (), 5)),
        ("past", Sibling(b"v", "n2", 1, (("n3", U64_MAX),), 5)),
        ("expiry", Sibling(b"v", "n2", 1, (), 5, U64_MAX)),
    ],
)
def test_a_stored_record_out_of_bounds_is_quarantined_not_served(
    field: str, sibling: Sibling
) -> None:
    subject = replica()
    subject.storage.put(PARTITION, KEY, Record((sibling,)))  # as if from an older version
    assert subject.read(PARTITION, KEY) is None
    assert subject.handle(ReadRequest(PARTITION, KEY), "n2") == ReadReply(record=None)
    status = subject.quarantine.status()
    assert status["quarantined_total"] == 1
    assert field.split(maxsplit=1)[0] in status["records"][0]["reason"]
    # The key is writable again, and the write releases it from quarantine.
    subject.write_new(PARTITION, KEY, value=b"fresh", context=Context(), ttl_s=0)
    assert subject.read(PARTITION, KEY) is not None
    assert subject.quarantine.status()["records"] == []


def test_the_crafted_context_from_the_hostile_test_is_a_400() -> None:
    token = "AZKTkqJuMc___________5KibjLP__________6Som4zz___________AA"
    context = decode_context(token)
    subject = replica()
    with pytest.raises(InvalidRequest, match="ahead of this node's clock") as refused:
        subject.write_new(PARTITION, KEY, value=b"x", context=context, ttl_s=0)
    assert refused.value.field == "X-Dynakv-Context"


def test_a_peer_timestamp_two_minutes_ahead_is_refused_and_does_not_move_the_clock() -> None:
    subject = replica()
    ahead = (NOW_MS + 120_000) << LOGICAL_BITS
    with pytest.raises(RemoteProtocolError, match="clock_offset_ms_max"):
        subject.handle(
            WriteRequest(PARTITION, KEY, Record((Sibling(b"v", "n9", 1, (), ahead),))), "n9"
        )
    assert subject.hlc.last == 0
    assert "n9" in subject.offenses.status()["peers"]
    # A timestamp inside the offset is merged and adopted as usual.
    inside = (NOW_MS + 30_000) << LOGICAL_BITS
    reply = subject.handle(
        WriteRequest(PARTITION, KEY, Record((Sibling(b"v", "n2", 1, (), inside),))), "n2"
    )
    assert reply == WriteReply()
    assert subject.hlc.last == inside


def test_a_peer_value_over_the_limit_is_refused() -> None:
    subject = replica()
    big = Record((Sibling(b"x" * (BOUNDS.value_bytes_max + 1), "n2", 1, (), 5),))
    with pytest.raises(RemoteProtocolError, match="value of 65 bytes"):
        subject.handle(WriteRequest(PARTITION, KEY, big), "n2")
    exact = Record((Sibling(b"x" * BOUNDS.value_bytes_max, "n2", 1, (), 5),))
    assert subject.handle(WriteRequest(PARTITION, KEY, exact), "n2") == WriteReply()


def test_the_committer_is_not_needed_for_refusals() -> None:
    # Refusals are synchronous: no Future is created for a refused write.
    subject = replica()
    bad = Record((Sibling(b"v", "n2", U64_MAX, (), 5),))

    async def scenario() -> None:
        with pytest.raises(RemoteProtocolError):
            subject.handle(WriteRequest(PARTITION, KEY, bad), "n2")

    asyncio.run(scenario())
