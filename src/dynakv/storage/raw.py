"""Stored records as raw bytes moving between replicas: the integrity digest of
a streamed partition and the validation of a bulk-ingested batch.

Both engines and the streaming sender use these, so a sender's digest of what
it streamed equals the receiver's ``partition_digest`` exactly when the
content is equal. Must never: do I/O, re-encode a record (the bytes digested
and stored are the bytes received).
"""

from __future__ import annotations

import struct
from typing import Final

import xxhash

from dynakv.storage.base import decode_stored

# One put_raw_batch (one streamed page): the caller pages a partition.
RAW_BATCH_ITEMS_MAX: Final = 65_536
_DIGEST_FRAME = struct.Struct(">II")  # key length, value length


def decode_raw_batch(partition: int, items: list[tuple[bytes, bytes]]) -> list[int | None]:
    """Each item's purge time, decoding every record first (``StorageCorruption``)."""
    assert len(items) <= RAW_BATCH_ITEMS_MAX, len(items)
    purge_times: list[int | None] = []
    for key, data in items:
        assert isinstance(key, bytes) and isinstance(data, bytes), (key, data)
        purge_times.append(decode_stored(partition, key, data).purge_at_ms())
    return purge_times


class RecordsDigest:
    """``xxh3_128`` over (key, stored record bytes) pairs fed in strictly increasing
    key order, each framed by both lengths so no two sequences feed equal bytes.

    The integrity check of a streamed partition: the sender digests what it
    streams, the receiver its ``partition_digest``; equal (count, digest) means
    equal content.
    """

    __slots__ = ("_hasher", "_last_key", "count")

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_128()
        self._last_key: bytes | None = None
        self.count = 0

    def add(self, key: bytes, data: bytes) -> None:
        assert self._last_key is None or key > self._last_key, "keys must arrive in order"
        self._last_key = key
        self._hasher.update(_DIGEST_FRAME.pack(len(key), len(data)))
        self._hasher.update(key)
        self._hasher.update(data)
        self.count += 1

    def result(self) -> tuple[int, bytes]:
        return self.count, self._hasher.digest()
