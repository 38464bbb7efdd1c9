"""The Merkle tree of one partition on one replica: kept current on every write.

Shape (riak_core ``hashtree``'s fixed-size tree, not Cassandra's range
splits): a ``TreeShape`` of ``fanout`` and ``depth`` gives ``fanout**depth``
leaf *segments*. A key's segment is its seeded ``xxh3_64`` scaled to the leaf
count (seeded so it is independent of the top hash bits the ring already used
to pick the partition: every key of a partition shares those). Level 0 is the
root, level ``depth`` the leaves; node i of level L has children
``i*fanout .. i*fanout+fanout-1`` of level L+1.

A leaf's hash is the sum, mod 2**128, of ``xxh3_128(digest || key)`` over the
(key, record digest) pairs in its segment (an AdHash multiset hash, written
as 16 little-endian bytes). It is order-independent, so replicas that hold
the same content agree whatever order it arrived in, and an update is
subtract-old/add-new in O(1) without reading the segment's other keys. XOR
would also be order-independent but it is a *set* parity: x ^ x = 0, so a
pair applied twice (a replayed insert, an update whose old digest was wrong)
cancels and the leaf looks as though the key were absent; a sum counts
multiplicity, so such a bug shows as a difference. An empty segment sums to
zero, so its hash is 16 zero bytes. An inner node's hash is ``xxh3_128`` of
its children's hashes concatenated, or zeros when all its children are
zeros (so an empty tree's root is zeros).

Cost: ``update`` is O(1) (two element hashes, one add, one set insert);
inner hashes are recomputed lazily, only on dirty paths, by the next
``root``/``level_hashes``. Memory: leaves are a dict of non-empty segments
while fewer than 1/8 are used (tiny partitions cost almost nothing), then a
dense 16-bytes-per-leaf array (4096 leaves: 64 KiB); inner levels are dense
(16/3: 4.4 KiB).

Sizing: both replicas of a partition must use the same shape (exchange
messages carry it and a mismatch is refused). Aim for tens of keys per
segment, since a differing segment costs its whole key list on the wire:
16/3 (4096 leaves) suits 40k-400k keys per partition (~100k keys: ~25 per
segment); 16/2 (256 leaves) suits up to ~20k keys and tests and dev clusters;
deeper trees cost one more round trip and 16x the memory per level.

Persistence: ``to_bytes(stamp)`` / ``from_bytes(blob, shape=, stamp=)`` save
the non-empty leaves with a checksum. The shell writes the blob on a clean
shutdown with a stamp it also records as its "clean" marker, and deletes
that marker when it starts; at start-up it trusts the blob only if the
checksum and the stamp match, otherwise it rebuilds with ``build`` from a scan.

Invariants: a leaf's sum is always the sum over the pairs applied to it;
``key_count`` never goes negative; after ``root()`` no node is dirty.
Must never: import asyncio, read a clock, choose randomly, or touch storage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import xxhash

DIGEST_BYTES: Final = 16
HASH_BYTES: Final = 16
EMPTY_HASH: Final = bytes(HASH_BYTES)
FANOUT_MIN: Final = 2
FANOUT_MAX: Final = 256
DEPTH_MIN: Final = 1
DEPTH_MAX: Final = 8
LEAF_COUNT_MAX: Final = 1 << 20
# Seeds the segment hash away from the ring's (unseeded) partition hash.
SEGMENT_SEED: Final = 0x6D65726B6C65
# Leaves switch from a dict to a dense array once more than 1/8 are non-empty.
DENSE_FRACTION: Final = 8
TREE_FORMAT: Final = 1

_SUM_MASK: Final = (1 << 128) - 1
_HEADER = struct.Struct("<BHBQQI")  # format, fanout, depth, stamp, key count, leaves
_LEAF = struct.Struct("<I16s")  # segment, sum
_CHECKSUM = struct.Struct("<Q")


def record_digest(encoded_record: bytes) -> bytes:
    """The digest of a stored record's bytes (``record.encode_record``): 16 bytes."""
    return xxhash.xxh3_128_digest(encoded_record)


def _element_hash(key: bytes, digest: bytes) -> int:
    # The digest has a fixed length, so digest || key names the pair uniquely.
    assert len(digest) == DIGEST_BYTES, len(digest)
    value: int = xxhash.xxh3_128_intdigest(digest + key)
    return value


@dataclass(frozen=True, slots=True)
class TreeShape:
    """``fanout**depth`` leaf segments; every replica of a partition uses the same."""

    fanout: int = 16
    depth: int = 3
    leaf_count: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert FANOUT_MIN <= self.fanout <= FANOUT_MAX, self.fanout
        assert DEPTH_MIN <= self.depth <= DEPTH_MAX, self.depth
        leaf_count = self.fanout**self.depth
        assert leaf_count <= LEAF_COUNT_MAX, (self.fanout, self.depth, leaf_count)
        object.__setattr__(self, "leaf_count", leaf_count)

    def level_size(self, level: int) -> int:
        assert 0 <= level <= self.depth, (level, self.depth)
        size: int = self.fanout**level  # int ** int is typed Any (a negative power is a float)
        return size

    def segment_of(self, key: bytes) -> int:
        """The leaf segment of ``key``."""
        hashed: int = xxhash.xxh3_64_intdigest(key, SEGMENT_SEED)
        segment: int = (hashed * self.leaf_count) >> 64
        return segment


DEFAULT_SHAPE: Final = TreeShape()


class PartitionTree:
    """One partition's tree: leaf sums kept current by ``update``, inner hashes on demand."""

    __slots__ = ("_dense", "_dirty", "_key_count", "_levels", "_sparse", "_zero_children", "shape")

    def __init__(self, shape: TreeShape = DEFAULT_SHAPE) -> None:
        self.shape = shape
        self._sparse: dict[int, int] | None = {}
        self._dense: bytearray | None = None
        # Inner levels 0 .. depth-1, HASH_BYTES per node; leaves live in _sparse/_dense.
        self._levels = [
            bytearray(HASH_BYTES * shape.level_size(level)) for level in range(shape.depth)
        ]
        # Inner nodes whose hash is stale, per level; each set is bounded by its level's size.
        self._dirty: list[set[int]] = [set() for _ in range(shape.depth)]
        self._key_count = 0
        self._zero_children = bytes(HASH_BYTES * shape.fanout)

    @classmethod
    def build(
        cls, items: Iterable[tuple[bytes, bytes]], shape: TreeShape = DEFAULT_SHAPE
    ) -> PartitionTree:
        """A tree from a full scan of the partition: (key, record digest), each key once."""
        tree = cls(shape)
        for key, digest in items:
            tree.update(key, None, digest)
        return tree

    @property
    def key_count(self) -> int:
        return self._key_count

    def update(self, key: bytes, old_digest: bytes | None, new_digest: bytes | None) -> None:
        """Record that ``key``'s stored record went from ``old_digest`` to ``new_digest``.

        None is "no record": (None, d) an insert, (d, d') an overwrite or
        merge, (d, None) a removal (a purge; a delete is a tombstone, which
        is a record like any other). The caller passes the digest it really
        replaced: a wrong ``old_digest`` corrupts the leaf until a rebuild.
        """
        if old_digest == new_digest:
            return
        delta = 0
        if old_digest is not None:
            delta -= _element_hash(key, old_digest)
            self._key_count -= 1
        if new_digest is not None:
            delta += _element_hash(key, new_digest)
            self._key_count += 1
        assert self._key_count >= 0, "removed a record the tree never had"
        segment = self.shape.segment_of(key)
        self._add_to_leaf(segment, delta)
        self._dirty[-1].add(segment // self.shape.fanout)

    def root(self) -> bytes:
        self._refresh()
        return bytes(self._levels[0][:HASH_BYTES])

    def leaf_hash(self, segment: int) -> bytes:
        assert 0 <= segment < self.shape.leaf_count, segment
        return self._leaf_sum(segment).to_bytes(HASH_BYTES, "little")

    def level_hashes(self, level: int, indexes: Sequence[int]) -> tuple[bytes, ...]:
        """The hashes of nodes ``indexes`` of ``level`` (0 = root, depth = leaves)."""
        size = self.shape.level_size(level)
        assert all(0 <= index < size for index in indexes), (level, indexes)
        if level == self.shape.depth:
            return tuple(self.leaf_hash(index) for index in indexes)
        self._refresh()
        nodes = self._levels[level]
        return tuple(bytes(nodes[i * HASH_BYTES : (i + 1) * HASH_BYTES]) for i in indexes)

    def to_bytes(self, stamp: int) -> bytes:
        """The non-empty leaves, the key count and ``stamp``, checksummed."""
        leaves = self._nonempty_leaves()
        header = _HEADER.pack(
            TREE_FORMAT,
            self.shape.fanout,
            self.shape.depth,
            stamp,
            self._key_count,
            len(leaves),
        )
        body = b"".join(
            _LEAF.pack(segment, value.to_bytes(HASH_BYTES, "little")) for segment, value in leaves
        )
        blob = header + body
        return blob + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(blob))

    @classmethod
    def from_bytes(cls, blob: bytes, *, shape: TreeShape, stamp: int) -> PartitionTree:
        """Restore a saved tree; ValueError unless it is intact, of ``shape`` and ``stamp``."""
        if len(blob) < _HEADER.size + _CHECKSUM.size:
            raise ValueError(f"tree blob of {len(blob)} bytes is truncated")
        body, (checksum,) = blob[: -_CHECKSUM.size], _CHECKSUM.unpack(blob[-_CHECKSUM.size :])
        if xxhash.xxh3_64_intdigest(body) != checksum:
            raise ValueError("tree blob checksum mismatch")
        form, fanout, depth, saved_stamp, key_count, leaf_total = _HEADER.unpack_from(body)
        if form != TREE_FORMAT:
            raise ValueError(f"unknown tree format {form}")
        if (fanout, depth) != (shape.fanout, shape.depth):
            raise ValueError(f"tree shape {fanout}/{depth} is not {shape.fanout}/{shape.depth}")
        if saved_stamp != stamp:
            raise ValueError(f"tree stamp {saved_stamp} is not the clean marker {stamp}")
        if len(body) != _HEADER.size + leaf_total * _LEAF.size or key_count < leaf_total:
            raise ValueError("tree blob length or counts are inconsistent")
        tree = cls(shape)
        previous = -1
        for segment, raw in _LEAF.iter_unpack(body[_HEADER.size :]):
            value = int.from_bytes(raw, "little")
            if not previous < segment < shape.leaf_count or value == 0:
                raise ValueError(f"tree blob has a bad leaf {segment}")
            previous = segment
            tree._add_to_leaf(segment, value)
            tree._dirty[-1].add(segment // shape.fanout)
        tree._key_count = key_count
        return tree

    def _leaf_sum(self, segment: int) -> int:
        if self._sparse is not None:
            return self._sparse.get(segment, 0)
        assert self._dense is not None
        offset = segment * HASH_BYTES
        return int.from_bytes(self._dense[offset : offset + HASH_BYTES], "little")

    def _add_to_leaf(self, segment: int, delta: int) -> None:
        sparse = self._sparse
        if sparse is not None:
            value = (sparse.get(segment, 0) + delta) & _SUM_MASK
            if value:
                sparse[segment] = value
            else:
                sparse.pop(segment, None)
            if len(sparse) > self.shape.leaf_count // DENSE_FRACTION:
                self._densify()
            return
        assert self._dense is not None
        offset = segment * HASH_BYTES
        value = (int.from_bytes(self._dense[offset : offset + HASH_BYTES], "little") + delta) & (
            _SUM_MASK
        )
        self._dense[offset : offset + HASH_BYTES] = value.to_bytes(HASH_BYTES, "little")

    def _densify(self) -> None:
        assert self._sparse is not None
        dense = bytearray(HASH_BYTES * self.shape.leaf_count)
        for segment, value in self._sparse.items():
            dense[segment * HASH_BYTES : (segment + 1) * HASH_BYTES] = value.to_bytes(
                HASH_BYTES, "little"
            )
        self._dense = dense
        self._sparse = None

    def _nonempty_leaves(self) -> list[tuple[int, int]]:
        if self._sparse is not None:
            return sorted(self._sparse.items())
        return [
            (segment, value)
            for segment in range(self.shape.leaf_count)
            if (value := self._leaf_sum(segment))
        ]

    def _children_bytes(self, level: int, index: int) -> bytes | bytearray:
        """The concatenated hashes of the children of node ``index`` of inner ``level``."""
        fanout = self.shape.fanout
        first = index * fanout
        if level + 1 < self.shape.depth:
            return self._levels[level + 1][first * HASH_BYTES : (first + fanout) * HASH_BYTES]
        if self._dense is not None:
            return self._dense[first * HASH_BYTES : (first + fanout) * HASH_BYTES]
        assert self._sparse is not None
        sparse = self._sparse
        return b"".join(
            sparse.get(child, 0).to_bytes(HASH_BYTES, "little")
            for child in range(first, first + fanout)
        )

    def _refresh(self) -> None:
        """Recompute dirty inner nodes bottom-up; a parent is dirtied only if a child changed."""
        fanout = self.shape.fanout
        for level in range(self.shape.depth - 1, -1, -1):
            dirty = self._dirty[level]
            if not dirty:
                continue
            nodes = self._levels[level]
            for index in dirty:
                children = self._children_bytes(level, index)
                if children == self._zero_children:
                    new_hash = EMPTY_HASH
                else:
                    new_hash = xxhash.xxh3_128_digest(children)
                offset = index * HASH_BYTES
                if nodes[offset : offset + HASH_BYTES] != new_hash:
                    nodes[offset : offset + HASH_BYTES] = new_hash
                    if level > 0:
                        self._dirty[level - 1].add(index // fanout)
            dirty.clear()
        assert not any(self._dirty)
