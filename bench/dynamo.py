"""The DynamoDB API beside the native API and beside moto_server, in one run, with wrk.

    .venv/bin/python bench/dynamo.py [--duration-s 10] [--connections 32] [--keys 10000]
        [--runs 3] [--skip-moto]

Starts a 3-node ``dynakv dev`` cluster (HTTP 18301-18303, RPC 19301-19303) and
``moto_server`` (the common local DynamoDB stand-in, a pinned test dependency;
HTTP 18399), creates the same table in each (partition key ``pk``, S), preloads
``--keys`` items of a 100-byte attribute in each and the same keys through the
native API, then for each operation runs these back to back, ``--runs`` times:

| operation | dynakv, DynamoDB API | dynakv, native API | moto_server |
|---|---|---|---|
| PutItem | PutItem (a quorum write) | `PUT /v1/kv/<key>?consistency=quorum` | PutItem |
| GetItem | GetItem, eventual (a quorum read) | `GET /v1/kv/<key>?consistency=quorum` | GetItem |

The load generator is the same cheap one for all three: wrk with pre-formatted
requests (``bench/lua/dynamo.lua``, ``bench/lua/dynakv.lua``), ``--connections``
in all, split over dynakv's nodes (one ``wrk -t1`` per node) and all on moto's
one port, keys drawn uniformly from the preloaded ones. Reports ops/s, p50/p99,
errors, server CPU per op and the ratios dynakv/moto (target: at least 30x) and
DynamoDB API/native, as a console table and a Markdown section (printed and
saved under bench/results/). boto3 is only a correctness check: it makes the
tables and reads one item back from each server after the run.

Every process it starts is stopped by PID in ``finally``; every wait has a
deadline; every load is bounded by --duration-s. Timing goals live here,
never in tests.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]

from cluster import DynakvCluster
from common import (
    LUA_DIR,
    REPO_DIR,
    VALUE_SIZE_BYTES,
    BenchError,
    LoadResult,
    Processes,
    check_ports_free,
    key_name,
    preload,
    run_wrk,
    split_connections,
    value_bytes,
    wait_until,
)
from report import Comparison, Row, compare, markdown_tables, render_console, summarize
from run import machine_info

PORT_OFFSET = 300  # dynakv HTTP 18301-18303, RPC 19301-19303: clear of bench/run.py's
MOTO_PORT = 18399
MOTO_BIN = REPO_DIR / ".venv" / "bin" / "moto_server"
TABLE = "bench"
DYNAMO_SCRIPT = LUA_DIR / "dynamo.lua"
NATIVE_SCRIPT = LUA_DIR / "dynakv.lua"
RESULTS_DIR = REPO_DIR / "bench" / "results"
MOTO_TARGET = 30.0  # the issue's: dynakv's DynamoDB API at least 30x moto_server
JSON_HEADERS = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Target": "DynamoDB_20120810.PutItem",
    "X-Amz-Date": "20261202T000000Z",
    "Authorization": "AWS4-HMAC-SHA256 Credential=bench/20261202/us-east-1/dynamodb/"
    "aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
    "Signature=" + "0" * 64,
}  # the same form dynamo.lua sends; moto routes on the credential scope
# operation -> (dynakv.lua mode, native consistency equivalent to the operation's default)
OPERATIONS = {"PutItem": ("put", "quorum"), "GetItem": ("get", "quorum")}


@dataclass(frozen=True)
class Target:
    """One system and API under load: where wrk sends what, whose CPU counts."""

    system: str  # the table's system column: "dynakv" or "moto"
    api: str  # "dynamo" or "native"
    ports: list[int]
    server_pids: list[int]

    def workload(self, operation: str) -> tuple[str, str]:
        """(results key, label) of ``operation`` on this target."""
        if self.api == "native":
            mode, consistency = OPERATIONS[operation]
            verb = "PUT" if mode == "put" else "GET"
            return f"{mode}_{consistency}", f"{verb} /v1/kv {consistency} (native API)"
        return operation, operation + (" (DynamoDB API)" if self.system == "dynakv" else "")

    def script(self) -> Path:
        return NATIVE_SCRIPT if self.api == "native" else DYNAMO_SCRIPT

    def script_args(self, operation: str, keys: int, seed: int) -> list[str]:
        mode, consistency = OPERATIONS[operation]
        if self.api == "native":
            return [mode, consistency, str(keys), str(seed)]
        return [mode, str(keys), str(seed), TABLE]


def client(endpoint: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(
            connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
        ),
    )


def create_table(endpoint: str) -> None:
    client(endpoint).create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def preload_items(ports: list[int], keys: int) -> str:
    """PutItem every key once (the native preload's key names and values); a note."""

    def request_for(index: int) -> tuple[str, str, bytes, dict[str, str]]:
        item = {"pk": {"S": key_name(index)}, "v": {"S": value_bytes(index).decode("ascii")}}
        body = json.dumps({"TableName": TABLE, "Item": item}).encode()
        return "POST", "/", body, JSON_HEADERS

    loaded = preload(ports, keys, request_for, is_ok=lambda status, _body: status == 200)
    if loaded.failed:
        raise BenchError(f"PutItem preload failed {loaded.failed}, e.g. {loaded.sample_failure}")
    return f"{loaded.ok:,} items in {loaded.elapsed_s:.1f} s"


def read_back(endpoint: str, index: int) -> str:
    """Read one item through boto3; raise unless it is whole. A note for the doc."""
    answer = client(endpoint).get_item(TableName=TABLE, Key={"pk": {"S": key_name(index)}})
    value = answer.get("Item", {}).get("v", {}).get("S", "")
    if len(value) != VALUE_SIZE_BYTES:
        raise BenchError(f"boto3 GetItem {key_name(index)} at {endpoint}: {answer!r:.300}")
    return f"boto3 GetItem {key_name(index)} at {endpoint}: {len(value)}-byte v"


def start_moto(processes: Processes, work_dir: Path) -> int:
    """Start moto_server; its PID (the server itself: no reloader, no children)."""
    if not MOTO_BIN.exists():
        raise BenchError(f"{MOTO_BIN} is missing: `make` installs moto (a dev dependency)")
    check_ports_free([MOTO_PORT], "moto_server")
    argv = [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(MOTO_PORT)]
    popen = processes.start("moto_server", argv, work_dir / "moto.log")
    endpoint = f"http://127.0.0.1:{MOTO_PORT}"

    def ready() -> bool:
        try:
            client(endpoint).list_tables()
        except BotoCoreError:
            return False  # not listening yet
        return True

    def exited() -> str | None:
        code = popen.poll()
        return None if code is None else f"moto_server exited with {code}; see {work_dir}"

    wait_until(ready, 30.0, "moto_server", alive=exited)
    return popen.pid


@dataclass
class Outcome:
    results: dict[tuple[str, str], list[LoadResult]]
    labels: dict[tuple[str, str], str]
    notes: list[str]


def run_all(args: argparse.Namespace, processes: Processes, work_dir: Path) -> Outcome:
    outcome = Outcome({}, {}, [])
    dynakv = DynakvCluster(processes, work_dir, port_offset=PORT_OFFSET)
    dynakv.start()
    targets = [
        Target("dynakv", "dynamo", dynakv.http_ports, dynakv.pids),
        Target("dynakv", "native", dynakv.http_ports, dynakv.pids),
    ]
    if not args.skip_moto:
        targets.append(Target("moto", "dynamo", [MOTO_PORT], [start_moto(processes, work_dir)]))
    # boto3 reads back through another node than the one the table was made on.
    endpoints = {t.system: f"http://127.0.0.1:{t.ports[-1]}" for t in targets}
    for target in targets:
        if target.api == "native":
            loaded = dynakv.preload(args.keys, "quorum")
            if loaded.failed:
                raise BenchError(f"native preload failed: {loaded.sample_failure}")
            note = f"{loaded.ok:,} keys in {loaded.elapsed_s:.1f} s"
        else:
            create_table(f"http://127.0.0.1:{target.ports[0]}")
            note = preload_items(target.ports, args.keys)
        outcome.notes.append(f"{target.system} {target.api} API preload: {note}")
        print(outcome.notes[-1], flush=True)
    for run_index in range(args.runs):
        for operation in OPERATIONS:
            for target in targets:
                _measure(args, outcome, target, operation, run_index, work_dir, targets)
    for endpoint in endpoints.values():
        outcome.notes.append(f"after the run, {read_back(endpoint, args.keys - 1)}")
    return outcome


def _measure(
    args: argparse.Namespace,
    outcome: Outcome,
    target: Target,
    operation: str,
    run_index: int,
    work_dir: Path,
    targets: list[Target],
) -> None:
    workload, label = target.workload(operation)
    name = f"{target.system}-{workload}-{run_index + 1}"
    bystanders = sorted(
        {pid for t in targets if t.system != target.system for pid in t.server_pids}
    )
    result = run_wrk(
        target.script(),
        target.ports,
        script_args=lambda node: target.script_args(
            operation, args.keys, run_index * 10 + node + 1
        ),
        connections=args.connections,
        duration_s=args.duration_s,
        server_pids=target.server_pids,
        bystander_pids=bystanders,
        work_dir=work_dir,
        name=name,
    )
    outcome.results.setdefault((target.system, workload), []).append(result)
    outcome.labels[(target.system, workload)] = label
    loud = f"  !!! {result.errors:,} ERRORS: {result.sample_error}" if result.errors else ""
    print(
        f"[run {run_index + 1}] {target.system:6s} {label:34s} {result.ops_per_s:8,.0f} ops/s  "
        f"p50 {result.percentile_ms(50):7.2f} ms  p99 {result.percentile_ms(99):7.2f} ms  "
        f"cpu {result.cpu_us_per_op:7.1f} us/op  others {result.other_cores:.2f} cores{loud}",
        flush=True,
    )


def comparisons(outcome: Outcome) -> list[Comparison]:
    rows: list[Comparison] = []
    results = outcome.results
    for operation, (mode, consistency) in OPERATIONS.items():
        mine = results.get(("dynakv", operation), [])
        peers: list[tuple[tuple[str, str], float | None]] = [
            (("moto", operation), MOTO_TARGET),
            (("dynakv", f"{mode}_{consistency}"), None),
        ]
        for key, target in peers:
            if mine and results.get(key):
                label = f"dynakv {operation} / {key[0]} {outcome.labels[key]}"
                rows.append(compare(label, mine, results[key], target))
    return rows


def render_section(
    args: argparse.Namespace,
    machine: dict[str, str],
    started_at: datetime,
    outcome: Outcome,
    compared: list[Comparison],
    rows: list[Row],
) -> str:
    split = "/".join(str(n) for n in split_connections(args.connections, 3))
    every = [r for runs in outcome.results.values() for r in runs]
    other = [r.other_cores for r in every]
    lines = [
        f"## {started_at:%Y-%m-%d %H:%M} UTC — DynamoDB API beside moto and the native API",
        "",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), load average at start "
        f"{machine['load_average_at_start']}; dynakv {machine['dynakv_commit']}",
        f"- Command: `{' '.join(['.venv/bin/python', 'bench/dynamo.py', *args.argv])}`",
        f"- Load: {machine['wrk']}, {args.connections} connections (dynakv: split {split} over "
        f"its 3 nodes, one `wrk -t1` each; moto: all on its one port), {args.duration_s} s per "
        f"workload, keys uniform over {args.keys:,} preloaded items, 100-byte values, "
        + (f"median of {args.runs} runs" if args.runs > 1 else "1 run"),
        "",
        *markdown_tables(rows, compared, args.runs),
        "",
        f"- Other load (CPU used by neither the servers under load nor wrk): "
        f"{min(other):.2f}-{max(other):.2f} cores, median {statistics.median(other):.2f}.",
        "- GetItem is eventually consistent (the default), a `quorum` read in dynakv; "
        "PutItem without a condition is a `quorum` write: the native rows are their "
        "equivalents. Puts replace preloaded items. moto_server is one Python process "
        "(threaded Werkzeug); its CPU is that process's. It answers every request with "
        "`Connection: close`, so each moto request also pays a TCP connect.",
        *[f"- {note}" for note in outcome.notes],
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=10, help="seconds per workload")
    parser.add_argument("--connections", type=int, default=32, help="per workload, in all")
    parser.add_argument("--keys", type=int, default=10_000, help="items (and native keys)")
    parser.add_argument("--runs", type=int, default=3, help="repeat every workload; medians")
    parser.add_argument("--skip-moto", action="store_true", help="dynakv's two APIs only")
    args = parser.parse_args(argv)
    if not 1 <= args.duration_s <= 600 or not 1 <= args.runs <= 20:
        parser.error("--duration-s must be 1..600 and --runs 1..20")
    if not 3 <= args.connections <= 1000 or not 1 <= args.keys <= 1_000_000:
        parser.error("--connections must be 3..1000 and --keys 1..1000000")
    args.argv = argv
    return args


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the servers


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started_at = datetime.now(UTC).replace(microsecond=0)
    machine = machine_info()
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="dynakv-bench-dynamo-") as work:
        try:
            outcome = run_all(args, processes, Path(work))
        except BenchError as error:
            print(f"bench failed: {error}", file=sys.stderr)
            return 1
        finally:
            processes.stop_all()
    # In the order measured (by operation, then target), not summarize's dynakv-first.
    rows = [summarize({key: runs}, outcome.labels)[0] for key, runs in outcome.results.items()]
    compared = comparisons(outcome)
    title = "DynamoDB API: dynakv vs moto_server and dynakv's native API"
    render_console(outcome.results, outcome.labels, compared, args.runs, title=title, rows=rows)
    section = render_section(args, machine, started_at, outcome, compared, rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"dynamo-{started_at:%Y%m%dT%H%M%SZ}.md"
    path.write_text(section)
    print(f"\n{section}\nMarkdown section saved to {path}")
    return 3 if any(r.errors for runs in outcome.results.values() for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
