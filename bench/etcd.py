"""The etcd peer: a 3-member etcd cluster on loopback, as in ../shared/PEERS.md.

Members m1..m3 listen for clients on 127.0.0.1:1610i and for peers on 1620i,
data under the run's temporary directory. Load goes through etcd's JSON
gateway (`POST /v3/kv/put`, `POST /v3/kv/range`), one wrk process per member.
Owns only the etcd processes it starts; stops them by PID.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

from common import (
    LUA_DIR,
    BenchError,
    PreloadResult,
    Processes,
    Tracked,
    check_ports_free,
    http_json,
    http_request,
    key_name,
    log_tail,
    preload,
    value_bytes,
    wait_until,
)

MEMBER_COUNT = 3
CLIENT_PORT_BASE = 16100
PEER_PORT_BASE = 16200
SCRIPT = LUA_DIR / "etcd.lua"

# workload key -> (label, etcd.lua mode)
WORKLOADS = {
    "put": ("put", "put"),
    "get_serializable": ("range serializable", "serializable"),
    "get_linearizable": ("range linearizable", "range"),
    # A txn that puts a fresh key if its create_revision is 0: etcd's create-only put.
    "txn_create": ("txn put if absent", "create"),
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdCluster:
    def __init__(self, processes: Processes, work_dir: Path, port_offset: int = 0) -> None:
        self.processes = processes
        self.work_dir = work_dir
        self.members: list[Tracked] = []
        self.client_base_port = CLIENT_PORT_BASE + port_offset
        self.peer_base_port = PEER_PORT_BASE + port_offset
        self.client_ports = [self.client_base_port + i for i in range(1, MEMBER_COUNT + 1)]
        self.peer_ports = [self.peer_base_port + i for i in range(1, MEMBER_COUNT + 1)]

    @property
    def pids(self) -> list[int]:
        return [member.popen.pid for member in self.members]

    def start(self, deadline_s: float = 30.0) -> None:
        check_ports_free(self.client_ports + self.peer_ports, "etcd")
        initial_cluster = ",".join(
            f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(self.peer_ports, start=1)
        )
        for i in range(1, MEMBER_COUNT + 1):
            client_url = f"http://127.0.0.1:{self.client_base_port + i}"
            peer_url = f"http://127.0.0.1:{self.peer_base_port + i}"
            argv = [
                "etcd", "--name", f"m{i}", "--data-dir", str(self.work_dir / f"etcd-m{i}"),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            ]  # fmt: skip
            log_path = self.work_dir / f"etcd-m{i}.log"
            self.processes.start(f"etcd m{i}", argv, log_path)
            self.members.append(self.processes.tracked[-1])
        for member, port in zip(self.members, self.client_ports, strict=True):
            wait_until(
                functools.partial(self._healthy, port),
                deadline_s,
                f"etcd {member.name} health on :{port}",
                alive=functools.partial(self._exited, member),
            )

    @staticmethod
    def _healthy(port: int) -> bool:
        status, body = http_json(port, "/health")
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    @staticmethod
    def _exited(member: Tracked) -> str | None:
        code = member.popen.poll()
        if code is None:
            return None
        return f"exited with {code}; log tail:\n{log_tail(member.log_path)}"

    def version(self) -> str:
        _, body = http_json(self.client_ports[0], "/version")
        return str(body.get("etcdserver", "?")) if isinstance(body, dict) else "?"

    def preload(self, keys: int) -> PreloadResult:
        headers = {"Content-Type": "application/json"}

        def request_for(index: int) -> tuple[str, str, bytes, dict[str, str]]:
            body = {"key": _b64(key_name(index).encode()), "value": _b64(value_bytes(index))}
            return "POST", "/v3/kv/put", json.dumps(body).encode(), headers

        return preload(self.client_ports, keys, request_for)

    def check_key(self, index: int) -> None:
        """Read one preloaded key back through the gateway, or fail loudly."""
        body = json.dumps({"key": _b64(key_name(index).encode())}).encode()
        status, reply = http_request(self.client_ports[0], "POST", "/v3/kv/range", body)
        if status != 200 or b'"kvs"' not in reply:
            raise BenchError(f"etcd: key {key_name(index)} not readable: {status} {reply[:300]!r}")

    def script_args(self, workload: str, keys: int, seed: int) -> list[str]:
        _, mode = WORKLOADS[workload]
        return [mode, str(keys), str(seed)]

    def stop(self) -> None:
        for member in reversed(self.members):
            code = self.processes.stop(member)
            if code not in (0, None, -15):
                print(f"etcd {member.name} exited with {code}; see {member.log_path}")
        self.members.clear()
