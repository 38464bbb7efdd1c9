"""The member table and the queue of updates to gossip: pure data, bounded.

``MemberTable`` holds one merged ``MemberState`` per known node (this node's
own record included) and keeps, incrementally, the XOR of the entry hashes of
its live members (alive or suspect): two tables with the same live versions
have the same hash, so a periodic sync costs one small message when nothing
differs. Dead and left members stay as tombstones until ``forget_expired``
drops them; they are never part of the hash or of a digest, so two nodes
that forget a tombstone at different times do not hand it back and forth.

``BroadcastQueue`` holds at most one pending record per node (a newer record
replaces the older), hands out the least-transmitted first, and drops a
record once it has been sent ``transmit_limit`` times (memberlist's
``TransmitLimitedQueue``).

Invariants: the table never holds more than ``members_max`` records (a new
node displaces the oldest tombstone, or is refused); ``apply`` only ever
moves a record up the merge order; the live hash equals the XOR over live
records. Must never: iterate a dict of str into output unsorted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dynakv.core.gossip_messages import (
    DigestEntry,
    MemberState,
    Status,
    digest_of,
    entry_hash,
    merge_member,
)


def is_live(state: MemberState) -> bool:
    return state.status < Status.DEAD  # alive or suspect


@dataclass(slots=True)
class _Entry:
    state: MemberState
    changed_ms: int  # when this node last saw the record change: a tombstone's age


@dataclass(frozen=True, slots=True)
class Change:
    """``apply`` moved ``node_id``'s record from ``old`` (None: unknown) to ``new``."""

    old: MemberState | None
    new: MemberState


class MemberTable:
    __slots__ = ("_entries", "_live_hash", "_live_ids", "_tombstones", "members_max", "refused")

    def __init__(self, self_state: MemberState, members_max: int, now_ms: int) -> None:
        assert members_max >= 1, members_max
        self.members_max = members_max
        self.refused = 0  # new members turned away because the table was full
        self._entries: dict[str, _Entry] = {}
        self._live_hash = 0
        self._live_ids: list[str] | None = None
        self._tombstones: set[str] = set()  # ids of dead and left members
        self.put(self_state, now_ms)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._entries

    def get(self, node_id: str) -> MemberState | None:
        entry = self._entries.get(node_id)
        return None if entry is None else entry.state

    def states(self) -> Iterator[MemberState]:
        """Every record, in node id order."""
        for node_id in sorted(self._entries):
            yield self._entries[node_id].state

    @property
    def live_hash(self) -> int:
        return self._live_hash

    def live_ids(self) -> list[str]:
        """Ids of live members (alive or suspect), sorted; cached until a change."""
        if self._live_ids is None:
            self._live_ids = sorted(
                node_id for node_id, entry in self._entries.items() if is_live(entry.state)
            )
        return self._live_ids

    def live_digest(self) -> tuple[DigestEntry, ...]:
        return tuple(digest_of(self._entries[node_id].state) for node_id in self.live_ids())

    def tombstone_ids(self, since_ms: int | None = None) -> list[str]:
        """Dead (not left) members whose record changed at or after ``since_ms``, sorted."""
        return sorted(
            node_id
            for node_id in self._tombstones
            if (entry := self._entries[node_id]).state.status is Status.DEAD
            and (since_ms is None or entry.changed_ms >= since_ms)
        )

    def apply(self, incoming: MemberState, now_ms: int) -> Change | None:
        """Merge ``incoming``; the change, or None if it taught nothing (or was refused)."""
        entry = self._entries.get(incoming.node_id)
        if entry is None:
            if len(self._entries) >= self.members_max and not self._evict_tombstone():
                self.refused += 1
                return None
            self._store(incoming.node_id, None, incoming, now_ms)
            return Change(None, incoming)
        merged = merge_member(entry.state, incoming)
        if merged == entry.state:
            return None
        old = entry.state
        self._store(incoming.node_id, old, merged, now_ms)
        return Change(old, merged)

    def put(self, state: MemberState, now_ms: int) -> Change:
        """Replace a record outright: only for this node's own record, which it owns."""
        entry = self._entries.get(state.node_id)
        old = None if entry is None else entry.state
        self._store(state.node_id, old, state, now_ms)
        return Change(old, state)

    def forget_expired(self, now_ms: int, ttl_ms: int, keep: str) -> list[MemberState]:
        """Drop tombstones older than ``ttl_ms`` (never ``keep``, this node); the dropped."""
        expired = sorted(
            node_id
            for node_id in self._tombstones
            if now_ms - self._entries[node_id].changed_ms >= ttl_ms and node_id != keep
        )
        return [self._remove(node_id) for node_id in expired]

    def _evict_tombstone(self) -> bool:
        tombstones = [(self._entries[node_id].changed_ms, node_id) for node_id in self._tombstones]
        if not tombstones:
            return False
        self._remove(min(tombstones)[1])
        return True

    def _remove(self, node_id: str) -> MemberState:
        entry = self._entries.pop(node_id)
        assert not is_live(entry.state), entry.state
        self._tombstones.discard(node_id)
        return entry.state

    def _store(self, node_id: str, old: MemberState | None, new: MemberState, now_ms: int) -> None:
        if old is not None and is_live(old):
            self._live_hash ^= entry_hash(old)
        if is_live(new):
            self._live_hash ^= entry_hash(new)
        if old is None or is_live(old) != is_live(new):
            self._live_ids = None
        if is_live(new):
            self._tombstones.discard(node_id)
        else:
            self._tombstones.add(node_id)
        self._entries[node_id] = _Entry(new, now_ms)


@dataclass(slots=True)
class _Pending:
    state: MemberState
    transmits: int
    order: int  # later pushes first among equally transmitted records


class BroadcastQueue:
    __slots__ = ("_items", "_pushes", "entries_max")

    def __init__(self, entries_max: int) -> None:
        assert entries_max >= 1, entries_max
        self.entries_max = entries_max
        self._items: dict[str, _Pending] = {}
        self._pushes = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, state: MemberState) -> None:
        """Queue ``state`` to gossip, replacing any pending record of the same node."""
        self._pushes += 1
        self._items[state.node_id] = _Pending(state, 0, self._pushes)
        if len(self._items) > self.entries_max:
            stalest = max(self._items.values(), key=lambda item: (item.transmits, -item.order))
            del self._items[stalest.state.node_id]
        assert len(self._items) <= self.entries_max

    def take(self, limit: int, transmit_limit: int, skip: str = "") -> list[MemberState]:
        """Up to ``limit`` records, least transmitted (then newest) first; counts them sent."""
        if limit <= 0 or not self._items:
            return []
        ranked = sorted(self._items.values(), key=lambda item: (item.transmits, -item.order))
        chosen: list[MemberState] = []
        for item in ranked:
            if len(chosen) >= limit:
                break
            if item.state.node_id == skip:
                continue
            chosen.append(item.state)
            item.transmits += 1
            if item.transmits >= transmit_limit:
                del self._items[item.state.node_id]
        return chosen

    def piggyback(
        self, recipient: MemberState | None, limit: int, transmit_limit: int
    ) -> tuple[MemberState, ...]:
        """Records to piggyback on a message to ``recipient``: its own record first if it
        is doubted (Lifeguard's buddy system: it can refute at once), then the queue's."""
        if recipient is not None and recipient.status is not Status.ALIVE:
            return (recipient, *self.take(limit - 1, transmit_limit, skip=recipient.node_id))
        return tuple(self.take(limit, transmit_limit))
