"""Real node processes on loopback: start, kill -9, restart, and talk HTTP to them."""

from __future__ import annotations

import http.client
import json
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dynakv.node.dev import DevCluster, is_healthy, start_node

DEADLINE_S = 30.0


def free_port_block(count: int) -> int:
    """A base port with ``count`` consecutive free ports, below the ephemeral range.

    Below it, because a killed node's port must still be free when it restarts:
    inside the ephemeral range another process's outgoing connection can take
    it as a source port in the meantime (EADDRINUSE on restart).
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(max(1024, low - 12000), low - count)
        sockets = []
        try:
            for offset in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port block")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def context(self) -> str | None:
        return self.headers.get("x-dynakv-context")


@dataclass
class Cluster:
    spec: DevCluster
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def port(self, index: int) -> int:
        return self.spec.http_port(index)

    def start(self, index: int) -> None:
        node_id = f"n{index + 1}"
        config = self.spec.data_dir / node_id / "node.toml"
        self.processes[index] = start_node(config, config.parent / "node.log")

    def wait_healthy(self, index: int) -> None:
        def healthy() -> bool:
            process = self.processes[index]
            if process.poll() is not None:
                log = (self.spec.data_dir / f"n{index + 1}" / "node.log").read_text()
                raise AssertionError(f"node n{index + 1} exited:\n{log[-3000:]}")
            return is_healthy("127.0.0.1", self.port(index))

        wait_for(healthy, f"node n{index + 1} healthy")

    def kill(self, index: int) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        process = self.processes[index]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, index: int) -> int:
        process = self.processes[index]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        return process.returncode

    def stop_all(self) -> None:
        for index in list(self.processes):
            self.stop(index)

    def request(
        self,
        index: int,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port(index), timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Response(
                status=response.status,
                headers={k.lower(): v for k, v in response.getheaders()},
                body=response.read(),
            )
        finally:
            connection.close()

    def put(
        self, index: int, key: bytes, value: bytes, *, query: str = "", context: str | None = None
    ) -> Response:
        headers = {"X-Dynakv-Context": context} if context else {}
        return self.request(index, "PUT", kv_path(key, query), value, headers)

    def get(self, index: int, key: bytes, *, query: str = "") -> Response:
        return self.request(index, "GET", kv_path(key, query))

    def delete(self, index: int, key: bytes, *, query: str = "") -> Response:
        return self.request(index, "DELETE", kv_path(key, query))

    def local(self, index: int, key: bytes) -> Any:
        response = self.request(index, "GET", "/v1/admin/local/" + quote(key, safe=""))
        assert response.status == 200, response
        return response.json()["record"]


def kv_path(key: bytes, query: str = "") -> str:
    path = "/v1/kv/" + quote(key, safe="")
    return f"{path}?{query}" if query else path


def make_cluster(
    tmp_path: Path,
    policy: str = "lww",
    replicas: int = 3,
    before_start: Callable[[DevCluster], None] | None = None,
    nodes: int = 3,
) -> Iterator[Cluster]:
    """A running cluster (3 nodes unless told); ``before_start`` may edit the configs."""
    base = free_port_block(2 * nodes)
    spec = DevCluster(
        data_dir=tmp_path / "cluster",
        nodes=nodes,
        http_base_port=base,
        rpc_base_port=base + nodes,
        conflict_policy=policy,
        replicas=replicas,
    )
    spec.data_dir.mkdir(parents=True)
    spec.write_configs()
    if before_start is not None:
        before_start(spec)
    cluster = Cluster(spec)
    try:
        for index in range(nodes):
            cluster.start(index)
        for index in range(nodes):
            cluster.wait_healthy(index)
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A shared lww cluster for tests that leave every node running."""
    yield from make_cluster(tmp_path_factory.mktemp("lww"), "lww")


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, for tests that kill or restart nodes."""
    yield from make_cluster(tmp_path, "lww")


@pytest.fixture(scope="module")
def siblings_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path_factory.mktemp("siblings"), "siblings")


@pytest.fixture
def two_replica_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """N=2 on 3 nodes: a third of the keys live elsewhere than any given node."""
    yield from make_cluster(tmp_path, "lww", replicas=2)
