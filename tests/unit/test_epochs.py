"""Replica and coordination messages carry the ring epoch; a coordinator told of a newer
one by a reply says so (the node then fetches that ring through membership)."""

from __future__ import annotations

import asyncio

from dynakv.core.consistency import Consistency
from dynakv.core.record import Context
from dynakv.net.codec import Envelope, decode_frames, encode_frame
from dynakv.net.messages import (
    CoordinateWrite,
    Message,
    ReadReply,
    ReadRequest,
    WriteReply,
    WriteRequest,
)
from tests.unit.test_coordinator_shell import coordinator


def ahead(node: str, message: Message) -> Message:
    """Replicas whose ring is at epoch 7, answering requests sent at the caller's epoch."""
    if isinstance(message, WriteRequest):
        assert message.epoch == 1
        return WriteReply(epoch=7)
    assert isinstance(message, ReadRequest) and message.epoch == 1
    return ReadReply(record=None, epoch=7)


def test_a_reply_from_a_newer_ring_is_reported_once_per_answer() -> None:
    async def scenario() -> None:
        subject, _ = coordinator(ahead)
        told: list[tuple[str, int]] = []
        subject.on_epoch = lambda node_id, epoch: told.append((node_id, epoch))
        await subject.write(b"k", b"v", Consistency.ALL, 0, Context())
        assert sorted(told) == [("n2", 7), ("n3", 7)]
        told.clear()
        await subject.read(b"k", Consistency.ALL)
        assert sorted(told) == [("n2", 7), ("n3", 7)]

    asyncio.run(scenario())


def test_a_reply_from_the_same_ring_says_nothing() -> None:
    async def scenario() -> None:
        def same(node: str, message: Message) -> Message:
            return WriteReply(epoch=1) if isinstance(message, WriteRequest) else ReadReply(None, 1)

        subject, _ = coordinator(same)
        told: list[tuple[str, int]] = []
        subject.on_epoch = lambda node_id, epoch: told.append((node_id, epoch))
        await subject.write(b"k", b"v", Consistency.ALL, 0, Context())
        await subject.read(b"k", Consistency.ALL)
        assert told == []

    asyncio.run(scenario())


def test_a_forwarded_write_keeps_its_idempotency_key_and_epoch() -> None:
    request = CoordinateWrite(
        key=b"k",
        value=b"v",
        consistency="quorum",
        context=Context(),
        ttl_s=0,
        idempotency_hash=12345,
        epoch=3,
    )
    (envelope,) = decode_frames(encode_frame(Envelope(1, False, request)), 1 << 20)
    assert envelope.body == request
