"""Where items live: every item of one partition key is on one ring partition, and
ordinary keys are placed exactly as before (golden values catch a change of hashing)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.ring import HASH_BITS, ITEM_PLACEMENT_PREFIX, partition_of, placement_part
from dynakv.dynamo.encoding import encode_sort_key
from dynakv.dynamo.items import ITEM_KEY_PREFIX, TABLE_ID_BYTES
from dynakv.dynamo.values import B, N, S, normalize_number

numbers = st.builds(
    lambda sign, digits, exponent: normalize_number(
        Decimal((sign, tuple(int(d) for d in digits.rstrip("0") or "1"), exponent))
    ),
    st.integers(0, 1),
    st.text("0123456789", min_size=1, max_size=38).filter(lambda text: text[0] != "0"),
    st.integers(-130, 125 - 37),
).filter(lambda number: number.adjusted() <= 125) | st.just(Decimal(0))
key_values = st.one_of(
    st.text(min_size=1, max_size=20).map(S),
    numbers.map(N),
    st.binary(min_size=1, max_size=20).map(B),
)
table_ids = st.integers(0, 2**64 - 1)
partition_counts = st.sampled_from([1, 2, 64, 1024, 65536])


def old_partition_of(key: bytes, partition_count: int) -> int:
    """The reference: the whole key's hash, as ``partition_of`` was before items."""
    bits = partition_count.bit_length() - 1
    return int(xxhash.xxh3_64_intdigest(key) >> (HASH_BITS - bits))


def item_key(table_id: int, partition: S | N | B, sort: S | N | B | None) -> bytes:
    key = ITEM_KEY_PREFIX + table_id.to_bytes(TABLE_ID_BYTES, "big") + encode_sort_key(partition)
    return key if sort is None else key + encode_sort_key(sort)


def test_the_ring_and_the_items_agree_on_the_prefix() -> None:
    assert ITEM_PLACEMENT_PREFIX == ITEM_KEY_PREFIX


@settings(max_examples=300)
@given(table_ids, key_values, st.lists(key_values, min_size=1, max_size=5), partition_counts)
def test_every_item_of_a_partition_key_is_on_one_partition(
    table_id: int, partition: S | N | B, sorts: list[S | N | B], partition_count: int
) -> None:
    head = item_key(table_id, partition, None)
    assert placement_part(head) == head
    expected = old_partition_of(head, partition_count)
    for sort in sorts:
        key = item_key(table_id, partition, sort)
        assert placement_part(key) == head
        assert partition_of(key, partition_count) == expected


@settings(max_examples=300)
@given(table_ids, key_values, key_values)
def test_different_partition_keys_hash_their_own_bytes(
    table_id: int, first: S | N | B, second: S | N | B
) -> None:
    """The partition part ends where the value ends: two values never share one,
    so different partition keys spread over the ring like any keys."""
    one, other = item_key(table_id, first, None), item_key(table_id, second, None)
    assert (placement_part(one + b"tail") == placement_part(other + b"tail")) == (one == other)


@settings(max_examples=300)
@given(st.binary(max_size=64), partition_counts)
def test_ordinary_keys_hash_whole(key: bytes, partition_count: int) -> None:
    if key.startswith(ITEM_PLACEMENT_PREFIX):
        return
    assert placement_part(key) == key
    assert partition_of(key, partition_count) == old_partition_of(key, partition_count)


@settings(max_examples=300)
@given(st.binary(max_size=40), partition_counts)
def test_malformed_item_keys_hash_whole_and_never_raise(tail: bytes, count: int) -> None:
    key = ITEM_PLACEMENT_PREFIX + tail
    part = placement_part(key)
    assert key.startswith(part)
    assert 0 <= partition_of(key, count) < count


@pytest.mark.parametrize(
    ("key", "q1024", "q65536"),
    [
        (b"a", 923, 59078),
        (b"user:1", 237, 15191),
        (b"\x00dynakv\x00dynamodb/catalog", 469, 30070),
        (b"\x00dynakv\x00i", 688, 44086),
        (b"k" * 300, 250, 16016),
        (b"\x00", 785, 50251),
    ],
)
def test_golden_partitions_of_ordinary_keys(key: bytes, q1024: int, q65536: int) -> None:
    """Values from before item placement existed: a change of hashing fails here."""
    assert partition_of(key, 1024) == q1024
    assert partition_of(key, 65536) == q65536


def test_an_item_key_is_placed_by_its_partition_value_only() -> None:
    head = item_key(7, S("customer-1"), None)
    for sort in (S("a"), S("b\x00c"), N(Decimal(-5)), N(Decimal(0)), B(b"\x00\xff")):
        assert partition_of(item_key(7, S("customer-1"), sort), 1024) == partition_of(head, 1024)
    assert placement_part(item_key(7, N(Decimal("-1.5")), S("x"))) == item_key(
        7, N(Decimal("-1.5")), None
    )
    assert placement_part(item_key(7, S("a\x00b"), S("x"))) == item_key(7, S("a\x00b"), None)
