"""The stored record: one key's concurrent versions, and how they merge.

A ``Record`` is a set of ``Sibling``s. Each sibling is one write: a value or a
tombstone (``value is None``), its *dot* ``(node, counter)`` naming the write
uniquely, its *past* (the vector clock of what the writer had seen, from the
context it passed), an HLC ``timestamp`` and an absolute ``expires_at_ms``
(0 = never; for a tombstone, the time it may be purged).

This is Riak 2.0's dotted-version-vector scheme: a sibling is obsolete when
another sibling's past covers its dot. So siblings stay bounded by the number
of truly concurrent writers, and a write that carries a context supersedes
exactly the writes that context saw, never one it did not.

Conflict policies:

- ``siblings``: merge is set union, then drop obsolete siblings. Truly
  concurrent writes all survive for the application to resolve.
- ``lww``: merge keeps the single sibling with the largest
  ``(timestamp, node, counter)``. The coordinating replica observes the
  context's ``max_timestamp`` before stamping, so a write that saw another
  always beats it; among truly concurrent writes the HLC order decides,
  identically on every replica.

Idempotent retries: a write minted with an idempotency key adds an
``IdempotencyEntry`` (the key's 64-bit hash, the write's dot and HLC
timestamp, an expiry) to the record's ``idempotency`` list. The list merges
as a union bounded to the ``IDEMPOTENCY_ENTRIES_MAX`` entries that expire
last (a semilattice on its own, independent of the siblings), and is pruned
of expired entries only when a write is minted, so merge stays a pure join.
The coordinating replica consults it before minting (``applied_context``):
a key it already holds is not applied again (the entries' own rules are in
``core.idempotency``). A duplicate minted by a replica that did not know
yet is a sibling like any other in the merge (so the merge laws and the
clock's coverage are untouched); readers see one value per idempotency hash
(the smallest dot's), and the next write with the read's context supersedes
both copies.

Both merges are commutative, associative and idempotent (a join
semilattice), so replicas converge whatever order records arrive in.
The wire/storage encoding is msgpack via msgspec with a format byte first;
this module never does I/O.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import msgspec

from dynakv.core.idempotency import (
    KEY_HASH_MAX,
    IdempotencyEntry,
    entries_bounds_problem,
    entries_problem,
    merge_idempotency,
)
from dynakv.core.versions import (
    EMPTY_CLOCK,
    LOGICAL_BITS,
    VClock,
    clock_add_dot,
    clock_get,
    clock_join,
    covers,
    hlc_ceiling,
    is_canonical,
)
from dynakv.errors import InvalidRequest


class ConflictPolicy(StrEnum):
    LWW = "lww"
    SIBLINGS = "siblings"


class Sibling(msgspec.Struct, frozen=True, array_like=True):
    value: bytes | None
    node: str
    counter: int
    past: VClock
    timestamp: int
    expires_at_ms: int = 0

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def clock(self) -> VClock:
        """Everything this write has seen, including itself."""
        if not self.past:  # a blind write: the clock is its own dot
            return ((self.node, self.counter),)
        return clock_add_dot(self.past, self.node, self.counter)

    def is_visible(self, now_ms: int) -> bool:
        return self.value is not None and (self.expires_at_ms == 0 or self.expires_at_ms > now_ms)

    def order_key(self) -> tuple[int, str, int]:
        """The last-writer-wins order: HLC timestamp, then node id, then counter."""
        return (self.timestamp, self.node, self.counter)


class Record(msgspec.Struct, frozen=True, array_like=True):
    """Siblings sorted by dot; never empty; no sibling obsoleted by another.

    ``idempotency``: recent writes minted under an idempotency key, sorted by
    (hash, node, counter), at most ``IDEMPOTENCY_ENTRIES_MAX``. ``encode_record``
    leaves an empty list out, so records written before it existed decode, and
    encode, byte for byte as before (Merkle digests do not move).
    """

    siblings: tuple[Sibling, ...]
    idempotency: tuple[IdempotencyEntry, ...] = ()

    def clock(self) -> VClock:
        if len(self.siblings) == 1:  # the common case, on every read and write
            return self.siblings[0].clock()
        return clock_join(*(s.clock() for s in self.siblings))

    def max_timestamp(self) -> int:
        return max(s.timestamp for s in self.siblings)

    def visible_values(self, now_ms: int) -> list[bytes]:
        """Values a reader sees: live, unexpired siblings, in dot order; of copies of
        one idempotent write (a retry minted twice), only the smallest dot's."""
        if not self.idempotency:
            return [s.value for s in self.siblings if s.value is not None and s.is_visible(now_ms)]
        hash_of = {(e.node, e.counter): e.hash for e in self.idempotency}
        shown: set[int] = set()
        values: list[bytes] = []
        for sibling in self.siblings:  # dot order: the smallest dot of a copy comes first
            if sibling.value is None or not sibling.is_visible(now_ms):
                continue
            key_hash = hash_of.get((sibling.node, sibling.counter))
            if key_hash is not None:
                if key_hash in shown:
                    continue
                shown.add(key_hash)
            values.append(sibling.value)
        return values

    def purge_at_ms(self) -> int | None:
        """When the whole record may be removed, or None while any sibling lives forever."""
        if any(s.expires_at_ms == 0 for s in self.siblings):
            return None
        return max(s.expires_at_ms for s in self.siblings)

    def next_counter(self, node_id: str, context: VClock) -> int:
        """The counter for ``node_id``'s next write on top of this record and that context."""
        return max(clock_get(self.clock(), node_id), clock_get(context, node_id)) + 1


class Context(msgspec.Struct, frozen=True, array_like=True):
    """What a reader saw, handed back on its next write: the clock and the newest timestamp."""

    clock: VClock = EMPTY_CLOCK
    max_timestamp: int = 0


EMPTY_CONTEXT: Final = Context()
RECORD_FORMAT: Final = 1
CONTEXT_FORMAT: Final = 1
CONTEXT_BYTES_MAX: Final = 8192

_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(Record)
_context_decoder = msgspec.msgpack.Decoder(Context)


def merge(a: Record | None, b: Record | None, policy: ConflictPolicy) -> Record | None:
    """The join of two replicas' records for one key (None = no record)."""
    if a is None:
        return b
    if b is None:
        return a
    entries = merge_idempotency(a.idempotency, b.idempotency)
    by_dot: dict[tuple[str, int], Sibling] = {}
    for sibling in (*a.siblings, *b.siblings):
        dot = (sibling.node, sibling.counter)
        seen = by_dot.get(dot)
        # A dot names one write; if two copies differ (a bug upstream), pick
        # deterministically so replicas still agree.
        if seen is None or _copy_order(sibling) > _copy_order(seen):
            by_dot[dot] = sibling
    candidates = list(by_dot.values())
    if policy is ConflictPolicy.LWW:
        return Record((max(candidates, key=Sibling.order_key),), entries)
    survivors = [
        s
        for s in candidates
        if not any(other is not s and covers(other.past, s.node, s.counter) for other in candidates)
    ]
    assert survivors, "a set of writes always has a causally maximal one"
    survivors.sort(key=lambda s: (s.node, s.counter))
    return Record(tuple(survivors), entries)


def _copy_order(sibling: Sibling) -> tuple[int, int, bytes]:
    return (sibling.timestamp, sibling.expires_at_ms, sibling.value or b"")


def make_write(
    local: Record | None,
    *,
    node_id: str,
    value: bytes | None,
    context: Context,
    timestamp: int,
    expires_at_ms: int,
    policy: ConflictPolicy,
    idempotency_hash: int = 0,
    idempotency_expires_at_ms: int = 0,
) -> Record:
    """The coordinating replica's new record: ``local`` plus one write on top of ``context``.

    The caller has already folded ``context.max_timestamp`` and ``local``'s
    timestamps into its HLC, so ``timestamp`` is larger than both. With an
    ``idempotency_hash`` (1..2**64-1) the write is recorded under it until
    ``idempotency_expires_at_ms``; entries expired by the write's own HLC time
    are pruned here (and only here: merge stays a pure join).
    """
    assert 0 <= idempotency_hash <= KEY_HASH_MAX, idempotency_hash
    assert local is None or timestamp > local.max_timestamp()
    assert timestamp > context.max_timestamp
    after = (
        local.next_counter(node_id, context.clock)
        if local is not None
        else clock_get(context.clock, node_id) + 1
    )
    # A dot's counter is at least its HLC timestamp. A node's timestamps never
    # repeat, so neither do its dots: not after the key's record was purged
    # (tombstone GC, TTL) and not after an lww merge dropped the node's own
    # dot. Coverage stays sound because counters need only increase per node,
    # not be contiguous: the minting replica holds all its live dots for the
    # key (persist before send) and replicates its whole record.
    counter = max(after, timestamp)
    sibling = Sibling(
        value=value,
        node=node_id,
        counter=counter,
        past=context.clock,
        timestamp=timestamp,
        expires_at_ms=expires_at_ms,
    )
    if local is not None and local.idempotency:
        physical_ms = timestamp >> LOGICAL_BITS
        live = tuple(e for e in local.idempotency if e.expires_at_ms > physical_ms)
        if live != local.idempotency:
            local = Record(local.siblings, live)
    entries: tuple[IdempotencyEntry, ...] = ()
    if idempotency_hash:
        entry = IdempotencyEntry(
            idempotency_hash, node_id, counter, timestamp, idempotency_expires_at_ms
        )
        entries = (entry,)
    result = merge(local, Record((sibling,), entries), policy)
    assert result is not None and sibling in result.siblings
    return result


def context_of(record: Record | None) -> Context:
    if record is None:
        return EMPTY_CONTEXT
    return Context(clock=record.clock(), max_timestamp=record.max_timestamp())


def applied_context(record: Record | None, key_hash: int, physical_ms: int) -> Context | None:
    """The context of the write already minted under idempotency ``key_hash`` in
    ``record`` and not expired at ``physical_ms`` (HLC physical time), or None.

    What the original write answered while its sibling is in the record (its
    past and its dot); once a later write superseded it, its dot alone (a write
    on top of that context supersedes nothing newer). Of copies minted twice,
    the smallest dot's, as readers see it.
    """
    assert key_hash > 0, key_hash
    if record is None or not record.idempotency:
        return None
    for entry in record.idempotency:
        if entry.hash != key_hash or entry.expires_at_ms <= physical_ms:
            continue
        for sibling in record.siblings:
            if (sibling.node, sibling.counter) == (entry.node, entry.counter):
                return Context(clock=sibling.clock(), max_timestamp=sibling.timestamp)
        return Context(clock=((entry.node, entry.counter),), max_timestamp=entry.timestamp)
    return None


def encode_record(record: Record) -> bytes:
    if not record.idempotency:
        # The pre-idempotency layout, a one-element array: the same bytes as ever.
        return bytes((RECORD_FORMAT,)) + _record_encoder.encode((record.siblings,))
    return bytes((RECORD_FORMAT,)) + _record_encoder.encode(record)


def decode_record(data: bytes) -> Record:
    """Decode a stored or received record; raises ValueError on anything malformed."""
    if not data or data[0] != RECORD_FORMAT:
        raise ValueError(f"unknown record format byte {data[:1]!r}")
    try:
        record = _record_decoder.decode(data[1:])
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed record: {exc}") from exc
    problem = record_problem(record)
    if problem is not None:
        raise ValueError(f"invalid record: {problem}")
    return record


def record_problem(record: Record) -> str | None:
    """Why a record from outside (disk or a peer) breaks the invariants, or None.

    msgspec checks the types; this checks what types cannot say: at least one
    sibling, dots sorted and unique with positive counters, canonical pasts,
    non-negative times.
    """
    siblings = record.siblings
    if not siblings:
        return "no siblings"
    previous: tuple[str, int] | None = None
    # One pass, no allocation beyond the dot tuples: this runs on every record
    # read from disk or received from a peer.
    for sibling in siblings:
        dot = (sibling.node, sibling.counter)
        if previous is not None and dot <= previous:
            return "sibling dots are not sorted and unique"
        previous = dot
        if sibling.counter <= 0 or not sibling.node:
            return f"bad dot ({sibling.node!r}, {sibling.counter})"
        if sibling.past and not is_canonical(sibling.past):
            return "a sibling's past is not a canonical clock"
        if sibling.timestamp < 0 or sibling.expires_at_ms < 0:
            return "negative timestamp or expiry"
    if record.idempotency:
        return entries_problem(record.idempotency)
    return None


@dataclass(frozen=True, slots=True)
class RecordBounds:
    """How large the numbers in a record or context from outside may be.

    Checked where they enter: client contexts (400 naming the field), peers'
    records and contexts (the request is refused), records read from disk
    (quarantined). Times are judged against this node's own wall clock, so a
    peer whose clock runs fast cannot drag ours: nothing more than
    ``clock_offset_ms_max`` ahead of it is accepted (CockroachDB's max offset).
    """

    clock_offset_ms_max: int = 60_000
    # How far past now an expiry may lie: the longest TTL or tombstone grace.
    expiry_ahead_ms_max: int = 10 * 365 * 24 * 3600 * 1000
    value_bytes_max: int = 400 * 1024
    siblings_max: int = 128
    clock_entries_max: int = 256
    node_id_bytes_max: int = 128

    def __post_init__(self) -> None:
        assert self.clock_offset_ms_max >= 0 and self.expiry_ahead_ms_max >= 0
        assert min(self.siblings_max, self.clock_entries_max, self.node_id_bytes_max) > 0


def clock_bounds_problem(
    clock: VClock, bounds: RecordBounds, ceiling: int, what: str
) -> str | None:
    """Why ``clock`` (already known canonical) is out of bounds, or None."""
    if len(clock) > bounds.clock_entries_max:
        return f"{what} has {len(clock)} entries; the limit is {bounds.clock_entries_max}"
    for node_id, counter in clock:
        if counter > ceiling:
            return f"{what} counter {counter} for {node_id[:64]!r} is ahead of this node's clock"
        if len(node_id) > bounds.node_id_bytes_max:
            return f"{what} names a node id of {len(node_id)} characters"
    return None


def record_bounds_problem(
    record: Record, bounds: RecordBounds, now_ms: int, *, check_values: bool = True
) -> str | None:
    """Why ``record`` (already structurally valid: ``record_problem``) holds a number
    out of bounds at ``now_ms``, or None. ``check_values=False`` for the disk, where
    a value stored under an older, larger ``value_bytes_max`` is still valid."""
    siblings = record.siblings
    if len(siblings) > bounds.siblings_max:
        return f"{len(siblings)} siblings; the limit is {bounds.siblings_max}"
    ceiling = hlc_ceiling(now_ms, bounds.clock_offset_ms_max)
    expiry_max = now_ms + bounds.expiry_ahead_ms_max + bounds.clock_offset_ms_max
    for sibling in siblings:
        if sibling.timestamp > ceiling:
            ahead_ms = (sibling.timestamp >> LOGICAL_BITS) - now_ms
            return (
                f"timestamp {sibling.timestamp} is {ahead_ms} ms ahead of this node's clock; "
                f"the limit is {bounds.clock_offset_ms_max} ms (clock_offset_ms_max)"
            )
        if sibling.counter > ceiling:
            return f"dot counter {sibling.counter} is ahead of this node's clock"
        if sibling.expires_at_ms > expiry_max:
            return f"expiry {sibling.expires_at_ms} ms is further ahead than any TTL or grace"
        if len(sibling.node) > bounds.node_id_bytes_max:
            return f"a dot names a node id of {len(sibling.node)} characters"
        value = sibling.value
        if check_values and value is not None and len(value) > bounds.value_bytes_max:
            return f"value of {len(value)} bytes; the limit is {bounds.value_bytes_max}"
        if sibling.past:
            problem = clock_bounds_problem(sibling.past, bounds, ceiling, "a sibling's past")
            if problem is not None:
                return problem
    if record.idempotency:
        return entries_bounds_problem(
            record.idempotency, ceiling, expiry_max, bounds.node_id_bytes_max
        )
    return None


def context_bounds_problem(context: Context, bounds: RecordBounds, now_ms: int) -> str | None:
    """Why a decoded context holds a number out of bounds at ``now_ms``, or None."""
    ceiling = hlc_ceiling(now_ms, bounds.clock_offset_ms_max)
    if context.max_timestamp > ceiling:
        ahead_ms = (context.max_timestamp >> LOGICAL_BITS) - now_ms
        return (
            f"context is {ahead_ms} ms ahead of this node's clock; the limit is "
            f"{bounds.clock_offset_ms_max} ms (clock_offset_ms_max)"
        )
    return clock_bounds_problem(context.clock, bounds, ceiling, "context clock")


def encode_context(context: Context) -> str:
    """The opaque, URL-safe token clients pass back in ``X-Dynakv-Context``."""
    raw = bytes((CONTEXT_FORMAT,)) + _record_encoder.encode(context)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_context(token: str) -> Context:
    """Parse a client's context token; a bad one is the client's error, named by its field."""
    field = "X-Dynakv-Context"
    if not token:
        return EMPTY_CONTEXT
    if len(token) > CONTEXT_BYTES_MAX:
        raise InvalidRequest(
            f"context is {len(token)} bytes; the limit is {CONTEXT_BYTES_MAX}",
            field=field,
            size=len(token),
            max=CONTEXT_BYTES_MAX,
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("context is not valid base64url", field=field) from exc
    if not raw or raw[0] != CONTEXT_FORMAT:
        raise InvalidRequest("context has an unknown format", field=field)
    try:
        context = _context_decoder.decode(raw[1:])
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"context is malformed: {exc}", field=field) from exc
    if any(counter <= 0 for _, counter in context.clock) or context.max_timestamp < 0:
        raise InvalidRequest("context has invalid counters", field=field)
    ids = [node_id for node_id, _ in context.clock]
    if ids != sorted(set(ids)):
        raise InvalidRequest("context clock is not canonical", field=field)
    return context
