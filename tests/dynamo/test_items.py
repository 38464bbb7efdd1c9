"""Item operations' pure half: keys, request validation, and a write applied to an item."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from dynakv.api.errors import RESERVED_KEY_PREFIX
from dynakv.dynamo.encoding import decode_item, encode_sort_key
from dynakv.dynamo.errors import ConditionalCheckFailedException, ValidationException
from dynakv.dynamo.items import (
    ITEM_KEY_PREFIX,
    ItemWrite,
    apply_write,
    is_expired,
    item_key,
    key_prefix,
    read_delete,
    read_get,
    read_put,
    read_update,
    storage_ttl_s,
)
from dynakv.dynamo.tables import EMPTY_CATALOG, TableDefinition, create_table
from dynakv.dynamo.values import N, S, render_item
from tests.dynamo import item, to_json

KEY_MAX = 2048
VALUE_MAX = 400 * 1024


def table(sort: str | None = "N", name: str = "things") -> TableDefinition:
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attributes = [{"AttributeName": "pk", "AttributeType": "S"}]
    if sort is not None:
        keys.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attributes.append({"AttributeName": "sk", "AttributeType": sort})
    body = {
        "TableName": name,
        "KeySchema": keys,
        "AttributeDefinitions": attributes,
        "BillingMode": "PAY_PER_REQUEST",
    }
    return create_table(EMPTY_CATALOG, body, 0)[1]


def json_item(**attributes: object) -> dict[str, Any]:
    return {name: to_json(value) for name, value in attributes.items()}


def put(target: TableDefinition, **body: Any) -> ItemWrite:
    return read_put(target, {"TableName": target.name} | body, KEY_MAX, VALUE_MAX)


def update(target: TableDefinition, **body: Any) -> ItemWrite:
    return read_update(target, {"TableName": target.name} | body, KEY_MAX, VALUE_MAX)


KEY = json_item(pk="a", sk=1)


# --- keys ----------------------------------------------------------------------------------


def test_an_item_key_is_the_prefix_the_table_id_and_the_encoded_key_values() -> None:
    things = table()
    key = item_key(things, item(pk="a", sk=1), KEY_MAX)
    assert key.startswith(RESERVED_KEY_PREFIX) and key.startswith(ITEM_KEY_PREFIX)
    assert key == key_prefix(things) + encode_sort_key(S("a")) + encode_sort_key(N(Decimal(1)))
    other = create_table(
        create_table(EMPTY_CATALOG, {"TableName": "xxx"} | _schema_body(), 0)[0],
        {"TableName": "things"} | _schema_body(),
        0,
    )[1]
    assert other.table_id != things.table_id
    assert item_key(other, item(pk="a", sk=1), KEY_MAX) != key


def _schema_body() -> dict[str, Any]:
    return {
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


numbers = st.decimals(min_value=-(10**20), max_value=10**20, places=3, allow_nan=False)


@given(st.text(min_size=1, max_size=8), st.lists(numbers, min_size=2, max_size=20, unique=True))
def test_items_of_one_partition_share_its_prefix_in_sort_key_order(
    partition: str, sort_keys: list[Decimal]
) -> None:
    things = table()
    keys = {
        number: item_key(things, item(pk=partition, sk=number), KEY_MAX) for number in sort_keys
    }
    prefix = key_prefix(things) + encode_sort_key(S(partition))
    assert all(key.startswith(prefix) for key in keys.values())
    assert sorted(keys, key=keys.__getitem__) == sorted(sort_keys)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (json_item(pk="a"), "The provided key element does not match the schema"),
        (json_item(pk="a", sk=1, extra=2), "The provided key element does not match the schema"),
        (json_item(pk="a", sk="1"), "Type mismatch for key sk expected: N actual: S"),
        (json_item(pk="", sk=1), "cannot contain an empty string value"),
    ],
)
def test_keys_are_checked_as_dynamodb_checks_them(key: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationException) as raised:
        read_get(table(), {"TableName": "things", "Key": key}, KEY_MAX)
    assert message in raised.value.message


def test_a_key_longer_than_the_node_allows_is_refused_naming_the_limit() -> None:
    with pytest.raises(ValidationException, match="key_bytes_max"):
        read_get(table(), {"Key": json_item(pk="x" * 2000, sk=1)}, 1024)


def test_a_put_must_carry_the_key() -> None:
    with pytest.raises(ValidationException, match="Missing the key sk in the item"):
        put(table(), Item=json_item(pk="a", other=1))


# --- request validation -------------------------------------------------------------------


def test_unused_expression_values_and_mixed_parameters_are_refused() -> None:
    with pytest.raises(ValidationException, match=r"unused in expressions: keys: \{:x\}"):
        put(
            table(),
            Item=KEY,
            ConditionExpression="attribute_not_exists(pk)",
            ExpressionAttributeValues={":x": {"N": "1"}},
        )
    with pytest.raises(ValidationException, match="Can not use both expression and non-expression"):
        put(
            table(),
            Item=KEY,
            ConditionExpression="attribute_not_exists(pk)",
            Expected={"pk": {"Exists": False}},
        )
    with pytest.raises(ValidationException, match="Invalid ConditionExpression"):
        put(table(), Item=KEY, ConditionExpression="pk = = 1")


def test_return_values_are_limited_per_operation() -> None:
    with pytest.raises(ValidationException, match="ReturnValues can only be ALL_OLD or NONE"):
        put(table(), Item=KEY, ReturnValues="ALL_NEW")
    with pytest.raises(ValidationException, match="enum value set"):
        update(table(), Key=KEY, ReturnValues="EVERYTHING")


def test_an_update_may_not_touch_the_key() -> None:
    with pytest.raises(ValidationException, match="This attribute is part of the key"):
        update(
            table(),
            Key=KEY,
            UpdateExpression="SET sk = :v",
            ExpressionAttributeValues={":v": {"N": "2"}},
        )


def test_only_writes_that_depend_on_the_item_read_it() -> None:
    things = table()
    assert not put(things, Item=KEY).reads_current
    assert put(things, Item=KEY, ReturnValues="ALL_OLD").reads_current
    assert put(things, Item=KEY, ConditionExpression="attribute_exists(pk)").reads_current
    assert update(things, Key=KEY).reads_current
    delete = read_delete(things, {"Key": KEY}, KEY_MAX, VALUE_MAX)
    assert not delete.reads_current


# --- applying -----------------------------------------------------------------------------


def test_a_failed_condition_shows_the_item_only_when_asked() -> None:
    things = table()
    current = item(pk="a", sk=1, v=5)
    quiet = put(things, Item=KEY, ConditionExpression="attribute_not_exists(pk)")
    with pytest.raises(ConditionalCheckFailedException) as raised:
        apply_write(quiet, current)
    assert raised.value.item is None
    loud = put(
        things,
        Item=KEY,
        ConditionExpression="attribute_not_exists(pk)",
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    )
    with pytest.raises(ConditionalCheckFailedException) as raised:
        apply_write(loud, current)
    assert raised.value.item == render_item(current)
    assert apply_write(loud, None).item == item(pk="a", sk=1)


def test_legacy_expected_is_a_condition_too() -> None:
    write = put(table(), Item=KEY, Expected={"v": {"Value": {"N": "5"}}})
    assert apply_write(write, item(pk="a", sk=1, v=5)).item == item(pk="a", sk=1)
    with pytest.raises(ConditionalCheckFailedException):
        apply_write(write, item(pk="a", sk=1, v=6))


def test_an_update_creates_the_item_with_its_key_and_returns_what_was_asked() -> None:
    things = table()
    body = {
        "Key": KEY,
        "UpdateExpression": "SET n = if_not_exists(n, :zero) + :one, tags = :tags",
        "ExpressionAttributeValues": {
            ":zero": {"N": "0"},
            ":one": {"N": "1"},
            ":tags": {"SS": ["x"]},
        },
    }
    created = apply_write(update(things, **body, ReturnValues="ALL_NEW"), None)
    assert created.item == item(pk="a", sk=1, n=1, tags={"x"})
    assert decode_item(created.encoded or b"") == created.item
    assert created.attributes == created.item
    again = apply_write(update(things, **body, ReturnValues="UPDATED_OLD"), created.item)
    assert again.attributes == item(n=1, tags={"x"})
    assert again.item is not None and again.item["n"] == N(Decimal(2))
    new = apply_write(update(things, **body, ReturnValues="UPDATED_NEW"), again.item)
    assert new.attributes == item(n=3, tags={"x"})
    nothing_old = apply_write(update(things, **body, ReturnValues="UPDATED_OLD"), None)
    assert nothing_old.attributes is None


def test_legacy_attribute_updates_apply_like_an_expression() -> None:
    write = update(table(), Key=KEY, AttributeUpdates={"n": {"Action": "ADD", "Value": {"N": "2"}}})
    assert apply_write(write, item(pk="a", sk=1, n=1)).item == item(pk="a", sk=1, n=3)


def test_a_delete_returns_the_old_item_when_asked() -> None:
    write = read_delete(table(), {"Key": KEY, "ReturnValues": "ALL_OLD"}, KEY_MAX, VALUE_MAX)
    outcome = apply_write(write, item(pk="a", sk=1, v=1))
    assert (outcome.item, outcome.encoded, outcome.attributes) == (
        None,
        None,
        item(pk="a", sk=1, v=1),
    )


def test_items_over_400_kb_are_refused_by_dynamodb_rule_and_by_the_stored_size() -> None:
    things = table()
    with pytest.raises(
        ValidationException, match="Item size has exceeded the maximum allowed size"
    ):
        put(things, Item=json_item(pk="a", sk=1, blob="x" * (400 * 1024)))
    small_node = read_put(things, {"Item": json_item(pk="a", sk=1, blob="x" * 2000)}, KEY_MAX, 1000)
    with pytest.raises(ValidationException, match="Item size has exceeded"):
        apply_write(small_node, None)
    grow = read_update(
        things,
        {
            "Key": KEY,
            "UpdateExpression": "SET pic = :b",
            "ExpressionAttributeValues": {":b": {"S": "y" * (300 * 1024)}},
        },
        KEY_MAX,
        VALUE_MAX,
    )
    with pytest.raises(ValidationException, match="Item size to update has exceeded"):
        apply_write(grow, item(pk="a", sk=1, old="z" * (200 * 1024)))


@given(st.booleans(), st.integers(0, 5))
def test_create_only_puts_succeed_exactly_when_the_item_is_absent(exists: bool, v: int) -> None:
    write = put(
        table(), Item=json_item(pk="a", sk=1, v=v), ConditionExpression="attribute_not_exists(pk)"
    )
    current = item(pk="a", sk=1, v=99) if exists else None
    if exists:
        with pytest.raises(ConditionalCheckFailedException):
            apply_write(write, current)
    else:
        assert apply_write(write, current).item == item(pk="a", sk=1, v=v)


def test_time_to_live_reads_the_attribute_as_epoch_seconds() -> None:
    things = table()
    assert not is_expired(things, item(exp=10), 100)  # TTL is off for the table
    with_ttl = replace(things, ttl_attribute="exp")
    assert is_expired(with_ttl, item(exp=100), 100)
    assert not is_expired(with_ttl, item(exp=101), 100)
    assert not is_expired(with_ttl, item(exp="100"), 100)  # not a number: never expires
    assert storage_ttl_s(with_ttl, item(exp=160), 100, 1000) == 60
    assert storage_ttl_s(with_ttl, item(exp=50), 100, 1000) == 1  # gone soon
    assert storage_ttl_s(with_ttl, item(exp=10**9), 100, 1000) == 0  # past the node's horizon
