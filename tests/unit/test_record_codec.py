"""The record and context encodings: round trips, and rejection of anything malformed."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.record import (
    CONTEXT_BYTES_MAX,
    CONTEXT_FORMAT,
    EMPTY_CONTEXT,
    RECORD_FORMAT,
    Context,
    Record,
    Sibling,
    decode_context,
    decode_record,
    encode_context,
    encode_record,
)
from dynakv.core.versions import clock_from_mapping
from dynakv.errors import InvalidRequest

FIELD = "X-Dynakv-Context"

clocks = st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 2**40), max_size=4).map(
    clock_from_mapping
)
timestamps = st.integers(0, 2**63 - 1)
siblings = st.builds(
    Sibling,
    value=st.one_of(st.none(), st.binary(max_size=64)),
    node=st.text(min_size=1, max_size=6),
    counter=st.integers(1, 2**40),
    past=clocks,
    timestamp=timestamps,
    expires_at_ms=st.integers(0, 2**50),
)
records = st.lists(siblings, min_size=1, max_size=4, unique_by=lambda s: (s.node, s.counter)).map(
    lambda s: Record(tuple(sorted(s, key=lambda x: (x.node, x.counter))))
)
contexts = st.builds(Context, clock=clocks, max_timestamp=timestamps)


def raw_token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def context_token(clock: object, max_timestamp: int = 0) -> str:
    """A token for arbitrary (possibly invalid) context contents, encoded as the server would."""
    return raw_token(bytes((CONTEXT_FORMAT,)) + msgspec.msgpack.encode([clock, max_timestamp]))


@settings(max_examples=100, deadline=None)
@given(record=records)
def test_record_round_trips(record: Record) -> None:
    data = encode_record(record)
    assert data[0] == RECORD_FORMAT
    assert decode_record(data) == record


@settings(max_examples=100, deadline=None)
@given(context=contexts)
def test_context_round_trips_through_a_url_safe_token(context: Context) -> None:
    token = encode_context(context)
    assert "=" not in token and "+" not in token and "/" not in token
    assert decode_context(token) == context


def test_empty_token_is_the_empty_context() -> None:
    assert decode_context("") == EMPTY_CONTEXT
    assert decode_context(encode_context(EMPTY_CONTEXT)) == EMPTY_CONTEXT


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        bytes((RECORD_FORMAT + 1,)) + encode_record(Record((Sibling(b"v", "n", 1, (), 1),)))[1:],
        bytes((RECORD_FORMAT,)),
        bytes((RECORD_FORMAT,)) + b"\xc1",  # never valid msgpack
        bytes((RECORD_FORMAT,)) + msgspec.msgpack.encode("not a record"),
        bytes((RECORD_FORMAT,)) + msgspec.msgpack.encode([[["v", "n", "one", [], 1, 0]]]),
        encode_record(Record((Sibling(b"v", "n", 1, (), 1),))) + b"trailing",
    ],
    ids=[
        "empty",
        "format-zero",
        "wrong-format",
        "format-only",
        "garbage",
        "wrong-type",
        "bad-field-type",
        "trailing-bytes",
    ],
)
def test_decode_record_rejects_malformed_data(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(data)


def test_decode_record_rejects_a_record_without_siblings() -> None:
    with pytest.raises(ValueError, match="no siblings"):
        decode_record(encode_record(Record(())))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_decode_record_raises_only_value_error_on_random_bytes(data: bytes) -> None:
    try:
        record = decode_record(data)
    except ValueError:
        return
    assert record.siblings


@pytest.mark.parametrize(
    "token",
    [
        "A",  # length 1 mod 4 is never base64
        "é" * 8,  # not ASCII
        "!!!!",  # no base64 characters at all
        raw_token(b"\x02" + msgspec.msgpack.encode([[], 0])),  # unknown format byte
        "AA",  # decodes to one zero byte
        raw_token(bytes((CONTEXT_FORMAT,)) + b"\xc1"),  # not msgpack
        raw_token(bytes((CONTEXT_FORMAT,)) + msgspec.msgpack.encode({"clock": 1})),
        context_token([["b", 1], ["a", 1]]),  # not sorted
        context_token([["a", 1], ["a", 2]]),  # duplicate node
        context_token([["a", 0]]),  # zero counter
        context_token([["a", -3]]),  # negative counter
        context_token([["a", 1]], max_timestamp=-1),
        "A" * (CONTEXT_BYTES_MAX + 1),  # oversized
    ],
    ids=[
        "bad-padding",
        "non-ascii",
        "no-base64",
        "wrong-format",
        "empty-payload",
        "not-msgpack",
        "wrong-shape",
        "unsorted-clock",
        "duplicate-node",
        "zero-counter",
        "negative-counter",
        "negative-timestamp",
        "oversized",
    ],
)
def test_decode_context_blames_the_header(token: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        decode_context(token)
    assert raised.value.field == FIELD
    assert raised.value.facts()["field"] == FIELD


def test_oversized_context_names_the_limit() -> None:
    with pytest.raises(InvalidRequest) as raised:
        decode_context("A" * (CONTEXT_BYTES_MAX + 1))
    assert raised.value.facts()["max"] == CONTEXT_BYTES_MAX
    assert raised.value.facts()["size"] == CONTEXT_BYTES_MAX + 1


@settings(max_examples=200, deadline=None)
@given(token=st.text(max_size=64))
def test_decode_context_raises_only_invalid_request_on_random_text(token: str) -> None:
    try:
        context = decode_context(token)
    except InvalidRequest as exc:
        assert exc.field == FIELD
    else:
        assert isinstance(context, Context)


@pytest.mark.parametrize(
    ("siblings", "problem"),
    [
        ((), "no siblings"),
        ((Sibling(b"a", "n1", 1, (), 5), Sibling(b"b", "n1", 1, (), 6)), "sorted and unique"),
        ((Sibling(b"a", "n2", 1, (), 5), Sibling(b"b", "n1", 1, (), 6)), "sorted and unique"),
        ((Sibling(b"a", "n1", 0, (), 5),), "bad dot"),
        ((Sibling(b"a", "n1", 1, (("b", 1), ("a", 1)), 5),), "canonical"),
        ((Sibling(b"a", "n1", 1, (("a", 0),), 5),), "canonical"),
        ((Sibling(b"a", "n1", 1, (), -1),), "negative"),
    ],
)
def test_records_breaking_invariants_are_rejected(
    siblings: tuple[Sibling, ...], problem: str
) -> None:
    data = bytes((RECORD_FORMAT,)) + msgspec.msgpack.encode(Record(siblings))
    with pytest.raises(ValueError, match=problem):
        decode_record(data)
