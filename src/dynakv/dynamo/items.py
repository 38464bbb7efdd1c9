"""The item operations' pure half: read a request into a plan, and apply a plan to an item.

``read_put`` / ``read_update`` / ``read_delete`` turn a PutItem, UpdateItem
or DeleteItem body into an ``ItemWrite``; ``read_get`` a GetItem body into
an ``ItemRead``; ``apply_write`` takes a write and the item as it is now
(``None``: absent) and returns the item to store (``None``: delete) and the
``Attributes`` to answer, or raises ``ConditionalCheckFailedException`` (with
the current item when the request asked for it). The service runs
``apply_write`` inside a compare-and-set loop on the strong path whenever
``ItemWrite.reads_current`` says the outcome depends on the current item.

Item keys (``item_key``): ``ITEM_KEY_PREFIX``, the table id (8 bytes, big
endian), the order-preserving encoding of the partition key value, then of
the sort key value (``encoding.encode_sort_key``; prefix-free, so where the
partition key ends can be found from the bytes alone). Every check a
request can fail without its item is made here, before anything is read or
written: key attributes and types, expression syntax and substitutions,
item size (DynamoDB's 400 KB rule and the node's ``value_bytes_max`` for the
stored bytes), and the encoded key against ``key_bytes_max``.

Pure: no I/O, no clock (``now_s`` arrives as an argument).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from dynakv.api.errors import RESERVED_KEY_PREFIX
from dynakv.dynamo.encoding import check_key_value, encode_item, encode_sort_key
from dynakv.dynamo.errors import ConditionalCheckFailedException, ValidationException
from dynakv.dynamo.expressions import (
    Substitutions,
    apply_update,
    ast,
    attribute_updates,
    attributes_to_get,
    check_key_unchanged,
    check_not_mixed,
    compile_condition,
    compile_projection,
    compile_update,
    evaluate_condition,
    expected_condition,
    project,
    updated_paths,
)
from dynakv.dynamo.protocol import bool_field, enum_field, map_field, str_field
from dynakv.dynamo.tables import TableDefinition
from dynakv.dynamo.values import Item, N, check_item_size, parse_item, render_item

ITEM_KEY_PREFIX: Final = RESERVED_KEY_PREFIX + b"i"
TABLE_ID_BYTES: Final = 8
_RETURN_VALUES: Final = ("NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW")
_ON_FAILURE: Final = ("NONE", "ALL_OLD")
_LEGACY: Final = ("AttributesToGet", "AttributeUpdates", "ConditionalOperator", "Expected")
_EXPRESSIONS: Final = ("ConditionExpression", "ProjectionExpression", "UpdateExpression")
_KEY_MISMATCH: Final = "The provided key element does not match the schema"


@dataclass(frozen=True, slots=True)
class ItemRead:
    table: TableDefinition
    key: bytes
    projection: ast.Projection | None
    consistent: bool


@dataclass(frozen=True, slots=True)
class ItemWrite:
    """One PutItem (``put``), UpdateItem (``update``) or DeleteItem (neither)."""

    table: TableDefinition
    key: bytes
    key_item: Item
    put: Item | None
    update: ast.Update | None
    condition: ast.Condition | None
    return_values: str
    return_on_failure: bool
    value_bytes_max: int

    @property
    def reads_current(self) -> bool:
        """The outcome depends on the current item: run as a read-modify-write."""
        return self.condition is not None or self.update is not None or self.return_values != "NONE"


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What to store (``item``, ``None``: delete; ``encoded``: its bytes) and to answer."""

    item: Item | None
    encoded: bytes | None
    attributes: Item | None


# --- keys ----------------------------------------------------------------------------------


def key_prefix(table: TableDefinition) -> bytes:
    return ITEM_KEY_PREFIX + table.table_id.to_bytes(TABLE_ID_BYTES, "big")


def item_key(table: TableDefinition, key: Mapping[str, Any], key_bytes_max: int) -> bytes:
    """The stored key of the item whose key attributes are ``key`` (already parsed)."""
    partition = check_key_value(
        table.partition_name, table.partition_type, key[table.partition_name], partition=True
    )
    encoded = key_prefix(table) + encode_sort_key(partition)
    if table.sort_name is not None and table.sort_type is not None:
        sort = check_key_value(
            table.sort_name, table.sort_type, key[table.sort_name], partition=False
        )
        encoded += encode_sort_key(sort)
    if len(encoded) > key_bytes_max:
        raise ValidationException(
            "One or more parameter values were invalid: the item's key takes "
            f"{len(encoded)} bytes once encoded; this dynakv cluster allows {key_bytes_max} "
            "(key_bytes_max)"
        )
    return encoded


def read_key(
    table: TableDefinition, body: dict[str, Any], key_bytes_max: int
) -> tuple[bytes, Item]:
    """The ``Key`` member: exactly the table's key attributes, of their types."""
    payload = map_field(body, "Key", required=True)
    assert payload is not None
    key = parse_item(payload)
    if set(key) != set(table.key_names):
        raise ValidationException(_KEY_MISMATCH)
    return item_key(table, key, key_bytes_max), key


def _item_key_of(table: TableDefinition, item: Item, key_bytes_max: int) -> tuple[bytes, Item]:
    for name in table.key_names:
        if name not in item:
            raise ValidationException(
                f"One or more parameter values were invalid: Missing the key {name} in the item"
            )
    key_item = {name: item[name] for name in table.key_names}
    return item_key(table, key_item, key_bytes_max), key_item


# --- reading requests ----------------------------------------------------------------------


def _check_mixing(body: dict[str, Any]) -> None:
    check_not_mixed(
        tuple(name for name in _LEGACY if name in body),
        tuple(name for name in _EXPRESSIONS if name in body),
    )


def _substitutions(body: dict[str, Any]) -> Substitutions:
    return Substitutions.from_request(
        body.get("ExpressionAttributeNames"), body.get("ExpressionAttributeValues")
    )


def _condition(body: dict[str, Any], subs: Substitutions) -> ast.Condition | None:
    text = str_field(body, "ConditionExpression")
    if text is not None:
        return compile_condition(text, subs)
    return expected_condition(body.get("Expected"), body.get("ConditionalOperator"))


def _return_values(body: dict[str, Any], allowed: tuple[str, ...], operation: str) -> str:
    value = enum_field(body, "ReturnValues", _RETURN_VALUES, "NONE")
    if value not in allowed:
        raise ValidationException(
            f"ReturnValues can only be {' or '.join(allowed[::-1])} for {operation}"
            if len(allowed) == 2
            else f"ReturnValues {value} is not valid for {operation}"
        )
    return value


def _on_failure(body: dict[str, Any]) -> bool:
    return enum_field(body, "ReturnValuesOnConditionCheckFailure", _ON_FAILURE, "NONE") != "NONE"


def read_get(table: TableDefinition, body: dict[str, Any], key_bytes_max: int) -> ItemRead:
    _check_mixing(body)
    key, _ = read_key(table, body, key_bytes_max)
    subs = _substitutions(body)
    text = str_field(body, "ProjectionExpression")
    projection = None
    if text is not None:
        projection = compile_projection(text, subs)
    elif body.get("AttributesToGet") is not None:
        projection = attributes_to_get(body["AttributesToGet"])
    subs.check_all_used()
    return ItemRead(table, key, projection, bool(bool_field(body, "ConsistentRead")))


def read_put(
    table: TableDefinition, body: dict[str, Any], key_bytes_max: int, value_bytes_max: int
) -> ItemWrite:
    _check_mixing(body)
    payload = map_field(body, "Item", required=True)
    assert payload is not None
    item = parse_item(payload)
    key, key_item = _item_key_of(table, item, key_bytes_max)
    check_item_size(item)
    subs = _substitutions(body)
    condition = _condition(body, subs)
    subs.check_all_used()
    return ItemWrite(
        table,
        key,
        key_item,
        item,
        None,
        condition,
        _return_values(body, ("NONE", "ALL_OLD"), "PutItem"),
        _on_failure(body),
        value_bytes_max,
    )


def read_delete(
    table: TableDefinition, body: dict[str, Any], key_bytes_max: int, value_bytes_max: int
) -> ItemWrite:
    _check_mixing(body)
    key, key_item = read_key(table, body, key_bytes_max)
    subs = _substitutions(body)
    condition = _condition(body, subs)
    subs.check_all_used()
    return_values = _return_values(body, ("NONE", "ALL_OLD"), "DeleteItem")
    return ItemWrite(
        table,
        key,
        key_item,
        None,
        None,
        condition,
        return_values,
        _on_failure(body),
        value_bytes_max,
    )


def read_update(
    table: TableDefinition, body: dict[str, Any], key_bytes_max: int, value_bytes_max: int
) -> ItemWrite:
    _check_mixing(body)
    key, key_item = read_key(table, body, key_bytes_max)
    subs = _substitutions(body)
    text = str_field(body, "UpdateExpression")
    if text is not None:
        update = compile_update(text, subs)
    elif body.get("AttributeUpdates") is not None:
        update = attribute_updates(body["AttributeUpdates"])
    else:
        update = ast.Update(())
    check_key_unchanged(update, table.key_names)
    condition = _condition(body, subs)
    subs.check_all_used()
    return ItemWrite(
        table,
        key,
        key_item,
        None,
        update,
        condition,
        _return_values(body, _RETURN_VALUES, "UpdateItem"),
        _on_failure(body),
        value_bytes_max,
    )


# --- applying ------------------------------------------------------------------------------


def _new_item(write: ItemWrite, current: Item | None) -> Item | None:
    if write.put is not None:
        return write.put
    if write.update is None:
        return None
    updated = apply_update(write.update, current)
    return {**updated, **write.key_item}


def _attributes(write: ItemWrite, current: Item | None, new: Item | None) -> Item | None:
    choice = write.return_values
    if choice == "ALL_OLD":
        return current
    if choice == "ALL_NEW":
        return new
    if choice in ("UPDATED_OLD", "UPDATED_NEW") and write.update is not None:
        source = current if choice == "UPDATED_OLD" else new
        if source is None:
            return None
        return project(ast.Projection(updated_paths(write.update)), source) or None
    return None


def apply_write(write: ItemWrite, current: Item | None) -> WriteOutcome:
    """The write's outcome on ``current`` (see the module docstring)."""
    if write.condition is not None and not evaluate_condition(write.condition, current):
        shown = render_item(current) if write.return_on_failure and current else None
        raise ConditionalCheckFailedException(item=shown)
    new = _new_item(write, current)
    encoded = None
    if new is not None:
        check_item_size(new, updating=write.update is not None)
        encoded = encode_item(new)
        if len(encoded) > write.value_bytes_max:
            raise ValidationException(
                "Item size has exceeded the maximum allowed size"
                if write.update is None
                else "Item size to update has exceeded the maximum allowed size"
            )
    return WriteOutcome(new, encoded, _attributes(write, current, new))


# --- time to live --------------------------------------------------------------------------


def expires_at_s(table: TableDefinition, item: Mapping[str, Any]) -> Decimal | None:
    """When ``item`` expires under the table's TTL attribute (epoch seconds), or None."""
    if table.ttl_attribute is None:
        return None
    value = item.get(table.ttl_attribute)
    if not isinstance(value, N):
        return None
    return value.value


def is_expired(table: TableDefinition, item: Mapping[str, Any], now_s: int) -> bool:
    expires = expires_at_s(table, item)
    return expires is not None and expires <= now_s


def storage_ttl_s(
    table: TableDefinition, item: Mapping[str, Any], now_s: int, ttl_s_max: int
) -> int:
    """The node-level ``ttl_s`` that drops the record when the item expires (0: never)."""
    expires = expires_at_s(table, item)
    if expires is None:
        return 0
    remaining = int(expires) - now_s
    if remaining > ttl_s_max:
        return 0  # beyond the node's horizon: reads hide it once it expires
    return max(1, remaining)  # already expired: reads hide it, the sweeper drops it soon
