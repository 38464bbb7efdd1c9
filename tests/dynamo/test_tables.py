"""Table definitions and the catalog: CreateTable's validation, the delete hold, TTL, paging."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynakv.dynamo.errors import (
    LimitExceededException,
    ResourceInUseException,
    ResourceNotFoundException,
    SerializationException,
    ValidationException,
)
from dynakv.dynamo.tables import (
    DELETE_HOLD_MS,
    EMPTY_CATALOG,
    TABLES_MAX,
    Catalog,
    create_table,
    decode_catalog,
    delete_table,
    describe_table,
    describe_time_to_live,
    encode_catalog,
    find_table,
    list_tables,
    update_time_to_live,
)

NOW_MS = 1_700_000_000_000


def spec(name: str = "users", *, sort: str | None = None, **extra: Any) -> dict[str, Any]:
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attributes = [{"AttributeName": "pk", "AttributeType": "S"}]
    if sort is not None:
        keys.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attributes.append({"AttributeName": "sk", "AttributeType": sort})
    body: dict[str, Any] = {
        "TableName": name,
        "KeySchema": keys,
        "AttributeDefinitions": attributes,
        "BillingMode": "PAY_PER_REQUEST",
    }
    return body | extra


def test_create_then_describe_then_delete() -> None:
    catalog, table = create_table(EMPTY_CATALOG, spec(sort="N"), NOW_MS)
    assert (table.name, table.table_id, table.sort_type) == ("users", 1, "N")
    assert catalog.next_table_id == 2
    described = describe_table(find_table(catalog, "users"))
    assert described["TableStatus"] == "ACTIVE"
    assert described["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert described["TableArn"].endswith(":table/users")
    assert described["CreationDateTime"] == NOW_MS / 1000
    gone, deleted = delete_table(catalog, "users", NOW_MS + 1)
    assert deleted == table
    with pytest.raises(ResourceNotFoundException, match="Table: users not found"):
        find_table(gone, "users")


def test_a_deleted_name_is_held_then_gets_a_new_id() -> None:
    catalog, first = create_table(EMPTY_CATALOG, spec(), NOW_MS)
    catalog, _ = delete_table(catalog, "users", NOW_MS)
    with pytest.raises(ResourceInUseException, match="being deleted"):
        create_table(catalog, spec(), NOW_MS + DELETE_HOLD_MS - 1)
    catalog, second = create_table(catalog, spec(), NOW_MS + DELETE_HOLD_MS)
    assert second.table_id != first.table_id
    assert catalog.deleted_ms == {}  # the hold was purged by the next change


def test_an_existing_table_is_in_use() -> None:
    catalog, _ = create_table(EMPTY_CATALOG, spec(), NOW_MS)
    with pytest.raises(ResourceInUseException, match="Table already exists: users"):
        create_table(catalog, spec(), NOW_MS)


def test_the_table_count_is_bounded_held_names_included() -> None:
    catalog = EMPTY_CATALOG
    for index in range(TABLES_MAX):
        catalog, _ = create_table(catalog, spec(f"t{index:03d}"), NOW_MS)
    with pytest.raises(LimitExceededException):
        create_table(catalog, spec("one-more"), NOW_MS)
    catalog, _ = delete_table(catalog, "t000", NOW_MS)
    with pytest.raises(LimitExceededException):
        create_table(catalog, spec("one-more"), NOW_MS)
    catalog, _ = create_table(catalog, spec("one-more"), NOW_MS + DELETE_HOLD_MS)
    assert len(catalog.tables) == TABLES_MAX


def test_a_full_catalog_of_the_longest_names_fits_a_value() -> None:
    catalog = EMPTY_CATALOG
    long_key = "k" * 255
    for index in range(TABLES_MAX):
        body = spec(f"{index:03d}" + "t" * 252, sort="S")
        body["KeySchema"][1]["AttributeName"] = long_key
        body["AttributeDefinitions"][1]["AttributeName"] = long_key
        catalog, _ = create_table(catalog, body, NOW_MS)
    assert len(encode_catalog(catalog)) < 400 * 1024


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"TableName": "ab"}, "Member must have length greater than or equal to 3"),
        ({"TableName": "a b c"}, "regular expression pattern"),
        ({"KeySchema": []}, "Member must have length greater than or equal to 1"),
        (
            {"KeySchema": [{"AttributeName": "pk", "KeyType": "RANGE"}]},
            "The first KeySchemaElement is not a HASH key type",
        ),
        (
            {"AttributeDefinitions": [{"AttributeName": "other", "AttributeType": "S"}]},
            "Some index key attributes are not defined in AttributeDefinitions",
        ),
        (
            {
                "AttributeDefinitions": [
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "extra", "AttributeType": "S"},
                ]
            },
            "Number of attributes in KeySchema does not exactly match",
        ),
        (
            {"AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "BOOL"}]},
            "Member must satisfy enum value set: [B, N, S]",
        ),
        ({"BillingMode": "PROVISIONED"}, "must both be specified when BillingMode is PROVISIONED"),
        (
            {"ProvisionedThroughput": {"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}},
            "can be specified when BillingMode is PAY_PER_REQUEST",
        ),
        ({"GlobalSecondaryIndexes": [{"IndexName": "g"}]}, "global secondary indexes"),
        ({"StreamSpecification": {"StreamEnabled": True}}, "streams"),
    ],
)
def test_create_table_refuses_what_dynamodb_refuses(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationException) as raised:
        create_table(EMPTY_CATALOG, spec() | change, NOW_MS)
    assert message in raised.value.message


def test_wrong_json_types_are_serialization_errors() -> None:
    with pytest.raises(SerializationException):
        create_table(EMPTY_CATALOG, spec() | {"KeySchema": "pk"}, NOW_MS)
    with pytest.raises(ValidationException, match="Value null at 'keySchema'"):
        create_table(EMPTY_CATALOG, {"TableName": "abc", "AttributeDefinitions": []}, NOW_MS)


def test_provisioned_tables_keep_their_throughput() -> None:
    body = spec(BillingMode="PROVISIONED") | {
        "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 7}
    }
    _, table = create_table(EMPTY_CATALOG, body, NOW_MS)
    throughput = describe_table(table)["ProvisionedThroughput"]
    assert (throughput["ReadCapacityUnits"], throughput["WriteCapacityUnits"]) == (5, 7)


@given(st.sets(st.from_regex(r"[a-z0-9]{3,8}", fullmatch=True), max_size=30), st.integers(1, 7))
def test_list_tables_pages_through_every_name_once(names: set[str], limit: int) -> None:
    catalog = EMPTY_CATALOG
    for name in names:
        catalog, _ = create_table(catalog, spec(name), NOW_MS)
    seen: list[str] = []
    body: dict[str, Any] = {"Limit": limit}
    for _ in range(len(names) + 2):
        page = list_tables(catalog, body)
        assert len(page["TableNames"]) <= limit
        seen += page["TableNames"]
        if "LastEvaluatedTableName" not in page:
            break
        body = {"Limit": limit, "ExclusiveStartTableName": page["LastEvaluatedTableName"]}
    assert seen == sorted(names)


def test_time_to_live_is_enabled_once_and_disabled_by_its_name() -> None:
    catalog, _ = create_table(EMPTY_CATALOG, spec(), NOW_MS)
    assert describe_time_to_live(find_table(catalog, "users")) == {
        "TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}
    }
    enable = {
        "TableName": "users",
        "TimeToLiveSpecification": {"Enabled": True, "AttributeName": "exp"},
    }
    catalog, answer = update_time_to_live(catalog, enable)
    assert answer == {"TimeToLiveSpecification": {"Enabled": True, "AttributeName": "exp"}}
    assert find_table(catalog, "users").ttl_attribute == "exp"
    with pytest.raises(ValidationException, match="already enabled"):
        update_time_to_live(catalog, enable)
    wrong = {
        "TableName": "users",
        "TimeToLiveSpecification": {"Enabled": False, "AttributeName": "x"},
    }
    with pytest.raises(ValidationException, match="different AttributeName"):
        update_time_to_live(catalog, wrong)
    disable = {
        "TableName": "users",
        "TimeToLiveSpecification": {"Enabled": False, "AttributeName": "exp"},
    }
    catalog, _ = update_time_to_live(catalog, disable)
    assert find_table(catalog, "users").ttl_attribute is None


def test_the_catalog_round_trips_and_refuses_garbage() -> None:
    catalog, _ = create_table(EMPTY_CATALOG, spec(sort="B"), NOW_MS)
    catalog, _ = delete_table(catalog, "users", NOW_MS)
    assert decode_catalog(encode_catalog(catalog)) == catalog
    assert decode_catalog(encode_catalog(Catalog())) == EMPTY_CATALOG
    with pytest.raises(ValueError, match="corrupt DynamoDB catalog"):
        decode_catalog(b"\x01not a catalog")
