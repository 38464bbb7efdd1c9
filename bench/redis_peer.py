"""The cache peer: one Redis on loopback, loaded by `redis-benchmark`, as in ../shared/PEERS.md.

`redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no` (no
persistence: an in-memory cache, the ceiling for a `one` read), and
`redis-benchmark -c 32 -d 100 -r KEYS -t set|get -n N`, unpipelined, the same
32 connections and 100-byte values as the dynakv and etcd workloads. SET runs
before GET (a preload pass, then the measured SET), so GETs hit.

redis-benchmark counts requests, not seconds: N is sized from the wanted
duration and what the last pass of this run measured (first pass: a guess),
bounded by `REQUESTS_MAX`. Its "Latency by percentile distribution" lines are
cumulative counts at latency points; they become the same kind of histogram
wrk gives, so p50/p99 are computed the same way.

Owns only the redis-server it starts; stops it by PID.
"""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import time
from pathlib import Path

from common import (
    CLOCK_TICKS_PER_S,
    BenchError,
    LoadResult,
    Processes,
    Tracked,
    check_ports_free,
    log_tail,
    machine_cpu_ticks,
    process_cpu_ticks,
    wait_until,
)

PORT = 16379
REQUESTS_MAX = 2_000_000
_GUESS_OPS_PER_S = 20_000.0
# 50.000% <= 0.495 milliseconds (cumulative count 10062)
_PERCENTILE_LINE = re.compile(
    r"^\s*([0-9.]+)% <= ([0-9.]+) milliseconds \(cumulative count (\d+)\)\s*$"
)
_COMPLETED_LINE = re.compile(r"^\s*(\d+) requests completed in ([0-9.]+) seconds\s*$")

# workload key -> (label, redis-benchmark test)
WORKLOADS = {
    "get": ("GET", "get"),
    "set": ("SET", "set"),
}


def parse_benchmark_output(text: str) -> tuple[int, float, dict[int, int]]:
    """(requests, seconds, latency histogram in µs) of one redis-benchmark test's output."""
    requests, seconds = 0, 0.0
    histogram: dict[int, int] = {}
    in_percentiles = False
    seen = 0
    for line in re.split(r"[\r\n]+", text):
        completed = _COMPLETED_LINE.match(line)
        if completed:
            requests, seconds = int(completed.group(1)), float(completed.group(2))
            continue
        if line.startswith("Latency by percentile distribution"):
            in_percentiles, seen = True, 0
            continue
        if not in_percentiles:
            continue
        point = _PERCENTILE_LINE.match(line)
        if point is None:
            if line.strip():
                in_percentiles = False  # the next section
            continue
        value_us = round(float(point.group(2)) * 1000)
        cumulative = int(point.group(3))
        if cumulative > seen:
            histogram[value_us] = histogram.get(value_us, 0) + cumulative - seen
            seen = cumulative
    if not requests or not histogram:
        raise BenchError(f"redis-benchmark output not understood:\n{text[-1500:]}")
    return requests, seconds, histogram


class RedisServer:
    def __init__(self, processes: Processes, work_dir: Path, port_offset: int = 0) -> None:
        self.port = PORT + port_offset
        self.processes = processes
        self.work_dir = work_dir
        self.server: Tracked | None = None
        self._ops_per_s = {test: _GUESS_OPS_PER_S for _, test in WORKLOADS.values()}

    @property
    def pids(self) -> list[int]:
        return [] if self.server is None else [self.server.popen.pid]

    def start(self, deadline_s: float = 30.0) -> None:
        check_ports_free([self.port], "redis")
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.work_dir), "--daemonize", "no",
        ]  # fmt: skip
        self.processes.start("redis-server", argv, self.work_dir / "redis.log")
        self.server = self.processes.tracked[-1]
        wait_until(self._pong, deadline_s, f"redis PING on :{self.port}", alive=self._exited)

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def _exited(self) -> str | None:
        assert self.server is not None
        code = self.server.popen.poll()
        if code is None:
            return None
        return f"exited with {code}; log tail:\n{log_tail(self.server.log_path)}"

    def version(self) -> str:
        done = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        match = re.search(r"v=(\S+)", done.stdout)
        return match.group(1) if match else "?"

    def preload(self, keys: int, connections: int) -> None:
        """SET every key of the space once or more (random keys, ~5 passes' worth)."""
        self._benchmark("set", keys, connections, requests=max(1000, keys * 5))

    def run(
        self,
        workload: str,
        *,
        keys: int,
        connections: int,
        duration_s: int,
        bystander_pids: list[int],
    ) -> LoadResult:
        """One measured pass: ops/s, latency, and redis-server's CPU over it."""
        _, test = WORKLOADS[workload]
        requests = int(min(REQUESTS_MAX, max(1000, self._ops_per_s[test] * duration_s)))
        cpu_before = process_cpu_ticks(self.pids)
        bystander_before = process_cpu_ticks(bystander_pids)
        busy_before, total_before = machine_cpu_ticks()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        text = self._benchmark(test, keys, connections, requests=requests)
        elapsed_s = time.monotonic() - started
        cpu_after = process_cpu_ticks(self.pids)
        bystander_after = process_cpu_ticks(bystander_pids)
        busy_after, total_after = machine_cpu_ticks()
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        done, seconds, histogram = parse_benchmark_output(text)
        result = LoadResult(
            requests=done,
            duration_s=seconds or elapsed_s,
            status={"200": done},
            latency_hist_us=histogram,
        )
        self._ops_per_s[test] = result.ops_per_s or _GUESS_OPS_PER_S
        ticks_per_s = CLOCK_TICKS_PER_S
        # redis-benchmark is the only child reaped during the pass: the rusage is its.
        result.client_cpu_s = (
            children_after.ru_utime
            + children_after.ru_stime
            - children_before.ru_utime
            - children_before.ru_stime
        )
        result.server_cpu_s = (cpu_after - cpu_before) / ticks_per_s
        if total_after > total_before:
            total_s = (total_after - total_before) / ticks_per_s
            busy_s = (busy_after - busy_before) / ticks_per_s
            result.machine_busy_fraction = busy_s / total_s
            cpus = len(_cpu_lines())
            bystander_s = (bystander_after - bystander_before) / ticks_per_s
            result.bystander_cores = bystander_s / total_s * cpus
            other_s = busy_s - result.server_cpu_s - result.client_cpu_s - bystander_s
            result.other_cores = max(0.0, other_s / total_s * cpus)
        return result

    def _benchmark(self, test: str, keys: int, connections: int, *, requests: int) -> str:
        argv = [
            "redis-benchmark", "-h", "127.0.0.1", "-p", str(self.port), "-c", str(connections),
            "-d", "100", "-r", str(keys), "-n", str(requests), "-t", test,
        ]  # fmt: skip
        timeout_s = 60 + requests / 1000  # even at 1k ops/s it ends
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"redis-benchmark -t {test} overran {timeout_s:.0f} s") from error
        if done.returncode != 0:
            raise BenchError(f"redis-benchmark failed ({done.returncode}): {done.stderr[-1500:]}")
        return done.stdout

    def stop(self) -> None:
        if self.server is not None:
            code = self.processes.stop(self.server)
            if code not in (0, None, -15):
                print(f"redis-server exited with {code}; see {self.server.log_path}")
            self.server = None


def _cpu_lines() -> list[str]:
    return [
        line
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("cpu") and line[3].isdigit()
    ]
