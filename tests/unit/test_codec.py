"""net.codec: frames round-trip, arrive in any chunking, and bad bytes fail cleanly."""

from __future__ import annotations

import itertools
import struct
import typing

import msgspec
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core import antientropy as ae
from dynakv.core import claimant as rc
from dynakv.core import gossip_messages as gossip
from dynakv.core import paxos
from dynakv.core import transfer as xf
from dynakv.core.record import Context, Record, Sibling
from dynakv.errors import LocalProtocolError, RemoteProtocolError
from dynakv.net.codec import (
    HEADER_BYTES,
    WIRE_VERSION,
    Envelope,
    FrameDecoder,
    decode_frames,
    encode_frame,
)
from dynakv.net.messages import (
    CoordinateWrite,
    CoordinateWriteReply,
    ErrorReply,
    GossipReceived,
    Message,
    Ping,
    Pong,
    ReadReply,
    ReadRequest,
    RingFetch,
    RingFetchReply,
    WriteReply,
    WriteRequest,
)
from dynakv.node.antientropy import RepairPull, RepairPullReply, RepairPush, RepairPushReply
from dynakv.node.ranges import RangeRead, RangeReadReply

FRAME_BYTES_MAX = 1 << 20

_CONTEXT = Context(clock=(("n1", 3), ("n2", 1)), max_timestamp=(1_700_000_000_000 << 16) | 7)
_RECORD = Record(
    (
        Sibling(b"v1", "n1", 3, (("n2", 1),), 99, 0),
        Sibling(None, "n2", 2, (), 100, 123_456),
    )
)
_MEMBER = gossip.MemberState("n2", "z2", "b:8002", "b:9002", 3, gossip.Status.ALIVE, 1)
_UPDATES = (_MEMBER, gossip.MemberState("n3", "z3", "c:8003", "c:9003", 0, gossip.Status.DEAD))
_BALLOT = paxos.Ballot(1_700_000_000_000 << 16, "n1")
_DECREE = paxos.Decree(_BALLOT, paxos.Proposal(_BALLOT, _RECORD, (paxos.Ballot(5, "n2"),)))
_STAMP = rc.Stamp(3, "n1", 2)
_PLAN = xf.TransferPlan(partition=5, from_nodes=("n1", "n2"), to_node="n4")
_CHANGE = rc.ClusterChange(
    change_id="c1",
    kind="join",
    node_id="n4",
    zone="z1",
    host="n4",
    old_epoch=1,
    new_ring=b"\x92\x01",
    transfers=(_PLAN,),
    statuses=(rc.TransferStatus.STREAMING,),
    state=rc.ChangeState.OPEN,
    started_ms=10,
)
_CLAIMANT_SAMPLES: list[Message] = [
    rc.RcPrepare(sender="n1", slot=1, ballot=rc.Ballot(3, "n1")),
    rc.RcPromise(sender="n2", slot=1, ballot=rc.Ballot(3, "n1"), stamp=_STAMP, change=_CHANGE),
    rc.RcWrite(sender="n1", slot=1, stamp=_STAMP, change=_CHANGE, chosen=True),
    rc.RcAck(
        sender="n2",
        slot=1,
        stamp=_STAMP,
        ring_epoch=1,
        learned_id="c1",
        learned_state=rc.ChangeState.OPEN,
    ),
    rc.RcReject(
        sender="n2", slot=1, ballot=rc.Ballot(3, "n1"), promised=rc.Ballot(4, "n3"), node_slot=1
    ),
    rc.RcBeat(sender="n1", slot=1, ballot=rc.Ballot(3, "n1")),
    rc.RcDrop(sender="n1", change_id="c1", partitions=(5, 6), retire=True),
    rc.RcDropped(sender="n2", change_id="c1"),
    rc.RcHello(sender="n4", slot=1),
    rc.RcState(sender="n2", slot=1, stamp=None, change=None),
    xf.XfAssign(sender="n1", change_id="c1", transfers=(_PLAN,)),
    xf.XfReport(
        sender="n4",
        change_id="c1",
        verified=(xf.XfVerified(partition=5, count=2, chain=b"\x01" * 16, sources=("n1",)),),
        streaming=(6,),
        failed=(xf.XfFailed(partition=7, reason="source gone"),),
    ),
    xf.XfPageRequest(
        sender="n4",
        change_id="c1",
        partition=5,
        attempt=1,
        after=None,
        count=0,
        chain=b"",
        items_max=64,
        bytes_max=1 << 20,
    ),
    xf.XfPage(
        sender="n1",
        change_id="c1",
        partition=5,
        attempt=1,
        after=None,
        items=((b"k", b"record"),),
        count=1,
        chain=b"\x02" * 16,
        done=True,
    ),
    xf.XfRefused(sender="n1", change_id="c1", partition=5, attempt=1, reason="unknown change"),
]
SAMPLES: list[Message] = [
    ReadRequest(partition=17, key=b"user:\x00\xff"),
    ReadReply(record=_RECORD),
    ReadReply(record=None),
    WriteRequest(partition=1023, key=b"k", record=_RECORD),
    WriteReply(),
    CoordinateWrite(
        key=b"k", value=b"\x00" * 1000, consistency="quorum", context=_CONTEXT, ttl_s=60
    ),
    CoordinateWrite(key=b"k", value=None, consistency="all", context=Context(), ttl_s=0),
    CoordinateWriteReply(context=_CONTEXT),
    Ping(sender="n1"),
    Pong(sender="n2"),
    ErrorReply(code="QuorumNotReached", message="quorum needs 2", facts={"acked": 1, "x": None}),
    ErrorReply(code="InternalError", message="boom"),
    GossipReceived(),
    gossip.Ping(sender="n1", sender_address="10.0.0.1:9001", seq=7, target="n2", updates=_UPDATES),
    gossip.Ack(sender="n2", seq=7, ring_epoch=3, updates=_UPDATES),
    gossip.Nack(sender="n3", seq=7),
    gossip.IndirectPing(
        sender="n1", sender_address="a:1", seq=8, target="n3", target_address="c:3"
    ),
    gossip.Gossip(sender="n1", ring_epoch=2, updates=_UPDATES),
    gossip.SyncHello(sender_state=_MEMBER, table_hash=2**63, ring_epoch=1),
    gossip.SyncDigest(
        sender="n1",
        sender_address="a:1",
        entries=(
            gossip.DigestEntry("n2", 4, gossip.Status.SUSPECT, 1, gossip.Lifecycle.MEMBER, 99),
        ),
    ),
    gossip.SyncDelta(sender="n1", sender_address="a:1", updates=_UPDATES, wants=("n4",)),
    gossip.RingRequest(sender="n1", sender_address="a:1", epoch=5),
    gossip.RingReply(sender="n2", epoch=5, ring_bytes=b"\x00ring"),
    paxos.PxPrepare(partition=3, key=b"k", ballot=_BALLOT),
    paxos.PxPromise(ballot=_BALLOT, accepted=_DECREE, committed=None, record=_RECORD),
    paxos.PxReject(ballot=_BALLOT, promised=paxos.Ballot(99, "n3"), phase="propose"),
    paxos.PxPropose(partition=3, key=b"k", decree=_DECREE),
    paxos.PxAccepted(ballot=_BALLOT),
    paxos.PxCommit(partition=3, key=b"k", decree=_DECREE),
    paxos.PxCommitted(ballot=_BALLOT),
    paxos.PxRead(partition=3, key=b"k", ballot=_BALLOT),
    paxos.PxSnapshot(ballot=_BALLOT, accepted=None, committed=_DECREE, record=_RECORD),
    ae.MerkleNodesRequest(partition=9, fanout=16, depth=3, level=1, indexes=(0, 15)),
    ae.MerkleNodesReply(hashes=(b"\x01" * 16, b"\x02" * 16)),
    ae.MerkleKeysRequest(
        partition=9, fanout=16, depth=3, segments=(4, 4095), after_key=b"k", limit=1000
    ),
    ae.MerkleKeysReply(entries=((b"k1", b"\x03" * 16),), more=True),
    RepairPull(partition=9, keys=(b"k1", b"k2"), bytes_max=1 << 20),
    RepairPullReply(records=((b"k1", _RECORD),), served=2, expired=1),
    RepairPush(partition=9, records=((b"k2", _RECORD),)),
    RepairPushReply(applied=1, refused=0, expired=0),
    *_CLAIMANT_SAMPLES,
    RingFetch(sender="n6"),
    RingFetchReply(epoch=3, ring_bytes=b"\x92\x01"),
    RangeRead(partition=9, low=b"a\x00", high=None, reverse=True, limit=100, bytes_max=1 << 20),
    RangeRead(partition=0, low=b"", high=b"z", reverse=False, limit=1, bytes_max=1),
    RangeReadReply(records=[(b"k1", _RECORD)], resume=b"k1"),
    RangeReadReply(records=[], resume=None),
]
ENVELOPES = [
    Envelope(request_id=index * 7919, is_reply=index % 2 == 1, body=body)
    for index, body in enumerate(SAMPLES)
]


def frame_with(
    payload: bytes, *, version: int = WIRE_VERSION, checksum: int | None = None
) -> bytes:
    digest = xxhash.xxh32_intdigest(payload) if checksum is None else checksum
    return struct.pack(">IBI", 5 + len(payload), version, digest) + payload


def test_samples_cover_every_message_type() -> None:
    assert {type(body) for body in SAMPLES} == set(typing.get_args(Message))


@pytest.mark.parametrize("envelope", ENVELOPES, ids=lambda e: type(e.body).__name__)
def test_round_trip(envelope: Envelope) -> None:
    frame = encode_frame(envelope)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert frame[4] == WIRE_VERSION
    assert decode_frames(frame, FRAME_BYTES_MAX) == [envelope]


def test_error_reply_travels_as_a_tagged_array() -> None:
    # The wire form an array-like ErrorReply would have: changing it needs a WIRE_VERSION bump.
    frame = encode_frame(Envelope(5, True, ErrorReply(code="c", message="m", facts={"n": 1})))
    assert msgspec.msgpack.decode(frame[HEADER_BYTES:]) == [5, True, ["err", "c", "m", {"n": 1}]]


def test_one_byte_chunks() -> None:
    stream = b"".join(encode_frame(envelope) for envelope in ENVELOPES)
    decoder = FrameDecoder(FRAME_BYTES_MAX)
    decoded: list[Envelope] = []
    for index in range(len(stream)):
        decoded.extend(decoder.feed(stream[index : index + 1]))
    assert decoded == ENVELOPES
    assert decoder.buffered_bytes == 0


def test_many_frames_in_one_chunk_and_a_tail() -> None:
    stream = b"".join(encode_frame(envelope) for envelope in ENVELOPES * 50)
    decoder = FrameDecoder(FRAME_BYTES_MAX)
    cut = len(stream) - 3
    assert decoder.feed(stream[:cut]) == (ENVELOPES * 50)[:-1]
    assert decoder.buffered_bytes > 0
    assert decoder.feed(stream[cut:]) == [ENVELOPES[-1]]
    assert decoder.buffered_bytes == 0


def test_large_frame_in_small_chunks() -> None:
    envelope = Envelope(1, False, CoordinateWrite(b"k", b"x" * 500_000, "one", Context(), 0))
    frame = encode_frame(envelope)
    decoder = FrameDecoder(FRAME_BYTES_MAX)
    decoded: list[Envelope] = []
    for start in range(0, len(frame), 1000):
        decoded.extend(decoder.feed(frame[start : start + 1000]))
    assert decoded == [envelope]


def test_oversized_length_rejected_before_the_body() -> None:
    decoder = FrameDecoder(1000)
    header = struct.pack(">IBI", 1001, WIRE_VERSION, 0)
    with pytest.raises(RemoteProtocolError, match="frame length 1001"):
        decoder.feed(header)  # only the header: the body never has to arrive
    with pytest.raises(RemoteProtocolError):  # the decoder stays failed
        decoder.feed(encode_frame(ENVELOPES[0]))


def test_undersized_length_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="frame length 4"):
        FrameDecoder(1000).feed(struct.pack(">IBI", 4, WIRE_VERSION, 0) + b"\x00" * 8)


def test_encode_refuses_a_frame_the_peer_would_reject() -> None:
    envelope = Envelope(1, False, ReadRequest(partition=0, key=b"k" * 2000))
    with pytest.raises(LocalProtocolError, match="frame_bytes_max=1000"):
        encode_frame(envelope, frame_bytes_max=1000)
    assert len(encode_frame(envelope, frame_bytes_max=len(encode_frame(envelope)) - 4)) > 2000


def test_bad_version() -> None:
    payload = encode_frame(ENVELOPES[0])[HEADER_BYTES:]
    with pytest.raises(RemoteProtocolError, match=f"unknown wire version {WIRE_VERSION + 1}"):
        FrameDecoder(FRAME_BYTES_MAX).feed(frame_with(payload, version=WIRE_VERSION + 1))


def test_flipped_payload_byte_fails_the_checksum() -> None:
    frame = bytearray(encode_frame(ENVELOPES[1]))
    frame[-1] ^= 0x01
    with pytest.raises(RemoteProtocolError, match="checksum mismatch"):
        FrameDecoder(FRAME_BYTES_MAX).feed(bytes(frame))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgspec.msgpack.encode([1, True]),  # too few fields
        msgspec.msgpack.encode([1, True, ["nope", "x"]]),  # unknown tag
        msgspec.msgpack.encode([1, "yes", ["ping", "n1"]]),  # wrong type
        msgspec.msgpack.encode([1, True, ["ping", "n1"]]) + b"\x00",  # trailing byte
    ],
)
def test_garbage_payload_with_valid_checksum(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="undecodable payload"):
        FrameDecoder(FRAME_BYTES_MAX).feed(frame_with(payload))


def test_decode_frames_rejects_a_trailing_partial_frame() -> None:
    with pytest.raises(RemoteProtocolError, match="trailing"):
        decode_frames(encode_frame(ENVELOPES[0])[:-1], FRAME_BYTES_MAX)


def _feed_in_chunks(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(4096)
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    try:
        for start, end in itertools.pairwise(points):
            for envelope in decoder.feed(data[start:end]):
                assert isinstance(envelope, Envelope)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):  # and stays failed
            decoder.feed(b"")


_cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), cuts=_cuts)
def test_random_bytes_decode_or_raise_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    _feed_in_chunks(data, cuts)


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=4), cuts=_cuts)
def test_random_payloads_with_valid_framing(payloads: list[bytes], cuts: list[int]) -> None:
    _feed_in_chunks(b"".join(frame_with(payload) for payload in payloads), cuts)


@settings(max_examples=300, deadline=None)
@given(
    indexes=st.lists(st.integers(0, len(ENVELOPES) - 1), min_size=1, max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 100_000), st.integers(1, 255)), max_size=3),
    cuts=_cuts,
)
def test_corrupted_valid_frames(
    indexes: list[int], flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    stream = bytearray(b"".join(encode_frame(ENVELOPES[index]) for index in indexes))
    for position, mask in flips:
        stream[position % len(stream)] ^= mask
    _feed_in_chunks(bytes(stream), cuts)


@settings(max_examples=500, deadline=None)
@given(
    index=st.integers(0, len(ENVELOPES) - 1),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["set", "delete", "insert"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_corrupted_payloads_with_a_valid_checksum(
    index: int, edits: list[tuple[str, int, int]]
) -> None:
    # Reaches the msgpack decoder with near-valid input (e.g. a str that is not UTF-8).
    payload = bytearray(encode_frame(ENVELOPES[index])[HEADER_BYTES:])
    for operation, position, byte in edits:
        at = position % len(payload)
        if operation == "set":
            payload[at] = byte
        elif operation == "delete" and len(payload) > 1:
            del payload[at]
        else:
            payload.insert(at, byte)
    _feed_in_chunks(frame_with(bytes(payload)), [])


def test_invalid_utf8_in_a_string_field() -> None:
    payload = msgspec.msgpack.encode([1, False, ["ping", "n1"]]).replace(b"n1", b"\xff\xfe")
    with pytest.raises(RemoteProtocolError, match="undecodable payload"):
        FrameDecoder(FRAME_BYTES_MAX).feed(frame_with(payload))
