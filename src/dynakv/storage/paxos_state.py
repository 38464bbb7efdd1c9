"""Per-key Paxos acceptor state as storage keeps it: key layout, bound, error.

Each key a node is a home replica of may have one acceptor state
(``core.paxos.AcceptorState``, encoded by ``core.paxos.encode_state``). Storage
treats it as opaque bytes: it never decodes it (the node does, and treats a
state that does not decode as corrupt). Layout (both engines)::

    paxos key = partition (2 bytes, big-endian) + key      (like a stored record)

in its own keyspace (RocksDB: the ``paxos`` column family; memory: a dict per
partition), so one partition's states are one contiguous range in key order:
paged by ``scan_paxos`` and dropped by ``delete_partition``.

Invariants: a state is at most ``PAXOS_STATE_BYTES_MAX`` bytes (an accepted
and a committed decree, each carrying a whole record of at most
``value_bytes_max``, 400 KiB by default); a larger one is refused with
``PaxosStateTooLarge`` before anything is written. ``put_paxos`` with a
record writes the state, the record and its expiry-index entry in one atomic
batch (a commit merged into the key's regular record: after a crash, both or
neither), durable after the next ``sync``.

Must never: do I/O, decode or judge a state (the node owns its meaning), or
drop a state except by ``delete_paxos`` and ``delete_partition`` (a forgotten
promise or accept can let Paxos choose two values).
"""

from __future__ import annotations

from typing import Final

from dynakv.storage.base import StorageError, stored_key

PAXOS_STATE_BYTES_MAX: Final = 1024 * 1024


class PaxosStateTooLarge(StorageError):
    """An acceptor state is longer than ``PAXOS_STATE_BYTES_MAX``; nothing was written."""

    code = "PaxosStateTooLarge"

    def __init__(self, *, partition: int, key: bytes, size_bytes: int, max_bytes: int) -> None:
        super().__init__(
            f"Paxos state for partition {partition} key {key[:64].hex()} ({len(key)} bytes) "
            f"is {size_bytes} bytes, more than the {max_bytes} allowed",
            partition=partition,
            key_hex=key.hex(),
            size_bytes=size_bytes,
            max_bytes=max_bytes,
        )
        self.partition = partition
        self.key = key
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes


def paxos_key(partition: int, key: bytes) -> bytes:
    """The stored key of ``(partition, key)``'s acceptor state."""
    return stored_key(partition, key)


def check_paxos_state(partition: int, key: bytes, state: bytes) -> None:
    """Raise ``PaxosStateTooLarge`` when ``state`` is past its bound."""
    assert isinstance(state, bytes), type(state)
    if len(state) > PAXOS_STATE_BYTES_MAX:
        raise PaxosStateTooLarge(
            partition=partition,
            key=key,
            size_bytes=len(state),
            max_bytes=PAXOS_STATE_BYTES_MAX,
        )
