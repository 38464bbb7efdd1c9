"""Idempotency entries in the stored record: the encoding old data keeps, and the
checks a record from a peer or the disk must pass."""

from __future__ import annotations

import msgspec
import pytest

from dynakv.core.idempotency import IDEMPOTENCY_ENTRIES_MAX, IdempotencyEntry
from dynakv.core.record import (
    RECORD_FORMAT,
    ConflictPolicy,
    Context,
    Record,
    RecordBounds,
    Sibling,
    applied_context,
    decode_record,
    encode_record,
    make_write,
    record_bounds_problem,
    record_problem,
)

NOW_MS = 1_000_000
TS = NOW_MS << 16
SIBLING = Sibling(b"v", "n1", TS, (), TS)


def entry(hash_: int = 5, counter: int = TS, *, expires: int = NOW_MS + 1000) -> IdempotencyEntry:
    return IdempotencyEntry(hash_, "n1", counter, TS, expires)


def test_a_record_without_entries_encodes_as_it_always_did() -> None:
    old_layout = bytes((RECORD_FORMAT,)) + msgspec.msgpack.encode(((SIBLING,),))
    assert encode_record(Record((SIBLING,))) == old_layout
    assert decode_record(old_layout) == Record((SIBLING,))
    with_entry = Record((SIBLING,), (entry(),))
    assert decode_record(encode_record(with_entry)) == with_entry


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ((entry(5), entry(4)), "not sorted"),
        ((entry(5), entry(5)), "not sorted"),
        ((entry(0),), "bad idempotency entry"),
        ((entry(1 << 64),), "bad idempotency entry"),
        ((entry(5, counter=0),), "bad idempotency entry"),
        ((entry(5, expires=-1),), "negative"),
        (tuple(entry(h) for h in range(1, IDEMPOTENCY_ENTRIES_MAX + 2)), "idempotency entries"),
    ],
)
def test_malformed_entries_are_refused(entries: tuple[IdempotencyEntry, ...], problem: str) -> None:
    record = Record((SIBLING,), entries)
    found = record_problem(record)
    assert found is not None and problem in found
    try:
        data = encode_record(record)
    except OverflowError:
        return  # past msgpack's 64 bits: no peer or disk can hold it either
    with pytest.raises(ValueError):
        decode_record(data)


def test_entries_from_outside_are_held_to_the_clock_and_expiry_bounds() -> None:
    bounds = RecordBounds(clock_offset_ms_max=1000, expiry_ahead_ms_max=60_000)
    assert record_bounds_problem(Record((SIBLING,), (entry(),)), bounds, NOW_MS) is None
    ahead = IdempotencyEntry(5, "n1", TS, (NOW_MS + 5000) << 16, NOW_MS + 1000)
    assert "ahead" in str(record_bounds_problem(Record((SIBLING,), (ahead,)), bounds, NOW_MS))
    far = entry(expires=NOW_MS + 10_000_000)
    assert "too far" in str(record_bounds_problem(Record((SIBLING,), (far,)), bounds, NOW_MS))
    long_id = IdempotencyEntry(5, "n" * 200, TS, TS, NOW_MS + 1000)
    problem = record_bounds_problem(Record((SIBLING,), (long_id,)), bounds, NOW_MS)
    assert "node id" in str(problem)


def test_a_known_key_answers_the_original_write_even_after_it_was_superseded() -> None:
    policy = ConflictPolicy.LWW
    first = make_write(
        None,
        node_id="n1",
        value=b"v",
        context=Context(),
        timestamp=TS,
        expires_at_ms=0,
        policy=policy,
        idempotency_hash=9,
        idempotency_expires_at_ms=NOW_MS + 600_000,
    )
    (original,) = first.siblings
    assert applied_context(first, 9, NOW_MS) == Context(original.clock(), original.timestamp)
    assert applied_context(first, 8, NOW_MS) is None
    assert applied_context(first, 9, NOW_MS + 600_000) is None, "expired"
    later = make_write(
        first,
        node_id="n2",
        value=b"w",
        context=Context(),
        timestamp=TS + 10,
        expires_at_ms=0,
        policy=policy,
    )
    assert original not in later.siblings and later.idempotency == first.idempotency
    assert applied_context(later, 9, NOW_MS) == Context(
        (("n1", original.counter),), original.timestamp
    )
