"""Session consistency: the token a client carries, and which replica may answer it.

A session token (header ``X-Dynakv-Session``) is the causal context of what
one client wrote and read: for each key it touched (by a 64-bit hash of the
key, never the key itself), the vector clock and newest HLC timestamp of the
version it saw, plus the newest timestamp seen on any key. Every response
to a session request carries the updated token (``observe``).

A session read (``consistency=session``) asks one replica first: the local
one when this node is a replica, else the first live one, then at most
``SINGLE_READS_MAX - 1`` more, one at a time (``read_candidates``). A replica
answers only if its record is at least as new as the token's entry for the
key (``satisfies``): under ``siblings`` its clock covers the entry's clock;
under ``lww`` also when its newest timestamp is past the entry's (a newer
winner need not have seen the loser's dot). Otherwise the read falls back to
a quorum read. A key not in the token needs nothing, so any replica
answers, unless the token evicted entries (then it may have been seen:
quorum). Session writes run at quorum with the token's newest timestamp
folded into the context, so under ``lww`` they outrank everything the
session saw, on any key.

Bounds: at most ``KEYS_MAX`` keys (the least recently touched are evicted
and the token says so), ``CLOCK_ENTRIES_MAX`` entries per key clock (a
larger one is not stored: evicted), ``TOKEN_CHARS_MAX`` characters encoded.
Invariants: entries are ordered oldest first and key hashes are unique;
clocks are canonical. Must never: do I/O, read a clock, or choose randomly.

Cost: a session request decodes the client's token and encodes the new one
(tens of µs for a token of a few dozen keys). Two bounded memos keep that
off the common path: decoded tokens by their exact bytes (``DECODED_MAX``;
a client sends the same token until its next write), and the last token
``observe`` encoded to check its size, which the response then reuses. A
read that shows nothing new leaves the token as it was (``observe`` returns
it unchanged, and its order is not touched): "least recently touched" means
least recently *changed*.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final

import msgspec

from dynakv.core.record import ConflictPolicy, Record, RecordBounds, clock_bounds_problem
from dynakv.core.versions import (
    EMPTY_CLOCK,
    VClock,
    clock_descends,
    clock_join,
    hlc_ceiling,
    is_canonical,
)
from dynakv.errors import InvalidRequest

HEADER: Final = "X-Dynakv-Session"
LEVEL: Final = "session"  # the consistency query value
KEYS_MAX: Final = 128
CLOCK_ENTRIES_MAX: Final = 16
TOKEN_CHARS_MAX: Final = 8192
SINGLE_READS_MAX: Final = 2  # replicas asked one at a time before the quorum read
TOKEN_FORMAT: Final = 1
DECODED_MAX: Final = 1024  # memo of decoded tokens, by their bytes


class SessionEntry(msgspec.Struct, frozen=True, array_like=True):
    """What the session saw of one key: its version's clock and newest timestamp."""

    key_hash: int
    clock: VClock
    timestamp: int


class SessionToken(msgspec.Struct, frozen=True, array_like=True):
    entries: tuple[SessionEntry, ...] = ()  # least recently touched first
    max_timestamp: int = 0  # the newest timestamp seen on any key
    evicted: bool = False  # some key's entry was dropped to keep the bounds


EMPTY_SESSION: Final = SessionToken()
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SessionToken)
_decoded: dict[bytes, SessionToken] = {}  # valid tokens only, oldest first
_last_encoded: list[tuple[SessionToken, str]] = [(EMPTY_SESSION, "")]  # by identity


def session_key_hash(key: bytes) -> int:
    """The key's 64-bit name in a token (the same on every node and run)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def entry_for(token: SessionToken, key_hash: int) -> SessionEntry | None:
    for entry in token.entries:
        if entry.key_hash == key_hash:
            return entry
    return None


def needs_quorum(token: SessionToken, key_hash: int) -> bool:
    """A key the token does not name, after it evicted entries, may have been seen."""
    return token.evicted and entry_for(token, key_hash) is None


def satisfies(record: Record | None, entry: SessionEntry | None, policy: ConflictPolicy) -> bool:
    """Whether a replica holding ``record`` may answer a session that saw ``entry``."""
    if entry is None or (not entry.clock and entry.timestamp == 0):
        return True
    if record is None:
        return False
    if clock_descends(record.clock(), entry.clock):
        return True
    # lww keeps one sibling: a newer winner that never saw the loser's dot is
    # still newer than everything the session saw (merge picks it everywhere).
    return policy is ConflictPolicy.LWW and record.max_timestamp() > entry.timestamp


def read_candidates(
    preference_list: tuple[str, ...], local_node: str, down: frozenset[str]
) -> tuple[str, ...]:
    """Replicas to ask one at a time, in order: this node if it is one, then the
    others in preference order that the failure detector does not hold down."""
    ordered = [local_node] if local_node in preference_list else []
    ordered += [node for node in preference_list if node != local_node and node not in down]
    return tuple(ordered[:SINGLE_READS_MAX])


def observe(token: SessionToken, key_hash: int, clock: VClock, timestamp: int) -> SessionToken:
    """The token after the session saw version (``clock``, ``timestamp``) of a key:
    joined with what it had, moved to the most recent, bounds kept by evicting
    the least recently touched keys."""
    assert is_canonical(clock) and timestamp >= 0
    old = entry_for(token, key_hash)
    if (
        old is not None
        and old.timestamp >= timestamp
        and token.max_timestamp >= timestamp
        and clock_descends(old.clock, clock)
    ):
        return token  # nothing new: the same token, order untouched
    others = tuple(e for e in token.entries if e.key_hash != key_hash)
    evicted = token.evicted
    if old is not None:
        clock = clock_join(old.clock, clock)
        timestamp = max(old.timestamp, timestamp)
    entries = others
    if len(clock) > CLOCK_ENTRIES_MAX:
        evicted = True  # too large to carry: forgotten, so reads of it go to a quorum
    elif clock or timestamp:
        entries = (*others, SessionEntry(key_hash, clock, timestamp))
    if len(entries) > KEYS_MAX:
        entries = entries[len(entries) - KEYS_MAX :]
        evicted = True
    result = SessionToken(entries, max(token.max_timestamp, timestamp), evicted)
    while len(encode_session(result)) > TOKEN_CHARS_MAX:
        result = SessionToken(result.entries[1:], result.max_timestamp, True)
    return result


def encode_session(token: SessionToken) -> str:
    last, encoded = _last_encoded[0]
    if token is last:
        return encoded
    raw = bytes((TOKEN_FORMAT,)) + _encoder.encode(token)
    encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    _last_encoded[0] = (token, encoded)
    return encoded


def decode_session(raw: bytes | None) -> SessionToken:
    """Parse a client's token (None or empty: a new session); a bad one is a 400
    naming the header."""
    if not raw:
        return EMPTY_SESSION
    known = _decoded.get(raw)
    if known is not None:
        return known
    token = _decode(raw)
    if len(_decoded) >= DECODED_MAX:
        del _decoded[next(iter(_decoded))]
    _decoded[bytes(raw)] = token
    return token


def _decode(raw: bytes) -> SessionToken:
    if len(raw) > TOKEN_CHARS_MAX:
        raise InvalidRequest(
            f"session token is {len(raw)} bytes; the limit is {TOKEN_CHARS_MAX}",
            field=HEADER,
            size=len(raw),
            max=TOKEN_CHARS_MAX,
        )
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("session token is not valid base64url", field=HEADER) from exc
    if not data or data[0] != TOKEN_FORMAT:
        raise InvalidRequest("session token has an unknown format", field=HEADER)
    try:
        token = _decoder.decode(data[1:])
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"session token is malformed: {exc}", field=HEADER) from exc
    problem = _structure_problem(token)
    if problem is not None:
        raise InvalidRequest(f"session token is invalid: {problem}", field=HEADER)
    return token


def _structure_problem(token: SessionToken) -> str | None:
    if len(token.entries) > KEYS_MAX:
        return f"{len(token.entries)} keys; the limit is {KEYS_MAX}"
    if token.max_timestamp < 0:
        return "negative timestamp"
    seen: set[int] = set()
    for entry in token.entries:
        if entry.key_hash in seen or not 0 <= entry.key_hash < 1 << 64:
            return "key hashes are not unique 64-bit numbers"
        seen.add(entry.key_hash)
        if len(entry.clock) > CLOCK_ENTRIES_MAX or not is_canonical(entry.clock):
            return "a clock is not canonical or too large"
        if not 0 <= entry.timestamp <= token.max_timestamp:
            return "a key's timestamp is past the token's newest"
    return None


def session_bounds_problem(token: SessionToken, bounds: RecordBounds, now_ms: int) -> str | None:
    """Why the token holds a number this node must not adopt at ``now_ms``, or None
    (a timestamp ahead of the clock-offset bound would drag the HLC)."""
    ceiling = hlc_ceiling(now_ms, bounds.clock_offset_ms_max)
    if token.max_timestamp > ceiling:
        return "session token is ahead of this node's clock"
    for entry in token.entries:
        problem = clock_bounds_problem(entry.clock, bounds, ceiling, "session clock")
        if problem is not None:
            return problem
    return None


def requirement(token: SessionToken, key_hash: int) -> SessionEntry:
    """What a replica must hold to answer this session's read of the key (an
    empty entry when the token does not name it)."""
    entry = entry_for(token, key_hash)
    return entry if entry is not None else SessionEntry(key_hash, EMPTY_CLOCK, 0)
