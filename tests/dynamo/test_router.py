"""The DynamoDB API over real HTTP with boto3, against the in-memory backend: answers and
errors as the SDK raises them, nothing stored by a refused request, signatures when keys
are configured, and the native API beside it on the same port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from dynakv.config import Limits
from dynakv.core.record import ConflictPolicy
from dynakv.dynamo.router import build_dispatcher
from dynakv.errors import QuorumNotReached
from tests.unit.test_http_api import FakeBackend, Raw, ServerThread, kv

LIMITS = Limits(http_body_bytes_max=1024 * 1024)
KEYS = {"AKIDTEST": "secret-for-tests"}


class WallClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic_ms(self) -> float:
        return time.monotonic() * 1000


def serve(backend: FakeBackend, credentials: dict[str, str] | None = None) -> ServerThread:
    def routes(fake: FakeBackend, limits: Limits) -> Any:
        return build_dispatcher(fake, limits, WallClock(), credentials=credentials)

    return ServerThread(backend, LIMITS, routes=routes)


def client(port: int, key: str = "any", secret: str = "any") -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(ConflictPolicy.LWW)


@pytest.fixture
def server(backend: FakeBackend) -> Iterator[ServerThread]:
    with serve(backend) as running:
        yield running


@pytest.fixture
def ddb(server: ServerThread) -> Any:
    dynamo = client(server.port)
    dynamo.create_table(
        TableName="things",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return dynamo


def code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def item_writes(backend: FakeBackend) -> list[str]:
    return [c.op for c in backend.calls if c.op in ("put", "delete", "write_strong")]


def test_get_slash_answers_healthy_and_the_native_api_still_works(server: ServerThread) -> None:
    with Raw(server.port) as raw:
        reply = raw.request("GET", "/")
        assert (reply.status, reply.body[:8]) == (200, b"healthy:")
        assert raw.request("PUT", kv("plain"), b"v").status == 204
        assert raw.request("GET", kv("plain")).body == b"v"


def test_a_round_trip_of_every_item_operation(ddb: Any) -> None:
    key = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    ddb.put_item(TableName="things", Item=key | {"n": {"N": "1"}, "tags": {"SS": ["x"]}})
    got = ddb.get_item(TableName="things", Key=key, ProjectionExpression="n")
    assert got["Item"] == {"n": {"N": "1"}}
    updated = ddb.update_item(
        TableName="things",
        Key=key,
        UpdateExpression="SET n = n + :d ADD tags :t",
        ExpressionAttributeValues={":d": {"N": "2"}, ":t": {"SS": ["y"]}},
        ReturnValues="UPDATED_NEW",
    )
    assert updated["Attributes"] == {"n": {"N": "3"}, "tags": {"SS": ["x", "y"]}}
    with pytest.raises(ClientError) as failed:
        ddb.put_item(
            TableName="things",
            Item=key,
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert code(failed) == "ConditionalCheckFailedException"
    assert failed.value.response["Item"]["n"] == {"N": "3"}
    deleted = ddb.delete_item(TableName="things", Key=key, ReturnValues="ALL_OLD")
    assert deleted["Attributes"]["n"] == {"N": "3"}
    assert "Item" not in ddb.get_item(TableName="things", Key=key, ConsistentRead=True)
    assert ddb.describe_table(TableName="things")["Table"]["TableStatus"] == "ACTIVE"
    assert ddb.list_tables()["TableNames"] == ["things"]


def test_bad_input_gets_dynamodb_errors_and_stores_nothing(ddb: Any, backend: FakeBackend) -> None:
    backend.calls.clear()
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"Item": {"pk": {"N": "1"}, "sk": {"N": "1"}}}, "ValidationException", "Type mismatch"),
        ({"Item": {"pk": {"S": "a"}}}, "ValidationException", "Missing the key sk"),
        (
            {"Item": {"pk": {"S": "a"}, "sk": {"N": "1"}, "big": {"S": "x" * 410_000}}},
            "ValidationException",
            "Item size has exceeded",
        ),
        (
            {"Item": {"pk": {"S": "a"}, "sk": {"N": "1"}}, "ConditionExpression": "pk =="},
            "ValidationException",
            "Invalid ConditionExpression",
        ),
        (
            {
                "Item": {"pk": {"S": "a"}, "sk": {"N": "1"}},
                "ConditionExpression": "attribute_exists(pk)",
                "ExpressionAttributeValues": {":unused": {"S": "x"}},
            },
            "ValidationException",
            "unused in expressions",
        ),
        (
            {"TableName": "nothere", "Item": {"pk": {"S": "a"}}},
            "ResourceNotFoundException",
            "Requested resource not found",
        ),
    ]
    for extra, expected_code, message in cases:
        with pytest.raises(ClientError) as failed:
            ddb.put_item(**({"TableName": "things"} | extra))
        assert code(failed) == expected_code, extra
        assert message in str(failed.value), failed.value
    with pytest.raises(ClientError) as failed:
        ddb.get_item(TableName="things", Key={"pk": {"S": "a"}})
    assert "does not match the schema" in str(failed.value)
    with pytest.raises(ClientError) as failed:
        ddb.transact_get_items(
            TransactItems=[{"Get": {"TableName": "things", "Key": {"pk": {"S": "a"}}}}]
        )
    assert code(failed) == "UnknownOperationException"
    assert "TransactGetItems is not supported" in str(failed.value)
    assert item_writes(backend) == []


def test_malformed_json_and_unknown_targets_over_raw_http(server: ServerThread) -> None:
    headers = {"X-Amz-Target": "DynamoDB_20120810.ListTables"}
    with Raw(server.port) as raw:
        reply = raw.request("POST", "/", b"{not json", headers)
        document = json.loads(reply.body)
        assert reply.status == 400
        assert document["__type"].endswith("#SerializationException")
        unknown = raw.request("POST", "/", b"{}", {"X-Amz-Target": "DynamoDB_20120810.Nope"})
        assert json.loads(unknown.body)["__type"].endswith("#UnknownOperationException")
        missing = raw.request("POST", "/", b"{}")
        assert json.loads(missing.body)["__type"].endswith("#UnknownOperationException")
        listed = raw.request("POST", "/", b"{}", headers)
        assert (listed.status, json.loads(listed.body)) == (200, {"TableNames": []})


def test_an_oversize_body_is_refused_in_dynamodb_shape(server: ServerThread) -> None:
    with Raw(server.port) as raw:
        head = (
            b"POST / HTTP/1.1\r\nHost: t\r\nX-Amz-Target: DynamoDB_20120810.PutItem\r\n"
            b"Content-Length: 2000000\r\n\r\n"
        )
        raw.send(head)
        reply = raw.reply()
        assert reply.status == 413
        document = json.loads(reply.body)
        assert document["__type"].endswith("#ValidationException")
        assert "http_body_bytes_max" in document["message"]


def test_replicas_down_is_service_unavailable_and_batches_return_unprocessed(
    ddb: Any, backend: FakeBackend
) -> None:
    backend.fail_with = QuorumNotReached(required=2, acked=1, consistency="quorum")
    with pytest.raises(ClientError) as failed:
        ddb.get_item(TableName="things", Key={"pk": {"S": "a"}, "sk": {"N": "1"}})
    assert code(failed) == "ServiceUnavailable"
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    requests = [{"PutRequest": {"Item": {"pk": {"S": "b"}, "sk": {"N": str(i)}}}} for i in range(3)]
    answer = ddb.batch_write_item(RequestItems={"things": requests})
    assert answer["UnprocessedItems"] == {"things": requests}
    backend.fail_with = None
    assert ddb.batch_write_item(RequestItems={"things": requests})["UnprocessedItems"] == {}


def test_with_keys_configured_only_good_signatures_pass(backend: FakeBackend) -> None:
    with serve(backend, KEYS) as server:
        good = client(server.port, "AKIDTEST", KEYS["AKIDTEST"])
        assert good.list_tables()["TableNames"] == []
        with pytest.raises(ClientError) as failed:
            client(server.port, "AKIDTEST", "wrong").list_tables()
        assert code(failed) == "InvalidSignatureException"
        with pytest.raises(ClientError) as failed:
            client(server.port, "AKIDOTHER", "x").list_tables()
        assert code(failed) == "UnrecognizedClientException"
        with Raw(server.port) as raw:
            unsigned = raw.request(
                "POST", "/", b"{}", {"X-Amz-Target": "DynamoDB_20120810.ListTables"}
            )
            assert json.loads(unsigned.body)["__type"].endswith(
                "#MissingAuthenticationTokenException"
            )
            assert raw.request("GET", "/").status == 200
