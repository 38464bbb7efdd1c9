"""This node's Merkle trees, one per partition, kept current by every write to storage.

Owns: the ``PartitionTree`` of each partition this node has asked about, its
state (absent -> building -> ready; ``invalidate`` -> absent), the write log
that tells anti-entropy which keys changed since a round, the confirmations
those rounds produced, and the trees' blobs in storage meta across a clean
restart.

How it stays current: every path that changes a stored record calls
``on_write(partition, key, old, new)`` (records, from the replica) or
``on_write_raw`` (stored bytes, from the sweeper or a bulk ingest) with what
it replaced, after the put, with no ``await`` in between. The leaf update is
subtract-old/add-new (``core.merkle``), so nothing is read back. A path that
cannot name what it replaced (``delete_partition``, a quarantined record
overwritten) calls ``invalidate``: the tree is rebuilt on next use.

Building is incremental: ``build_step`` reads one page of ``page_keys`` keys
(``storage.scan_raw``) past a cursor; ``ready`` steps until done, yielding
through an injected ``sleep_ms(0)`` between pages, at most
``builds_inflight_max`` partitions at a time. ``list_entries`` answers an
exchange's key-list request the same way, a page at a time. A write to a key at or before the
cursor updates the tree under construction; a write past it is left for the
scan to find. So a tree is ready exactly when it equals
``PartitionTree.build`` over the partition's (key, ``record_digest``(stored
bytes)) pairs.

Persistence: ``save`` writes every ready tree as a blob stamped with
``stamp`` (``ae.tree.<partition>``), the list of them (``ae.trees``) and last
the clean marker (``ae.clean`` = the stamp), then syncs. ``load`` trusts a
blob only when the marker is there and the blob is intact, of our shape and
of the marker's stamp; it then deletes the marker first, the blobs and the
list after, and syncs, so a crash before the next clean save finds no marker
and rebuilds (riak_core ``hashtree``'s "mark open / mark clean").

Invariants: a ready tree equals a fresh build of its partition (when every
write path calls in); ``generation`` counts changes; ``last_write`` never
reports a generation lower than the key's last change; the write log holds at
most ``recent_writes_max`` keys and confirmations at most
``confirmations_max``. Must never: scan more than one page between yields,
import asyncio (time and yields are injected), trust a blob without the
marker, or keep blobs past a start.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from dynakv.core.antientropy import MerkleKeysReply, MerkleKeysRequest, list_entries
from dynakv.core.merkle import DEFAULT_SHAPE, PartitionTree, TreeShape, record_digest
from dynakv.core.record import Record, encode_record
from dynakv.errors import Overloaded
from dynakv.storage.base import PARTITION_BYTES, Storage

log = logging.getLogger(__name__)

META_TREE_PREFIX: Final = "ae.tree."
META_TREE_LIST: Final = "ae.trees"
META_CLEAN: Final = "ae.clean"
STAMP_BYTES: Final = 8
PAGE_KEYS_DEFAULT: Final = 1000
RECENT_WRITES_MAX_DEFAULT: Final = 65_536
BUILDS_INFLIGHT_MAX_DEFAULT: Final = 2


@dataclass(slots=True)
class _Build:
    tree: PartitionTree
    cursor: bytes | None = None  # the last key scanned; None before the first page


class TreeKeeper:
    """The trees of this node's partitions, and what changed since each was compared."""

    def __init__(
        self,
        storage: Storage,
        *,
        shape: TreeShape = DEFAULT_SHAPE,
        page_keys: int = PAGE_KEYS_DEFAULT,
        recent_writes_max: int = RECENT_WRITES_MAX_DEFAULT,
        builds_inflight_max: int = BUILDS_INFLIGHT_MAX_DEFAULT,
    ) -> None:
        assert min(page_keys, recent_writes_max, builds_inflight_max) >= 1
        self.storage = storage
        self.shape = shape
        self.page_keys = page_keys
        self.builds_inflight_max = builds_inflight_max
        self._ready: dict[int, PartitionTree] = {}
        self._building: dict[int, _Build] = {}
        self._epochs: dict[int, int] = {}  # bumped when a partition's tree is thrown away
        # The write log: (partition, key) -> (generation, new digest), oldest first;
        # a key evicted from it leaves its generation as its partition's floor.
        self._recent: dict[tuple[int, bytes], tuple[int, bytes | None]] = {}
        self._floors: dict[int, int] = {}
        self._recent_max = recent_writes_max
        self.generation = 0
        self.built_total = 0
        self.loaded_total = 0
        self.invalidated_total = 0

    # -- writes ---------------------------------------------------------------

    def on_write(self, partition: int, key: bytes, old: Record | None, new: Record | None) -> None:
        """``key``'s stored record went from ``old`` to ``new`` (None: no record)."""
        if old is new:
            return
        old_digest = None if old is None else record_digest(encode_record(old))
        new_digest = None if new is None else record_digest(encode_record(new))
        self._note(partition, key, old_digest, new_digest)

    def on_write_raw(
        self, partition: int, key: bytes, old: bytes | None, new: bytes | None
    ) -> None:
        """As ``on_write``, with the stored bytes (a purge passes ``new=None``)."""
        old_digest = None if old is None else record_digest(old)
        new_digest = None if new is None else record_digest(new)
        self._note(partition, key, old_digest, new_digest)

    def _note(
        self, partition: int, key: bytes, old_digest: bytes | None, new_digest: bytes | None
    ) -> None:
        if old_digest == new_digest:
            return
        self.generation += 1
        self._log_write(partition, key, new_digest)
        tree = self._ready.get(partition)
        if tree is not None:
            tree.update(key, old_digest, new_digest)
            return
        build = self._building.get(partition)
        if build is not None and build.cursor is not None and key <= build.cursor:
            build.tree.update(key, old_digest, new_digest)

    def _log_write(self, partition: int, key: bytes, digest: bytes | None) -> None:
        address = (partition, key)
        self._recent.pop(address, None)
        self._recent[address] = (self.generation, digest)
        if len(self._recent) > self._recent_max:
            (old_partition, _), (old_generation, _) = evicted = next(iter(self._recent.items()))
            del self._recent[evicted[0]]
            self._floors[old_partition] = max(self._floors.get(old_partition, 0), old_generation)

    def last_write(self, partition: int, key: bytes) -> tuple[int, bytes | None]:
        """(a generation no lower than ``key``'s last change, its digest if known).

        0 when nothing was written to the partition since start-up.
        """
        found = self._recent.get((partition, key))
        if found is not None:
            return found
        return self._floors.get(partition, 0), None

    def invalidate(self, partition: int) -> None:
        """Forget the partition's tree (it cannot be trusted, or the partition was
        dropped): it is rebuilt from a scan on next use."""
        self._ready.pop(partition, None)
        self._building.pop(partition, None)
        self._epochs[partition] = self._epochs.get(partition, 0) + 1
        self.invalidated_total += 1

    # -- trees ----------------------------------------------------------------

    def tree(self, partition: int) -> PartitionTree | None:
        """The partition's tree if it is ready, else None."""
        return self._ready.get(partition)

    def tree_epoch(self, partition: int) -> int:
        """Changes whenever the partition's tree is thrown away."""
        return self._epochs.get(partition, 0)

    def is_building(self, partition: int) -> bool:
        return partition in self._building

    @property
    def building_count(self) -> int:
        return len(self._building)

    def build_step(self, partition: int) -> PartitionTree | None:
        """Scan one more page of the partition into its tree; the tree once ready."""
        ready = self._ready.get(partition)
        if ready is not None:
            return ready
        build = self._building.get(partition)
        if build is None:
            build = self._building[partition] = _Build(PartitionTree(self.shape))
        page = self.storage.scan_raw(partition, after=build.cursor, limit=self.page_keys)
        for key, stored in page:
            build.tree.update(key, None, record_digest(stored))
        if page:
            assert build.cursor is None or page[0][0] > build.cursor, "scan went backwards"
            build.cursor = page[-1][0]
        if len(page) == self.page_keys:
            return None
        del self._building[partition]
        self._ready[partition] = build.tree
        self.built_total += 1
        return build.tree

    async def ready(
        self, partition: int, sleep_ms: Callable[[int], Awaitable[None]]
    ) -> PartitionTree:
        """The partition's tree, built a page per step with ``sleep_ms(0)`` between
        steps; ``Overloaded`` past ``builds_inflight_max`` partitions building."""
        tree = self._ready.get(partition)
        if tree is not None:
            return tree
        limit = self.builds_inflight_max
        if partition not in self._building and len(self._building) >= limit:
            raise Overloaded(resource="merkle_tree_builds", limit=limit)
        while (tree := self.build_step(partition)) is None:  # ends: the cursor only advances
            await sleep_ms(0)
        return tree

    async def list_entries(
        self, request: MerkleKeysRequest, sleep_ms: Callable[[int], Awaitable[None]]
    ) -> MerkleKeysReply:
        """One page of (key, digest) entries for ``request``, scanning a page of keys
        per step (``sleep_ms(0)`` between) until the page fills or the partition ends."""
        entries: list[tuple[bytes, bytes]] = []
        after = request.after_key
        while True:  # ends: ``after`` moves strictly forward through a finite partition
            page = self.storage.scan_raw(request.partition, after=after, limit=self.page_keys)
            rest = msgspec.structs.replace(request, limit=request.limit - len(entries))
            found = list_entries(self.shape, page, rest, record_digest)
            entries.extend(found.entries)
            if found.more or len(page) < self.page_keys:
                return MerkleKeysReply(tuple(entries), more=found.more)
            after = page[-1][0]
            await sleep_ms(0)

    # -- persistence ------------------------------------------------------------

    def save(self, *, stamp: int) -> int:
        """On a clean stop, after the last write: persist every ready tree; how many."""
        assert 0 <= stamp < 1 << (8 * STAMP_BYTES), stamp
        partitions = sorted(self._ready)
        for partition in partitions:
            self.storage.put_meta(_blob_name(partition), self._ready[partition].to_bytes(stamp))
        listing = b"".join(p.to_bytes(PARTITION_BYTES, "big") for p in partitions)
        self.storage.put_meta(META_TREE_LIST, listing)
        self.storage.put_meta(META_CLEAN, stamp.to_bytes(STAMP_BYTES, "big"))
        self.storage.sync()
        return len(partitions)

    def load(self) -> int:
        """At start-up, before any write: adopt the saved trees if the last stop was
        clean; forget the blobs either way. Returns how many trees were trusted."""
        assert not self._ready and not self._building, "load runs once, before any build"
        marker = self.storage.get_meta(META_CLEAN)
        listing = self.storage.get_meta(META_TREE_LIST) or b""
        partitions = _parse_listing(listing)
        if marker is not None and len(marker) == STAMP_BYTES:
            stamp = int.from_bytes(marker, "big")
            for partition in partitions:
                self._adopt(partition, stamp)
        elif partitions:
            log.info(
                "merkle trees not trusted: the last stop was not clean trees=%d", len(partitions)
            )
        # The marker goes first: a crash part-way through leaves blobs, never a marker.
        self.storage.delete_meta(META_CLEAN)
        for partition in partitions:
            self.storage.delete_meta(_blob_name(partition))
        self.storage.delete_meta(META_TREE_LIST)
        self.storage.sync()
        self.loaded_total = len(self._ready)
        return self.loaded_total

    def _adopt(self, partition: int, stamp: int) -> None:
        blob = self.storage.get_meta(_blob_name(partition))
        if blob is None:
            return
        try:
            self._ready[partition] = PartitionTree.from_bytes(blob, shape=self.shape, stamp=stamp)
        except ValueError as exc:
            log.warning("merkle tree blob refused partition=%d reason=%s", partition, exc)

    def status(self) -> dict[str, Any]:
        return {
            "trees_ready": len(self._ready),
            "trees_building": len(self._building),
            "keys": sum(tree.key_count for tree in self._ready.values()),
            "built_total": self.built_total,
            "loaded_total": self.loaded_total,
            "invalidated_total": self.invalidated_total,
            "generation": self.generation,
        }


def _blob_name(partition: int) -> str:
    return f"{META_TREE_PREFIX}{partition}"


def _parse_listing(listing: bytes) -> list[int]:
    if len(listing) % PARTITION_BYTES:
        log.warning("merkle tree list of %d bytes ignored", len(listing))
        return []
    return [
        int.from_bytes(listing[i : i + PARTITION_BYTES], "big")
        for i in range(0, len(listing), PARTITION_BYTES)
    ]


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A round found the peer's tree equal to ours, whose state was ``generation``."""

    generation: int
    tree_epoch: int
    at_ms: int


class Confirmations:
    """The latest equal-root round per (partition, peer), at most ``entries_max``."""

    def __init__(self, entries_max: int) -> None:
        assert entries_max >= 1, entries_max
        self._entries_max = entries_max
        self._by_pair: dict[tuple[int, str], Confirmation] = {}

    def __len__(self) -> int:
        return len(self._by_pair)

    def note(self, partition: int, peer: str, confirmation: Confirmation) -> None:
        pair = (partition, peer)
        self._by_pair.pop(pair, None)
        self._by_pair[pair] = confirmation
        if len(self._by_pair) > self._entries_max:
            del self._by_pair[next(iter(self._by_pair))]

    def all_hold(
        self,
        partition: int,
        peers: Sequence[str],
        *,
        generation: int,
        tree_epoch: int,
        age_ms_range: tuple[int, int],
        now_ms: int,
    ) -> bool:
        """Every peer matched our tree at or after ``generation``, on this tree epoch,
        ``age_ms_range`` (min, max) ago."""
        age_min, age_max = age_ms_range
        for peer in peers:
            found = self._by_pair.get((partition, peer))
            if (
                found is None
                or found.tree_epoch != tree_epoch
                or found.generation < generation
                or not age_min <= now_ms - found.at_ms <= age_max
            ):
                return False
        return True
