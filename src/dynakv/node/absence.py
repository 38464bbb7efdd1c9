"""A node that was away longer than the tombstone grace must not bring deleted
data back: it drops its records and rebuilds them from its peers before it
serves reads.

While a node is down, its peers keep deleting keys: each delete is a
tombstone, and a tombstone is purged once ``tombstone_grace_s`` has passed.
A node away for longer still holds the values those tombstones deleted, and
nothing is left to tell anyone they are dead: a read repair or an
anti-entropy push from it would resurrect them. So (Cassandra's rule for a
node down past gc_grace, made automatic):

- the node records it is alive (meta ``alive_at_ms``) every few seconds;
- at start, if the last mark is older than the grace, it drops every record
  (keeping each partition's Paxos acceptor state: a forgotten promise could
  let a lower ballot through) and the Merkle trees' clean marker;
- it then pulls everything back through anti-entropy from its live peers,
  and refuses client reads with 503 until a pass completed with every peer.

Must never: drop Paxos state, or serve a read from a store it is rebuilding.
"""

from __future__ import annotations

import logging
from typing import Final

from dynakv.errors import UnavailableError
from dynakv.storage.base import Storage

log = logging.getLogger(__name__)

ALIVE_META: Final = "alive_at_ms"
PAXOS_PAGE_MAX: Final = 1024


class Rebuilding(UnavailableError):
    """This node is rebuilding its data after an absence longer than the grace."""

    code = "Rebuilding"

    def __init__(self, *, node: str, away_s: int) -> None:
        super().__init__(
            f"node {node} was away {away_s} s, longer than the tombstone grace: it is "
            "rebuilding its data from its peers and serves reads again when done",
            node=node,
            away_s=away_s,
        )


def mark_alive(storage: Storage, now_ms: int) -> None:
    storage.put_meta(ALIVE_META, now_ms.to_bytes(8, "big"))


def away_ms(storage: Storage, now_ms: int) -> int | None:
    """How long ago this node last recorded it was alive (None: never, a new node)."""
    stored = storage.get_meta(ALIVE_META)
    if stored is None:
        return None
    return max(0, now_ms - int.from_bytes(stored, "big"))


def drop_records_keeping_paxos(storage: Storage, partition_count: int) -> int:
    """Drop every record (and hint) of every partition; put each Paxos state back."""
    dropped = 0
    for partition in range(partition_count):
        states: list[tuple[bytes, bytes]] = []
        after: bytes | None = None
        while True:  # bounded: each page advances ``after``; a partition is finite
            page = storage.scan_paxos(partition, after=after, limit=PAXOS_PAGE_MAX)
            states.extend(page)
            if len(page) < PAXOS_PAGE_MAX:
                break
            after = page[-1][0]
        count = storage.count_partition(partition)
        if count == 0 and not states:
            continue
        dropped += count
        storage.delete_partition(partition)
        for key, state in states:
            storage.put_paxos(partition, key, state)
    storage.sync()
    return dropped
