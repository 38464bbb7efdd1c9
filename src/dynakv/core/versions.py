"""Vector clocks and the hybrid logical clock: the two halves of a version.

A vector clock (``VClock``) is an immutable tuple of ``(node_id, counter)``
pairs, sorted by node id, with no zero counters. It says which writes (dots)
a version has seen: dot ``(n, c)`` is covered by clock ``v`` iff ``v[n] >= c``.

The hybrid logical clock (``Hlc``) gives every write a 64-bit timestamp,
``physical_ms << 16 | logical``, that never goes backwards on a node and moves
past every timestamp the node has observed. Ties between nodes break on the
node id, so last-writer-wins is a total order. Wall-clock time alone never
decides: a write made after seeing another always carries a larger timestamp.

Invariants: clocks are canonical (sorted, unique ids, counters > 0), so two
equal clocks are equal tuples. This module does no I/O and reads no clock:
wall time arrives as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

VClock = tuple[tuple[str, int], ...]

EMPTY_CLOCK: VClock = ()
LOGICAL_BITS = 16
LOGICAL_MAX = (1 << LOGICAL_BITS) - 1


def clock_from_mapping(entries: Mapping[str, int]) -> VClock:
    """The canonical clock for a node -> counter mapping (zero counters dropped)."""
    for node_id, counter in entries.items():
        assert counter >= 0, (node_id, counter)
    return tuple(sorted((n, c) for n, c in entries.items() if c > 0))


def clock_get(clock: VClock, node_id: str) -> int:
    for entry_node, counter in clock:
        if entry_node == node_id:
            return counter
    return 0


def clock_join(*clocks: VClock) -> VClock:
    """Least upper bound: the pointwise maximum."""
    merged: dict[str, int] = {}
    for clock in clocks:
        for node_id, counter in clock:
            if counter > merged.get(node_id, 0):
                merged[node_id] = counter
    return clock_from_mapping(merged)


def clock_add_dot(clock: VClock, node_id: str, counter: int) -> VClock:
    """The clock that has seen everything ``clock`` has, plus dot (node_id, counter)."""
    return clock_join(clock, ((node_id, counter),))


def clock_descends(a: VClock, b: VClock) -> bool:
    """True iff ``a`` has seen everything ``b`` has (a >= b)."""
    return all(clock_get(a, node_id) >= counter for node_id, counter in b)


def clock_concurrent(a: VClock, b: VClock) -> bool:
    return not clock_descends(a, b) and not clock_descends(b, a)


def covers(clock: VClock, node_id: str, counter: int) -> bool:
    """True iff the write with dot (node_id, counter) is in the causal past of ``clock``."""
    return clock_get(clock, node_id) >= counter


def is_canonical(clock: Iterable[tuple[str, int]]) -> bool:
    """Sorted by node id, ids unique, every counter positive."""
    previous: str | None = None
    for node_id, counter in clock:
        if counter <= 0 or (previous is not None and node_id <= previous):
            return False
        previous = node_id
    return True


def hlc_physical_ms(timestamp: int) -> int:
    return timestamp >> LOGICAL_BITS


def hlc_ceiling(now_ms: int, offset_ms_max: int) -> int:
    """The largest timestamp (or dot counter) this node accepts at ``now_ms``: the
    last logical tick of the millisecond ``offset_ms_max`` ahead of its wall clock.

    Every timestamp and counter that enters from a client, a peer or the disk
    must be at or below it, so nothing can drag the clock (and lww order) far
    into the future or push a counter to the 64-bit edge of the wire format.
    """
    assert now_ms >= 0 and offset_ms_max >= 0, (now_ms, offset_ms_max)
    return ((now_ms + offset_ms_max) << LOGICAL_BITS) | LOGICAL_MAX


class Hlc:
    """A hybrid logical clock for one node. Not thread-safe; owned by one loop.

    ``tick(wall_ms)`` stamps a new local event; ``observe(ts)`` folds in a
    timestamp seen from elsewhere so the next tick is larger than it.
    """

    __slots__ = ("_last",)

    def __init__(self, last: int = 0) -> None:
        assert last >= 0
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def tick(self, wall_ms: int) -> int:
        assert wall_ms >= 0
        candidate = wall_ms << LOGICAL_BITS
        if candidate > self._last:
            self._last = candidate
        else:
            # Same or earlier millisecond: move the logical part. If it would
            # overflow, borrow the next millisecond rather than wrap.
            self._last += 1
        return self._last

    def observe(self, timestamp: int, ceiling: int | None = None) -> bool:
        """Fold in ``timestamp``; with ``ceiling`` (see ``hlc_ceiling``), a timestamp
        above it is not adopted and False is returned: the caller refuses its source."""
        assert timestamp >= 0
        if ceiling is not None and timestamp > ceiling:
            return False
        self._last = max(self._last, timestamp)
        return True
