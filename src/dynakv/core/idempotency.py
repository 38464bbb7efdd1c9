"""Idempotency keys: a retried write is applied at most once within a window.

A client sends ``Idempotency-Key: <token>`` with a write it may retry, and the
same token with every retry of it (at any node). This module owns the token's
rules (1..``TOKEN_CHARS_MAX`` printable ASCII characters; anything else is a
400 naming the header), its 64-bit hash (``idempotency_hash``: BLAKE2b, never
Python's per-process ``hash``, never 0, which means "no key"), and the
coordinating replica's question before it mints: has this key's write
already been minted here, within its window (``applied_context``)? If so, the
write is not minted again: the retry answers the original write's context
and replicates the record that holds it.

The record side (``IdempotencyEntry``, the bounded union, pruning at minting,
readers seeing one value per hash) lives in ``core.record``.

Invariants: a hash is a pure function of the token bytes; expiry is judged
on HLC physical time passed in, never a clock read here.
Must never: do I/O, read a clock, or choose randomly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from dynakv.core.record import Context, Record
from dynakv.errors import InvalidRequest

HEADER: Final = "Idempotency-Key"
TOKEN_CHARS_MAX: Final = 128
WINDOW_S_DEFAULT: Final = 600


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


def applied_context(record: Record | None, key_hash: int, physical_ms: int) -> Context | None:
    """The context of the write already minted under ``key_hash`` in ``record`` and
    not expired at ``physical_ms`` (HLC physical time), or None: mint it.

    The context is what the original write answered when its sibling is still in
    the record (its past and its dot); once a later write superseded it, the
    original's dot alone (a write on top of that context supersedes nothing newer).
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
