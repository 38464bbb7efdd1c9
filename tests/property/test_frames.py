"""Frame decoders against a dumb model: whatever bytes a peer sends, a decoder
returns exactly the payloads that were encoded before the first damaged frame,
or raises ``RemoteProtocolError``; never anything else, never a damaged payload.

Both decoders a connection uses are checked: ``FrameDecoder`` (envelopes, after
the handshake) and ``HandshakeDecoder`` (the small frames before it).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dynakv.errors import RemoteProtocolError
from dynakv.net.codec import (
    HEADER_BYTES,
    WIRE_VERSION,
    Envelope,
    FrameDecoder,
    PayloadFrameDecoder,
    encode_frame,
)
from dynakv.net.handshake import (
    NONCE_BYTES,
    PROOF_BYTES,
    Challenge,
    ClientProof,
    HandshakeDecoder,
    Hello,
    ServerProof,
    encode_handshake_frame,
)
from dynakv.net.messages import ErrorReply, Ping, Pong, ReadRequest, WriteReply

ENVELOPE_FRAME_BYTES_MAX = 2048
HANDSHAKE_FRAME_BYTES_MAX = 256

_text = st.text(max_size=40)
_node_ids = st.text(min_size=1, max_size=40)
_messages = st.one_of(
    st.builds(Ping, sender=_text),
    st.builds(Pong, sender=_text),
    st.builds(ReadRequest, partition=st.integers(0, 2**16), key=st.binary(max_size=1500)),
    st.just(WriteReply()),
    st.builds(ErrorReply, code=_text, message=_text),
)
envelopes = st.builds(
    Envelope, request_id=st.integers(0, 2**63), is_reply=st.booleans(), body=_messages
)
handshake_messages = st.one_of(
    st.builds(
        Hello, node_id=_node_ids, nonce=st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)
    ),
    st.builds(
        Challenge, node_id=_node_ids, nonce=st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)
    ),
    st.builds(ClientProof, proof=st.binary(min_size=PROOF_BYTES, max_size=PROOF_BYTES)),
    st.builds(ServerProof, proof=st.binary(min_size=PROOF_BYTES, max_size=PROOF_BYTES)),
)


@dataclass(frozen=True)
class Kind:
    """One kind of frame: its payloads, how to frame one, a decoder, the size cap."""

    payloads: st.SearchStrategy[Any]
    encode: Callable[[Any], bytes]
    decoder: Callable[[int], PayloadFrameDecoder[Any]]
    frame_bytes_max: int

    def fitting(self) -> st.SearchStrategy[Any]:
        """Payloads whose frame is within the cap."""
        return self.payloads.filter(lambda p: len(self.encode(p)) - 4 <= self.frame_bytes_max)


KINDS = {
    "envelope": Kind(envelopes, encode_frame, FrameDecoder, ENVELOPE_FRAME_BYTES_MAX),
    "handshake": Kind(
        handshake_messages,
        lambda message: encode_handshake_frame(message, 1 << 20),
        HandshakeDecoder,
        HANDSHAKE_FRAME_BYTES_MAX,
    ),
}


def with_length(frame: bytes, length: int) -> bytes:
    return struct.pack(">I", length) + frame[4:]


def damage(frame: bytes, how: str, frame_bytes_max: int, data: st.DataObject) -> bytes:
    """``frame`` made invalid (or cut short) in the way ``how`` names."""
    if how == "length":
        length = data.draw(
            st.sampled_from([0, 1, 4, frame_bytes_max, frame_bytes_max + 1, 2**32 - 1])
            | st.integers(frame_bytes_max + 1, 2**32 - 1)
            | st.integers(0, 2**32 - 1),
            label="length",
        )
        if length == len(frame) - 4:  # that is the frame's own length: no damage
            length = 0
        return with_length(frame, length)
    if how == "version":
        version = data.draw(st.integers(0, 255).filter(lambda v: v != WIRE_VERSION))
        return frame[:4] + bytes([version]) + frame[5:]
    if how == "checksum":
        flip = data.draw(st.integers(1, 2**32 - 1), label="checksum xor")
        (checksum,) = struct.unpack_from(">I", frame, 5)
        return frame[:5] + struct.pack(">I", checksum ^ flip) + frame[HEADER_BYTES:]
    if how == "payload_byte":  # the checksum catches it
        index = data.draw(st.integers(HEADER_BYTES, len(frame) - 1), label="index")
        flip = data.draw(st.integers(1, 255), label="xor")
        return frame[:index] + bytes([frame[index] ^ flip]) + frame[index + 1 :]
    if how == "truncated_payload":  # the length promises more than the frame has
        cut = data.draw(st.integers(HEADER_BYTES, len(frame) - 1), label="cut")
        return frame[:cut]
    assert how == "garbage"
    return data.draw(st.binary(min_size=1, max_size=300), label="garbage")


def feed_in_chunks(
    decoder: PayloadFrameDecoder[Any], stream: bytes, cuts: list[int]
) -> tuple[list[Any], bool]:
    """Feed ``stream`` cut at ``cuts``: the payloads returned, and whether it raised.

    A ``feed`` that raises returns nothing, not even the good frames before the
    bad one in its chunk: the connection is closed, and the peer learns nothing
    about any of them (its calls' outcomes are unknown)."""
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    decoded: list[Any] = []
    try:
        for start, end in itertools.pairwise(points):
            decoded.extend(decoder.feed(stream[start:end]))
            assert decoder.buffered_bytes < 4 + decoder._frame_bytes_max
    except RemoteProtocolError:
        event("raised RemoteProtocolError")
        with pytest.raises(RemoteProtocolError):  # and the decoder stays failed
            decoder.feed(b"")
        return decoded, True
    return decoded, False


_cuts = st.lists(st.integers(min_value=0, max_value=100_000), max_size=10)


@pytest.mark.parametrize("kind_name", sorted(KINDS))
@settings(max_examples=200, deadline=None)
@given(data=st.data(), cuts=_cuts)
def test_valid_frames_in_any_chunking_decode_to_what_was_encoded(
    kind_name: str, data: st.DataObject, cuts: list[int]
) -> None:
    kind = KINDS[kind_name]
    payloads = data.draw(st.lists(kind.fitting(), max_size=6), label="payloads")
    decoder = kind.decoder(kind.frame_bytes_max)
    stream = b"".join(kind.encode(payload) for payload in payloads)
    assert feed_in_chunks(decoder, stream, cuts) == (payloads, False)
    assert decoder.buffered_bytes == 0


_DAMAGES = ["length", "version", "checksum", "payload_byte", "truncated_payload", "garbage"]


@pytest.mark.parametrize("kind_name", sorted(KINDS))
@settings(max_examples=300, deadline=None)
@given(data=st.data(), how=st.sampled_from(_DAMAGES), cuts=_cuts)
def test_a_damaged_frame_yields_only_the_frames_before_it_or_an_error(
    kind_name: str, data: st.DataObject, how: str, cuts: list[int]
) -> None:
    kind = KINDS[kind_name]
    fits = kind.fitting()
    before = data.draw(st.lists(fits, max_size=3), label="before")
    after = data.draw(st.lists(fits, max_size=3), label="after")
    original = data.draw(fits, label="damaged")
    damaged = damage(kind.encode(original), how, kind.frame_bytes_max, data)
    stream = b"".join([*map(kind.encode, before), damaged, *map(kind.encode, after)])
    event(f"damage={how}")
    # Nothing from the damaged frame on is ever returned: the decoder raises, or
    # waits for bytes that a wrong length promised. One exception: a truncated
    # frame whose missing bytes happen to equal the bytes that follow it is, byte
    # for byte, the original frame (its checksum holds), and may be returned.
    decoded, raised = feed_in_chunks(kind.decoder(kind.frame_bytes_max), stream, cuts)
    allowed = [*before, original] if how == "truncated_payload" else before
    if raised:
        assert decoded == allowed[: len(decoded)]
    else:
        assert decoded in (before, allowed)


@pytest.mark.parametrize("kind_name", sorted(KINDS))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_frame_of_exactly_the_cap_decodes_and_one_byte_over_is_refused(
    kind_name: str, data: st.DataObject
) -> None:
    kind = KINDS[kind_name]
    payload = data.draw(kind.payloads)
    frame = kind.encode(payload)
    length = len(frame) - 4
    assert kind.decoder(length).feed(frame) == [payload]
    if length - 1 >= HEADER_BYTES - 4:
        with pytest.raises(RemoteProtocolError, match="frame length"):
            kind.decoder(length - 1).feed(frame[:HEADER_BYTES])  # refused at its header


@pytest.mark.parametrize("kind_name", sorted(KINDS))
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=_cuts)
def test_random_bytes_decode_or_raise_remote_protocol_error(
    kind_name: str, data: bytes, cuts: list[int]
) -> None:
    kind = KINDS[kind_name]
    decoded, _ = feed_in_chunks(kind.decoder(kind.frame_bytes_max), data, cuts)
    for payload in decoded:  # a payload of the decoder's own type, re-encodable
        assert kind.encode(payload)
