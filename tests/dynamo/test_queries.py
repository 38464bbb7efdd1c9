"""Query and Scan on a range-reading in-memory backend, against a dumb model: every item,
filtered and sorted in Python, read page by page through LastEvaluatedKey."""

from __future__ import annotations

import asyncio
import functools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.api.backend import RangeBackend, RangePage, RangeQuery
from dynakv.config import Limits
from dynakv.core.consistency import Consistency
from dynakv.core.ring import partition_of
from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.queries import PAGE_BYTES_MAX, segment_partitions
from dynakv.dynamo.reads import COUNT_REFRESH_MS
from dynakv.dynamo.service import DynamoService
from tests.dynamo.test_service import Backend, Clocks

Q = 16
PAGE_RECORDS_MAX = 7  # a replica's pages are short, so requests span several


class RangeFake(Backend):
    """The fake backend plus range reads over its records, in short pages."""

    def __init__(self) -> None:
        super().__init__()
        self.range_reads: list[RangeQuery] = []

    async def read_range(self, query: RangeQuery) -> RangePage:
        self.range_reads.append(query)
        partition = query.partition
        if partition is None:
            partition = partition_of(query.low, Q)
        if query.high is not None and query.high <= query.low:
            return RangePage([], None, Q)
        keys = sorted(
            (
                key
                for key in self.records
                if partition_of(key, Q) == partition
                and query.low <= key
                and (query.high is None or key < query.high)
            ),
            reverse=query.reverse,
        )
        taken = keys[: min(query.limit, PAGE_RECORDS_MAX)]
        entries = [
            (key, values)
            for key in taken
            if (values := self.records[key].visible_values(self.now_ms))
        ]
        return RangePage(entries, taken[-1] if len(keys) > len(taken) else None, Q)


def dynamo(backend: RangeFake, clocks: Clocks | None = None) -> DynamoService:
    clocks = clocks or Clocks()
    clocks.wall_ms = backend.now_ms
    return DynamoService(backend, Limits(), now_ms=clocks.now_ms, monotonic_ms=clocks.monotonic_ms)


def table(name: str, sort_type: str | None) -> dict[str, Any]:
    schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attributes = [{"AttributeName": "pk", "AttributeType": "S"}]
    if sort_type is not None:
        schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attributes.append({"AttributeName": "sk", "AttributeType": sort_type})
    return {
        "TableName": name,
        "KeySchema": schema,
        "AttributeDefinitions": attributes,
        "BillingMode": "PAY_PER_REQUEST",
    }


NUMBERS = [Decimal(n) / 4 for n in range(-40, 41, 3)]  # negatives, zero, fractions
WORDS = ["a", "ab", "abc", "b", "ba", "b\x00", "c", "ca", "\u00e9", "zz"]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@functools.cache
def loaded() -> RangeFake:
    """Two tables: ``nums`` (sort key N) and ``words`` (sort key S), three partition keys."""

    async def load() -> RangeFake:
        backend = RangeFake()
        service = dynamo(backend)
        await service.call("CreateTable", table("nums", "N"))
        await service.call("CreateTable", table("words", "S"))
        for pk in ("p1", "p2", "p3"):
            for number in NUMBERS:
                item = {"pk": {"S": pk}, "sk": {"N": str(number)}, "odd": {"BOOL": number % 2 == 1}}
                await service.call("PutItem", {"TableName": "nums", "Item": item})
            for word in WORDS:
                item = {"pk": {"S": pk}, "sk": {"S": word}, "n": {"N": str(len(word))}}
                await service.call("PutItem", {"TableName": "words", "Item": item})
        return backend

    return run(load())


async def every_page(service: DynamoService, operation: str, body: dict[str, Any]) -> list[dict]:
    pages = [await service.call(operation, body)]
    while "LastEvaluatedKey" in pages[-1]:
        assert len(pages) < 1000
        pages.append(
            await service.call(
                operation, body | {"ExclusiveStartKey": pages[-1]["LastEvaluatedKey"]}
            )
        )
    return pages


CONDITIONS = {
    "=": lambda v, a, b: v == a,
    "<": lambda v, a, b: v < a,
    "<=": lambda v, a, b: v <= a,
    ">": lambda v, a, b: v > a,
    ">=": lambda v, a, b: v >= a,
    "BETWEEN": lambda v, a, b: a <= v <= b,
}


def expression(operator: str) -> str:
    if operator == "BETWEEN":
        return "pk = :pk AND sk BETWEEN :a AND :b"
    return f"pk = :pk AND sk {operator} :a"


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(CONDITIONS)),
    st.sampled_from([*NUMBERS, Decimal("0.1"), Decimal(-100)]),
    st.sampled_from(NUMBERS),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 12)),
)
def test_a_numeric_query_reads_its_range_in_order_once(
    operator: str, first: Decimal, second: Decimal, forward: bool, limit: int | None
) -> None:
    low, high = sorted((first, second))
    a, b = (low, high) if operator == "BETWEEN" else (first, None)
    values = {":pk": {"S": "p2"}, ":a": {"N": str(a)}}
    if b is not None:
        values[":b"] = {"N": str(b)}
    body: dict[str, Any] = {
        "TableName": "nums",
        "KeyConditionExpression": expression(operator),
        "ExpressionAttributeValues": values,
        "ScanIndexForward": forward,
    }
    if limit is not None:
        body["Limit"] = limit
    pages = run(every_page(dynamo(loaded()), "Query", body))
    seen = [Decimal(item["sk"]["N"]) for page in pages for item in page["Items"]]
    expected = sorted((n for n in NUMBERS if CONDITIONS[operator](n, a, b)), reverse=not forward)
    assert seen == expected
    assert all(item["pk"] == {"S": "p2"} for page in pages for item in page["Items"])
    if limit is not None:
        assert all(page["ScannedCount"] <= limit for page in pages)


@pytest.mark.parametrize("prefix", ["a", "b", "b\x00", "ab", "c", "q", "\u00e9"])
@pytest.mark.parametrize("forward", [True, False])
def test_begins_with_on_a_string_sort_key(prefix: str, forward: bool) -> None:
    body = {
        "TableName": "words",
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "ExpressionAttributeValues": {":pk": {"S": "p1"}, ":p": {"S": prefix}},
        "ScanIndexForward": forward,
        "Limit": 2,
    }
    pages = run(every_page(dynamo(loaded()), "Query", body))
    seen = [item["sk"]["S"] for page in pages for item in page["Items"]]
    expected = sorted((w for w in WORDS if w.startswith(prefix)), key=str.encode)
    assert seen == (expected if forward else expected[::-1])


def test_legacy_key_conditions_filter_projection_and_count() -> None:
    service = dynamo(loaded())
    legacy = run(
        service.call(
            "Query",
            {
                "TableName": "nums",
                "KeyConditions": {
                    "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "p3"}]},
                    "sk": {"ComparisonOperator": "GE", "AttributeValueList": [{"N": "5"}]},
                },
                "QueryFilter": {
                    "odd": {"ComparisonOperator": "EQ", "AttributeValueList": [{"BOOL": True}]}
                },
                "AttributesToGet": ["sk"],
            },
        )
    )
    expected = [n for n in NUMBERS if n >= 5]
    assert legacy["ScannedCount"] == len(expected)
    assert [Decimal(i["sk"]["N"]) for i in legacy["Items"]] == [n for n in expected if n % 2 == 1]
    assert all(set(i) == {"sk"} for i in legacy["Items"])
    counted = run(
        service.call(
            "Query",
            {
                "TableName": "nums",
                "KeyConditionExpression": "pk = :pk",
                "FilterExpression": "#o = :t",
                "ExpressionAttributeNames": {"#o": "odd"},
                "ExpressionAttributeValues": {":pk": {"S": "p1"}, ":t": {"BOOL": False}},
                "Select": "COUNT",
            },
        )
    )
    assert "Items" not in counted
    assert counted["Count"] == sum(1 for n in NUMBERS if n % 2 != 1)
    assert counted["ScannedCount"] == len(NUMBERS)


@pytest.mark.parametrize("total", [1, 3, 16, 40])
def test_scan_segments_cover_every_item_once(total: int) -> None:
    service = dynamo(loaded())
    seen: list[tuple[str, str]] = []
    for segment in range(total):
        body = {"TableName": "words", "Segment": segment, "TotalSegments": total, "Limit": 5}
        for page in run(every_page(service, "Scan", body)):
            seen.extend((i["pk"]["S"], i["sk"]["S"]) for i in page["Items"])
    assert sorted(seen) == sorted((pk, w) for pk in ("p1", "p2", "p3") for w in WORDS)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 4096), st.integers(1, 5000))
def test_segments_split_the_ring_into_contiguous_shares(count_bits: int, total: int) -> None:
    partition_count = 1 << (count_bits % 13)
    shares = [segment_partitions((s, total), partition_count) for s in range(min(total, 300))]
    if total <= 300:
        assert [p for share in shares for p in share] == list(range(partition_count))
    assert all(share.step == 1 for share in shares)


def test_a_page_stops_at_one_megabyte() -> None:
    async def scenario() -> None:
        backend = RangeFake()
        service = dynamo(backend)
        await service.call("CreateTable", table("big", "N"))
        blob = "x" * 100_000
        for number in range(15):
            item = {"pk": {"S": "p"}, "sk": {"N": str(number)}, "blob": {"S": blob}}
            await service.call("PutItem", {"TableName": "big", "Item": item})
        body = {
            "TableName": "big",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "p"}},
        }
        first = await service.call("Query", body)
        # each item is a little over 100 kB stored: the 11th passes 1 MB, and ends the page
        assert PAGE_BYTES_MAX // 100_000 == 10
        assert first["Count"] == first["ScannedCount"] == 11
        assert "LastEvaluatedKey" in first
        pages = await every_page(service, "Query", body)
        assert sum(page["Count"] for page in pages) == 15

    run(scenario())


def test_expired_items_are_skipped_and_consistent_reads_merge_a_quorum() -> None:
    async def scenario() -> None:
        backend = RangeFake()
        clocks = Clocks()
        service = dynamo(backend, clocks)
        await service.call("CreateTable", table("ttl", "N"))
        await service.call(
            "UpdateTimeToLive",
            {
                "TableName": "ttl",
                "TimeToLiveSpecification": {"Enabled": True, "AttributeName": "exp"},
            },
        )
        now_s = clocks.wall_ms // 1000
        for number, expires in ((1, now_s - 1), (2, now_s + 100), (3, None)):
            item: dict[str, Any] = {"pk": {"S": "p"}, "sk": {"N": str(number)}}
            if expires is not None:
                item["exp"] = {"N": str(expires)}
            await service.call("PutItem", {"TableName": "ttl", "Item": item})
        backend.range_reads.clear()
        answer = await service.call(
            "Scan", {"TableName": "ttl", "ConsistentRead": True, "ProjectionExpression": "sk"}
        )
        assert answer["Items"] == [{"sk": {"N": "2"}}, {"sk": {"N": "3"}}]
        assert levels(backend) == {Consistency.QUORUM}
        backend.range_reads.clear()
        await service.call("Scan", {"TableName": "ttl"})
        assert levels(backend) == {Consistency.ONE}

    run(scenario())


def levels(backend: RangeFake) -> set[Consistency]:
    """The levels of the range reads that read something (not the ring-size probe)."""
    return {q.consistency for q in backend.range_reads if q.high is None or q.high > q.low}


def test_a_hash_only_table_queries_its_one_item() -> None:
    async def scenario() -> None:
        backend = RangeFake()
        service = dynamo(backend)
        await service.call("CreateTable", table("flat", None))
        for name in ("a", "b", "ab"):
            await service.call("PutItem", {"TableName": "flat", "Item": {"pk": {"S": name}}})
        body = {
            "TableName": "flat",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
        }
        assert (await service.call("Query", body))["Items"] == [{"pk": {"S": "a"}}]
        pages = await every_page(service, "Scan", {"TableName": "flat", "Limit": 1})
        assert sorted(i["pk"]["S"] for p in pages for i in p["Items"]) == ["a", "ab", "b"]

    run(scenario())


def test_describe_table_counts_items_in_the_background() -> None:
    async def scenario() -> None:
        backend = RangeFake()
        clocks = Clocks()
        service = dynamo(backend, clocks)
        await service.call("CreateTable", table("counted", "N"))
        for number in range(20):
            item = {"pk": {"S": f"p{number % 3}"}, "sk": {"N": str(number)}}
            await service.call("PutItem", {"TableName": "counted", "Item": item})
        first = await service.call("DescribeTable", {"TableName": "counted"})
        assert first["Table"]["ItemCount"] == 0  # not counted yet: a count starts
        for _ in range(1000):
            await asyncio.sleep(0)
            described = await service.call("DescribeTable", {"TableName": "counted"})
            if described["Table"]["ItemCount"]:
                break
        assert described["Table"]["ItemCount"] == 20
        assert described["Table"]["TableSizeBytes"] > 20 * 10
        await service.call(
            "DeleteItem", {"TableName": "counted", "Key": {"pk": {"S": "p0"}, "sk": {"N": "0"}}}
        )
        reads = len(backend.range_reads)
        assert (await service.call("DescribeTable", {"TableName": "counted"}))["Table"][
            "ItemCount"
        ] == 20
        await asyncio.sleep(0)
        assert len(backend.range_reads) == reads  # fresh figures: no recount
        clocks.monotonic += COUNT_REFRESH_MS
        await service.call("DescribeTable", {"TableName": "counted"})
        for _ in range(1000):
            await asyncio.sleep(0)
            described = await service.call("DescribeTable", {"TableName": "counted"})
            if described["Table"]["ItemCount"] == 19:
                break
        assert described["Table"]["ItemCount"] == 19

    run(scenario())


@pytest.mark.parametrize(
    ("operation", "body", "message"),
    [
        ("Query", {}, "Either the KeyConditions or KeyConditionExpression"),
        (
            "Query",
            {
                "KeyConditionExpression": "pk = :p",
                "ExpressionAttributeValues": {":p": {"S": "a"}},
                "IndexName": "i",
            },
            "secondary indexes",
        ),
        (
            "Query",
            {
                "KeyConditionExpression": "pk = :p",
                "ExpressionAttributeValues": {":p": {"S": "a"}},
                "ExclusiveStartKey": {"pk": {"S": "b"}, "sk": {"N": "1"}},
            },
            "starting key",
        ),
        (
            "Query",
            {
                "KeyConditionExpression": "pk = :p",
                "ExpressionAttributeValues": {":p": {"S": "a"}},
                "ExclusiveStartKey": {"pk": {"S": "a"}},
            },
            "starting key",
        ),
        (
            "Query",
            {"KeyConditionExpression": "sk = :p", "ExpressionAttributeValues": {":p": {"N": "1"}}},
            "missed key",
        ),
        ("Scan", {"Segment": 1}, "TotalSegments parameter is required"),
        ("Scan", {"Segment": 2, "TotalSegments": 2}, "must be less than"),
        ("Scan", {"Select": "SPECIFIC_ATTRIBUTES"}, "SPECIFIC_ATTRIBUTES"),
        ("Scan", {"Select": "COUNT", "ProjectionExpression": "a"}, "COUNT"),
        ("Scan", {"Limit": 0}, "greater than or equal to 1"),
        ("Scan", {"ExpressionAttributeValues": {":x": {"S": "a"}}}, "only be specified when"),
        ("Scan", {"ScanFilter": {}, "FilterExpression": "a = b"}, "both expression"),
    ],
)
def test_bad_requests_name_the_problem_and_read_nothing(
    operation: str, body: dict[str, Any], message: str
) -> None:
    backend = loaded()
    before = len(backend.range_reads)
    with pytest.raises(ValidationException, match=message):
        run(dynamo(backend).call(operation, {"TableName": "nums"} | body))
    assert len(backend.range_reads) == before


def test_the_fake_is_a_range_backend() -> None:
    assert isinstance(RangeFake(), RangeBackend)
