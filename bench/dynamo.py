"""The DynamoDB API through boto3: dynakv (3 nodes) against moto_server, in one run.

    .venv/bin/python bench/dynamo.py [--duration-s 10] [--clients 4] [--keys 2000]
        [--query-items 10] [--skip-moto]

Starts a 3-node ``dynakv dev`` cluster (HTTP 18301-18303) and ``moto_server``
(the common local DynamoDB stand-in, a test-only dependency; HTTP 18399),
creates the same table in each (partition key S, sort key N), preloads
``--keys`` items (``--query-items`` per partition key), then for each
workload runs dynakv and moto right after each other, so a pair sees the
same background load:

| workload | request |
|---|---|
| PutItem | a fresh item, a 100-byte attribute (dynakv: quorum write) |
| GetItem | a preloaded item, eventually consistent (dynakv: quorum read) |
| Query | every item of one preloaded partition key (``--query-items``; dynakv: one replica) |

Each workload runs ``--clients`` client processes (boto3 is CPU-bound
Python: one process would measure the client), each with its own boto3
client pointed at one node (round robin) or at moto, for ``--duration-s``.
Prints ops/s, p50 and p99 latency and dynakv's ratio to moto, as a Markdown
table for docs/dynamodb.md. The machine is shared: compare within a run.
A dynakv build that does not serve Query (the node's range-read hook) has
that row marked "not served".
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from cluster import DynakvCluster
from common import REPO_DIR, BenchError, Processes, check_ports_free, wait_until

PORT_OFFSET = 300  # dynakv HTTP 18301-18303, RPC 19301-19303
MOTO_PORT = 18399
MOTO_BIN = REPO_DIR / ".venv" / "bin" / "moto_server"
TABLE = "bench"
LATENCY_SAMPLES_MAX = 200_000  # per client process
WORKLOADS = ("PutItem", "GetItem", "Query")


def client(endpoint: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 10, "mode": "standard"}, max_pool_connections=4),
    )


def create_table(endpoint: str) -> None:
    client(endpoint).create_table(
        TableName=TABLE,
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


def item(partition: int, sort: int) -> dict[str, Any]:
    return {
        "pk": {"S": f"p{partition}"},
        "sk": {"N": str(sort)},
        "v": {"S": "x" * 100},
    }


def preload(endpoint: str, keys: int, per_partition: int) -> None:
    ddb = client(endpoint)
    requests = [
        {"PutRequest": {"Item": item(index // per_partition, index % per_partition)}}
        for index in range(keys)
    ]
    for start in range(0, len(requests), 25):
        pending: dict[str, Any] = {TABLE: requests[start : start + 25]}
        for _ in range(20):
            pending = ddb.batch_write_item(RequestItems=pending)["UnprocessedItems"]
            if not pending:
                break
        else:
            raise BenchError(f"preload: still unprocessed after 20 rounds at {start}")


@dataclass(frozen=True)
class Job:
    endpoint: str
    workload: str
    duration_s: float
    partitions: int
    per_partition: int
    seed: int


def operation(ddb: Any, job: Job, rng: random.Random) -> Callable[[], None]:
    def put() -> None:
        ddb.put_item(TableName=TABLE, Item=item(10_000_000 + rng.randrange(1 << 30), 0))

    def get() -> None:
        key = item(rng.randrange(job.partitions), rng.randrange(job.per_partition))
        answer = ddb.get_item(TableName=TABLE, Key={"pk": key["pk"], "sk": key["sk"]})
        assert "Item" in answer, key

    def query() -> None:
        answer = ddb.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": f"p{rng.randrange(job.partitions)}"}},
        )
        assert answer["Count"] == job.per_partition, answer["Count"]

    return {"PutItem": put, "GetItem": get, "Query": query}[job.workload]


def run_client(job: Job) -> tuple[int, int, list[float]]:
    """(operations, errors, latencies in ms) of one client process for ``job``."""
    rng = random.Random(job.seed)
    ddb = client(job.endpoint)
    call = operation(ddb, job, rng)
    call()  # warm the connection and the SDK's caches
    done = errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + job.duration_s
    while (started := time.monotonic()) < deadline:
        try:
            call()
        except ClientError:
            errors += 1
            continue
        done += 1
        if len(latencies) < LATENCY_SAMPLES_MAX:
            latencies.append((time.monotonic() - started) * 1000)
    return done, errors, latencies


@dataclass(frozen=True)
class Result:
    system: str
    workload: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def measure(system: str, endpoints: list[str], workload: str, args: argparse.Namespace) -> Result:
    jobs = [
        Job(
            endpoints[index % len(endpoints)],
            workload,
            args.duration_s,
            args.keys // args.query_items,
            args.query_items,
            seed=index,
        )
        for index in range(args.clients)
    ]
    with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
        outcomes = pool.map(run_client, jobs)
    done = sum(outcome[0] for outcome in outcomes)
    latencies = sorted(latency for outcome in outcomes for latency in outcome[2])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Result(
        system,
        workload,
        done / args.duration_s,
        statistics.median(latencies) if latencies else 0.0,
        p99,
        sum(outcome[1] for outcome in outcomes),
    )


def serves_query(endpoint: str) -> bool:
    try:
        client(endpoint).query(
            TableName=TABLE,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "p0"}},
        )
    except ClientError as error:
        if error.response["Error"]["Code"] == "UnknownOperationException":
            return False
        raise
    return True


def start_moto(processes: Processes, work_dir: Path) -> str:
    if not MOTO_BIN.exists():
        raise BenchError(f"{MOTO_BIN} is missing: `make` installs moto (a dev dependency)")
    check_ports_free([MOTO_PORT], "moto_server")
    argv = [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(MOTO_PORT)]
    processes.start("moto_server", argv, work_dir / "moto.log")
    endpoint = f"http://127.0.0.1:{MOTO_PORT}"

    def ready() -> bool:
        client(endpoint).list_tables()
        return True

    wait_until(ready, 30.0, "moto_server")
    return endpoint


def render(results: list[Result], args: argparse.Namespace, unserved: set[str]) -> str:
    by_key = {(r.system, r.workload): r for r in results}
    lines = [
        f"{args.clients} boto3 client processes, {args.duration_s:.0f} s per workload, "
        f"{args.keys} preloaded items ({args.query_items} per partition key)",
        "",
        "| workload | dynakv ops/s | p50 / p99 ms | moto ops/s | p50 / p99 ms | dynakv / moto |",
        "|---|---|---|---|---|---|",
    ]
    for workload in WORKLOADS:
        ours, theirs = by_key.get(("dynakv", workload)), by_key.get(("moto", workload))
        cells = [workload]
        for result in (ours, theirs):
            if result is None:
                cells += ["not served" if workload in unserved else "-", "-"]
            else:
                cells += [f"{result.ops_per_s:.0f}", f"{result.p50_ms:.1f} / {result.p99_ms:.1f}"]
        ratio = "-"
        if ours is not None and theirs is not None and theirs.ops_per_s > 0:
            ratio = f"{ours.ops_per_s / theirs.ops_per_s:.1f}x"
        lines.append("| " + " | ".join([*cells, ratio]) + " |")
    errors = [f"{r.system} {r.workload}: {r.errors}" for r in results if r.errors]
    if errors:
        lines += ["", "errors: " + ", ".join(errors)]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--query-items", type=int, default=10)
    parser.add_argument("--skip-moto", action="store_true")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 64 and 1 <= args.query_items <= min(1000, args.keys)):
        parser.error("--clients 1..64, --query-items 1..min(1000, --keys)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    processes = Processes()
    results: list[Result] = []
    unserved: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="dynakv-bench-dynamo-") as work:
        work_dir = Path(work)
        try:
            dynakv = DynakvCluster(processes, work_dir, port_offset=PORT_OFFSET)
            dynakv.start()
            systems = {"dynakv": [f"http://127.0.0.1:{port}" for port in dynakv.http_ports]}
            if not args.skip_moto:
                systems["moto"] = [start_moto(processes, work_dir)]
            for name, endpoints in systems.items():
                create_table(endpoints[0])
                preload(endpoints[0], args.keys, args.query_items)
                print(f"{name}: table made, {args.keys} items preloaded", flush=True)
            if not serves_query(systems["dynakv"][0]):
                unserved.add("Query")
            for workload in WORKLOADS:
                for name, endpoints in systems.items():
                    if name == "dynakv" and workload in unserved:
                        continue
                    result = measure(name, endpoints, workload, args)
                    results.append(result)
                    print(f"{name} {workload}: {result.ops_per_s:.0f} ops/s", flush=True)
        except BenchError as error:
            print(f"bench failed: {error}", file=sys.stderr)
            return 1
        finally:
            processes.stop_all()
    print()
    print(render(results, args, unserved))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
