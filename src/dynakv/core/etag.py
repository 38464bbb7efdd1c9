"""The ETag of a key (a short, stable token naming one exact version) and conditions on it.

An ETag names the *set of writes* a record holds: it is the base64url form
(22 characters, no padding) of ``xxh3_128`` over the msgpack encoding of the
record's sibling dots ``(node, counter)``, sorted. A dot names one write and
is never reused (``record.make_write``), so:

- under ``lww`` a record has one sibling, and the ETag names that one write:
  every write, including a rewrite of the same bytes, gets a new ETag;
- under ``siblings`` it names the whole set of concurrent writes: any write
  that adds or supersedes a sibling changes it, so ``If-Match`` on a version
  fails as soon as anything was written after it was read.

A key with no visible value (no record, only tombstones, or only expired
values at ``now_ms``) has no ETag (``None``): ``If-Match`` never matches it
and ``If-None-Match: *`` (create only) succeeds on it. A delete therefore has
no ETag of its own.

Conditions (``IfMatch``: HTTP ``If-Match``; ``IfAbsent``: ``If-None-Match: *``)
are judged on the current version's ETag by ``condition_holds``.

The token is opaque to clients and says nothing about node ids or counters.
It is stable across processes and versions of Python (no ``hash()``).
Must never: depend on sibling order as stored, on values, or on a clock
other than the ``now_ms`` passed in.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final

import msgspec
import xxhash

from dynakv.core.record import Record

ETAG_CHARS: Final = 22  # 16 bytes of xxh3_128 in base64url without padding
_encoder = msgspec.msgpack.Encoder()


def etag_of(record: Record | None, now_ms: int) -> str | None:
    """The ETag of ``record`` as a reader at ``now_ms`` sees it, or None when absent."""
    if record is None or not record.visible_values(now_ms):
        return None
    dots = sorted((sibling.node, sibling.counter) for sibling in record.siblings)
    digest = xxhash.xxh3_128_digest(_encoder.encode(dots))
    token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    assert len(token) == ETAG_CHARS, token
    return token


def is_etag(token: str) -> bool:
    """Could ``token`` be an ETag this module made? (A client's ``If-Match`` is checked
    with it before use; a token that is not one simply never matches.)"""
    if len(token) != ETAG_CHARS:
        return False
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in token)


@dataclass(frozen=True, slots=True)
class IfMatch:
    """Write only if the current version's ETag is ``etag`` (HTTP ``If-Match``)."""

    etag: str


@dataclass(frozen=True, slots=True)
class IfAbsent:
    """Write only if the key has no visible value (HTTP ``If-None-Match: *``)."""


Condition = IfMatch | IfAbsent


def condition_holds(condition: Condition | None, etag: str | None) -> bool:
    """Does the current version (ETag ``etag``, None = absent) satisfy ``condition``?"""
    if condition is None:
        return True
    if isinstance(condition, IfAbsent):
        return etag is None
    return etag is not None and etag == condition.etag
