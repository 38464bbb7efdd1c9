"""dynakv.storage: the ``Storage`` protocol, its engines, group commit, the TTL
sweeper and the disk-space guard.

``open_storage("rocksdb" | "memory", path, disk=guard)`` is the one way the
node gets an engine; given the node's ``DiskGuard``, it releases the ballast
first when the open's WAL replay needs the room. The protocol, key layout and
errors are in ``base``; hinted-handoff entries and their summary in ``hints``;
per-key Paxos acceptor states (layout, bound) in ``paxos_state``;
raw records moving between replicas (digest, bulk batches) in ``raw``; free
space, its state and the ballast in ``diskspace``.
"""

from __future__ import annotations

from pathlib import Path

from dynakv.storage.base import (
    MetaTooLarge,
    Storage,
    StorageClosed,
    StorageCorruption,
    StorageError,
    StorageFull,
    StorageLocked,
    SyncFailed,
)
from dynakv.storage.diskspace import DiskGuard
from dynakv.storage.hints import Hint, HintStats
from dynakv.storage.memory import MemoryStorage
from dynakv.storage.paxos_state import PAXOS_STATE_BYTES_MAX, PaxosStateTooLarge
from dynakv.storage.rocks import FILES_OPEN_MAX as ROCKSDB_FILES_OPEN_MAX
from dynakv.storage.rocks import RocksStorage, open_bytes_needed

__all__ = [
    "PAXOS_STATE_BYTES_MAX",
    "ROCKSDB_FILES_OPEN_MAX",
    "DiskGuard",
    "Hint",
    "HintStats",
    "MemoryStorage",
    "MetaTooLarge",
    "PaxosStateTooLarge",
    "RocksStorage",
    "Storage",
    "StorageClosed",
    "StorageCorruption",
    "StorageError",
    "StorageFull",
    "StorageLocked",
    "SyncFailed",
    "open_storage",
]

ENGINES = ("rocksdb", "memory")


def open_storage(engine: str, path: Path, *, disk: DiskGuard | None = None) -> Storage:
    """Open the configured engine; ``memory`` ignores ``path`` and loses data on restart.

    With ``disk``, a RocksDB open first releases the ballast if the free space
    is below what replaying its WAL may write.
    """
    if engine == "rocksdb":
        if disk is not None:
            disk.release_ballast_for_open(open_bytes_needed(path))
        return RocksStorage.open(path)
    if engine == "memory":
        return MemoryStorage()
    raise ValueError(f"unknown storage engine {engine!r}; expected one of {ENGINES}")
