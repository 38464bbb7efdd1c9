"""A deleted DynamoDB table's items leave every node's disk, on a real 3-node cluster.

Items are written to two tables; one node is stopped; one table is deleted. The two
running nodes purge, the third purges once it is back, and copies anti-entropy pulls
back from it meanwhile are purged again. Then, with every node stopped, each node's
RocksDB holds no record and no Paxos state of the deleted table id, and still holds
the other table; a new table of the same name started empty.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from dynakv.dynamo.deleted import seek_after, table_id_of
from dynakv.storage import RocksStorage
from tests.integration.conftest import Cluster, wait_for
from tests.integration.test_dynamo_api import client, create, require_dynamo

pytestmark = pytest.mark.integration

PARTITIONS = 1024  # DevCluster's
KEY_BYTES_MAX = 2048
# A pass every 30 s when clean (dynamo.purge.PurgeSettings.recheck_ms), 10 s after one
# that removed anything; two full passes on every node with nothing removed, plus slack.
QUIET_S = 150.0


def purge_status(cluster: Cluster, index: int) -> dict[str, Any] | None:
    response = cluster.request(index, "GET", "/v1/status")
    assert response.status == 200, response
    found: dict[str, Any] | None = response.json().get("dynamodb_purge")
    return found


def require_purge(cluster: Cluster) -> None:
    require_dynamo(cluster)
    if purge_status(cluster, 0) is None:
        pytest.skip(
            "NOT WIRED: this node build does not run the deleted-table purge: it needs "
            "Node to start dynamo.purge.TablePurger and report it in /v1/status"
        )


def table_id(ddb: Any, name: str) -> int:
    return int(ddb.describe_table(TableName=name)["Table"]["TableId"][:8], 16)


def write_items(ddb: Any, name: str, count: int) -> None:
    requests = [
        {"PutRequest": {"Item": {"pk": {"S": f"p{i % 7}"}, "sk": {"N": str(i)}, "v": {"S": "x"}}}}
        for i in range(count)
    ]
    for start in range(0, count, 25):
        pending: Any = {name: requests[start : start + 25]}
        for _ in range(20):
            pending = ddb.batch_write_item(RequestItems=pending)["UnprocessedItems"]
            if not pending:
                break
        assert not pending, pending


def scan_count(ddb: Any, name: str) -> int:
    paginator = ddb.get_paginator("scan")
    pages = paginator.paginate(TableName=name, Select="COUNT", ConsistentRead=True)
    return sum(page["Count"] for page in pages)


def wait_until_quiet(cluster: Cluster) -> None:
    """Until every node completed two passes in a row, after a common moment, in which no
    node removed anything: then no node held a copy at that moment (a copy can only come
    from a node that holds one, whose own pass would have removed it), nor since."""
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:
        before = [purge_status(cluster, index) for index in range(3)]

        def two_more_passes(start: list[dict[str, Any] | None] = before) -> bool:
            now = [purge_status(cluster, index) for index in range(3)]
            return all(
                n is not None and s is not None and n["passes"] >= s["passes"] + 2
                for n, s in zip(now, start, strict=True)
            )

        wait_for(two_more_passes, "two more purge passes on every node", QUIET_S)
        after = [purge_status(cluster, index) for index in range(3)]
        if all(
            a is not None
            and b is not None
            and (a["records_removed"], a["paxos_states_removed"])
            == (b["records_removed"], b["paxos_states_removed"])
            for a, b in zip(after, before, strict=True)
        ):
            return
    raise AssertionError(f"purges still removing records after {QUIET_S} s")


def stored_counts(storage: RocksStorage, wanted: int) -> tuple[int, int]:
    """(records, Paxos states) of table id ``wanted`` over every partition."""
    records = states = 0
    for partition in range(PARTITIONS):
        for scan in (storage.scan_raw, storage.scan_paxos):
            after = seek_after(wanted, KEY_BYTES_MAX)
            while True:
                page = scan(partition, after=after, limit=500)
                mine = [key for key, _ in page if table_id_of(key) == wanted]
                if scan == storage.scan_raw:
                    records += len(mine)
                else:
                    states += len(mine)
                if len(mine) < len(page) or len(page) < 500:
                    break
                after = page[-1][0]
    return records, states


def test_a_deleted_tables_items_leave_every_node(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    require_purge(cluster)
    nodes = [client(cluster, index) for index in range(3)]
    create(nodes[0], "doomed")
    create(nodes[0], "kept")
    doomed_id, kept_id = table_id(nodes[0], "doomed"), table_id(nodes[0], "kept")
    write_items(nodes[0], "doomed", 300)
    # Conditional writes leave Paxos acceptor states beside the records.
    for i in range(10):
        nodes[1].update_item(
            TableName="doomed",
            Key={"pk": {"S": f"p{i % 7}"}, "sk": {"N": str(i)}},
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": "y"}},
        )
    write_items(nodes[1], "kept", 60)
    assert scan_count(nodes[2], "doomed") == 300

    cluster.stop(2)  # n3 misses the deletion
    nodes[0].delete_table(TableName="doomed")
    wait_for(
        lambda: all(
            (status := purge_status(cluster, index)) is not None
            and status["records_removed"] >= 300
            for index in (0, 1)
        ),
        "n1 and n2 to purge the deleted table",
        60,
    )
    cluster.start(2)
    cluster.wait_healthy(2)
    wait_for(
        lambda: (purge_status(cluster, 2) or {}).get("records_removed", 0) >= 300,
        "n3 to purge the table deleted while it was down",
        60,
    )
    wait_until_quiet(cluster)

    create(nodes[2], "doomed")  # the name is free again (the 5 s hold is long past)
    assert table_id(nodes[1], "doomed") > kept_id > doomed_id
    assert scan_count(nodes[1], "doomed") == 0
    answer = nodes[0].query(
        TableName="doomed",
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "p1"}},
        ConsistentRead=True,
    )
    assert answer["Count"] == 0
    assert scan_count(nodes[2], "kept") == 60

    cluster.stop_all()
    for node_id in ("n1", "n2", "n3"):
        storage = RocksStorage.open(cluster.spec.data_dir / node_id / "db")
        try:
            assert stored_counts(storage, doomed_id) == (0, 0), node_id
            kept_records, _ = stored_counts(storage, kept_id)
            assert kept_records == 60, (node_id, kept_records)  # N = 3: every node holds all
        finally:
            storage.close()
