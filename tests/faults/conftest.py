"""The real-fault suite's cluster: node processes started where the harness
puts them (a network namespace each, or loopback), HTTP to them through the
harness's sockets, a concurrent quorum-write load, and the read-back check.

Owns the node processes it starts (by PID: the Python process itself, never a
wrapper; each dies with the test process, ``setpriv --pdeathsig KILL``), their
configs and logs. Every wait has a deadline, every loop a count bound, and the
load records every outcome (bounded by ``writes_max``).
Must never: leave a node process running after ``stop_all``; count a write as
acknowledged unless the node answered 204.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest

from dynakv.config import generate_secret_file
from tests.faults import netns

DEADLINE_S: Final = 30.0
HTTP_TIMEOUT_S: Final = 8.0  # far above the node's request timeout: a hang shows
STOP_DEADLINE_S: Final = 15.0
PROBLEMS_SHOWN_MAX: Final = 10

Opener = Callable[[str, int, float], socket.socket]


def fault_skip_reason(tools: Sequence[str]) -> str | None:
    """Why the real-fault tests cannot run here, or None."""
    if os.geteuid() != 0:
        return (
            "real faults need root (network namespaces, iptables, loop mounts): "
            "run `make test` as root, as CI does"
        )
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found: `make test` as root installs them (apt)"
    return None


def require_fault_tools(*tools: str) -> None:
    reason = fault_skip_reason(tools)
    if reason is not None:
        pytest.skip(reason)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> float:
    """Poll ``condition`` until true; the seconds it took, or AssertionError."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


# --- nodes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """Where one node runs: its addresses, data directory and namespace."""

    node_id: str
    host: str
    http_port: int
    rpc_port: int
    data_dir: Path
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased

    def json(self) -> Any:
        return json.loads(self.body)


class NotSent(ConnectionError):
    """The connection could not be opened: the request never left the client, so
    it took no effect anywhere (unlike an error once it was sent)."""


class _Connection(http.client.HTTPConnection):
    """HTTP over a socket from the harness's opener (maybe in another namespace)."""

    def __init__(self, host: str, port: int, timeout_s: float, opener: Opener) -> None:
        super().__init__(host, port, timeout=timeout_s)
        self._opener = opener
        self._timeout_s = timeout_s

    def connect(self) -> None:
        self.sock = self._opener(self.host, self.port, self._timeout_s)


def loopback_opener(host: str, port: int, timeout_s: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout_s)


class FaultCluster:
    """Real node processes at their places, and HTTP to them."""

    def __init__(self, home: Path, places: Sequence[Place], opener: Opener) -> None:
        self.home = home
        self.places = tuple(places)
        self._opener = opener
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def write_configs(self, *, extra_toml: str = "") -> None:
        """One config per node, a shared cluster secret; ``extra_toml`` is appended."""
        secret = self.home / "cluster.secret"
        generate_secret_file(secret)
        nodes = []
        for index, place in enumerate(self.places):
            nodes += [
                "[[nodes]]",
                f'id = "{place.node_id}"',
                f'zone = "z{index % 3 + 1}"',
                f'http = "{place.host}:{place.http_port}"',
                f'rpc = "{place.host}:{place.rpc_port}"',
                "",
            ]
        for place in self.places:
            head = [
                f'node_id = "{place.node_id}"',
                f'data_dir = "{place.data_dir}"',
                f'cluster_secret_file = "{secret}"',
                "",
                "[cluster]",
                'name = "faults"',
                "partitions = 256",
                f"replicas = {min(3, len(self.places))}",
                "",
            ]
            self.config_path(place).parent.mkdir(parents=True, exist_ok=True)
            self.config_path(place).write_text("\n".join(head + nodes) + "\n" + extra_toml)

    def config_path(self, place: Place) -> Path:
        return self.home / place.node_id / "node.toml"

    def log_path(self, index: int) -> Path:
        return self.home / self.places[index].node_id / "node.log"

    def start(self, index: int) -> None:
        place = self.places[index]
        argv = ["setpriv", "--pdeathsig", "KILL", "--", sys.executable, "-m", "dynakv", "serve"]
        argv += ["--config", str(self.config_path(place))]
        if place.namespace is not None:
            argv = ["ip", "netns", "exec", place.namespace, *argv]
        with self.log_path(index).open("ab") as log:
            self.processes[index] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_healthy(self, index: int, timeout_s: float = DEADLINE_S) -> float:
        def healthy() -> bool:
            process = self.processes[index]
            if process.poll() is not None:
                tail = self.log_path(index).read_text(errors="replace")[-3000:]
                raise AssertionError(f"{self.places[index].node_id} exited:\n{tail}")
            try:
                return self.request(index, "GET", "/health", timeout_s=1.0).status == 200
            except OSError:
                return False

        return wait_for(healthy, f"{self.places[index].node_id} healthy", timeout_s)

    def signal(self, index: int, signum: signal.Signals) -> None:
        self.processes[index].send_signal(signum)

    def kill(self, index: int) -> None:
        """SIGKILL: a crash, with no clean shutdown."""
        self.signal(index, signal.SIGKILL)
        self.processes[index].wait(timeout=STOP_DEADLINE_S)

    def pause(self, index: int) -> None:
        self.signal(index, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        self.signal(index, signal.SIGCONT)

    def stop_all(self) -> None:
        """SIGCONT and SIGTERM to every live node, then SIGKILL past the deadline."""
        live = [p for p in self.processes.values() if p.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE_S
        for process in live:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def request(
        self,
        index: int,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One request on a fresh connection. ``NotSent`` (an ``OSError``) if the
        connection could not be opened; any other error came after sending."""
        place = self.places[index]
        connection = _Connection(place.host, place.http_port, timeout_s, self._opener)
        try:
            try:
                connection.connect()
            except OSError as exc:
                raise NotSent(f"{place.node_id}: {type(exc).__name__}: {exc}") from exc
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Response(
                status=response.status,
                body=response.read(),
                headers={name.lower(): value for name, value in response.getheaders()},
            )
        finally:
            connection.close()

    def put(self, index: int, key: bytes, value: bytes, consistency: str = "quorum") -> Response:
        return self.request(index, "PUT", kv_path(key, consistency), value)

    def get(self, index: int, key: bytes, consistency: str = "quorum") -> Response:
        return self.request(index, "GET", kv_path(key, consistency))

    def local(self, index: int, key: bytes) -> Any:
        """Node ``index``'s own stored record of ``key`` (no quorum), or None."""
        response = self.request(index, "GET", "/v1/admin/local/" + quote(key, safe=""))
        assert response.status == 200, response
        return response.json()["record"]

    def members(self, index: int) -> dict[str, str]:
        """Node ``index``'s view: node id -> state (``GET /v1/status`` members)."""
        members = self.request(index, "GET", "/v1/status", timeout_s=2.0).json()["members"]
        return {member["node_id"]: member["state"] for member in members}


def kv_path(key: bytes, consistency: str) -> str:
    return f"/v1/kv/{quote(key, safe='')}?consistency={consistency}"


# --- the load -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One write: ``status`` None means no HTTP answer (refused, reset, timeout)."""

    thread: int
    node: int
    key: bytes
    value: bytes
    status: int | None
    error: str
    started_s: float
    elapsed_s: float


class WriteLoad:
    """A few threads writing distinct keys at quorum, round-robin over ``nodes``,
    paced, until stopped or ``writes_max`` writes. Records every outcome."""

    def __init__(
        self,
        cluster: FaultCluster,
        nodes: Sequence[int],
        *,
        threads: int = 3,
        writes_max: int = 6000,
        pace_s: float = 0.02,
        seed: int = 0,
    ) -> None:
        assert threads >= 1 and writes_max >= threads and nodes
        self._cluster = cluster
        self._nodes = tuple(nodes)
        self._per_thread_max = writes_max // threads
        self._pace_s = pace_s
        self._seed = seed
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._acked = 0
        self._threads = [
            threading.Thread(target=self._run, args=(t,), name=f"load-{t}", daemon=True)
            for t in range(threads)
        ]

    def __enter__(self) -> WriteLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        deadline = time.monotonic() + HTTP_TIMEOUT_S + 5
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def _run(self, thread: int) -> None:
        rng = random.Random(self._seed * 1000 + thread)
        for sequence in range(self._per_thread_max):
            if self._stopping.is_set():
                return
            node = self._nodes[(sequence + thread) % len(self._nodes)]
            key = b"load-%d-%d-%d" % (self._seed, thread, sequence)
            value = key + b"=" + rng.randbytes(16).hex().encode()
            started = time.monotonic()
            status, error = None, ""
            try:
                status = self._cluster.put(node, key, value).status
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
            outcome = Outcome(
                thread, node, key, value, status, error, started, time.monotonic() - started
            )
            with self._lock:
                self._outcomes.append(outcome)
                self._acked += status == 204
            self._stopping.wait(self._pace_s)  # pacing, interruptible by stop()

    def acked_count(self) -> int:
        with self._lock:
            return self._acked

    def wait_acked(self, more: int, timeout_s: float = DEADLINE_S) -> float:
        """Wait until ``more`` further writes are acknowledged; the seconds it took."""
        target = self.acked_count() + more
        return wait_for(lambda: self.acked_count() >= target, f"{more} more acks", timeout_s)

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def acked(self) -> dict[bytes, bytes]:
        return {o.key: o.value for o in self.outcomes() if o.status == 204}


def tally(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """Outcomes by status (``"none:<error>"`` when there was no answer), sorted."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        name = str(outcome.status) if outcome.status is not None else f"none:{outcome.error}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def unreadable(cluster: FaultCluster, acked: dict[bytes, bytes], nodes: Sequence[int]) -> list[str]:
    """Each acknowledged write read at quorum through each of ``nodes`` (a
    thread per node); the problems found, empty when every read returned it."""

    def check(index: int) -> list[str]:
        problems = []
        for key, value in sorted(acked.items()):
            try:
                response = cluster.get(index, key)
            except (OSError, http.client.HTTPException) as exc:
                problems.append(f"n{index + 1} {key!r}: {type(exc).__name__}")
                continue
            if (response.status, response.body) != (200, value):
                problems.append(f"n{index + 1} {key!r}: {response.status} {response.body[:80]!r}")
        return problems

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        found = [problem for problems in pool.map(check, nodes) for problem in problems]
    return found


def assert_all_readable(
    cluster: FaultCluster, acked: dict[bytes, bytes], nodes: Sequence[int]
) -> float:
    """Every acknowledged write reads back at quorum from every node; the seconds it took."""
    assert acked, "the load acknowledged nothing: the check would prove nothing"
    started = time.monotonic()
    problems = unreadable(cluster, acked, nodes)
    assert not problems, (
        f"{len(problems)} reads of {len(acked)} acknowledged writes failed: "
        f"{problems[:PROBLEMS_SHOWN_MAX]}"
    )
    return time.monotonic() - started


# --- clusters -------------------------------------------------------------------

HTTP_PORT: Final = 8000  # every node has an address of its own: the ports may repeat
RPC_PORT: Final = 9000
NETNS_TOOLS: Final = ("ip", "iptables", "setpriv")


@contextlib.contextmanager
def cluster_in_namespaces(
    home: Path, size: int = 3, *, extra_toml: str = ""
) -> Iterator[tuple[netns.Network, FaultCluster]]:
    """``size`` running nodes, each in a network namespace of its own; all
    stopped and the namespaces deleted on exit."""
    require_fault_tools(*NETNS_TOOLS)
    with netns.network(size) as net:
        places = [
            Place(
                node_id=f"n{index + 1}",
                host=net.address(index),
                http_port=HTTP_PORT,
                rpc_port=RPC_PORT,
                data_dir=home / f"n{index + 1}" / "data",
                namespace=net.namespace(index),
            )
            for index in range(size)
        ]

        def opener(host: str, port: int, timeout_s: float) -> socket.socket:
            return netns.connect(net, host, port, timeout_s)

        cluster = FaultCluster(home, places, opener)
        cluster.write_configs(extra_toml=extra_toml)
        try:
            for index in range(size):
                cluster.start(index)
            for index in range(size):
                cluster.wait_healthy(index)
            yield net, cluster
        finally:
            cluster.stop_all()


def everyone_up(cluster: FaultCluster, nodes: Sequence[int]) -> bool:
    """Every one of ``nodes`` sees every member up."""
    expected = {place.node_id: "up" for place in cluster.places}
    return all(cluster.members(index) == expected for index in nodes)
