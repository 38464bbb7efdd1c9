"""Shared plumbing for bench/run.py: tools, ports, processes, /proc CPU, wrk, preload.

Owns every subprocess the benchmark starts (`Processes`): each is started in its
own session, remembered, and stopped by PID (SIGTERM, then SIGKILL after a
deadline) from a `finally`. Every wait here has a deadline; every load loop is
bounded in count and time. Network traffic stays on 127.0.0.1.

Never kills by name, never touches a process it did not start (or, for the
node processes that `dynakv dev` forks, one whose start time changed since we
looked it up).
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LUA_DIR = BENCH_DIR / "lua"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
JSON_MARKER = "@@BENCH_JSON@@ "
VALUE_SIZE_BYTES = 100


class BenchError(Exception):
    """The benchmark cannot go on; the message says what to do."""


# --- tools -----------------------------------------------------------------------------


def ensure_tools(binaries_to_packages: dict[str, str]) -> None:
    """Install the apt packages whose binaries are missing (apt-get update once if needed)."""
    missing = sorted(
        {pkg for binary, pkg in binaries_to_packages.items() if shutil.which(binary) is None}
    )
    if not missing:
        return
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise BenchError(f"need {missing} (apt) and not root; install them first")
        prefix = ["sudo", "-n"]
    install = [*prefix, "apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", *missing]
    print(f"installing {missing}: {' '.join(install)}", flush=True)
    if subprocess.run(install, timeout=900, check=False).returncode != 0:
        subprocess.run([*prefix, "apt-get", "update"], timeout=600, check=False)
        subprocess.run(install, timeout=900, check=True)
    still = [binary for binary in binaries_to_packages if shutil.which(binary) is None]
    if still:
        raise BenchError(f"still missing after apt-get install: {still}")


# --- ports -----------------------------------------------------------------------------


def check_ports_free(ports: Iterable[int], owner: str) -> None:
    """Fail clearly if any loopback port is taken (a leftover run, another tenant)."""
    busy: list[int] = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    if busy:
        raise BenchError(
            f"{owner}: port(s) {busy} on 127.0.0.1 already in use. Find the owner with "
            f"`ss -ltnp 'sport = :{busy[0]}'` (a leftover from an earlier run?) and stop it "
            "by its PID, then rerun."
        )


# --- processes -------------------------------------------------------------------------


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    fields = _proc_stat_fields(pid)
    return None if fields is None else int(fields[19])


def process_alive(pid: int) -> bool:
    fields = _proc_stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """Direct children of pid, from /proc (no psutil)."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def descendant_pids(pid: int) -> list[int]:
    found: list[int] = []
    frontier = [pid]
    while frontier and len(found) < 1000:
        children = child_pids(frontier.pop())
        found.extend(children)
        frontier.extend(children)
    return sorted(found)


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass
class Tracked:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Processes:
    """Every long-lived process the benchmark started; `stop_all` runs from `finally`."""

    tracked: list[Tracked] = field(default_factory=list)
    # PIDs we did not fork ourselves (nodes forked by `dynakv dev`), with start times.
    foreign: dict[int, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C reaches us; we stop them ourselves
                cwd=REPO_DIR,
            )
        self.tracked.append(Tracked(name, popen, log_path))
        return popen

    def adopt(self, pid: int) -> None:
        """Remember a PID we did not fork, so `stop_all` can make sure it is gone."""
        start = process_start_ticks(pid)
        if start is not None:
            self.foreign[pid] = start

    def stop(self, tracked: Tracked, term_timeout_s: float = 20.0) -> int | None:
        popen = tracked.popen
        if popen.poll() is None:
            os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=term_timeout_s)
            except subprocess.TimeoutExpired:
                print(f"{tracked.name} (pid {popen.pid}) ignored SIGTERM; SIGKILL", flush=True)
                os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        if tracked in self.tracked:
            self.tracked.remove(tracked)
        return popen.returncode

    def stop_foreign(self, term_timeout_s: float = 10.0) -> None:
        for pid, start in sorted(self.foreign.items()):
            if process_start_ticks(pid) != start or not process_alive(pid):
                continue  # gone (or the PID was reused): not ours to signal
            print(f"pid {pid} outlived its parent; SIGTERM", flush=True)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + term_timeout_s
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if process_alive(pid) and process_start_ticks(pid) == start:
                os.kill(pid, signal.SIGKILL)
        self.foreign.clear()

    def stop_all(self) -> None:
        for tracked in reversed(list(self.tracked)):
            try:
                self.stop(tracked)
            except (OSError, subprocess.TimeoutExpired) as error:
                print(f"could not stop {tracked.name} (pid {tracked.popen.pid}): {error}")
        self.stop_foreign()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --- CPU accounting --------------------------------------------------------------------


def process_cpu_ticks(pids: Iterable[int]) -> int:
    """utime+stime (all threads) of the given processes, in clock ticks."""
    total = 0
    for pid in pids:
        fields = _proc_stat_fields(pid)
        if fields is None:
            raise BenchError(f"server pid {pid} is gone; it crashed or was stopped mid-run")
        total += int(fields[11]) + int(fields[12])
    return total


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) ticks summed over all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user..steal; guest is already inside user
    return total - idle, total


# --- HTTP helpers ----------------------------------------------------------------------


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 2.0,
) -> tuple[int, bytes]:
    status, _, reply = http_exchange(port, method, path, body, headers=headers, timeout_s=timeout_s)
    return status, reply


def http_exchange(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 2.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers with lowercase names, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        reply_headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, reply_headers, response.read()
    finally:
        connection.close()


def http_json(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    """GET and decode JSON; (status, None) if the body is not JSON."""
    status, body = http_request(port, "GET", path, timeout_s=timeout_s)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def wait_until(
    ready: Callable[[], bool],
    deadline_s: float,
    what: str,
    alive: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll `ready` until it is true; `alive` returns a reason to give up early."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        reason = alive()
        if reason is not None:
            raise BenchError(f"{what}: {reason}")
        try:
            if ready():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    raise BenchError(f"{what}: not ready after {deadline_s:.0f} s")


# --- preload ---------------------------------------------------------------------------

RequestFor = Callable[[int], tuple[str, str, bytes, dict[str, str]]]


@dataclass
class PreloadResult:
    keys: int
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    sample_failure: str | None = None
    elapsed_s: float = 0.0

    def merge_failure(self, what: str, detail: str) -> None:
        self.failed[what] = self.failed.get(what, 0) + 1
        if self.sample_failure is None:
            self.sample_failure = f"{what}: {detail[:300]}"


def preload(
    ports: list[int],
    keys: int,
    request_for: RequestFor,
    *,
    is_ok: Callable[[int, bytes], bool] = lambda status, _body: 200 <= status < 300,
    threads_per_port: int = 8,
    deadline_s: float = 180.0,
) -> PreloadResult:
    """Write every key once over keep-alive connections spread across the nodes.

    Bounded: each key is tried at most twice, and the whole load stops at the deadline.
    """
    result = PreloadResult(keys=keys)
    lock = threading.Lock()
    worker_count = threads_per_port * len(ports)
    deadline = time.monotonic() + deadline_s
    started = time.monotonic()

    def worker(index: int) -> None:
        port = ports[index % len(ports)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for key_index in range(index, keys, worker_count):
                if time.monotonic() > deadline:
                    with lock:
                        result.merge_failure("deadline", f"preload passed {deadline_s} s")
                    return
                method, path, body, headers = request_for(key_index)
                for attempt in range(2):
                    try:
                        connection.request(method, path, body=body, headers=headers)
                        response = connection.getresponse()
                        reply = response.read()
                    except (OSError, http.client.HTTPException) as error:
                        connection.close()
                        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                        if attempt == 1:
                            with lock:
                                result.merge_failure(type(error).__name__, str(error))
                        continue
                    with lock:
                        if is_ok(response.status, reply):
                            result.ok += 1
                        else:
                            result.merge_failure(str(response.status), reply.decode("latin-1"))
                    break
        finally:
            connection.close()

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(worker_count)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 15)
    result.elapsed_s = time.monotonic() - started
    return result


# --- wrk -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One workload, merged over the per-node wrk processes."""

    requests: int = 0
    duration_s: float = 0.0
    status: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    misses: int = 0
    sample_error: str | None = None
    latency_hist_us: dict[int, int] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # the wrk processes
    machine_busy_fraction: float = 0.0
    bystander_cores: float = 0.0  # the other (idle) cluster of this run
    other_cores: float = 0.0  # CPU used by none of those nor wrk: other tenants, the harness
    ops_per_request: int = 1  # a batch request carries several operations (keys)

    @property
    def ok(self) -> int:
        two_xx = sum(n for code, n in self.status.items() if code.startswith("2"))
        return two_xx - self.misses

    @property
    def errors(self) -> int:
        """Non-2xx replies + replies without the value + socket errors and timeouts."""
        non_2xx = sum(n for code, n in self.status.items() if not code.startswith("2"))
        return non_2xx + self.misses + sum(self.socket_errors.values())

    @property
    def ops_per_s(self) -> float:
        """Operations per second: a batch request counts once per key it carries."""
        return self.ok * self.ops_per_request / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        operations = self.requests * self.ops_per_request
        return self.server_cpu_s * 1e6 / operations if operations else float("nan")

    def percentile_ms(self, percent: float) -> float:
        total = sum(self.latency_hist_us.values())
        if total == 0:
            return float("nan")
        rank = percent / 100.0 * total
        seen = 0
        for value_us in sorted(self.latency_hist_us):
            seen += self.latency_hist_us[value_us]
            if seen >= rank:
                return value_us / 1000.0
        return max(self.latency_hist_us) / 1000.0

    def add_wrk_report(self, report: dict[str, Any]) -> None:
        self.requests += int(report["requests"])
        self.duration_s = max(self.duration_s, report["duration_us"] / 1e6)
        for code, count in report["status"].items():
            self.status[code] = self.status.get(code, 0) + int(count)
        for kind, count in report["errors"].items():
            # wrk's "status" error count duplicates our per-code counts.
            if kind != "status" and count:
                self.socket_errors[kind] = self.socket_errors.get(kind, 0) + int(count)
        self.misses += int(report["misses"])
        if self.sample_error is None and report.get("sample_error"):
            self.sample_error = str(report["sample_error"])
        for value_us, count in report["latency_hist"]:
            self.latency_hist_us[int(value_us)] = self.latency_hist_us.get(int(value_us), 0) + count


def split_connections(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_wrk(
    script: Path,
    ports: list[int],
    *,
    script_args: Callable[[int], list[str]],
    connections: int,
    duration_s: int,
    server_pids: list[int],
    bystander_pids: list[int],
    work_dir: Path,
    name: str,
    ops_per_request: int = 1,
) -> LoadResult:
    """One wrk process per node (-t1, connections split evenly), all at once; merge reports."""
    if connections < len(ports):
        raise BenchError(f"need at least {len(ports)} connections, one per node")
    result = LoadResult(ops_per_request=ops_per_request)
    running: list[tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = []
    cpu_before = process_cpu_ticks(server_pids)
    bystander_before = process_cpu_ticks(bystander_pids)
    busy_before, total_before = machine_cpu_ticks()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        for node, (port, share) in enumerate(
            zip(ports, split_connections(connections, len(ports)), strict=True)
        ):
            out_path = work_dir / f"wrk-{name}-{node + 1}.out"
            out = out_path.open("wb")
            argv = [
                "wrk", "-t1", f"-c{share}", f"-d{duration_s}s", "--timeout", "5s",
                "-s", str(script), f"http://127.0.0.1:{port}", "--", *script_args(node),
            ]  # fmt: skip
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_DIR)
            running.append((popen, out_path, out))
        deadline = time.monotonic() + duration_s + 30
        for popen, out_path, _ in running:
            try:
                popen.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as error:
                raise BenchError(f"wrk {name} overran its deadline; see {out_path}") from error
    finally:
        for popen, _, stream in running:
            if popen.poll() is None:
                os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
            stream.close()
    cpu_after = process_cpu_ticks(server_pids)
    bystander_after = process_cpu_ticks(bystander_pids)
    busy_after, total_after = machine_cpu_ticks()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for popen, out_path, _ in running:
        text = out_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith(JSON_MARKER)]
        if popen.returncode != 0 or not lines:
            raise BenchError(f"wrk {name} failed (exit {popen.returncode}):\n{text[-2000:]}")
        result.add_wrk_report(json.loads(lines[-1][len(JSON_MARKER) :]))
    result.server_cpu_s = (cpu_after - cpu_before) / CLOCK_TICKS_PER_S
    bystander_s = (bystander_after - bystander_before) / CLOCK_TICKS_PER_S
    # Only the wrk processes are reaped during the run, so the children's rusage is theirs.
    result.client_cpu_s = (
        children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime
    )
    if total_after > total_before:
        total_s = (total_after - total_before) / CLOCK_TICKS_PER_S
        busy_s = (busy_after - busy_before) / CLOCK_TICKS_PER_S
        result.machine_busy_fraction = busy_s / total_s
        other_s = busy_s - result.server_cpu_s - result.client_cpu_s - bystander_s
        cpus = sum(  # the CPUs /proc/stat's first line sums over
            1
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("cpu") and line[3].isdigit()
        )
        result.other_cores = max(0.0, other_s / total_s * cpus)
        result.bystander_cores = bystander_s / total_s * cpus
    return result


def value_bytes(index: int) -> bytes:
    """100-byte preload value for key `index` (wrk writes a fixed value of the same size)."""
    head = f"preload-{index:08d}-".encode()
    return (head + b"x" * VALUE_SIZE_BYTES)[:VALUE_SIZE_BYTES]


def key_name(index: int) -> str:
    return f"key{index:08d}"
