"""The ``Storage`` protocol every engine implements, its key layout and its errors.

A storage engine holds, per partition, the latest ``Record`` of each key, plus
an *expiry index* naming the records that may be purged at some time.

Key layout (shared by all engines, so they sort identically):

- stored key = partition (2 bytes, big-endian) + key: a partition is one
  contiguous key range, scanned in key order.
- index key  = purge_at_ms (8 bytes, big-endian) + partition (2 bytes) + key:
  the index is ordered oldest first.

Invariants:

- ``put`` writes the record and (when ``record.purge_at_ms()`` is not None)
  its index entry in one atomic batch, without fsync; ``sync`` makes every
  earlier ``put`` durable. An overwritten record's old index entry is left in
  place (no read on the write path) and is cleaned by the sweep that finds it.
- A record is purged only when every one of its siblings has expired
  (``purge_at_ms() <= now_ms``), re-checked at purge time.
- A stored value that does not decode is reported as ``StorageCorruption``,
  never returned as a record.
- A hint (``hints.py``) is written in the same atomic batch as its record;
  deleting a hint never deletes the record (other owners' hints may share it).
- A Paxos acceptor state (``paxos_state.py``) is opaque bytes beside the key;
  ``put_paxos`` with a record writes state, record and index entry in one
  atomic batch.
- ``delete_partition`` drops the partition's records, its Paxos states and the
  hints naming it, and leaves their expiry-index entries for the sweep to find
  stale (as for overwritten records).
- ``put_meta`` writes like ``put``: atomic, durable after the next ``sync``.

Errors (a branch of ``errors.DynakvError``)::

    StorageError                 the engine failed; names the path or key          500
    ├── StorageCorruption        a stored value does not decode
    ├── StorageLocked            another handle or process owns the database
    ├── StorageClosed            used after close
    ├── SyncFailed               a group-commit sync failed: not known durable
    ├── MetaTooLarge             a meta name or value is past its bound
    ├── PaxosStateTooLarge       an acceptor state is past its bound (paxos_state.py)
    └── StorageFull              the file system is out of space (also an
                                 UnavailableError: retry later or elsewhere)       507

This module never does I/O; the engines live in ``memory.py`` and ``rocks.py``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Final, Protocol

from dynakv.core.record import Record, decode_record
from dynakv.errors import DynakvError, UnavailableError

if TYPE_CHECKING:
    from dynakv.storage.hints import Hint, HintStats

PARTITION_BYTES: Final = 2
PURGE_TIME_BYTES: Final = 8
PARTITIONS_MAX: Final = 1 << (8 * PARTITION_BYTES)
PURGE_TIME_MS_MAX: Final = (1 << (8 * PURGE_TIME_BYTES)) - 1
META_NAME_BYTES_MAX: Final = 64
META_VALUE_BYTES_MAX: Final = 16 * 1024 * 1024


class StorageError(DynakvError):
    """The local storage engine failed; the message names the path or key."""

    code = "StorageError"
    http_status = 500


class StorageCorruption(StorageError):
    """A stored value does not decode as a record."""

    code = "StorageCorruption"

    def __init__(self, *, partition: int, key: bytes, reason: str) -> None:
        super().__init__(
            f"stored record for partition {partition} key {key[:64].hex()} "
            f"({len(key)} bytes) is corrupt: {reason}",
            partition=partition,
            key_hex=key.hex(),
            reason=reason,
        )
        self.partition = partition
        self.key = key
        self.reason = reason


class StorageLocked(StorageError):
    """Another open handle (this process or another) owns the database."""

    code = "StorageLocked"

    def __init__(self, *, path: str, reason: str) -> None:
        super().__init__(
            f"storage at {path} is locked by another open handle or process "
            f"(one process owns a database): {reason}",
            path=path,
            reason=reason,
        )
        self.path = path


class StorageClosed(StorageError):
    """The engine (or its group committer) was used after ``close``."""

    code = "StorageClosed"


class SyncFailed(StorageError):
    """A group-commit sync failed: writes waiting on it are not known to be durable."""

    code = "SyncFailed"

    def __init__(self, *, reason: str) -> None:
        super().__init__(f"storage sync failed: {reason}", reason=reason)
        self.reason = reason


class StorageFull(StorageError, UnavailableError):
    """The engine's file system ran out of space under a write, a sync or an open.

    Nothing the failed call wrote is known to be durable. Reads go on; writes
    are refused until space is freed, then resume without a restart.
    """

    code = "StorageFull"
    http_status = 507
    retry_after_s = 30

    def __init__(self, *, path: str, free_bytes: int, reason: str) -> None:
        super().__init__(
            f"storage at {path} is out of space ({free_bytes} bytes free): {reason}; "
            "writes are refused until space is freed",
            path=path,
            free_bytes=free_bytes,
            reason=reason,
        )
        self.path = path
        self.free_bytes = free_bytes
        self.reason = reason


class MetaTooLarge(StorageError):
    """A meta name (UTF-8) or value is longer than its bound; nothing was written."""

    code = "MetaTooLarge"

    def __init__(self, *, name: str, part: str, size_bytes: int, max_bytes: int) -> None:
        super().__init__(
            f"meta {part} of {name[:META_NAME_BYTES_MAX]!r} is {size_bytes} bytes, "
            f"more than the {max_bytes} allowed",
            meta_name=name[:META_NAME_BYTES_MAX],
            part=part,
            size_bytes=size_bytes,
            max_bytes=max_bytes,
        )
        self.meta_name = name[:META_NAME_BYTES_MAX]
        self.part = part
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes


class Storage(Protocol):
    """A local, synchronous storage engine.

    Called from the node's event-loop thread, except ``sync``, which the group
    committer calls from its own thread concurrently with ``put``.
    """

    def get(self, partition: int, key: bytes) -> Record | None:
        """The stored record, or None. Expired siblings are returned too (readers filter)."""
        ...

    def put(self, partition: int, key: bytes, record: Record) -> None:
        """Atomically store ``record`` and its expiry-index entry; not yet durable."""
        ...

    def sync(self) -> None:
        """Make every earlier ``put`` durable. Thread-safe with concurrent puts."""
        ...

    def due_for_purge(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        """Distinct (partition, key) of index entries with time <= now_ms, oldest first.

        Examines at most ``limit`` index entries. Remembers the entries it
        reported, so the next ``purge_if_due`` of such a key removes them.
        """
        ...

    def purge_if_due(self, partition: int, key: bytes, now_ms: int) -> bool:
        """Delete the record if every sibling has expired by ``now_ms``; True if deleted.

        Re-reads the record. When it is not due (absent, a sibling that never
        expires, or a later purge time), deletes only the stale index entries
        for this key with time <= now_ms that ``due_for_purge`` reported.
        """
        ...

    def scan(self, partition: int) -> Generator[tuple[bytes, Record], None, None]:
        """Every (key, record) of one partition, in key order, as of the first ``next``.

        A generator: ``close()`` one you stop early (in RocksDB an open
        iterator pins the database and its lock).
        """
        ...

    def count_records(self) -> int:
        """How many records are stored (an estimate for RocksDB)."""
        ...

    # --- hinted handoff (key layout and accounting: hints.py) ---------------

    def put_hinted(
        self, partition: int, key: bytes, record: Record, *, owner: str, created_ms: int
    ) -> None:
        """``put`` plus a hint naming ``owner``, in one atomic batch; replaces that
        owner's earlier hint for the key."""
        ...

    def hints_for(
        self, owner: str, *, limit: int, after: tuple[int, bytes] | None = None
    ) -> list[Hint]:
        """Up to ``limit`` of ``owner``'s hints in (partition, key) order, after ``after``."""
        ...

    def delete_hint(self, owner: str, partition: int, key: bytes) -> bool:
        """Drop one hint (never its record); True if it existed."""
        ...

    def hint_summary(self) -> dict[str, HintStats]:
        """Per owner (sorted by name): hint count, bytes and oldest time. No I/O."""
        ...

    @property
    def hints_bytes_total(self) -> int:
        """The ``size_bytes`` of every hint, summed. No I/O."""
        ...

    # --- ranges: anti-entropy, streaming, handoff ---------------------------

    def scan_raw(
        self, partition: int, *, after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, stored bytes) of a partition, in key order after ``after``."""
        ...

    def scan_raw_reverse(
        self, partition: int, *, before: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, stored bytes) of a partition, in descending key order
        below ``before`` (None: from the partition's last key)."""
        ...

    def put_raw_batch(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        """Store encoded records and their index entries in one batch (bulk ingest).

        Overwrites, never merges: the caller merges with what is stored when
        writes may race the stream. Each is decoded first: one that does not
        decode raises ``StorageCorruption`` and nothing is written.
        """
        ...

    def delete_partition(self, partition: int) -> None:
        """Drop every record, Paxos state and hint of a partition, in one batch."""
        ...

    def partition_digest(self, partition: int) -> tuple[int, bytes]:
        """(record count, ``raw.RecordsDigest`` of its (key, stored bytes) in key order).

        Reads the whole partition, a bounded page at a time, on the caller's thread.
        """
        ...

    def count_partition(self, partition: int) -> int:
        """How many records one partition holds (exact; reads every key)."""
        ...

    # --- Paxos acceptor state (layout and bound: paxos_state.py) ---------------

    def get_paxos(self, partition: int, key: bytes) -> bytes | None:
        """The key's encoded acceptor state, or None."""
        ...

    def put_paxos(
        self, partition: int, key: bytes, state: bytes, *, record: Record | None = None
    ) -> None:
        """Store the key's acceptor state and, with ``record`` (a commit merged by the
        caller: overwritten, never merged here), the record and its index entry, in
        one atomic batch; durable after ``sync``. ``PaxosStateTooLarge`` past the bound."""
        ...

    def delete_paxos(self, partition: int, key: bytes) -> None:
        """Forget the key's acceptor state (absent is fine); durable after ``sync``."""
        ...

    def scan_paxos(
        self, partition: int, *, after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, state) of a partition, in key order after ``after``."""
        ...

    # --- meta: small named durable values -----------------------------------

    def put_meta(self, name: str, value: bytes) -> None:
        """Store a named value (``MetaTooLarge`` past the bounds); durable after ``sync``."""
        ...

    def get_meta(self, name: str) -> bytes | None:
        """The named value, or None."""
        ...

    def delete_meta(self, name: str) -> None:
        """Forget a named value (absent is fine); durable after ``sync``."""
        ...

    def close(self) -> None:
        """Release the engine; idempotent; never raises (a failure is logged)."""
        ...


def stored_key(partition: int, key: bytes) -> bytes:
    assert 0 <= partition < PARTITIONS_MAX, partition
    assert isinstance(key, bytes), type(key)
    return partition.to_bytes(PARTITION_BYTES, "big") + key


def partition_prefix(partition: int) -> bytes:
    assert 0 <= partition < PARTITIONS_MAX, partition
    return partition.to_bytes(PARTITION_BYTES, "big")


def index_key(purge_at_ms: int, partition: int, key: bytes) -> bytes:
    assert 0 <= purge_at_ms <= PURGE_TIME_MS_MAX, purge_at_ms
    return purge_at_ms.to_bytes(PURGE_TIME_BYTES, "big") + stored_key(partition, key)


def index_time_bound(now_ms: int) -> bytes:
    """The exclusive upper bound of index keys with time <= ``now_ms``."""
    assert 0 <= now_ms < PURGE_TIME_MS_MAX, now_ms
    return (now_ms + 1).to_bytes(PURGE_TIME_BYTES, "big")


def parse_index_key(index: bytes) -> tuple[int, int, bytes]:
    """(purge_at_ms, partition, key) of an index key."""
    assert len(index) >= PURGE_TIME_BYTES + PARTITION_BYTES, index
    purge_at_ms = int.from_bytes(index[:PURGE_TIME_BYTES], "big")
    partition = int.from_bytes(index[PURGE_TIME_BYTES : PURGE_TIME_BYTES + PARTITION_BYTES], "big")
    return purge_at_ms, partition, index[PURGE_TIME_BYTES + PARTITION_BYTES :]


def decode_stored(partition: int, key: bytes, data: bytes) -> Record:
    """Decode a stored value; anything malformed is ``StorageCorruption``."""
    try:
        return decode_record(data)
    except ValueError as exc:
        raise StorageCorruption(partition=partition, key=key, reason=str(exc)) from exc


class DueEntries:
    """The index entries the last ``due_for_purge`` reported, grouped by key.

    Lets ``purge_if_due`` delete a key's stale entries without a reverse
    index: the sweep that finds a stale entry is the one that removes it.
    Bounded by the ``limit`` of the last scan.
    """

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, bytes], list[bytes]] = {}

    def reset(self) -> None:
        self._by_key = {}

    def add(self, index: bytes) -> tuple[int, bytes] | None:
        """Record one index entry; returns its (partition, key) if first seen."""
        _, partition, key = parse_index_key(index)
        entries = self._by_key.setdefault((partition, key), [])
        entries.append(index)
        return (partition, key) if len(entries) == 1 else None

    def pop(self, partition: int, key: bytes, now_ms: int) -> list[bytes]:
        """The reported entries of one key with time <= ``now_ms``; forgets the key."""
        entries = self._by_key.pop((partition, key), [])
        return [index for index in entries if parse_index_key(index)[0] <= now_ms]


def partition_end(partition: int) -> bytes | None:
    """The exclusive upper bound of a partition's stored keys; None for the last
    partition, whose keys run to the end of the key space."""
    assert 0 <= partition < PARTITIONS_MAX, partition
    return None if partition + 1 == PARTITIONS_MAX else partition_prefix(partition + 1)


def key_after(key: bytes) -> bytes:
    """The least key greater than ``key`` (where a scan "after ``key``" starts)."""
    return key + b"\x00"


def meta_name_bytes(name: str, value: bytes | None = None) -> bytes:
    """The stored name of a meta entry; ``MetaTooLarge`` when name or value is past its bound."""
    assert name, "a meta name is never empty"
    encoded = name.encode()
    if len(encoded) > META_NAME_BYTES_MAX:
        raise MetaTooLarge(
            name=name, part="name", size_bytes=len(encoded), max_bytes=META_NAME_BYTES_MAX
        )
    if value is not None and len(value) > META_VALUE_BYTES_MAX:
        raise MetaTooLarge(
            name=name, part="value", size_bytes=len(value), max_bytes=META_VALUE_BYTES_MAX
        )
    return encoded
