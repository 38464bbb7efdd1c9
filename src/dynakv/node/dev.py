"""`dynakv dev`: a local cluster of separate node processes on loopback.

Writes one config file per node under the data directory, and a cluster
secret (``cluster.secret``, mode 0600, generated once and kept with the data
so a restarted dev cluster's members still recognise each other), starts each node as
its own OS process (``python -m dynakv serve``), waits until every node
answers ``/health``, prints what to type next, and on Ctrl-C or SIGTERM stops
every node by its PID (SIGTERM, then SIGKILL after a deadline). Every wait is
bounded.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from dynakv.config import generate_secret_file

HEALTH_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0


@dataclass(frozen=True, slots=True)
class DevCluster:
    data_dir: Path
    nodes: int = 3
    http_base_port: int = 8001
    rpc_base_port: int = 9001
    host: str = "127.0.0.1"
    conflict_policy: str = "lww"
    replicas: int = 3
    engine: str = "rocksdb"

    def node_ids(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def http_port(self, index: int) -> int:
        return self.http_base_port + index

    def config_text(self, node_id: str, *, own: tuple[str, ...] = ()) -> str:
        """A node's config file; ``own``: top-level lines of a node not among [[nodes]]."""
        lines = [
            f'node_id = "{node_id}"',
            f'data_dir = "{(self.data_dir / node_id).resolve()}"',
            f'engine = "{self.engine}"',
            f'cluster_secret_file = "{self.secret_path.resolve()}"',
            *own,
            "",
            "[cluster]",
            'name = "dev"',
            "partitions = 1024",
            f"replicas = {self.replicas}",
            f'conflict_policy = "{self.conflict_policy}"',
        ]
        for index, other in enumerate(self.node_ids()):
            lines += [
                "",
                "[[nodes]]",
                f'id = "{other}"',
                f'zone = "z{index % 3 + 1}"',
                f'http = "{self.host}:{self.http_base_port + index}"',
                f'rpc = "{self.host}:{self.rpc_base_port + index}"',
            ]
        return "\n".join(lines) + "\n"

    def write_joiner_config(self, node_id: str, http_port: int, rpc_port: int, zone: str) -> Path:
        """The config of a node that joins the running cluster (seeds: the first members)."""
        seeds = ", ".join(f'"{self.host}:{self.rpc_base_port + i}"' for i in range(self.nodes))
        own = (
            f'zone = "{zone}"',
            f'http = "{self.host}:{http_port}"',
            f'rpc = "{self.host}:{rpc_port}"',
            f"seeds = [{seeds}]",
            "join = true",
        )
        node_dir = self.data_dir / node_id
        node_dir.mkdir(parents=True, exist_ok=True)
        path = node_dir / "node.toml"
        path.write_text(self.config_text(node_id, own=own))
        return path

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "cluster.secret"

    def write_configs(self) -> list[Path]:
        generate_secret_file(self.secret_path)
        paths = []
        for node_id in self.node_ids():
            node_dir = self.data_dir / node_id
            node_dir.mkdir(parents=True, exist_ok=True)
            path = node_dir / "node.toml"
            path.write_text(self.config_text(node_id))
            paths.append(path)
        return paths


def start_node(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log_file = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "dynakv", "serve", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log_file.close()  # the child holds its own descriptor


def is_healthy(host: str, port: int, timeout_s: float = 1.0) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def wait_healthy(cluster: DevCluster, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    pending = set(range(cluster.nodes))
    while pending:
        for index in sorted(pending):
            if processes[index].poll() is not None:
                raise RuntimeError(
                    f"node n{index + 1} exited with {processes[index].returncode}; see "
                    f"{cluster.data_dir / f'n{index + 1}' / 'node.log'}"
                )
            if is_healthy(cluster.host, cluster.http_port(index)):
                pending.discard(index)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"nodes {sorted(f'n{i + 1}' for i in pending)} not healthy "
                f"after {HEALTH_DEADLINE_S:.0f} s"
            )
        if pending:
            time.sleep(0.1)


def stop_nodes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_DEADLINE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def banner(cluster: DevCluster) -> str:
    first = f"{cluster.host}:{cluster.http_port(0)}"
    last = f"{cluster.host}:{cluster.http_port(cluster.nodes - 1)}"
    endpoints = ",".join(f"{cluster.host}:{cluster.http_port(i)}" for i in range(cluster.nodes))
    return f"""
dynakv dev cluster: {cluster.nodes} nodes, N={cluster.replicas}, policy={cluster.conflict_policy}
  data under {cluster.data_dir}  (logs: {cluster.data_dir}/n*/node.log)
  HTTP: {endpoints}

Try, in another terminal:
  curl -X PUT --data-binary 'hello' 'http://{first}/v1/kv/greeting'
  curl -i 'http://{last}/v1/kv/greeting?consistency=all'
  curl -X PUT --data-binary 'bye' 'http://{first}/v1/kv/session1?ttl=30'
  curl -X DELETE 'http://{first}/v1/kv/greeting'
  curl -s 'http://{first}/v1/status' | python3 -m json.tool
  .venv/bin/dynakv put greeting hello --endpoints {endpoints}
  .venv/bin/dynakv get greeting --consistency one
  .venv/bin/dynakv status

Grow and shrink it (from another terminal; docs/operations.md):
  .venv/bin/dynakv dev-join --data-dir {cluster.data_dir} --nodes {cluster.nodes} \
      --node n{cluster.nodes + 1} --http-port {cluster.http_port(cluster.nodes)} \
      --rpc-port {cluster.rpc_base_port + cluster.nodes} --rpc-base-port {cluster.rpc_base_port}
  .venv/bin/dynakv admin leave --endpoint {cluster.host}:{cluster.http_port(cluster.nodes)}

Ctrl-C stops every node.
"""


def run_dev(cluster: DevCluster) -> int:
    cluster.data_dir.mkdir(parents=True, exist_ok=True)
    configs = cluster.write_configs()
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for path in configs:
            processes.append(start_node(path, path.parent / "node.log"))
        wait_healthy(cluster, processes)
        print(banner(cluster), flush=True)
        for index, process in enumerate(processes):
            print(f"  n{index + 1}: pid {process.pid}", flush=True)
        exited: set[int] = set()
        while not stopping:
            for index, process in enumerate(processes):
                if index not in exited and process.poll() is not None:
                    exited.add(index)
                    print(
                        f"node n{index + 1} (pid {process.pid}) exited with {process.returncode}",
                        flush=True,
                    )
            time.sleep(0.2)
    except RuntimeError as exc:
        print(f"dynakv dev: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping nodes...", flush=True)
        stop_nodes(processes)
        print("all nodes stopped.", flush=True)
    return 0
