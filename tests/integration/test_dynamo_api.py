"""The DynamoDB-compatible API on a real 3-node cluster, driven by boto3 and the AWS CLI.

Tables made on one node are used from the others; conditional and
read-modify-write operations are judged on the strong path; batches go on
with a node down, reporting what they could not do; table definitions and
items survive a restart of every node; errors reach the SDK as DynamoDB's
own codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration.conftest import Cluster, wait_for

pytestmark = pytest.mark.integration

AWS = Path(sys.executable).parent / "aws"


def client(cluster: Cluster, index: int) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{cluster.port(index)}",
        region_name="us-east-1",
        aws_access_key_id="dynakv",
        aws_secret_access_key="dynakv",
        config=Config(retries={"max_attempts": 8, "mode": "standard"}),
    )


def require_dynamo(cluster: Cluster) -> None:
    served = cluster.request(0, "GET", "/")
    if served.status == 404:
        pytest.skip("this node build does not wire the DynamoDB router (node/runtime.py)")
    assert served.status == 200, served


def create(ddb: Any, name: str, sort_type: str | None = "N") -> None:
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attributes = [{"AttributeName": "pk", "AttributeType": "S"}]
    if sort_type is not None:
        keys.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attributes.append({"AttributeName": "sk", "AttributeType": sort_type})
    answer = ddb.create_table(
        TableName=name,
        KeySchema=keys,
        AttributeDefinitions=attributes,
        BillingMode="PAY_PER_REQUEST",
        Tags=[{"Key": "team", "Value": "storage"}],
    )
    assert answer["TableDescription"]["TableStatus"] == "ACTIVE"


def code(raised: pytest.ExceptionInfo[ClientError]) -> str:
    return str(raised.value.response["Error"]["Code"])


def test_tables_and_items_from_every_node(cluster: Cluster) -> None:
    require_dynamo(cluster)
    nodes = [client(cluster, index) for index in range(3)]
    create(nodes[0], "orders")
    assert "orders" in nodes[1].list_tables()["TableNames"]
    described = nodes[2].describe_table(TableName="orders")["Table"]
    assert described["KeySchema"][1] == {"AttributeName": "sk", "KeyType": "RANGE"}
    assert described["TableArn"].endswith("table/orders")

    key = {"pk": {"S": "cust-1"}, "sk": {"N": "1"}}
    nodes[1].put_item(TableName="orders", Item=key | {"amount": {"N": "10.50"}})
    got = nodes[2].get_item(TableName="orders", Key=key, ConsistentRead=True)
    assert got["Item"]["amount"] == {"N": "10.5"}
    assert nodes[0].get_item(TableName="orders", Key=key)["Item"] == got["Item"]

    updated = nodes[0].update_item(
        TableName="orders",
        Key=key,
        UpdateExpression="SET amount = amount + :d, #s = :s",
        ConditionExpression="amount < :limit",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":d": {"N": "0.25"},
            ":s": {"S": "paid"},
            ":limit": {"N": "100"},
        },
        ReturnValues="ALL_NEW",
    )
    assert updated["Attributes"]["amount"] == {"N": "10.75"}
    with pytest.raises(ClientError) as raised:
        nodes[2].put_item(
            TableName="orders",
            Item=key,
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert code(raised) == "ConditionalCheckFailedException"
    assert raised.value.response["Item"]["status"] == {"S": "paid"}

    deleted = nodes[1].delete_item(TableName="orders", Key=key, ReturnValues="ALL_OLD")
    assert deleted["Attributes"]["status"] == {"S": "paid"}
    for ddb in nodes:
        assert "Item" not in ddb.get_item(TableName="orders", Key=key, ConsistentRead=True)

    nodes[2].delete_table(TableName="orders")
    with pytest.raises(ClientError) as raised:
        nodes[0].describe_table(TableName="orders")
    assert code(raised) == "ResourceNotFoundException"


def test_concurrent_increments_through_different_nodes_lose_nothing(cluster: Cluster) -> None:
    require_dynamo(cluster)
    nodes = [client(cluster, index) for index in range(3)]
    create(nodes[0], "counters", sort_type=None)

    def increment(index: int) -> Decimal:
        answer = nodes[index % 3].update_item(
            TableName="counters",
            Key={"pk": {"S": "hits"}},
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
        return Decimal(answer["Attributes"]["n"]["N"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        seen = sorted(pool.map(increment, range(30)))
    assert seen == [Decimal(n) for n in range(1, 31)]
    final = nodes[1].get_item(TableName="counters", Key={"pk": {"S": "hits"}}, ConsistentRead=True)
    assert final["Item"]["n"] == {"N": "30"}


def test_errors_reach_the_sdk_as_dynamodb_codes(cluster: Cluster) -> None:
    require_dynamo(cluster)
    ddb = client(cluster, 1)
    create(ddb, "strict")
    with pytest.raises(ClientError) as raised:
        create(ddb, "strict")
    assert code(raised) == "ResourceInUseException"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"Item": {"pk": {"N": "1"}, "sk": {"N": "1"}}}, "ValidationException"),
        ({"Item": {"pk": {"S": "a"}}}, "ValidationException"),
        (
            {"Item": {"pk": {"S": "a"}, "sk": {"N": "1"}, "big": {"S": "x" * 410_000}}},
            "ValidationException",
        ),
        (
            {"Item": {"pk": {"S": "a"}, "sk": {"N": "1"}}, "ConditionExpression": "("},
            "ValidationException",
        ),
    ]
    for extra, expected in cases:
        with pytest.raises(ClientError) as raised:
            ddb.put_item(**({"TableName": "strict"} | extra))
        assert code(raised) == expected
    with pytest.raises(ClientError) as raised:
        ddb.get_item(TableName="missing-table", Key={"pk": {"S": "a"}})
    assert code(raised) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as raised:
        ddb.describe_continuous_backups(TableName="strict")  # not served: refused by name
    assert code(raised) == "UnknownOperationException"
    assert "Item" not in ddb.get_item(
        TableName="strict", Key={"pk": {"S": "a"}, "sk": {"N": "1"}}, ConsistentRead=True
    )


def _batch_write_all(ddb: Any, table: str, requests: list[dict[str, Any]]) -> int:
    """Send the batch, then what came back unprocessed, as SDK users do; the rounds it took."""
    pending = {table: requests}
    for rounds in range(1, 20):
        pending = ddb.batch_write_item(RequestItems=pending)["UnprocessedItems"]
        if not pending:
            return rounds
    raise AssertionError(f"still unprocessed after 20 rounds: {pending}")


def test_batches_with_a_node_down_and_everything_after_a_restart(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    require_dynamo(cluster)
    nodes = [client(cluster, index) for index in range(3)]
    create(nodes[0], "events")
    nodes[0].update_time_to_live(
        TableName="events", TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"}
    )
    cluster.kill(2)
    requests = [
        {"PutRequest": {"Item": {"pk": {"S": "day-1"}, "sk": {"N": str(i)}, "v": {"N": str(i)}}}}
        for i in range(25)
    ]
    _batch_write_all(nodes[0], "events", requests)
    keys = [{"pk": {"S": "day-1"}, "sk": {"N": str(i)}} for i in range(25)]
    answer = nodes[1].batch_get_item(
        RequestItems={"events": {"Keys": keys, "ConsistentRead": True}}
    )
    found = {item["sk"]["N"] for item in answer["Responses"]["events"]}
    unprocessed = answer["UnprocessedKeys"].get("events", {}).get("Keys", [])
    assert found | {key["sk"]["N"] for key in unprocessed} == {str(i) for i in range(25)}

    for index in (0, 1):
        cluster.stop(index)
    for index in range(3):
        cluster.start(index)
    for index in range(3):
        cluster.wait_healthy(index)
    restarted = client(cluster, 2)
    assert restarted.describe_time_to_live(TableName="events")["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expires",
    }
    answer = restarted.batch_get_item(
        RequestItems={"events": {"Keys": keys[:10], "ProjectionExpression": "v"}}
    )
    assert sorted(int(item["v"]["N"]) for item in answer["Responses"]["events"]) == list(range(10))


def test_the_aws_cli_creates_puts_gets_and_deletes(cluster: Cluster, tmp_path: Path) -> None:
    require_dynamo(cluster)
    env = os.environ | {
        "AWS_ACCESS_KEY_ID": "dynakv",
        "AWS_SECRET_ACCESS_KEY": "dynakv",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "HOME": str(tmp_path),
    }
    endpoint = f"http://127.0.0.1:{cluster.port(2)}"

    def aws(*arguments: str) -> Any:
        done = subprocess.run(
            [str(AWS), "dynamodb", *arguments, "--endpoint-url", endpoint, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    aws(
        "create-table",
        "--table-name",
        "cli-music",
        "--attribute-definitions",
        "AttributeName=artist,AttributeType=S",
        "--key-schema",
        "AttributeName=artist,KeyType=HASH",
        "--billing-mode",
        "PAY_PER_REQUEST",
    )
    item = {"artist": {"S": "Nina"}, "plays": {"N": "3"}}
    aws("put-item", "--table-name", "cli-music", "--item", json.dumps(item))
    got = aws(
        "get-item",
        "--table-name",
        "cli-music",
        "--key",
        '{"artist": {"S": "Nina"}}',
        "--consistent-read",
    )
    assert got["Item"] == item
    if _serves_query(cluster, 2):
        queried = aws(
            "query",
            "--table-name",
            "cli-music",
            "--key-condition-expression",
            "artist = :a",
            "--expression-attribute-values",
            '{":a": {"S": "Nina"}}',
            "--consistent-read",
        )
        assert queried["Items"] == [item] and queried["Count"] == 1
    aws("delete-item", "--table-name", "cli-music", "--key", '{"artist": {"S": "Nina"}}')
    assert (
        aws("get-item", "--table-name", "cli-music", "--key", '{"artist": {"S": "Nina"}}') is None
    )
    assert "cli-music" in aws("list-tables")["TableNames"]
    aws("delete-table", "--table-name", "cli-music")


# --- Query and Scan ---------------------------------------------------------------------------


def _serves_query(cluster: Cluster, index: int) -> bool:
    """Whether the node serves Query (its backend does range reads: the hook in
    node/runtime.py). A node that does not answers UnknownOperationException."""
    answer = cluster.request(
        index,
        "POST",
        "/",
        body=b"{}",
        headers={
            "X-Amz-Target": "DynamoDB_20120810.Query",
            "Content-Type": "application/x-amz-json-1.0",
        },
    )
    return b"UnknownOperationException" not in answer.body


def require_query(cluster: Cluster) -> None:
    require_dynamo(cluster)
    if not _serves_query(cluster, 0):
        pytest.skip(
            "NOT WIRED: this node build does not serve Query/Scan: it needs Node.read_range "
            "(node/runtime.py) and RangeRead in NodeParts.handle_rpc (node/assembly.py)"
        )


ITEMS_PER_KEY = 600
PARTITION_KEYS = ("u0", "u1", "u2", "u3")


def _load_events(ddb: Any, table: str) -> None:
    requests = [
        {
            "PutRequest": {
                "Item": {
                    "pk": {"S": pk},
                    "sk": {"N": str(number)},
                    "even": {"BOOL": number % 2 == 0},
                    "pad": {"S": "x" * 200},
                }
            }
        }
        for pk in PARTITION_KEYS
        for number in range(ITEMS_PER_KEY)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda start: _batch_write_all(ddb, table, requests[start : start + 25]),
                range(0, len(requests), 25),
            )
        )


def _pages(ddb: Any, operation: str, **arguments: Any) -> list[dict[str, Any]]:
    paginator = ddb.get_paginator(operation)
    return list(paginator.paginate(**arguments))


def test_query_and_scan_page_through_thousands_of_items(cluster: Cluster) -> None:
    require_query(cluster)
    nodes = [client(cluster, index) for index in range(3)]
    create(nodes[0], "timeline")
    _load_events(nodes[0], "timeline")

    pages = _pages(
        nodes[1],
        "query",
        TableName="timeline",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "u1"}},
        ConsistentRead=True,
        PaginationConfig={"PageSize": 97},
    )
    numbers = [int(item["sk"]["N"]) for page in pages for item in page["Items"]]
    assert numbers == list(range(ITEMS_PER_KEY))
    assert len(pages) == -(-ITEMS_PER_KEY // 97)

    backwards = _pages(
        nodes[2],
        "query",
        TableName="timeline",
        KeyConditionExpression="pk = :pk AND sk BETWEEN :a AND :b",
        ExpressionAttributeValues={":pk": {"S": "u2"}, ":a": {"N": "100"}, ":b": {"N": "299"}},
        ScanIndexForward=False,
        ConsistentRead=True,
        PaginationConfig={"PageSize": 50},
    )
    numbers = [int(item["sk"]["N"]) for page in backwards for item in page["Items"]]
    assert numbers == list(range(299, 99, -1))

    counted = nodes[0].query(
        TableName="timeline",
        KeyConditionExpression="pk = :pk AND sk < :n",
        FilterExpression="even = :t",
        ExpressionAttributeValues={":pk": {"S": "u3"}, ":n": {"N": "100"}, ":t": {"BOOL": True}},
        Select="COUNT",
        ConsistentRead=True,
    )
    assert (counted["Count"], counted["ScannedCount"]) == (50, 100)
    assert "Items" not in counted

    scanned = _pages(
        nodes[2],
        "scan",
        TableName="timeline",
        ConsistentRead=True,
        ProjectionExpression="pk, sk",
        PaginationConfig={"PageSize": 333},
    )
    keys = [(item["pk"]["S"], int(item["sk"]["N"])) for page in scanned for item in page["Items"]]
    expected = sorted((pk, n) for pk in PARTITION_KEYS for n in range(ITEMS_PER_KEY))
    assert sorted(keys) == expected and len(keys) == len(expected)

    segments: list[tuple[str, int]] = []
    for segment in range(4):
        for page in _pages(
            nodes[segment % 3],
            "scan",
            TableName="timeline",
            Segment=segment,
            TotalSegments=4,
            ConsistentRead=True,
        ):
            segments.extend((item["pk"]["S"], int(item["sk"]["N"])) for item in page["Items"])
    assert sorted(segments) == expected


def test_a_page_holds_at_most_one_megabyte_and_counts_are_approximate(cluster: Cluster) -> None:
    require_query(cluster)
    ddb = client(cluster, 1)
    create(ddb, "blobs")
    blob = "b" * 100_000
    for number in range(25):
        ddb.put_item(
            TableName="blobs",
            Item={"pk": {"S": "one"}, "sk": {"N": str(number)}, "blob": {"S": blob}},
        )
    first = ddb.query(
        TableName="blobs",
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "one"}},
        ConsistentRead=True,
    )
    assert 10 <= first["Count"] <= 11 and "LastEvaluatedKey" in first
    everything = _pages(
        ddb,
        "query",
        TableName="blobs",
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "one"}},
        ConsistentRead=True,
    )
    assert sum(page["Count"] for page in everything) == 25

    counts: list[int] = []

    def counted() -> bool:
        counts.append(ddb.describe_table(TableName="blobs")["Table"]["ItemCount"])
        return counts[-1] > 0

    wait_for(counted, "DescribeTable's ItemCount")
    assert 24 <= counts[-1] <= 25  # counted at one replica: a write may not have reached it
    assert ddb.describe_table(TableName="blobs")["Table"]["TableSizeBytes"] >= 24 * 100_000


def test_metrics_count_dynamodb_requests_by_operation(cluster: Cluster) -> None:
    require_dynamo(cluster)
    if "dynamodb_purge" not in cluster.request(0, "GET", "/v1/status").json():
        pytest.skip(
            "NOT WIRED: this node build does not pass its RequestMetrics to dynamo_router "
            "(node/runtime.py), so DynamoDB requests are not counted"
        )
    from tests.integration.test_metrics import scrape

    ddb = client(cluster, 0)
    create(ddb, "metered")
    before = scrape(cluster, 0)
    for i in range(5):
        ddb.put_item(TableName="metered", Item={"pk": {"S": f"m{i}"}, "sk": {"N": "1"}})
    key = {"pk": {"S": "m0"}, "sk": {"N": "1"}}
    ddb.get_item(TableName="metered", Key=key)
    ddb.get_item(TableName="metered", Key=key, ConsistentRead=True)
    with pytest.raises(ClientError):
        ddb.get_item(TableName="metered", Key={"pk": {"S": "m0"}})  # 400: half a key
    refused = cluster.request(
        0, "POST", "/", b"{}", {"X-Amz-Target": "DynamoDB_20120810.TransactGetItems"}
    )
    assert refused.status == 400
    after = scrape(cluster, 0)

    def delta(series: str) -> float:
        return after.get(series, 0) - before.get(series, 0)

    def requests(operation: str, consistency: str, status: int) -> str:
        labels = f'api="dynamodb",operation="{operation}",consistency="{consistency}"'
        return f'dynakv_requests_total{{{labels},status="{status}"}}'

    assert delta(requests("PutItem", "default", 200)) == 5
    assert delta(requests("GetItem", "default", 200)) == 1
    assert delta(requests("GetItem", "strong", 200)) == 1
    assert delta(requests("GetItem", "default", 400)) == 1
    assert delta(requests("other", "default", 400)) == 1
    labels = 'api="dynamodb",operation="PutItem",consistency="default"'
    assert delta(f"dynakv_request_duration_seconds_count{{{labels}}}") == 5
    # Their backend calls (and the purge's catalog reads) are not counted as native requests.
    native = [s for s in after if s.startswith('dynakv_requests_total{api="native"')]
    assert all(delta(series) == 0 for series in native), native
