"""Query and Scan, the pure half: read a request into a ``ReadPlan``, judge and render items.

A Query is a range of one partition key's item keys: ``query_plan`` turns the
key condition (``KeyConditionExpression`` or legacy ``KeyConditions``) into
``[low, high)`` over ``items.item_key`` bytes (the sort key's encoding orders
them), narrowed by ``ExclusiveStartKey``. A Scan is the table's key prefix in
every ring partition of its segment (``segment_partitions``), in partition
order, then key order. Both share ``ReadOptions``: ``FilterExpression`` /
``QueryFilter`` / ``ScanFilter``, ``ProjectionExpression`` /
``AttributesToGet``, ``Select`` (including ``COUNT``), ``Limit`` (items
evaluated, before the filter, as DynamoDB counts), ``ConsistentRead``.

``key_attributes`` turns a stored item key back into the item's key
attributes (the ``LastEvaluatedKey``), with no table lookup beyond the
schema: the encodings are prefix-free.

Every check a request can fail without reading is made here, before
anything is read. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from dynakv.core.ring import placement_part
from dynakv.dynamo.encoding import decode_sort_key, encode_sort_key, prefix_successor
from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import (
    ExpressionKind,
    KeyQuery,
    Substitutions,
    ast,
    attributes_to_get,
    check_not_mixed,
    compile_condition,
    compile_key_condition,
    compile_projection,
    evaluate_condition,
    filter_condition,
    key_conditions_query,
    project,
)
from dynakv.dynamo.items import item_key, key_prefix
from dynakv.dynamo.protocol import bool_field, enum_field, int_field, map_field, str_field
from dynakv.dynamo.tables import TableDefinition
from dynakv.dynamo.values import Item, parse_item, render_item

PAGE_BYTES_MAX: Final = 1024 * 1024  # DynamoDB's 1 MB of data read per Query or Scan page
LIMIT_MAX: Final = 1_000_000
TOTAL_SEGMENTS_MAX: Final = 1_000_000
_SELECT: Final = ("ALL_ATTRIBUTES", "ALL_PROJECTED_ATTRIBUTES", "SPECIFIC_ATTRIBUTES", "COUNT")
_BAD_START: Final = "The provided starting key is invalid: "


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """What a Query or Scan does with each item it reads."""

    filter: ast.Condition | None
    projection: ast.Projection | None
    count_only: bool
    limit: int | None
    consistent: bool


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """A Query (``partitions`` None: the partition of ``low``) or a Scan (the ring
    partitions from ``first_partition`` on, each over ``[low, high)`` of the table's
    keys), and where to start: ``start_after`` (exclusive) in ``first_partition``."""

    table: TableDefinition
    low: bytes
    high: bytes
    reverse: bool
    start_after: bytes | None
    options: ReadOptions
    segment: tuple[int, int] | None = None  # Scan: (Segment, TotalSegments)


def _legacy_and_expressions(body: dict[str, Any], legacy: tuple[str, ...]) -> None:
    expressions = ("FilterExpression", "ProjectionExpression", "KeyConditionExpression")
    check_not_mixed(
        tuple(name for name in legacy if name in body),
        tuple(name for name in expressions if name in body),
    )


def _check_unsupported(body: dict[str, Any]) -> None:
    if body.get("IndexName") is not None:
        raise ValidationException("dynakv does not support secondary indexes (IndexName)")


def read_options(body: dict[str, Any], subs: Substitutions, filter_field: str) -> ReadOptions:
    """Filter, projection, Select, Limit and ConsistentRead (``subs`` checked by the caller)."""
    text = str_field(body, "FilterExpression")
    condition: ast.Condition | None
    if text is not None:
        condition = compile_condition(text, subs, ExpressionKind.FILTER)
    else:
        condition = filter_condition(
            body.get(filter_field), body.get("ConditionalOperator"), field=filter_field
        )
    projection_text = str_field(body, "ProjectionExpression")
    projection = None
    if projection_text is not None:
        projection = compile_projection(projection_text, subs)
    elif body.get("AttributesToGet") is not None:
        projection = attributes_to_get(body["AttributesToGet"])
    select = enum_field(body, "Select", _SELECT, "")
    if select == "ALL_PROJECTED_ATTRIBUTES":
        raise ValidationException(
            "One or more parameter values were invalid: Select type ALL_PROJECTED_ATTRIBUTES "
            "is not valid when not querying an index"
        )
    if select == "SPECIFIC_ATTRIBUTES" and projection is None:
        raise ValidationException(
            "One or more parameter values were invalid: Must specify the AttributesToGet or "
            "ProjectionExpression when choosing to get SPECIFIC_ATTRIBUTES"
        )
    if select in ("ALL_ATTRIBUTES", "COUNT") and projection is not None:
        raise ValidationException(
            "One or more parameter values were invalid: Cannot specify the AttributesToGet or "
            f"ProjectionExpression when choosing to get {select}"
        )
    return ReadOptions(
        condition,
        projection,
        select == "COUNT",
        int_field(body, "Limit", 1, LIMIT_MAX),
        bool(bool_field(body, "ConsistentRead")),
    )


def _start_key(table: TableDefinition, body: dict[str, Any], key_bytes_max: int) -> bytes | None:
    payload = map_field(body, "ExclusiveStartKey")
    if payload is None:
        return None
    start = parse_item(payload)
    if set(start) != set(table.key_names):
        raise ValidationException(_BAD_START + "The provided key element does not match the schema")
    try:
        return item_key(table, start, key_bytes_max)
    except ValidationException as error:
        raise ValidationException(_BAD_START + error.message) from None


def _key_query(table: TableDefinition, body: dict[str, Any], subs: Substitutions) -> KeyQuery:
    text = str_field(body, "KeyConditionExpression")
    if text is not None:
        return compile_key_condition(text, subs, table.schema)
    if body.get("KeyConditions") is not None:
        return key_conditions_query(body["KeyConditions"], table.schema)
    raise ValidationException(
        "Either the KeyConditions or KeyConditionExpression parameter must be specified in the "
        "request."
    )


def query_bounds(table: TableDefinition, key_query: KeyQuery) -> tuple[bytes, bytes]:
    """``[low, high)`` of the item keys the key condition selects."""
    head = key_prefix(table) + encode_sort_key(key_query.partition_value)
    end = prefix_successor(head)
    assert end is not None  # head begins with 0x00 'd': never all 0xFF
    if key_query.sort is None:
        return head, end
    sort_range = key_query.sort.key_range()
    low = head
    if sort_range.lower is not None:
        # The encodings are prefix-free: right after head + lower come only longer keys.
        low = head + sort_range.lower + (b"" if sort_range.lower_inclusive else b"\x00")
    high = end
    if sort_range.upper is not None:
        high = head + sort_range.upper + (b"\x00" if sort_range.upper_inclusive else b"")
    return low, high


def query_plan(table: TableDefinition, body: dict[str, Any], key_bytes_max: int) -> ReadPlan:
    """A Query body (its ``TableName`` already found) as a plan; nothing is read."""
    _check_unsupported(body)
    legacy = ("KeyConditions", "QueryFilter", "AttributesToGet", "ConditionalOperator")
    _legacy_and_expressions(body, legacy)
    subs = Substitutions.from_request(
        body.get("ExpressionAttributeNames"), body.get("ExpressionAttributeValues")
    )
    key_query = _key_query(table, body, subs)
    options = read_options(body, subs, "QueryFilter")
    subs.check_all_used()
    forward = bool_field(body, "ScanIndexForward")
    reverse = forward is False
    low, high = query_bounds(table, key_query)
    start = _start_key(table, body, key_bytes_max)
    if start is not None:
        if placement_part(start) != placement_part(low):
            raise ValidationException(
                _BAD_START + "The provided starting key does not match the partition key value"
            )
        if reverse:
            high = min(high, start)
        else:
            low = max(low, start + b"\x00")
    return ReadPlan(table, low, high, reverse, None, options)


def _segment(body: dict[str, Any]) -> tuple[int, int] | None:
    segment = int_field(body, "Segment", 0, TOTAL_SEGMENTS_MAX - 1)
    total = int_field(body, "TotalSegments", 1, TOTAL_SEGMENTS_MAX)
    if segment is None and total is None:
        return None
    if total is None:
        raise ValidationException(
            "The TotalSegments parameter is required but was not present in the request when "
            "Segment parameter is present"
        )
    if segment is None:
        raise ValidationException(
            "The Segment parameter is required but was not present in the request when "
            "parameter TotalSegments is present"
        )
    if segment >= total:
        raise ValidationException(
            "The Segment parameter is zero-based and must be less than parameter TotalSegments: "
            f"Segment: {segment} is not less than TotalSegments: {total}"
        )
    return segment, total


def scan_plan(table: TableDefinition, body: dict[str, Any], key_bytes_max: int) -> ReadPlan:
    """A Scan body (its ``TableName`` already found) as a plan; nothing is read."""
    _check_unsupported(body)
    _legacy_and_expressions(body, ("ScanFilter", "AttributesToGet", "ConditionalOperator"))
    if body.get("KeyConditionExpression") is not None:
        raise ValidationException("KeyConditionExpression is not valid for Scan")
    subs = Substitutions.from_request(
        body.get("ExpressionAttributeNames"), body.get("ExpressionAttributeValues")
    )
    options = read_options(body, subs, "ScanFilter")
    subs.check_all_used()
    low = key_prefix(table)
    high = prefix_successor(low)
    assert high is not None
    start = _start_key(table, body, key_bytes_max)
    return ReadPlan(table, low, high, False, start, options, _segment(body))


def segment_partitions(segment: tuple[int, int] | None, partition_count: int) -> range:
    """The ring partitions a Scan segment walks: partition p is in segment
    ``p * TotalSegments // Q``, so segments are contiguous and cover the ring once."""
    if segment is None:
        return range(partition_count)
    index, total = segment
    first = -(-index * partition_count // total)
    end = -(-(index + 1) * partition_count // total)
    return range(first, end)


def key_attributes(table: TableDefinition, key: bytes) -> Item:
    """The key attributes of the item stored under ``key`` (an ``item_key`` of ``table``)."""
    prefix = key_prefix(table)
    assert key.startswith(prefix), key[:32]
    head = placement_part(key)
    attributes: Item = {table.partition_name: decode_sort_key(head[len(prefix) :])}
    if table.sort_name is not None:
        attributes[table.sort_name] = decode_sort_key(key[len(head) :])
    return attributes


def judge(options: ReadOptions, item: Item) -> Item | None:
    """The item as the answer shows it, or None when the filter drops it."""
    if options.filter is not None and not evaluate_condition(options.filter, item):
        return None
    if options.projection is not None:
        return project(options.projection, item)
    return item


def render_page(
    items: list[Item], scanned: int, last_key: Item | None, count_only: bool
) -> dict[str, Any]:
    answer: dict[str, Any] = {"Count": len(items), "ScannedCount": scanned}
    if not count_only:
        answer["Items"] = [render_item(item) for item in items]
    if last_key is not None:
        answer["LastEvaluatedKey"] = render_item(last_key)
    return answer
