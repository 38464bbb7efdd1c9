"""Table definitions and the catalog that holds them: the pure half of the table operations.

The catalog is one record (``CATALOG_KEY``) holding every table's definition,
the names of recently deleted tables, and the next table id; the service
reads it and writes it back on the strong path with ``If-Match`` on the
version it read, so catalog changes are linearizable and atomic (a table is
never half created). Functions here take a ``Catalog`` and a request body
and return the new catalog and the answer; they never do I/O.

Invariants:

- a table id is never reused: ``next_table_id`` only grows, so items of a
  deleted table (their keys carry the id) can never appear in a new table of
  the same name;
- a deleted name stays in ``deleted_ms`` for ``DELETE_HOLD_MS`` and cannot be
  created again meanwhile (``ResourceInUseException``): nodes cache the
  catalog for at most ``CATALOG_CACHE_MS``, so by then none still writes
  under the old id (the hold also covers clock offsets between nodes of up
  to its difference with the cache time);
- live plus held tables never exceed ``TABLES_MAX``, which keeps the
  catalog well inside ``value_bytes_max`` (each definition is at most about
  1.3 KB).
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from dynakv.api.errors import RESERVED_KEY_PREFIX
from dynakv.dynamo.errors import (
    LimitExceededException,
    ResourceInUseException,
    ResourceNotFoundException,
    ValidationException,
)
from dynakv.dynamo.expressions import KeyAttribute, KeySchema
from dynakv.dynamo.protocol import (
    bool_field,
    enum_field,
    int_field,
    list_field,
    map_field,
    str_field,
)
from dynakv.dynamo.values import check_attribute_name

CATALOG_KEY: Final = RESERVED_KEY_PREFIX + b"dynamodb/catalog"
TABLES_MAX: Final = 256
CATALOG_CACHE_MS: Final = 1_000
DELETE_HOLD_MS: Final = 5_000
LIST_LIMIT_MAX: Final = 100
CAPACITY_MAX: Final = 1_000_000_000_000
TAGS_MAX: Final = 50
ARN_PREFIX: Final = "arn:aws:dynamodb:dynakv:000000000000:table/"
_NAME: Final = re.compile(r"[a-zA-Z0-9_.\-]+")
_NAME_CHARS: Final = (3, 255)
_UNSUPPORTED: Final = {
    "GlobalSecondaryIndexes": "global secondary indexes",
    "LocalSecondaryIndexes": "local secondary indexes",
    "SSESpecification": "server-side encryption settings",
}


class TableDefinition(msgspec.Struct, frozen=True):
    name: str
    table_id: int
    partition_name: str
    partition_type: str
    sort_name: str | None
    sort_type: str | None
    created_ms: int
    billing_mode: str
    read_capacity: int = 0
    write_capacity: int = 0
    ttl_attribute: str | None = None

    @property
    def schema(self) -> KeySchema:
        sort = None
        if self.sort_name is not None and self.sort_type is not None:
            sort = KeyAttribute(self.sort_name, self.sort_type)
        return KeySchema(KeyAttribute(self.partition_name, self.partition_type), sort)

    @property
    def key_names(self) -> tuple[str, ...]:
        if self.sort_name is None:
            return (self.partition_name,)
        return (self.partition_name, self.sort_name)


class Catalog(msgspec.Struct, frozen=True):
    tables: dict[str, TableDefinition] = msgspec.field(default_factory=dict)
    deleted_ms: dict[str, int] = msgspec.field(default_factory=dict)
    next_table_id: int = 1


EMPTY_CATALOG: Final = Catalog()
_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_DECODER: Final = msgspec.msgpack.Decoder(Catalog)


def encode_catalog(catalog: Catalog) -> bytes:
    return _ENCODER.encode(catalog)


def decode_catalog(data: bytes) -> Catalog:
    """The catalog ``encode_catalog`` stored; ``ValueError`` if the bytes are not one."""
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ValueError(f"corrupt DynamoDB catalog: {error}") from None


# --- reading -------------------------------------------------------------------------------


def table_name(body: dict[str, Any]) -> str:
    name = str_field(body, "TableName", required=True)
    assert name is not None
    check_table_name(name)
    return name


def check_table_name(name: str) -> None:
    low, high = _NAME_CHARS
    if not low <= len(name) <= high:
        bound = (
            f"greater than or equal to {low}"
            if len(name) < low
            else f"less than or equal to {high}"
        )
        raise ValidationException(
            f"1 validation error detected: Value '{name[:300]}' at 'tableName' failed to "
            f"satisfy constraint: Member must have length {bound}"
        )
    if _NAME.fullmatch(name) is None:
        raise ValidationException(
            f"1 validation error detected: Value '{name}' at 'tableName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        )


def find_table(catalog: Catalog, name: str) -> TableDefinition:
    definition = catalog.tables.get(name)
    if definition is None:
        raise ResourceNotFoundException(f"Requested resource not found: Table: {name} not found")
    return definition


def describe_table(
    definition: TableDefinition,
    status: str = "ACTIVE",
    *,
    item_count: int = 0,
    size_bytes: int = 0,
) -> dict[str, Any]:
    """The ``TableDescription`` DynamoDB answers (item count and size, approximate, come
    from the service: ``reads.ItemCounter``)."""
    key_schema = [{"AttributeName": definition.partition_name, "KeyType": "HASH"}]
    attributes = [
        {"AttributeName": definition.partition_name, "AttributeType": definition.partition_type}
    ]
    if definition.sort_name is not None:
        key_schema.append({"AttributeName": definition.sort_name, "KeyType": "RANGE"})
        attributes.append(
            {"AttributeName": definition.sort_name, "AttributeType": definition.sort_type or "S"}
        )
    return {
        "TableName": definition.name,
        "TableId": f"{definition.table_id:08x}-0000-4000-8000-{definition.created_ms:012x}",
        "TableArn": ARN_PREFIX + definition.name,
        "TableStatus": status,
        "KeySchema": key_schema,
        "AttributeDefinitions": attributes,
        "CreationDateTime": definition.created_ms / 1000,
        "ItemCount": item_count,
        "TableSizeBytes": size_bytes,
        "ProvisionedThroughput": {
            "NumberOfDecreasesToday": 0,
            "ReadCapacityUnits": definition.read_capacity,
            "WriteCapacityUnits": definition.write_capacity,
        },
        "BillingModeSummary": {"BillingMode": definition.billing_mode},
    }


def list_tables(catalog: Catalog, body: dict[str, Any]) -> dict[str, Any]:
    """ListTables: names in order, ``Limit`` (1..100) at a time after
    ``ExclusiveStartTableName``."""
    limit = int_field(body, "Limit", 1, LIST_LIMIT_MAX) or LIST_LIMIT_MAX
    start = str_field(body, "ExclusiveStartTableName")
    if start is not None:
        check_table_name(start)
    names = sorted(name for name in catalog.tables if start is None or name > start)
    answer: dict[str, Any] = {"TableNames": names[:limit]}
    if len(names) > limit:
        answer["LastEvaluatedTableName"] = names[limit - 1]
    return answer


def describe_time_to_live(definition: TableDefinition) -> dict[str, Any]:
    if definition.ttl_attribute is None:
        return {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}
    return {
        "TimeToLiveDescription": {
            "TimeToLiveStatus": "ENABLED",
            "AttributeName": definition.ttl_attribute,
        }
    }


# --- changing ------------------------------------------------------------------------------


def _key_schema(body: dict[str, Any]) -> list[tuple[str, str]]:
    elements = list_field(body, "KeySchema", required=True)
    assert elements is not None
    if not 1 <= len(elements) <= 2:
        bound = "greater than or equal to 1" if not elements else "less than or equal to 2"
        raise ValidationException(
            "1 validation error detected: Value at 'keySchema' failed to satisfy constraint: "
            f"Member must have length {bound}"
        )
    schema: list[tuple[str, str]] = []
    for element in elements:
        if not isinstance(element, dict):
            raise ValidationException("Invalid KeySchema: each element must be a map")
        name = str_field(element, "AttributeName", required=True)
        str_field(element, "KeyType", required=True)
        kind = enum_field(element, "KeyType", ("HASH", "RANGE"), "")
        assert name is not None
        check_attribute_name(name)
        schema.append((name, kind))
    if schema[0][1] != "HASH":
        raise ValidationException(
            "Invalid KeySchema: The first KeySchemaElement is not a HASH key type"
        )
    if len(schema) == 2:
        if schema[1][1] != "RANGE":
            raise ValidationException(
                "Invalid KeySchema: The second KeySchemaElement is not a RANGE key type"
            )
        if schema[0][0] == schema[1][0]:
            raise ValidationException(
                "Both the Hash Key and the Range Key element in the KeySchema have the same name"
            )
    return schema


def _attribute_types(body: dict[str, Any], key_names: list[str]) -> dict[str, str]:
    definitions = list_field(body, "AttributeDefinitions", required=True)
    assert definitions is not None
    types: dict[str, str] = {}
    for definition in definitions:
        if not isinstance(definition, dict):
            raise ValidationException("Invalid AttributeDefinitions: each element must be a map")
        name = str_field(definition, "AttributeName", required=True)
        assert name is not None
        str_field(definition, "AttributeType", required=True)
        types[name] = enum_field(definition, "AttributeType", ("B", "N", "S"), "")
    missing_names = [name for name in key_names if name not in types]
    if missing_names:
        raise ValidationException(
            "One or more parameter values were invalid: Some index key attributes are not "
            f"defined in AttributeDefinitions. Keys: [{', '.join(missing_names)}], "
            f"AttributeDefinitions: [{', '.join(types)}]"
        )
    if len(types) != len(key_names):
        raise ValidationException(
            "One or more parameter values were invalid: Number of attributes in KeySchema does "
            "not exactly match number of attributes defined in AttributeDefinitions"
        )
    return types


def _capacity(body: dict[str, Any]) -> tuple[str, int, int]:
    mode = enum_field(body, "BillingMode", ("PROVISIONED", "PAY_PER_REQUEST"), "PROVISIONED")
    throughput = map_field(body, "ProvisionedThroughput")
    if mode == "PAY_PER_REQUEST":
        if throughput is not None:
            raise ValidationException(
                "One or more parameter values were invalid: Neither ReadCapacityUnits nor "
                "WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST"
            )
        return mode, 0, 0
    read = (
        None if throughput is None else int_field(throughput, "ReadCapacityUnits", 1, CAPACITY_MAX)
    )
    write = (
        None if throughput is None else int_field(throughput, "WriteCapacityUnits", 1, CAPACITY_MAX)
    )
    if read is None or write is None:
        raise ValidationException(
            "One or more parameter values were invalid: ReadCapacityUnits and "
            "WriteCapacityUnits must both be specified when BillingMode is PROVISIONED"
        )
    return mode, read, write


def _check_supported(body: dict[str, Any]) -> None:
    for field, what in _UNSUPPORTED.items():
        if body.get(field):
            raise ValidationException(f"dynakv does not support {what} ({field})")
    stream = map_field(body, "StreamSpecification")
    if stream is not None and bool_field(stream, "StreamEnabled"):
        raise ValidationException("dynakv does not support streams (StreamSpecification)")
    tags = list_field(body, "Tags")
    if tags is not None and len(tags) > TAGS_MAX:
        raise ValidationException(
            f"One or more parameter values were invalid: at most {TAGS_MAX} tags"
        )


def _purge_held(catalog: Catalog, now_ms: int) -> dict[str, int]:
    return {
        name: deleted
        for name, deleted in catalog.deleted_ms.items()
        if now_ms - deleted < DELETE_HOLD_MS
    }


def create_table(
    catalog: Catalog, body: dict[str, Any], now_ms: int
) -> tuple[Catalog, TableDefinition]:
    """CreateTable: the catalog with the new table, and its definition."""
    name = table_name(body)
    schema = _key_schema(body)
    types = _attribute_types(body, [key for key, _ in schema])
    mode, read, write = _capacity(body)
    _check_supported(body)
    if name in catalog.tables:
        raise ResourceInUseException(f"Table already exists: {name}")
    held = _purge_held(catalog, now_ms)
    if name in held:
        raise ResourceInUseException(
            f"Attempt to change a resource which is still in use: Table is being deleted: {name}"
        )
    if len(catalog.tables) + len(held) >= TABLES_MAX:
        raise LimitExceededException(
            f"Subscriber limit exceeded: dynakv holds at most {TABLES_MAX} tables "
            "(deleted ones count for a few seconds)"
        )
    sort_name = schema[1][0] if len(schema) == 2 else None
    definition = TableDefinition(
        name=name,
        table_id=catalog.next_table_id,
        partition_name=schema[0][0],
        partition_type=types[schema[0][0]],
        sort_name=sort_name,
        sort_type=None if sort_name is None else types[sort_name],
        created_ms=now_ms,
        billing_mode=mode,
        read_capacity=read,
        write_capacity=write,
    )
    tables = {**catalog.tables, name: definition}
    return Catalog(tables, held, catalog.next_table_id + 1), definition


def delete_table(catalog: Catalog, name: str, now_ms: int) -> tuple[Catalog, TableDefinition]:
    definition = find_table(catalog, name)
    tables = {other: table for other, table in catalog.tables.items() if other != name}
    held = {**_purge_held(catalog, now_ms), name: now_ms}
    return Catalog(tables, held, catalog.next_table_id), definition


def update_time_to_live(catalog: Catalog, body: dict[str, Any]) -> tuple[Catalog, dict[str, Any]]:
    """UpdateTimeToLive: the catalog with the table's TTL attribute set or cleared."""
    name = table_name(body)
    specification = map_field(body, "TimeToLiveSpecification", required=True)
    assert specification is not None
    enabled = bool_field(specification, "Enabled")
    attribute = str_field(specification, "AttributeName", required=True)
    if enabled is None:
        raise ValidationException(
            "1 validation error detected: Value null at 'timeToLiveSpecification.enabled' "
            "failed to satisfy constraint: Member must not be null"
        )
    assert attribute is not None
    check_attribute_name(attribute)
    definition = find_table(catalog, name)
    if enabled and definition.ttl_attribute is not None:
        raise ValidationException("TimeToLive is already enabled")
    if not enabled and definition.ttl_attribute is None:
        raise ValidationException("TimeToLive is already disabled")
    if not enabled and attribute != definition.ttl_attribute:
        raise ValidationException(
            "TimeToLive is active on a different AttributeName: current AttributeName is "
            f"{definition.ttl_attribute}"
        )
    changed = msgspec.structs.replace(definition, ttl_attribute=attribute if enabled else None)
    tables = {**catalog.tables, name: changed}
    answer = {"TimeToLiveSpecification": {"Enabled": enabled, "AttributeName": attribute}}
    return Catalog(tables, catalog.deleted_ms, catalog.next_table_id), answer
