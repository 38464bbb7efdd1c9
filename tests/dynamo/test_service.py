"""DynamoService on an in-memory backend: the catalog across nodes, compare-and-set loops,
consistency levels per operation, and batches that report what they could not do."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from dynakv.api.backend import GetResult, WriteResult
from dynakv.config import Limits
from dynakv.core.consistency import Consistency
from dynakv.core.etag import Condition, IfAbsent, IfMatch
from dynakv.core.record import ConflictPolicy, Context
from dynakv.dynamo.encoding import encode_item
from dynakv.dynamo.errors import (
    ConditionalCheckFailedException,
    ResourceInUseException,
    ResourceNotFoundException,
    ValidationException,
)
from dynakv.dynamo.items import item_key
from dynakv.dynamo.service import RMW_ROUNDS_MAX, DynamoService
from dynakv.dynamo.tables import CATALOG_CACHE_MS, CATALOG_KEY, DELETE_HOLD_MS, find_table
from dynakv.errors import Contended, QuorumNotReached
from tests.dynamo import item, to_json
from tests.unit.test_http_api import FakeBackend

_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


class Clocks:
    def __init__(self) -> None:
        self.wall_ms = 1_700_000_000_000
        self.monotonic = 0.0

    def now_ms(self) -> int:
        return self.wall_ms

    def monotonic_ms(self) -> float:
        return self.monotonic


class Backend(FakeBackend):
    """The fake backend with a hook between a strong read and the next strong write,
    and keys whose weak writes and reads fail as if replicas were down."""

    def __init__(self) -> None:
        super().__init__(ConflictPolicy.LWW)
        self.interfere: list[bytes] = []  # values another writer puts before our next write
        self.down: set[bytes] = set()

    async def get(self, key: bytes, consistency: Consistency) -> GetResult:
        if key in self.down:
            raise QuorumNotReached(required=2, acked=1, consistency=consistency.value)
        return await super().get(key, consistency)

    async def put(
        self, key: bytes, value: bytes, consistency: Consistency, ttl_s: int, context: Context
    ) -> Context:
        if key in self.down:
            raise QuorumNotReached(required=2, acked=0, consistency=consistency.value)
        return await super().put(key, value, consistency, ttl_s, context)

    async def write_strong(
        self, key: bytes, value: bytes | None, *, condition: Condition | None, ttl_s: int
    ) -> WriteResult:
        if self.interfere and key != CATALOG_KEY:
            sneaked = self.interfere.pop(0)
            await super().write_strong(key, sneaked, condition=None, ttl_s=0)
        return await super().write_strong(key, value, condition=condition, ttl_s=ttl_s)


def service(backend: Backend, clocks: Clocks | None = None) -> DynamoService:
    clocks = clocks or Clocks()
    return DynamoService(backend, Limits(), now_ms=clocks.now_ms, monotonic_ms=clocks.monotonic_ms)


TABLE = {
    "TableName": "things",
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


def key(name: str) -> dict[str, Any]:
    return {"pk": {"S": name}}


def counter_update(name: str) -> dict[str, Any]:
    return {
        "TableName": "things",
        "Key": key(name),
        "UpdateExpression": "ADD n :one",
        "ExpressionAttributeValues": {":one": {"N": "1"}},
        "ReturnValues": "UPDATED_NEW",
    }


def test_a_table_created_on_one_node_is_usable_at_once_on_another() -> None:
    async def scenario() -> None:
        backend = Backend()
        first, second = service(backend), service(backend)
        await first.call("CreateTable", TABLE)
        await second.call("PutItem", {"TableName": "things", "Item": key("a") | {"v": to_json(1)}})
        got = await first.call("GetItem", {"TableName": "things", "Key": key("a")})
        assert got == {"Item": {"pk": {"S": "a"}, "v": {"N": "1"}}}
        listed = await second.call("ListTables", {})
        assert listed == {"TableNames": ["things"]}
        with pytest.raises(ResourceInUseException):
            await second.call("CreateTable", TABLE)
        # the catalog is written only on the strong path, create-only the first time
        catalog_writes = [c for c in backend.calls if c.key == CATALOG_KEY and c.op != "get"]
        assert [c.op for c in catalog_writes] == ["write_strong"]
        assert catalog_writes[0].condition == IfAbsent()

    run(scenario())


def test_a_deleted_table_disappears_from_other_nodes_within_the_cache_time() -> None:
    async def scenario() -> None:
        backend = Backend()
        clocks = Clocks()
        first, second = service(backend, clocks), service(backend, clocks)
        await first.call("CreateTable", TABLE)
        get = {"TableName": "things", "Key": key("a")}
        assert await second.call("GetItem", get) == {}
        await first.call("DeleteTable", {"TableName": "things"})
        with pytest.raises(ResourceNotFoundException):
            await first.call("GetItem", get)
        assert await second.call("GetItem", get) == {}  # its copy is younger than the cache
        clocks.monotonic += CATALOG_CACHE_MS
        with pytest.raises(ResourceNotFoundException):
            await second.call("GetItem", get)
        with pytest.raises(ResourceInUseException, match="being deleted"):
            await second.call("CreateTable", TABLE)
        clocks.wall_ms += DELETE_HOLD_MS
        await second.call("CreateTable", TABLE)
        assert await first.call("GetItem", get) == {}

    run(scenario())


def test_levels_unconditional_writes_are_quorum_and_conditional_ones_strong() -> None:
    async def scenario() -> None:
        backend = Backend()
        dynamo = service(backend)
        await dynamo.call("CreateTable", TABLE)
        backend.calls.clear()
        await dynamo.call("PutItem", {"TableName": "things", "Item": key("a")})
        await dynamo.call("GetItem", {"TableName": "things", "Key": key("a")})
        await dynamo.call(
            "GetItem", {"TableName": "things", "Key": key("a"), "ConsistentRead": True}
        )
        await dynamo.call(
            "PutItem",
            {
                "TableName": "things",
                "Item": key("a"),
                "ConditionExpression": "attribute_exists(pk)",
            },
        )
        await dynamo.call("DeleteItem", {"TableName": "things", "Key": key("a")})
        seen = [(c.op, c.consistency, type(c.condition).__name__) for c in backend.calls]
        assert seen == [
            ("put", Consistency.QUORUM, "NoneType"),
            ("get", Consistency.QUORUM, "NoneType"),
            ("get", Consistency.STRONG, "NoneType"),
            ("get", Consistency.STRONG, "NoneType"),
            ("write_strong", Consistency.STRONG, "IfMatch"),
            ("delete", Consistency.QUORUM, "NoneType"),
        ]

    run(scenario())


def test_a_write_that_lands_between_read_and_write_makes_the_update_start_over() -> None:
    async def scenario() -> None:
        backend = Backend()
        dynamo = service(backend)
        await dynamo.call("CreateTable", TABLE)
        await dynamo.call("UpdateItem", counter_update("c"))
        backend.interfere.append(encode_item(item(pk="c", n=10)))
        answer = await dynamo.call("UpdateItem", counter_update("c"))
        assert answer == {"Attributes": {"n": {"N": "11"}}}
        conditions = [c.condition for c in backend.calls if c.op == "write_strong"]
        interfering, refused, retried = conditions[-3:]
        assert interfering is None  # the other writer
        assert isinstance(refused, IfMatch) and isinstance(retried, IfMatch)
        assert refused != retried  # judged again on the version the other writer made

    run(scenario())


def test_endless_interference_gives_up_with_contended() -> None:
    async def scenario() -> None:
        backend = Backend()
        dynamo = service(backend)
        await dynamo.call("CreateTable", TABLE)
        backend.interfere = [encode_item(item(pk="c", n=i)) for i in range(RMW_ROUNDS_MAX)]
        with pytest.raises(Contended):
            await dynamo.call("UpdateItem", counter_update("c"))

    run(scenario())


def test_concurrent_increments_from_two_nodes_lose_nothing() -> None:
    async def scenario() -> None:
        backend = Backend()
        nodes = [service(backend), service(backend)]
        await nodes[0].call("CreateTable", TABLE)
        await nodes[1].call("ListTables", {})
        hot = item_key(find_table(nodes[0]._catalog, "things"), item(pk="hot"), 2048)
        backend.delays_s = {hot: 0.001}  # every read and write of it suspends: they interleave
        results = await asyncio.gather(
            *(nodes[i % 2].call("UpdateItem", counter_update("hot")) for i in range(12)),
            return_exceptions=True,
        )
        done = [r for r in results if isinstance(r, dict)]
        assert len(done) >= 6, results  # most get through within the rounds they have
        assert all(isinstance(r, dict | Contended) for r in results), results
        got = await nodes[0].call(
            "GetItem", {"TableName": "things", "Key": key("hot"), "ConsistentRead": True}
        )
        assert got["Item"]["n"] == {"N": str(len(done))}
        answered = sorted(int(r["Attributes"]["n"]["N"]) for r in done)
        assert answered == list(range(1, len(done) + 1))  # each saw a distinct count

    run(scenario())


def test_a_condition_false_on_the_current_item_changes_nothing() -> None:
    async def scenario() -> None:
        backend = Backend()
        dynamo = service(backend)
        await dynamo.call("CreateTable", TABLE)
        await dynamo.call("PutItem", {"TableName": "things", "Item": key("a") | {"v": to_json(1)}})
        before = dict(backend.records)
        with pytest.raises(ConditionalCheckFailedException) as raised:
            await dynamo.call(
                "DeleteItem",
                {
                    "TableName": "things",
                    "Key": key("a"),
                    "ConditionExpression": "v = :two",
                    "ExpressionAttributeValues": {":two": {"N": "2"}},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                },
            )
        assert raised.value.item == {"pk": {"S": "a"}, "v": {"N": "1"}}
        assert backend.records == before

    run(scenario())


def test_batches_report_what_replicas_could_not_take() -> None:
    async def scenario() -> None:
        backend = Backend()
        dynamo = service(backend)
        await dynamo.call("CreateTable", TABLE)
        catalog = dynamo._catalog
        table = find_table(catalog, "things")
        backend.down = {item_key(table, item(pk=name), 2048) for name in ("k3", "k7")}
        requests = [{"PutRequest": {"Item": key(f"k{i}")}} for i in range(10)]
        answer = await dynamo.call("BatchWriteItem", {"RequestItems": {"things": requests}})
        assert answer == {"UnprocessedItems": {"things": [requests[3], requests[7]]}}
        keys = [key(f"k{i}") for i in range(10)]
        got = await dynamo.call(
            "BatchGetItem",
            {"RequestItems": {"things": {"Keys": keys, "ProjectionExpression": "pk"}}},
        )
        assert sorted(r["pk"]["S"] for r in got["Responses"]["things"]) == [
            f"k{i}" for i in range(10) if i not in (3, 7)
        ]
        assert got["UnprocessedKeys"] == {
            "things": {"Keys": [keys[3], keys[7]], "ProjectionExpression": "pk"}
        }

    run(scenario())


def test_a_bad_batch_writes_nothing() -> None:
    async def scenario() -> None:
        backend = Backend()
        dynamo = service(backend)
        await dynamo.call("CreateTable", TABLE)
        backend.calls.clear()
        requests = [{"PutRequest": {"Item": key(f"k{i}")}} for i in range(5)]
        requests.append({"PutRequest": {"Item": {"pk": {"N": "1"}}}})
        with pytest.raises(ValidationException, match="Type mismatch"):
            await dynamo.call("BatchWriteItem", {"RequestItems": {"things": requests}})
        too_many = [{"PutRequest": {"Item": key(f"k{i}")}} for i in range(26)]
        with pytest.raises(ValidationException, match="Too many items requested"):
            await dynamo.call("BatchWriteItem", {"RequestItems": {"things": too_many}})
        twice = [{"PutRequest": {"Item": key("k")}}, {"DeleteRequest": {"Key": key("k")}}]
        with pytest.raises(ValidationException, match="contains duplicates"):
            await dynamo.call("BatchWriteItem", {"RequestItems": {"things": twice}})
        with pytest.raises(ResourceNotFoundException):
            await dynamo.call("BatchWriteItem", {"RequestItems": {"nothere": requests[:1]}})
        many_keys = [key(f"k{i}") for i in range(101)]
        with pytest.raises(ValidationException, match="Too many items requested"):
            await dynamo.call("BatchGetItem", {"RequestItems": {"things": {"Keys": many_keys}}})
        assert [c.op for c in backend.calls if c.op != "get"] == []

    run(scenario())


def test_expired_items_are_absent_to_reads_and_conditions() -> None:
    async def scenario() -> None:
        backend = Backend()
        clocks = Clocks()
        dynamo = service(backend, clocks)
        await dynamo.call("CreateTable", TABLE)
        spec = {"Enabled": True, "AttributeName": "exp"}
        await dynamo.call(
            "UpdateTimeToLive", {"TableName": "things", "TimeToLiveSpecification": spec}
        )
        now_s = clocks.wall_ms // 1000
        item = key("a") | {"exp": {"N": str(now_s + 60)}}
        await dynamo.call("PutItem", {"TableName": "things", "Item": item})
        assert backend.calls[-1].ttl_s == 60
        get = {"TableName": "things", "Key": key("a")}
        assert "Item" in await dynamo.call("GetItem", get)
        clocks.wall_ms += 60_000
        assert await dynamo.call("GetItem", get) == {}
        await dynamo.call(
            "PutItem",
            {
                "TableName": "things",
                "Item": key("a"),
                "ConditionExpression": "attribute_not_exists(pk)",
            },
        )
        described = await dynamo.call("DescribeTimeToLive", {"TableName": "things"})
        assert described["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"

    run(scenario())
