"""The system under test: a local 3-node dynakv cluster started with `dynakv dev`.

`dynakv dev --data-dir DIR --http-base-port 18001 --rpc-base-port 19001` runs
node i (1..3) as its own OS process, HTTP on 127.0.0.1:(18000+i), RPC on
(19000+i), and stops them all on SIGTERM. We wait for every node's `/health`,
find the node PIDs (from `/v1/status` or `/health` field `pid`, else the dev
process's descendants in /proc) to charge CPU to, and stop `dev` by PID.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from common import (
    LUA_DIR,
    REPO_DIR,
    BenchError,
    PreloadResult,
    Processes,
    Tracked,
    check_ports_free,
    descendant_pids,
    http_json,
    http_request,
    key_name,
    log_tail,
    preload,
    process_alive,
    process_cmdline,
    value_bytes,
    wait_until,
)

NODE_COUNT = 3
HTTP_PORT_BASE = 18001
RPC_PORT_BASE = 19001
SCRIPT = LUA_DIR / "dynakv.lua"
BATCH_SCRIPT = LUA_DIR / "dynakv_batch.lua"
BATCH_KEYS = 25  # keys per POST /v1/batch request
DYNAKV_BIN = REPO_DIR / ".venv" / "bin" / "dynakv"

# workload key -> (label, dynakv.lua mode, consistency)
WORKLOADS = {
    "put": ("put quorum", "put", "quorum"),
    "get_one": ("get one", "get", "one"),
    "get_quorum": ("get quorum", "get", "quorum"),
    "put_strong": ("put strong", "put", "strong"),
    "get_strong": ("get strong", "get", "strong"),
    # If-None-Match: * on a fresh key each time: a conditional put that always holds.
    "put_if_absent": ("put if-none-match *", "create", "strong"),
    # POST /v1/batch: BATCH_KEYS random keys per request, counted per key.
    "batch_get_one": (f"batch get one x{BATCH_KEYS} (per key)", "get", "one"),
    "batch_put": (f"batch put quorum x{BATCH_KEYS} (per key)", "put", "quorum"),
}


def script_for(workload: str) -> Path:
    """The wrk script that runs ``workload``."""
    return BATCH_SCRIPT if workload.startswith("batch_") else SCRIPT


def ops_per_request(workload: str) -> int:
    """Operations (keys) one request of ``workload`` carries."""
    return BATCH_KEYS if workload.startswith("batch_") else 1


def dev_help() -> str | None:
    """`dynakv dev --help` text, or None if the command does not exist yet."""
    if not DYNAKV_BIN.exists():
        return None
    try:
        done = subprocess.run(
            [str(DYNAKV_BIN), "dev", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=REPO_DIR,
        )
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 else None


class DynakvCluster:
    def __init__(self, processes: Processes, work_dir: Path, port_offset: int = 0) -> None:
        self.processes = processes
        self.work_dir = work_dir
        self.dev: Tracked | None = None
        self.http_base_port = HTTP_PORT_BASE + port_offset
        self.rpc_base_port = RPC_PORT_BASE + port_offset
        self.http_ports = [self.http_base_port + i for i in range(NODE_COUNT)]
        self.rpc_ports = [self.rpc_base_port + i for i in range(NODE_COUNT)]
        self.pids: list[int] = []
        self.pid_source = ""

    def start(self, deadline_s: float = 30.0) -> None:
        help_text = dev_help()
        if help_text is None:
            raise BenchError(f"`{DYNAKV_BIN} dev --help` fails: the dev command is not there yet")
        for flag in ("--data-dir", "--http-base-port", "--rpc-base-port"):
            if flag not in help_text:
                raise BenchError(f"`dynakv dev` has no {flag}; its --help says:\n{help_text}")
        check_ports_free(self.http_ports + self.rpc_ports, "dynakv")
        argv = [
            str(DYNAKV_BIN), "dev", "--data-dir", str(self.work_dir / "dynakv"),
            "--http-base-port", str(self.http_base_port),
            "--rpc-base-port", str(self.rpc_base_port),
        ]  # fmt: skip
        self.processes.start("dynakv dev", argv, self.work_dir / "dynakv-dev.log")
        self.dev = self.processes.tracked[-1]
        for port in self.http_ports:
            wait_until(
                functools.partial(self._healthy, port),
                deadline_s,
                f"dynakv node health on :{port}",
                alive=self._dev_exited,
            )
        self._find_pids()

    @staticmethod
    def _healthy(port: int) -> bool:
        status, _ = http_request(port, "GET", "/health")
        return status == 200

    def _dev_exited(self) -> str | None:
        assert self.dev is not None
        code = self.dev.popen.poll()
        if code is None:
            return None
        return f"`dynakv dev` exited with {code}; log tail:\n{log_tail(self.dev.log_path)}"

    def _find_pids(self) -> None:
        assert self.dev is not None
        for path in ("/v1/status", "/health"):
            pids: list[int] = []
            for port in self.http_ports:
                try:
                    status, body = http_json(port, path)
                except OSError:
                    break
                if (
                    status != 200
                    or not isinstance(body, dict)
                    or not isinstance(body.get("pid"), int)
                ):
                    break
                pids.append(body["pid"])
            if len(set(pids)) == NODE_COUNT and all(process_alive(pid) for pid in pids):
                self.pids, self.pid_source = pids, f"`GET {path}` field pid"
                break
        else:
            found = descendant_pids(self.dev.popen.pid)
            if not found:
                raise BenchError("no node PIDs: no pid in /v1/status or /health, no dev children")
            self.pids, self.pid_source = found, "descendants of the dev process in /proc"
        for pid in self.pids:
            self.processes.adopt(pid)
        print(f"dynakv node pids {self.pids} ({self.pid_source})", flush=True)
        for pid in self.pids:
            print(f"  {pid}: {process_cmdline(pid)[:160]}", flush=True)

    def preload(self, keys: int, consistency: str = "quorum") -> PreloadResult:
        """Write every key once at ``consistency`` (``strong``: the keys start in
        their Paxos chains, so strong reads never first absorb a weak write)."""
        headers = {"Content-Type": "application/octet-stream"}

        def request_for(index: int) -> tuple[str, str, bytes, dict[str, str]]:
            return (
                "PUT",
                f"/v1/kv/{key_name(index)}?consistency={consistency}",
                value_bytes(index),
                headers,
            )

        return preload(self.http_ports, keys, request_for)

    def check_key(self, index: int) -> str:
        """Read one preloaded key back; return a description of the reply for the notes."""
        path = f"/v1/kv/{key_name(index)}?consistency=quorum"
        status, reply = http_request(self.http_ports[0], "GET", path)
        if status != 200:
            raise BenchError(f"dynakv: GET {path} answered {status}: {reply[:300]!r}")
        return f"GET {path} → {status}, {len(reply)} bytes: {reply[:24]!r}…"

    def script_args(self, workload: str, keys: int, seed: int) -> list[str]:
        _, mode, consistency = WORKLOADS[workload]
        extra = [str(BATCH_KEYS)] if workload.startswith("batch_") else []
        return [mode, consistency, str(keys), str(seed), *extra]

    def stop(self) -> None:
        if self.dev is not None:
            code = self.processes.stop(self.dev, term_timeout_s=20.0)
            if code not in (0, -15, None):
                print(f"`dynakv dev` exited with {code}; log: {self.dev.log_path}")
            self.dev = None
        self.processes.stop_foreign()  # nodes that outlived dev, by PID
