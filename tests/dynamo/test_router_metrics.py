"""The DynamoDB router's request metrics: each request counted once as ``api="dynamodb"``
under its operation's name, from a bounded set of label values, and the backend calls
it makes never counted again as native requests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.api.backend import GetResult
from dynakv.api.wire import Request
from dynakv.config import Limits
from dynakv.core.consistency import Consistency
from dynakv.core.record import ConflictPolicy, Context
from dynakv.dynamo.router import DynamoRouter
from dynakv.dynamo.service import DynamoService
from dynakv.node.metrics import RequestMetrics, mark_not_native
from tests.dynamo.test_router import WallClock
from tests.unit.test_http_api import FakeBackend

TABLE = {
    "TableName": "things",
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


class MeasuredBackend(FakeBackend):
    """A backend that counts its calls as native requests, as ``Node._measured`` does."""

    def __init__(self, metrics: RequestMetrics) -> None:
        super().__init__(ConflictPolicy.LWW)
        self.metrics = metrics

    async def get(self, key: bytes, consistency: Consistency) -> GetResult:
        result = await super().get(key, consistency)
        self.metrics.observe("get", consistency.value, 200, 0.001)
        return result

    async def put(
        self, key: bytes, value: bytes, consistency: Consistency, ttl_s: int, context: Context
    ) -> Context:
        answer = await super().put(key, value, consistency, ttl_s, context)
        self.metrics.observe("put", consistency.value, 204, 0.001)
        return answer


def router(metrics: RequestMetrics | None) -> tuple[DynamoRouter, MeasuredBackend]:
    clock = WallClock()
    backend = MeasuredBackend(metrics if metrics is not None else RequestMetrics(recording=True))
    service = DynamoService(backend, Limits(), now_ms=clock.now_ms, monotonic_ms=clock.monotonic_ms)
    routed = DynamoRouter(
        service,
        Limits(),
        now_ms=clock.now_ms,
        metrics=metrics,
        monotonic_ms=clock.monotonic_ms,
    )
    return routed, backend


def request(target: str | None, body: dict[str, Any] | bytes, method: bytes = b"POST") -> Request:
    made = Request()
    made.method = method
    made.url = b"/"
    if target is not None:
        made.headers[b"x-amz-target"] = target.encode()
    made.body = body if isinstance(body, bytes) else json.dumps(body).encode()
    return made


def call(routed: DynamoRouter, target: str | None, body: dict[str, Any] | bytes) -> int:
    async def run() -> int:
        return (await routed.handle(request(target, body))).status

    return asyncio.run(run())


def dynamo_rows(metrics: RequestMetrics) -> dict[tuple[str, str, int], int]:
    return {
        (operation, level, status): count
        for (api, operation, level, status), count in metrics.requests().items()
        if api == "dynamodb"
    }


def test_each_request_is_counted_once_under_its_operation() -> None:
    metrics = RequestMetrics(recording=True)
    routed, _ = router(metrics)
    prefix = "DynamoDB_20120810."
    assert call(routed, prefix + "CreateTable", TABLE) == 200
    item = {"TableName": "things", "Item": {"pk": {"S": "a"}}}
    for _ in range(3):
        assert call(routed, prefix + "PutItem", item) == 200
    key = {"TableName": "things", "Key": {"pk": {"S": "a"}}}
    assert call(routed, prefix + "GetItem", key) == 200
    assert call(routed, prefix + "GetItem", key | {"ConsistentRead": True}) == 200
    assert call(routed, prefix + "GetItem", {"TableName": "absent", "Key": {}}) == 400
    assert dynamo_rows(metrics) == {
        ("CreateTable", "default", 200): 1,
        ("PutItem", "default", 200): 3,
        ("GetItem", "default", 200): 1,
        ("GetItem", "strong", 200): 1,
        ("GetItem", "default", 400): 1,
    }
    # The backend calls those requests made are not counted again as native requests.
    assert not [series for series in metrics.requests() if series[0] == "native"]
    latency = metrics.latency()[("dynamodb", "PutItem", "default")]
    assert sum(latency[0]) == 3


def test_unknown_and_refused_requests_count_as_other() -> None:
    metrics = RequestMetrics(recording=True)
    routed, _ = router(metrics)
    assert call(routed, "DynamoDB_20120810.TransactWriteItems", {}) == 400
    assert call(routed, "Something.Else", {}) == 400
    assert call(routed, None, {}) == 400
    assert call(routed, "DynamoDB_20120810.ListTables", b"{not json") == 400
    assert dynamo_rows(metrics) == {
        ("other", "default", 400): 3,
        ("ListTables", "default", 400): 1,
    }


def test_health_checks_are_not_requests() -> None:
    metrics = RequestMetrics(recording=True)
    routed, _ = router(metrics)

    async def run() -> int:
        return (await routed.handle(request(None, b"", method=b"GET"))).status

    assert asyncio.run(run()) == 200
    assert metrics.requests() == {}


def test_without_metrics_the_backend_calls_are_still_not_native() -> None:
    counted = RequestMetrics(recording=True)
    routed, backend = router(None)
    backend.metrics = counted
    assert call(routed, "DynamoDB_20120810.CreateTable", TABLE) == 200
    assert counted.requests() == {}


def test_native_calls_outside_a_dynamodb_request_still_count() -> None:
    metrics = RequestMetrics(recording=True)
    routed, backend = router(metrics)
    assert call(routed, "DynamoDB_20120810.CreateTable", TABLE) == 200

    async def background() -> None:
        mark_not_native()
        await backend.get(b"background", Consistency.ONE)
        # A task it starts inherits the mark.
        await asyncio.ensure_future(backend.get(b"background", Consistency.ONE))

    async def native_then_background() -> None:
        await backend.get(b"native-key", Consistency.ONE)
        await asyncio.ensure_future(background())
        await backend.get(b"native-key", Consistency.ONE)

    asyncio.run(native_then_background())
    assert metrics.requests()[("native", "get", "one", 200)] == 2


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_operation_labels_come_from_a_fixed_set(operation: str) -> None:
    metrics = RequestMetrics(recording=True)
    routed, _ = router(metrics)
    call(routed, "DynamoDB_20120810." + operation, {})
    [(label, _, _)] = dynamo_rows(metrics)
    assert label in routed_operations(routed) | {"other"}
    if operation in routed_operations(routed):
        assert label == operation


def routed_operations(routed: DynamoRouter) -> frozenset[str]:
    return routed._service.operations
