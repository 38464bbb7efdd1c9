"""Idempotency keys: a retried write is applied at most once within a window.

A client sends ``Idempotency-Key: <token>`` with a write it may retry, and the
same token with every retry of it (at any node). This module owns the token's
rules (1..``TOKEN_CHARS_MAX`` printable ASCII characters; anything else is a
400 naming the header), its 64-bit hash (``idempotency_hash``: BLAKE2b, never
Python's per-process ``hash``, never 0, which means "no key"), and the
entries a record keeps of writes minted under a key (``IdempotencyEntry``):
their bounded union (``merge_idempotency``: the ``IDEMPOTENCY_ENTRIES_MAX``
that expire last, a join on its own) and the checks entries from outside must
pass. The record side (pruning at minting, readers seeing one value per
hash, and ``applied_context``: the coordinating replica's question before
it mints, "is this key's write already here, within its window?") lives in
``core.record``.

Invariants: a hash is a pure function of the token bytes; expiry is judged
on HLC physical time passed in, never a clock read here.
Must never: do I/O, read a clock, or choose randomly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import msgspec

from dynakv.errors import InvalidRequest

HEADER: Final = "Idempotency-Key"
# Idempotency entries a record keeps (the ones that expire last): a key whose
# idempotent writes within the window outnumber this forgets the oldest, so a
# retry of one of those could be applied again.
IDEMPOTENCY_ENTRIES_MAX: Final = 32
KEY_HASH_MAX: Final = (1 << 64) - 1
TOKEN_CHARS_MAX: Final = 128


class IdempotencyEntry(msgspec.Struct, frozen=True, array_like=True):
    """A write minted under an idempotency key: the key's hash, the write's dot and
    HLC timestamp, and when the entry stops protecting against a retry."""

    hash: int  # 1..2**64-1 (core.idempotency.idempotency_hash)
    node: str
    counter: int
    timestamp: int
    expires_at_ms: int

    def identity(self) -> tuple[int, str, int]:
        return (self.hash, self.node, self.counter)

    def keep_order(self) -> tuple[int, int, int, str, int]:
        """Which entries the bounded union keeps: the latest to expire (then by identity)."""
        return (self.expires_at_ms, self.timestamp, self.hash, self.node, self.counter)


def merge_idempotency(
    a: tuple[IdempotencyEntry, ...], b: tuple[IdempotencyEntry, ...]
) -> tuple[IdempotencyEntry, ...]:
    """The bounded union: one copy per (hash, dot) (the larger, should copies ever
    differ), then the ``IDEMPOTENCY_ENTRIES_MAX`` that expire last, sorted by
    identity. Keeping the top K of a union under one total order is itself
    commutative, associative and idempotent."""
    if not b or a == b:
        return a
    if not a:
        return b
    by_identity: dict[tuple[int, str, int], IdempotencyEntry] = {}
    for entry in (*a, *b):
        seen = by_identity.get(entry.identity())
        if seen is None or entry.keep_order() > seen.keep_order():
            by_identity[entry.identity()] = entry
    kept = list(by_identity.values())
    if len(kept) > IDEMPOTENCY_ENTRIES_MAX:
        kept.sort(key=IdempotencyEntry.keep_order, reverse=True)
        del kept[IDEMPOTENCY_ENTRIES_MAX:]
    kept.sort(key=IdempotencyEntry.identity)
    return tuple(kept)


def entries_problem(entries: tuple[IdempotencyEntry, ...]) -> str | None:
    """Why a record's entries from outside break the invariants, or None."""
    if len(entries) > IDEMPOTENCY_ENTRIES_MAX:
        return f"{len(entries)} idempotency entries; at most {IDEMPOTENCY_ENTRIES_MAX}"
    previous: tuple[int, str, int] | None = None
    for entry in entries:
        identity = entry.identity()
        if previous is not None and identity <= previous:
            return "idempotency entries are not sorted and unique"
        previous = identity
        if not 0 < entry.hash <= KEY_HASH_MAX or entry.counter <= 0 or not entry.node:
            return f"bad idempotency entry ({entry.node!r}, {entry.counter})"
        if entry.timestamp < 0 or entry.expires_at_ms < 0:
            return "negative idempotency timestamp or expiry"
    return None


def entries_bounds_problem(
    entries: tuple[IdempotencyEntry, ...], ceiling: int, expiry_max_ms: int, node_id_bytes_max: int
) -> str | None:
    """Why entries from outside hold a number out of bounds (``core.record``'s
    ``record_bounds_problem`` gives the ceiling and the latest expiry), or None."""
    for entry in entries:
        if entry.timestamp > ceiling or entry.counter > ceiling:
            return "an idempotency entry is ahead of this node's clock"
        if entry.expires_at_ms > expiry_max_ms:
            return f"idempotency expiry {entry.expires_at_ms} ms is too far ahead"
        if len(entry.node) > node_id_bytes_max:
            return f"an idempotency entry names a node id of {len(entry.node)} characters"
    return None


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A write's idempotency key as the coordinator needs it: the token's hash and
    how long the entry it mints protects against a retry."""

    hash: int
    window_ms: int

    def __post_init__(self) -> None:
        assert 0 < self.hash < 1 << 64, self.hash
        assert self.window_ms > 0, self.window_ms


def idempotency_hash(token: bytes) -> int:
    """The token's 64-bit hash, 1..2**64-1 (the same on every node and run)."""
    digest = int.from_bytes(hashlib.blake2b(token, digest_size=8).digest(), "big")
    return digest or 1


def parse_idempotency_key(raw: bytes | None) -> int:
    """The hash of an ``Idempotency-Key`` header value, or 0 when there is none.

    1..``TOKEN_CHARS_MAX`` printable ASCII characters (0x21..0x7e: no spaces, so a
    repeated header, joined by ``,`` with a space, is refused rather than guessed).
    """
    if raw is None:
        return 0
    token = raw.strip()
    if not 1 <= len(token) <= TOKEN_CHARS_MAX or not all(0x21 <= byte <= 0x7E for byte in token):
        raise InvalidRequest(
            f"{HEADER} must be 1..{TOKEN_CHARS_MAX} printable ASCII characters without "
            f"spaces; got {len(token)} bytes",
            field=HEADER,
            max=TOKEN_CHARS_MAX,
        )
    return idempotency_hash(token)
