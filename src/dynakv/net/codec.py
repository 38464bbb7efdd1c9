"""Framing for node-to-node TCP: versioned, checksummed, length-prefixed msgpack.

One frame on the wire::

    +----------------+---------+------------------+----------------------+
    | length: u32 BE | version | checksum: u32 BE | payload (msgpack)    |
    +----------------+---------+------------------+----------------------+
                     |<---------------- length bytes ------------------->|

``length`` counts everything after itself (so it is ``5 + len(payload)``),
``version`` is ``WIRE_VERSION``, ``checksum`` is ``xxh32`` of the payload, and
the payload is one ``Envelope`` encoded by msgspec (array-like, so field names
never cross the wire).

Invariants:

- ``FrameDecoder`` never buffers more than ``frame_bytes_max`` plus one header:
  an oversized length is rejected as soon as the header arrives, before any of
  the body is held.
- Every malformed input raises ``RemoteProtocolError`` naming the check that
  failed (length, version, checksum, payload), and nothing else; after that
  the decoder stays failed (the connection must be closed: framing is lost).
- ``decode(encode(envelope)) == envelope`` for every message type.
- The same frame carries other payload types (``net.handshake``'s messages)
  through ``encode_payload_frame`` and ``PayloadFrameDecoder``: one set of
  length, version and checksum checks for every frame a peer can send.

This module never pickles, never does I/O, and keeps one msgspec encoder and
decoder per process.
"""

from __future__ import annotations

import struct
from typing import Final, Generic, NoReturn, TypeVar

import msgspec
import xxhash

from dynakv.errors import LocalProtocolError, RemoteProtocolError
from dynakv.net.messages import (
    Message,
)

WIRE_VERSION: Final = 2  # 2: epochs on replica messages
_HEADER: Final = struct.Struct(">IBI")  # length, version, checksum
HEADER_BYTES: Final = _HEADER.size  # 9: the length prefix (4) + version (1) + checksum (4)
_LENGTH_MIN: Final = HEADER_BYTES - 4  # a frame's length counts version + checksum at least


class Envelope(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One request or one reply; a reply carries its request's ``request_id``."""

    request_id: int
    is_reply: bool
    body: Message


PayloadT = TypeVar("PayloadT")

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Envelope)


def encode_frame(envelope: Envelope, frame_bytes_max: int | None = None) -> bytes:
    """The frame for ``envelope``. With ``frame_bytes_max``, a frame the peer would
    reject raises ``LocalProtocolError`` here instead (our bug or an oversized value)."""
    return encode_payload_frame(envelope, frame_bytes_max)


def encode_payload_frame(payload_object: msgspec.Struct, frame_bytes_max: int | None) -> bytes:
    """The frame for any msgspec payload (``encode_frame`` for a non-``Envelope``)."""
    payload = _encoder.encode(payload_object)
    length = _LENGTH_MIN + len(payload)
    if frame_bytes_max is not None and length > frame_bytes_max:
        raise LocalProtocolError(
            f"frame of {length} bytes exceeds frame_bytes_max={frame_bytes_max}",
            size=length,
            max=frame_bytes_max,
        )
    return _HEADER.pack(length, WIRE_VERSION, xxhash.xxh32_intdigest(payload)) + payload


class PayloadFrameDecoder(Generic[PayloadT]):
    """Incremental decoder: ``feed`` bytes as they arrive, get whole payloads back."""

    __slots__ = ("_buffer", "_bytes_needed", "_failure", "_frame_bytes_max", "_payload_decoder")

    def __init__(
        self, frame_bytes_max: int, payload_decoder: msgspec.msgpack.Decoder[PayloadT]
    ) -> None:
        assert frame_bytes_max >= _LENGTH_MIN, frame_bytes_max
        self._frame_bytes_max = frame_bytes_max
        self._payload_decoder = payload_decoder
        self._buffer = bytearray()
        # How many buffered bytes the next frame (or header) needs before parsing
        # is worth trying: keeps a large frame arriving in small chunks linear.
        self._bytes_needed = HEADER_BYTES
        self._failure: str | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held of the next, incomplete frame (0 between frames)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[PayloadT]:
        """Decode every complete frame now available; keep the rest for later.

        Raises ``RemoteProtocolError`` for a bad frame; the decoder is then failed
        for good (its framing is lost) and every later ``feed`` raises again.
        """
        if self._failure is not None:
            raise RemoteProtocolError(self._failure)
        envelopes: list[PayloadT] = []
        buffer = self._buffer
        if not buffer:
            # Fast path: parse straight from the chunk and keep only its tail.
            consumed = self._parse(data, envelopes)
            if consumed < len(data):
                buffer += data[consumed:]
            assert len(buffer) < 4 + self._frame_bytes_max, "at most one partial frame"
            return envelopes
        buffer += data
        if len(buffer) >= self._bytes_needed:
            consumed = self._parse(buffer, envelopes)
            del buffer[:consumed]
        assert len(self._buffer) < 4 + self._frame_bytes_max, "at most one partial frame"
        return envelopes

    def _parse(self, source: bytes | bytearray, envelopes: list[PayloadT]) -> int:
        """Append each complete frame in ``source`` to ``envelopes``; return bytes used."""
        end = len(source)
        position = 0
        with memoryview(source) as view:
            while end - position >= HEADER_BYTES:
                length, version, checksum = _HEADER.unpack_from(source, position)
                if length > self._frame_bytes_max or length < _LENGTH_MIN:
                    self._fail(
                        f"bad frame length {length}: must be {_LENGTH_MIN}.."
                        f"{self._frame_bytes_max} (frame_bytes_max)"
                    )
                if version != WIRE_VERSION:
                    self._fail(f"unknown wire version {version} (this node speaks {WIRE_VERSION})")
                frame_end = position + 4 + length
                if frame_end > end:
                    self._bytes_needed = frame_end - position
                    return position
                payload = view[position + HEADER_BYTES : frame_end]
                if xxhash.xxh32_intdigest(payload) != checksum:
                    self._fail(f"checksum mismatch on a {length}-byte frame")
                envelopes.append(self._decode(payload))
                position = frame_end
        self._bytes_needed = HEADER_BYTES
        return position

    def _decode(self, payload: memoryview) -> PayloadT:
        try:
            return self._payload_decoder.decode(payload)
        except (msgspec.DecodeError, ValueError) as exc:
            # ValidationError is a DecodeError; a str that is not UTF-8 raises
            # UnicodeDecodeError, a ValueError.
            self._fail(f"undecodable payload: {exc}")

    def _fail(self, reason: str) -> NoReturn:
        self._failure = reason
        self._buffer = bytearray()  # rebind, not clear: a memoryview may still hold the old one
        raise RemoteProtocolError(reason)


class FrameDecoder(PayloadFrameDecoder[Envelope]):
    """The decoder of RPC envelopes, the frames that follow the handshake."""

    __slots__ = ()

    def __init__(self, frame_bytes_max: int) -> None:
        super().__init__(frame_bytes_max, _decoder)


def decode_frames(data: bytes, frame_bytes_max: int) -> list[Envelope]:
    """Decode ``data`` holding whole frames only (a helper for tests and tools)."""
    decoder = FrameDecoder(frame_bytes_max)
    envelopes = decoder.feed(data)
    if decoder.buffered_bytes:
        raise RemoteProtocolError(f"{decoder.buffered_bytes} trailing bytes after the last frame")
    return envelopes
