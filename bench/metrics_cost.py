"""What the metrics cost: throughput with request recording on vs off, at the bench's load.

    .venv/bin/python bench/metrics_cost.py [--rounds 6] [--repeats 2] [--duration-s 8]
        [--connections 32] [--keys 10000] [--scrape-interval-s 1] [--control on|off] [--micro-only]

Three parts.

1. Micro: the cost of each piece on its own, per call: ``RequestMetrics.observe``
   (with the two clock reads ``Node._measured`` adds), one RPC counter
   increment, rendering a whole scrape; and, when ``prometheus_client`` is
   importable, its labelled Counter.inc + Histogram.observe for comparison.
2. In process: ``one`` gets through the real ``Node.get`` (coordinator,
   replica, RocksDB; no HTTP) on a 1-node cluster, in alternating blocks of
   recording on and off; the median difference of neighbouring blocks is the
   recording's CPU per request, without the cluster runs' noise.
3. Macro, side by side: two copies of the bench's cluster (``dynakv dev``, 3
   node processes, N=3, 100-byte values), one with ``DYNAKV_METRICS_RECORDING``
   on and every node scraped every ``--scrape-interval-s`` (as Prometheus
   would), one with it off and never scraped, loaded AT THE SAME TIME with the
   bench's load each (32 connections split over its three nodes, one ``wrk
   -t1`` per node): quorum puts, then ``one`` gets. Both see the same
   contention from other tenants at the same moment, so their ratio holds up
   on a shared machine where back-to-back runs drift by more than 2 %. Rounds
   swap which copy records (restarting both on their data, preloaded once),
   so a difference between the copies themselves cancels out. Reports the
   median ratio on/off of ops/s and of server CPU per op. The RPC counters
   are plain ints that are always on: their share is the micro figure times
   the calls per request (two per quorum put, none for a ``one`` get served
   locally).

Timing goal (issue 8): the metrics cost under 2 % of throughput. On a shared
2-core machine run-to-run noise is of that order; compare CPU per op, and the
micro figures against the CPU a request costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import timeit
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cluster
from common import (
    REPO_DIR,
    BenchError,
    LoadResult,
    Processes,
    Tracked,
    check_ports_free,
    ensure_tools,
    http_json,
    http_request,
    key_name,
    preload,
    run_wrk,
    value_bytes,
    wait_until,
)
from dynakv.net.rpc import RpcCounters
from dynakv.node.metrics import (
    RECORDING_ENV,
    AntiEntropySnapshot,
    HintsSnapshot,
    NodeSnapshot,
    PeerRpc,
    RequestMetrics,
    StorageSnapshot,
    process_snapshot,
    render,
)
from dynakv.storage.group_commit import GroupCommitStats

WORKLOADS = ("put", "get_one")
SETTINGS = ("on", "off")
HTTP_BASES = (18101, 18201)  # copy a and copy b; RPC at +1000


def micro() -> dict[str, float]:
    """Nanoseconds per call of each piece, best of 5 repeats."""
    metrics = RequestMetrics(recording=True)
    clock = time.monotonic

    def observe() -> None:
        started = clock() * 1000.0
        metrics.observe("put", "quorum", 204, (clock() * 1000.0 - started) / 1000)

    class Client:
        calls_total = 0

    client = Client()

    def increment() -> None:
        client.calls_total += 1

    for operation in ("get", "put", "delete"):
        for level in ("one", "quorum", "all"):
            metrics.observe(operation, level, 200, 0.002)
    snapshot = NodeSnapshot(
        group_commit=GroupCommitStats(10, 0, 60, 9, 6, 0.01, 0, (1,) * 13, (1,) * 12),
        rpc={peer: PeerRpc(RpcCounters(9, 1, 1, 1, 1), True, 3) for peer in ("n2", "n3")},
        read_repairs_total=4,
        records_swept_total=0,
        storage=StorageSnapshot(10_000, {"sst_files": 1 << 20, "memtables": 1 << 16}, 1, 2),
        hints=HintsSnapshot({"n2": 3}, 300, 1, 0, 0),
        anti_entropy=AntiEntropySnapshot(5, 0, {"pulled": 1, "pushed": 2}, {"pulled": 9}),
        members=(("n1", "up"), ("n2", "up"), ("n3", "up")),
        rebuilding=False,
        process=process_snapshot(),
    )
    figures = {
        "observe_with_clock_ns": _ns_per_call(observe, 200_000),
        "rpc_counter_increment_ns": _ns_per_call(increment, 1_000_000),
        "render_scrape_us": _ns_per_call(lambda: render(metrics, snapshot), 2_000) / 1000,
        "scrape_bytes": float(len(render(metrics, snapshot))),
    }
    try:
        import prometheus_client
    except ImportError:
        return figures
    registry = prometheus_client.CollectorRegistry()
    labels = ("api", "operation", "consistency", "status")
    counter = prometheus_client.Counter("r", "r", labels, registry=registry)
    histogram = prometheus_client.Histogram("h", "h", labels[:3], registry=registry)

    def observe_client() -> None:
        started = clock()
        counter.labels("native", "put", "quorum", "204").inc()
        histogram.labels("native", "put", "quorum").observe(clock() - started)

    figures["prometheus_client_observe_with_clock_ns"] = _ns_per_call(observe_client, 200_000)
    return figures


def _ns_per_call(function: object, number: int) -> float:
    timer = timeit.Timer(function)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def in_process(blocks: int = 60, gets_per_block: int = 5_000) -> dict[str, float]:
    """CPU per ``one`` get through the real ``Node.get`` (coordinator, replica, RocksDB,
    no HTTP), recording on and off in alternating blocks in one process: the
    recording's own cost, free of the run-to-run noise the cluster runs carry."""
    return asyncio.run(_in_process(blocks, gets_per_block))


async def _in_process(blocks: int, gets_per_block: int) -> dict[str, float]:
    from dynakv.config import load_node_config
    from dynakv.core.consistency import Consistency
    from dynakv.core.record import EMPTY_CONTEXT
    from dynakv.node.dev import DevCluster
    from dynakv.node.runtime import Node

    keys = [f"key{i:08d}".encode() for i in range(2_000)]
    with tempfile.TemporaryDirectory(prefix="dynakv-metrics-inproc-") as tmp:
        http_port, rpc_port = _free_port(), _free_port()
        spec = DevCluster(Path(tmp), nodes=1, http_base_port=http_port, rpc_base_port=rpc_port,
                          replicas=1)  # fmt: skip
        spec.write_configs()
        node = Node(load_node_config(Path(tmp) / "n1" / "node.toml"))
        await node.start()
        try:
            for start in range(0, len(keys), 100):
                await asyncio.gather(*(
                    node.put(key, b"v" * 100, Consistency.QUORUM, 0, EMPTY_CONTEXT)
                    for key in keys[start : start + 100]
                ))  # fmt: skip
            cpu_us: dict[bool, list[float]] = {True: [], False: []}
            for block in range(blocks):
                recording = block % 2 == 0
                node.request_metrics.recording = recording
                started = time.process_time()
                for index in range(gets_per_block):
                    await node.get(keys[index % len(keys)], Consistency.ONE)
                cpu_us[recording].append((time.process_time() - started) / gets_per_block * 1e6)
        finally:
            await node.stop()
    on, off = cpu_us[True], cpu_us[False]
    paired = statistics.median(a - b for a, b in zip(on, off, strict=True))  # neighbours
    return {
        "get_cpu_us_on": statistics.median(on),
        "get_cpu_us_off": statistics.median(off),
        "get_recording_us": paired,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Scraper:
    """Scrapes every node's /metrics every interval_s (as Prometheus would), in a thread."""

    ports: list[int]
    interval_s: float
    scrapes: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for port in self.ports:
                status, _ = http_request(port, "GET", "/metrics")
                self.scrapes += 1
                self.failures += status != 200


@dataclass
class Copy:
    """One 3-node cluster started with ``dynakv dev`` on its own ports and data."""

    name: str
    http_base: int
    work_dir: Path
    dev: Tracked | None = None
    pids: tuple[int, ...] = ()

    @property
    def http_ports(self) -> list[int]:
        return [self.http_base + i for i in range(cluster.NODE_COUNT)]

    def start(self, processes: Processes, setting: str) -> None:
        ports = self.http_ports + [self.http_base + 1000 + i for i in range(cluster.NODE_COUNT)]
        check_ports_free(ports, f"dynakv copy {self.name}")
        os.environ[RECORDING_ENV] = setting  # the node processes inherit it
        argv = [
            str(cluster.DYNAKV_BIN), "dev", "--data-dir", str(self.work_dir / "data"),
            "--http-base-port", str(self.http_base), "--rpc-base-port", str(self.http_base + 1000),
        ]  # fmt: skip
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.work_dir / "dev.log"
        processes.start(self.name, argv, log_path)
        self.dev = processes.tracked[-1]
        pids = []
        for port in self.http_ports:
            wait_until(lambda p=port: http_request(p, "GET", "/health")[0] == 200, 60, "health")
            status, body = http_json(port, "/v1/status")
            if status != 200 or not isinstance(body, dict):
                raise BenchError(f"copy {self.name}: GET /v1/status on :{port} answered {status}")
            pids.append(int(body["pid"]))
            processes.adopt(pids[-1])
        self.pids = tuple(pids)

    def stop(self, processes: Processes) -> None:
        if self.dev is not None:
            processes.stop(self.dev)
            self.dev = None


def load_both(
    copies: dict[str, Copy], args: argparse.Namespace, workload: str, run: str
) -> dict[str, LoadResult]:
    """The bench's load on each copy at once; each copy's result by its setting."""
    results: dict[str, LoadResult] = {}
    errors: list[BaseException] = []

    def one(setting: str, copy: Copy) -> None:
        try:
            results[setting] = run_wrk(
                cluster.SCRIPT,
                copy.http_ports,
                script_args=lambda node: [
                    "put" if workload == "put" else "get",
                    "quorum" if workload == "put" else "one",
                    str(args.keys),
                    str(node + 1),
                ],
                connections=args.connections,
                duration_s=args.duration_s,
                server_pids=list(copy.pids),
                bystander_pids=[],
                work_dir=copy.work_dir,
                name=f"{run}-{workload}",
            )
        except BaseException as error:  # re-raised below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=one, args=item) for item in copies.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.duration_s + 60)
    if errors:
        raise errors[0]
    return results


def measure(args: argparse.Namespace, work_dir: Path) -> dict[tuple[str, str], list[LoadResult]]:
    results: dict[tuple[str, str], list[LoadResult]] = {}
    processes = Processes()
    copies = (Copy("a", HTTP_BASES[0], work_dir / "a"), Copy("b", HTTP_BASES[1], work_dir / "b"))
    try:
        for round_index in range(args.rounds):
            by_setting = dict(
                zip(SETTINGS, copies if round_index % 2 == 0 else copies[::-1], strict=True)
            )
            for setting, copy in by_setting.items():
                copy.start(processes, args.control or setting)
            if round_index == 0:
                for copy in copies:
                    loaded = preload(copy.http_ports, args.keys, _put_request)
                    if loaded.failed:
                        raise BenchError(f"preload failed: {loaded.sample_failure}")
            interval_s = 0.0 if args.control == "off" else args.scrape_interval_s
            scraper = Scraper(by_setting["on"].http_ports, interval_s)
            with scraper:
                for workload in WORKLOADS * args.repeats:
                    pair = load_both(by_setting, args, workload, f"round{round_index + 1}")
                    for setting, result in pair.items():
                        results.setdefault((setting, workload), []).append(result)
                    on, off = pair["on"], pair["off"]
                    print(
                        f"[round {round_index + 1}] {workload:8s} on (copy "
                        f"{by_setting['on'].name}) {on.ops_per_s:8,.0f} ops/s "
                        f"{on.cpu_us_per_op:6.1f} us/op | off {off.ops_per_s:8,.0f} ops/s "
                        f"{off.cpu_us_per_op:6.1f} us/op | ratio {on.ops_per_s / off.ops_per_s:.3f}"
                        f" | errors {on.errors + off.errors}",
                        flush=True,
                    )
            if scraper.failures:
                raise BenchError(f"{scraper.failures} scrapes failed")
            for copy in copies:
                copy.stop(processes)
    finally:
        os.environ.pop(RECORDING_ENV, None)
        processes.stop_all()
    return results


def _put_request(index: int) -> tuple[str, str, bytes, dict[str, str]]:
    headers = {"Content-Type": "application/octet-stream"}
    return "PUT", f"/v1/kv/{key_name(index)}?consistency=quorum", value_bytes(index), headers


def summary(results: dict[tuple[str, str], list[LoadResult]]) -> list[str]:
    """Per workload: medians, and the on/off ratio of each simultaneous pair summed up as
    its geometric mean ± one standard error (the resolution this run had)."""
    lines = [
        "| workload | pairs | on: ops/s | off: ops/s | on/off ops/s | on: CPU µs/op "
        "| off: CPU µs/op | on/off CPU per op |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workload in WORKLOADS:
        on, off = results.get(("on", workload), []), results.get(("off", workload), [])
        if not on or not off:
            continue
        pairs = list(zip(on, off, strict=True))
        ops = _ratio([a.ops_per_s / b.ops_per_s for a, b in pairs])
        cpu = _ratio([a.cpu_us_per_op / b.cpu_us_per_op for a, b in pairs])
        lines.append(
            f"| {workload} | {len(pairs)} | {statistics.median(r.ops_per_s for r in on):,.0f} "
            f"| {statistics.median(r.ops_per_s for r in off):,.0f} | {ops} "
            f"| {statistics.median(r.cpu_us_per_op for r in on):.1f} "
            f"| {statistics.median(r.cpu_us_per_op for r in off):.1f} | {cpu} |"
        )
    return lines


def _ratio(ratios: list[float]) -> str:
    logs = [math.log(ratio) for ratio in ratios if ratio > 0]
    if not logs:
        return "n/a"
    mean = statistics.fmean(logs)
    error = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("nan")
    return f"{math.exp(mean):.3f} ± {error:.3f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration-s", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--scrape-interval-s", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="load pairs per round")
    parser.add_argument("--micro-only", action="store_true", help="parts 1 and 2 only")
    parser.add_argument(
        "--control",
        choices=SETTINGS,
        help="both copies on, or both off (an A/A run: how far apart two equal copies measure)",
    )
    args = parser.parse_args(argv)
    figures = micro()
    figures.update(in_process())
    for name, value in figures.items():
        print(f"micro {name:42s} {value:10.1f}")
    if args.micro_only:
        return 0
    ensure_tools({"wrk": "wrk"})
    with tempfile.TemporaryDirectory(prefix="dynakv-metrics-cost-") as tmp:
        try:
            results = measure(args, Path(tmp))
        except BenchError as error:
            print(f"metrics_cost failed: {error}", file=sys.stderr)
            return 1
    lines = summary(results)
    print("\n".join(lines))
    raw = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "micro": figures,
        "runs": {
            f"{setting}/{workload}": [
                {"ops_per_s": r.ops_per_s, "cpu_us_per_op": r.cpu_us_per_op, "errors": r.errors}
                for r in runs
            ]
            for (setting, workload), runs in results.items()
        },
    }
    out = REPO_DIR / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"metrics-cost-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(raw, indent=2) + "\n")
    print(f"raw: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
