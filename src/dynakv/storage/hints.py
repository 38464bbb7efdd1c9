"""Hinted-handoff entries as storage keeps them: key layout, header, and the
in-memory per-owner summary both engines keep.

A hint says "this node holds ``(partition, key)``'s record for ``owner``, who
was down or did not answer when it was written". Layout (both engines)::

    hint key = len(owner) (1 byte) + owner (UTF-8) + partition (2 bytes, big-endian) + key
    header   = format (1 byte) + created_ms (8 bytes) + size_bytes (4 bytes), big-endian

so one owner's hints are one contiguous key range in (partition, key) order.
``size_bytes`` is what a replay carries: the key plus the encoded record as
written with the hint.

``HintSummary`` keeps, per owner, the count, the bytes and the oldest
``created_ms`` (to ``HINT_AGE_RESOLUTION_MS``): enough for the caller to
enforce its byte and age bounds without reading the hints. Engines update it
only after a write succeeds and rebuild it at open from one pass over the
hints. Memory: one counter per owner and distinct creation second.

Invariants: a summary's count and bytes are the sums over the live hints;
an owner with no hints is absent. Must never: do I/O, read a clock.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass, field
from typing import Final

from dynakv.storage.base import (
    PARTITION_BYTES,
    PARTITIONS_MAX,
    StorageCorruption,
    partition_prefix,
)

OWNER_BYTES_MAX: Final = 255
HINT_FORMAT: Final = 1
HINT_SIZE_BYTES_MAX: Final = (1 << 32) - 1
# The summary's oldest creation time is floored to this: it counts hints per
# second, not per millisecond, so its memory is bounded by the hints' age span.
HINT_AGE_RESOLUTION_MS: Final = 1000
_HEADER = struct.Struct(">BQI")


@dataclass(frozen=True, slots=True)
class Hint:
    owner: str
    partition: int
    key: bytes
    created_ms: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class HintStats:
    count: int
    size_bytes: int
    oldest_created_ms: int  # floored to HINT_AGE_RESOLUTION_MS


def owner_prefix(owner: str) -> bytes:
    encoded = owner.encode()
    assert 0 < len(encoded) <= OWNER_BYTES_MAX, owner
    return bytes((len(encoded),)) + encoded


def hint_key(owner: str, partition: int, key: bytes) -> bytes:
    assert isinstance(key, bytes), type(key)
    return owner_prefix(owner) + partition_prefix(partition) + key


def owner_range(owner: str) -> tuple[bytes, bytes]:
    """[start, end) of every hint key of ``owner``."""
    prefix = owner_prefix(owner)
    assert prefix[-1] != 0xFF, "UTF-8 never holds a 0xff byte"
    return prefix, prefix[:-1] + bytes((prefix[-1] + 1,))


def hint_range(owner: str, partition: int) -> tuple[bytes, bytes]:
    """[start, end) of ``owner``'s hint keys for one partition."""
    start = hint_key(owner, partition, b"")
    if partition + 1 < PARTITIONS_MAX:
        return start, hint_key(owner, partition + 1, b"")
    return start, owner_range(owner)[1]


def parse_hint_key(hint: bytes) -> tuple[str, int, bytes]:
    """(owner, partition, key) of a hint key; a malformed one is ``StorageCorruption``."""
    owner_end = 1 + hint[0] if hint else 0
    if owner_end < 2 or len(hint) < owner_end + PARTITION_BYTES:
        raise StorageCorruption(partition=0, key=hint, reason="malformed hint key")
    partition = int.from_bytes(hint[owner_end : owner_end + PARTITION_BYTES], "big")
    key = hint[owner_end + PARTITION_BYTES :]
    try:
        owner = hint[1:owner_end].decode()
    except UnicodeDecodeError as exc:
        raise StorageCorruption(partition=partition, key=key, reason=f"hint owner: {exc}") from exc
    return owner, partition, key


def hint_size_bytes(key: bytes, encoded_record: bytes) -> int:
    return len(key) + len(encoded_record)


def encode_hint_header(created_ms: int, size_bytes: int) -> bytes:
    assert created_ms >= 0 and 0 <= size_bytes <= HINT_SIZE_BYTES_MAX, (created_ms, size_bytes)
    return _HEADER.pack(HINT_FORMAT, created_ms, size_bytes)


def decode_hint(hint: bytes, header: bytes) -> Hint:
    """The hint stored under ``hint`` with ``header``; a bad header is ``StorageCorruption``."""
    owner, partition, key = parse_hint_key(hint)
    if len(header) != _HEADER.size or header[0] != HINT_FORMAT:
        raise StorageCorruption(
            partition=partition,
            key=key,
            reason=f"hint for owner {owner!r} has a bad header {header[:16].hex()}",
        )
    _, created_ms, size_bytes = _HEADER.unpack(header)
    return Hint(owner, partition, key, created_ms, size_bytes)


@dataclass(slots=True)
class _OwnerTally:
    count: int = 0
    size_bytes: int = 0
    by_second: dict[int, int] = field(default_factory=dict)  # creation second -> hints
    seconds: list[int] = field(default_factory=list)  # heap; may hold seconds now at zero

    def oldest_second(self) -> int:
        while self.by_second.get(self.seconds[0], 0) == 0:
            heapq.heappop(self.seconds)  # a second whose hints are all gone
        return self.seconds[0]


class HintSummary:
    """Count, bytes and oldest creation time of each owner's hints, kept in memory."""

    __slots__ = ("_owners", "bytes_total")

    def __init__(self) -> None:
        self._owners: dict[str, _OwnerTally] = {}
        self.bytes_total = 0

    def add(self, owner: str, created_ms: int, size_bytes: int) -> None:
        tally = self._owners.setdefault(owner, _OwnerTally())
        tally.count += 1
        tally.size_bytes += size_bytes
        second = created_ms // HINT_AGE_RESOLUTION_MS
        hints_that_second = tally.by_second.get(second, 0)
        if hints_that_second == 0:
            heapq.heappush(tally.seconds, second)
        tally.by_second[second] = hints_that_second + 1
        self.bytes_total += size_bytes

    def remove(self, owner: str, created_ms: int, size_bytes: int) -> None:
        tally = self._owners[owner]
        second = created_ms // HINT_AGE_RESOLUTION_MS
        assert tally.count > 0 and tally.by_second.get(second, 0) > 0, (owner, created_ms)
        tally.count -= 1
        tally.size_bytes -= size_bytes
        self.bytes_total -= size_bytes
        assert tally.size_bytes >= 0 and self.bytes_total >= 0, (owner, size_bytes)
        if tally.by_second[second] == 1:
            del tally.by_second[second]  # its heap entry goes when it reaches the top
        else:
            tally.by_second[second] -= 1
        if tally.count == 0:
            del self._owners[owner]
        elif len(tally.seconds) > 2 * len(tally.by_second):
            # Stale heap entries above the top are never popped: rebuild to bound them.
            tally.seconds = sorted(tally.by_second)

    def stats(self) -> dict[str, HintStats]:
        return {
            owner: HintStats(
                count=tally.count,
                size_bytes=tally.size_bytes,
                oldest_created_ms=tally.oldest_second() * HINT_AGE_RESOLUTION_MS,
            )
            for owner, tally in sorted(self._owners.items())
        }
