"""dynakv.storage: the ``Storage`` protocol, its engines, group commit and the TTL sweeper.

``open_storage("rocksdb" | "memory", path)`` is the one way the node gets an
engine. The protocol, key layout and errors are in ``base``.
"""

from __future__ import annotations

from pathlib import Path

from dynakv.storage.base import (
    Storage,
    StorageClosed,
    StorageCorruption,
    StorageError,
    StorageLocked,
    SyncFailed,
)
from dynakv.storage.memory import MemoryStorage
from dynakv.storage.rocks import RocksStorage

__all__ = [
    "MemoryStorage",
    "RocksStorage",
    "Storage",
    "StorageClosed",
    "StorageCorruption",
    "StorageError",
    "StorageLocked",
    "SyncFailed",
    "open_storage",
]

ENGINES = ("rocksdb", "memory")


def open_storage(engine: str, path: Path) -> Storage:
    """Open the configured engine; ``memory`` ignores ``path`` and loses data on restart."""
    if engine == "rocksdb":
        return RocksStorage.open(path)
    if engine == "memory":
        return MemoryStorage()
    raise ValueError(f"unknown storage engine {engine!r}; expected one of {ENGINES}")
