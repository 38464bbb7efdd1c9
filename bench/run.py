"""dynakv vs etcd and Redis on this machine, in one run: throughput, latency, server CPU per op.

    .venv/bin/python bench/run.py [--duration-s 15] [--connections 32] [--keys 10000]
                                  [--runs 1] [--suite weak|strong|batch|all] [--skip-etcd]
                                  [--skip-redis] [--out docs/benchmarks.md]

Starts a 3-node dynakv cluster (`dynakv dev`), a 3-member etcd cluster and one
Redis on loopback, preloads the key space in each, then runs each workload pair
back to back (dynakv, then its etcd counterpart, then Redis's where it has
one), --runs times, with session gets (a real session's X-Dynakv-Session token)
right after the `one` gets: dynakv and etcd with wrk (one `wrk -t1` process per
node, the connections split evenly, all at once), Redis with `redis-benchmark`
(the same connection count, unpipelined). Prints a table and the ratios against the
targets, and adds a dated section to --out.

Every process it starts is stopped by PID in `finally`; every wait has a
deadline; every load is bounded by --duration-s. Timing goals live here, never
in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import cluster
import etcd
import redis_peer
from common import (
    REPO_DIR,
    VALUE_SIZE_BYTES,
    BenchError,
    LoadResult,
    Processes,
    ensure_tools,
    http_exchange,
    key_name,
    run_wrk,
    value_bytes,
)
from report import Comparison, compare, render_console, render_markdown, update_doc

Pair = tuple[str, str, float | None]
# (dynakv workload, etcd workload, target ratio of dynakv ops/s to etcd ops/s)
WEAK_PAIRS: list[Pair] = [
    ("put", "put", 3.0),
    ("get_one", "get_serializable", 6.0),
    ("get_quorum", "get_linearizable", 4.0),
]
# dynakv workload -> (Redis workload, target ratio of dynakv ops/s to Redis ops/s),
# run right after the pair's etcd workload.
REDIS_PAIRS: dict[str, tuple[str, float | None]] = {
    "get_one": ("get", 0.5),
    "put": ("set", None),
}
# dynakv workload -> dynakv workloads run right after it (before its peers), reported in
# the same table and compared with it and with its etcd peer.
COMPANIONS: dict[str, tuple[str, ...]] = {"get_one": ("get_session",)}
# GET /v1/kv/<key>?consistency=session with one real session's token on every request.
SESSION_WORKLOADS: dict[str, str] = {"get_session": "get session"}  # workload -> label
SESSION_TOKEN_KEYS = 16  # keys the preload's session touches: its token names each
# POST /v1/batch with 25 keys per request; counted per key (no etcd peer).
BATCH_PAIRS: list[Pair] = [
    ("batch_get_one", "get_serializable", None),
    ("batch_put", "put", None),
]
# Linearizable against linearizable. Puts first: in `all` with several runs they
# bring the keys back into their Paxos chains after the previous run's weak puts.
STRONG_PAIRS: list[Pair] = [
    ("put_strong", "put", 2.0),
    ("get_strong", "get_linearizable", 2.0),
    ("put_if_absent", "txn_create", None),
]
SUITES: dict[str, list[Pair]] = {
    "weak": WEAK_PAIRS,
    "strong": STRONG_PAIRS,
    "batch": WEAK_PAIRS + BATCH_PAIRS,
    "all": STRONG_PAIRS + WEAK_PAIRS + BATCH_PAIRS,
}
RESULTS_DIR = REPO_DIR / "bench" / "results"
System = cluster.DynakvCluster | etcd.EtcdCluster | redis_peer.RedisServer


@dataclass
class Run:
    args: argparse.Namespace
    command: str
    started_at: datetime
    machine: dict[str, str]
    results: dict[tuple[str, str], list[LoadResult]] = field(default_factory=dict)
    labels: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    session_token: str = ""  # X-Dynakv-Session for the session workloads


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=int, default=15, help="seconds per workload")
    parser.add_argument("--connections", type=int, default=32, help="total, split over nodes")
    parser.add_argument("--keys", type=int, default=10_000, help="key space size")
    parser.add_argument("--runs", type=int, default=1, help="repeat every workload; medians")
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="weak",
        help="weak: quorum/one; strong: strong put/get and a conditional put; batch: weak and "
        "POST /v1/batch of 25 keys; all: every one",
    )
    parser.add_argument("--skip-etcd", action="store_true", help="dynakv only (no ratios)")
    parser.add_argument("--skip-dynakv", action="store_true", help="etcd only (harness check)")
    parser.add_argument("--skip-redis", action="store_true", help="no Redis beside the gets")
    parser.add_argument(
        "--port-offset",
        type=int,
        default=0,
        help="add to every port (another engineer's run holds the defaults)",
    )
    parser.add_argument("--out", type=Path, default=REPO_DIR / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="do not touch --out")
    parser.add_argument("--keep-data", action="store_true", help="keep data dirs and logs")
    args = parser.parse_args(argv)
    if not 1 <= args.duration_s <= 600:
        parser.error("--duration-s must be 1..600")
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be 1..20")
    if not 3 <= args.connections <= 1000:
        parser.error("--connections must be 3..1000 (at least one per node)")
    if not 1 <= args.keys <= 1_000_000:
        parser.error("--keys must be 1..1000000")
    if not 0 <= args.port_offset <= 10_000:
        parser.error("--port-offset must be 0..10000")
    if args.skip_etcd and args.skip_dynakv:
        parser.error("nothing to run")
    return args


def _preload_consistency(suite: str) -> str:
    """Strong workloads run on keys written strongly, as an application using
    them would (a strong read of a weakly written key first absorbs it: one
    more round, once)."""
    return "quorum" if suite in ("weak", "batch") else "strong"


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine_info() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    dirty = _first_line(
        ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"]
    )
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": platform.release(),
        "load_average_at_start": f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        "python": platform.python_version(),
        "wrk": _first_line(["wrk", "--version"]).split(" [")[0],
        "dynakv_commit": _first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
        + (" + uncommitted changes" if dirty not in ("", "?") else ""),
    }


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`, which stops the clusters


def run_benchmark(run: Run, work_dir: Path) -> None:
    args = run.args
    processes = Processes()
    systems: dict[str, System] = {}
    try:
        if not args.skip_dynakv:
            systems["dynakv"] = cluster.DynakvCluster(processes, work_dir, args.port_offset)
        if not args.skip_etcd:
            systems["etcd"] = etcd.EtcdCluster(processes, work_dir, args.port_offset)
        if not args.skip_redis and any(p[0] in REDIS_PAIRS for p in SUITES[args.suite]):
            systems["redis"] = redis_peer.RedisServer(processes, work_dir, args.port_offset)
        for name, system in systems.items():
            print(f"starting {name} ...", flush=True)
            system.start()
            _preload(run, name, system)
        for run_index in range(args.runs):
            measured: set[tuple[str, str]] = set()  # a workload in two pairs runs once a run
            for pair in SUITES[args.suite]:
                for name, system in systems.items():
                    for workload in _workloads_of(name, pair):
                        if (name, workload) in measured:
                            continue
                        measured.add((name, workload))
                        idle = [
                            p
                            for other in systems.values()
                            if other is not system
                            for p in other.pids
                        ]
                        _run_one(
                            run,
                            name,
                            system,
                            workload=workload,
                            run_index=run_index,
                            work_dir=work_dir,
                            bystander_pids=idle,
                        )
    finally:
        for system in reversed(list(systems.values())):
            try:
                system.stop()
            except (OSError, BenchError, subprocess.TimeoutExpired) as error:
                print(f"stopping failed: {error}", flush=True)
        processes.stop_all()


def _workloads_of(name: str, pair: Pair) -> tuple[str, ...]:
    """What system ``name`` runs for ``pair``, in order (none, one or, for dynakv, the
    pair's workload and its companions)."""
    if name == "dynakv":
        return (pair[0], *COMPANIONS.get(pair[0], ()))
    if name == "etcd":
        return (pair[1],)
    redis = REDIS_PAIRS.get(pair[0])
    return () if redis is None else (redis[0],)


def session_token(ports: list[int], keys: int, touched: int) -> str:
    """The token of a real session: it writes one key (its preload value again) and
    reads ``touched - 1`` others spread over the key space at consistency=session,
    round robin over the nodes, carrying the token each answer returns."""
    token = ""
    indexes = sorted({i * keys // touched for i in range(touched)})
    for step, index in enumerate(indexes):
        method, body = ("PUT", value_bytes(index)) if step == 0 else ("GET", None)
        headers = {"Content-Type": "application/octet-stream"} if body else {}
        if token:
            headers["X-Dynakv-Session"] = token
        path = f"/v1/kv/{key_name(index)}?consistency=session"
        status, reply_headers, reply = http_exchange(
            ports[step % len(ports)], method, path, body, headers=headers, timeout_s=10.0
        )
        if not 200 <= status < 300 or (method == "GET" and len(reply) != VALUE_SIZE_BYTES):
            raise BenchError(f"session: {method} {path} answered {status}: {reply[:300]!r}")
        token = reply_headers.get("x-dynakv-session", "")
        if not token:
            raise BenchError(f"session: {method} {path} answered without X-Dynakv-Session")
    return token


def _preload(run: Run, name: str, system: System) -> None:
    args = run.args
    started = time.monotonic()
    if isinstance(system, redis_peer.RedisServer):
        system.preload(args.keys, args.connections)
        run.machine["redis"] = system.version()
        run.notes.append(f"redis: {args.keys:,} keys SET (random, 5 passes' worth) before the runs")
        return
    if isinstance(system, cluster.DynakvCluster):
        consistency = _preload_consistency(args.suite)
        loaded = system.preload(args.keys, consistency)
        run.notes.append(f"dynakv: keys preloaded with consistency={consistency}")
    else:
        loaded = system.preload(args.keys)
    run.notes.append(
        f"{name}: preloaded {loaded.ok:,}/{args.keys:,} keys in {loaded.elapsed_s:.1f} s"
        + (f"; FAILED {loaded.failed}, e.g. {loaded.sample_failure}" if loaded.failed else "")
    )
    print(run.notes[-1], f"({time.monotonic() - started:.1f} s)", flush=True)
    if isinstance(system, cluster.DynakvCluster):
        run.notes.append(f"dynakv: node PIDs from {system.pid_source}")
        if not loaded.failed:
            run.notes.append(f"dynakv: read-back check {system.check_key(args.keys - 1)}")
        if any(w in SESSION_WORKLOADS for p in SUITES[args.suite] for w in _workloads_of(name, p)):
            touched = min(SESSION_TOKEN_KEYS, args.keys)
            run.session_token = session_token(system.http_ports, args.keys, touched)
            run.notes.append(
                f"dynakv: session gets carry the token of a session that put 1 key and got "
                f"{touched - 1} ({len(run.session_token)} characters, same on every request)"
            )
    else:
        run.machine["etcd"] = system.version()
        if not loaded.failed:
            system.check_key(args.keys - 1)


def _run_one(
    run: Run,
    name: str,
    system: System,
    *,
    workload: str,
    run_index: int,
    work_dir: Path,
    bystander_pids: list[int],
) -> None:
    args = run.args
    if isinstance(system, redis_peer.RedisServer):
        label = redis_peer.WORKLOADS[workload][0]
        result = system.run(
            workload,
            keys=args.keys,
            connections=args.connections,
            duration_s=args.duration_s,
            bystander_pids=bystander_pids,
        )
    else:
        if workload in SESSION_WORKLOADS:
            assert isinstance(system, cluster.DynakvCluster) and run.session_token
            label, ports, script = SESSION_WORKLOADS[workload], system.http_ports, cluster.SCRIPT
        elif isinstance(system, cluster.DynakvCluster):
            label, ports = cluster.WORKLOADS[workload][0], system.http_ports
            script = cluster.script_for(workload)
        else:
            label, script, ports = etcd.WORKLOADS[workload][0], etcd.SCRIPT, system.client_ports
        result = run_wrk(
            script,
            ports,
            script_args=lambda node: _script_args(run, system, workload, run_index * 10 + node + 1),
            connections=args.connections,
            duration_s=args.duration_s,
            server_pids=system.pids,
            bystander_pids=bystander_pids,
            work_dir=work_dir,
            name=f"{name}-{workload}-{run_index + 1}",
            ops_per_request=cluster.ops_per_request(workload) if name == "dynakv" else 1,
        )
    run.results.setdefault((name, workload), []).append(result)
    run.labels[(name, workload)] = label
    loud = (
        f"  !!! {result.errors:,} ERRORS: {result.status} e.g. {result.sample_error}"
        if result.errors
        else ""
    )
    print(
        f"[run {run_index + 1}] {name:6s} {label:19s} {result.ops_per_s:9,.0f} ops/s  "
        f"p50 {result.percentile_ms(50):7.2f} ms  p99 {result.percentile_ms(99):7.2f} ms  "
        f"cpu {result.cpu_us_per_op:7.1f} us/op  busy {result.machine_busy_fraction:4.0%}  "
        f"idle peer {result.bystander_cores:.2f}  others {result.other_cores:.2f} cores{loud}",
        flush=True,
    )


def _script_args(
    run: Run, system: cluster.DynakvCluster | etcd.EtcdCluster, workload: str, seed: int
) -> list[str]:
    if workload in SESSION_WORKLOADS:
        return ["get", "session", str(run.args.keys), str(seed), run.session_token]
    return system.script_args(workload, run.args.keys, seed)


def comparisons(run: Run) -> list[Comparison]:
    rows: list[Comparison] = []
    for dynakv_key, etcd_key, target in SUITES[run.args.suite]:
        if dynakv_key in {p[0] for p in BATCH_PAIRS}:
            continue  # reported, not compared: a batch is not what etcd's range does
        row = _comparison(run, dynakv_key, ("etcd", etcd_key), target)
        if row is not None:
            rows.append(row)
        if dynakv_key in REDIS_PAIRS:
            redis_key, redis_target = REDIS_PAIRS[dynakv_key]
            row = _comparison(run, dynakv_key, ("redis", redis_key), redis_target)
            if row is not None:
                rows.append(row)
        for companion in COMPANIONS.get(dynakv_key, ()):
            for peer in (("dynakv", dynakv_key), ("etcd", etcd_key)):
                row = _comparison(run, companion, peer, None)
                if row is not None:
                    rows.append(row)
    return rows


def _comparison(
    run: Run, dynakv_key: str, peer: tuple[str, str], target: float | None
) -> Comparison | None:
    mine = run.results.get(("dynakv", dynakv_key), [])
    theirs = run.results.get(peer, [])
    if not mine or not theirs:
        return None
    label = f"dynakv {run.labels[('dynakv', dynakv_key)]} / {peer[0]} {run.labels[peer]}"
    return compare(label, mine, theirs, target)


def save_raw(run: Run) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{run.started_at:%Y%m%dT%H%M%SZ}.json"
    raw = {
        "command": run.command,
        "started_at": run.started_at.isoformat(),
        "machine": run.machine,
        "notes": run.notes,
        "results": {
            f"{system}/{workload}": [
                {
                    "ops_per_s": r.ops_per_s,
                    "requests": r.requests,
                    "duration_s": r.duration_s,
                    "p50_ms": r.percentile_ms(50),
                    "p99_ms": r.percentile_ms(99),
                    "status": r.status,
                    "socket_errors": r.socket_errors,
                    "misses": r.misses,
                    "sample_error": r.sample_error,
                    "server_cpu_s": r.server_cpu_s,
                    "server_cores": r.server_cores,
                    "cpu_us_per_op": r.cpu_us_per_op,
                    "machine_busy_fraction": r.machine_busy_fraction,
                    "client_cpu_s": r.client_cpu_s,
                    "bystander_cores": r.bystander_cores,
                    "other_cores": r.other_cores,
                }
                for r in results
            ]
            for (system, workload), results in run.results.items()
        },
    }
    path.write_text(json.dumps(raw, indent=2) + "\n")
    return path


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    tools = {"wrk": "wrk"} | ({} if args.skip_etcd else {"etcd": "etcd-server"})
    if not args.skip_redis:
        tools |= {"redis-server": "redis-server", "redis-benchmark": "redis-tools"}
    try:
        ensure_tools(tools)
    except (BenchError, subprocess.SubprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = Run(
        args=args,
        command=" ".join([".venv/bin/python", "bench/run.py", *argv]),
        started_at=datetime.now(UTC).replace(microsecond=0),
        machine=machine_info(),
    )
    print(f"machine: {run.machine}", flush=True)
    work_dir = Path(tempfile.mkdtemp(prefix="dynakv-bench-"))
    failed = True
    try:
        run_benchmark(run, work_dir)
        failed = False
    except BenchError as error:
        print(f"\nerror: {error}", file=sys.stderr)
    finally:
        if args.keep_data or failed:
            print(f"data dirs and logs kept in {work_dir}", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    if not run.results:
        return 1
    compared = comparisons(run)
    render_console(run.results, run.labels, compared, args.runs)
    print(f"raw results: {save_raw(run)}")
    if failed:
        print("not writing the doc: the run did not finish", file=sys.stderr)
        return 1
    if not args.no_doc:
        section = render_markdown(
            started_at=run.started_at,
            command=run.command,
            machine=run.machine,
            args=args,
            results=run.results,
            labels=run.labels,
            compared=compared,
            notes=run.notes,
        )
        update_doc(args.out, section)
        print(f"updated {args.out}")
    any_errors = any(r.errors for results in run.results.values() for r in results)
    return 3 if any_errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
