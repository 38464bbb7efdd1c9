"""Real processes: a sixth node joins a running 5-node cluster while a writer runs, then a
member is decommissioned; every acknowledged write stays readable at quorum, and strong
compare-and-set counters run through both changes without losing an increment. A process
without the cluster secret cannot join."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynakv.node.dev import start_node
from tests.integration.conftest import Cluster, free_port_block, kv_path, make_cluster, wait_for

NODES = 5
CHANGE_DEADLINE_S = 150.0
WRITES_MAX = 3000


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def status(port: int) -> dict[str, Any]:
    code, body = call(port, "GET", "/v1/status")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def all_up(port: int, count: int) -> bool:
    try:
        members = status(port)["members"]
    except OSError:
        return False
    return bool(sum(m["state"] == "up" for m in members) == count)


class Load:
    """A client loop on a thread of its own, until stopped (each bounded by WRITES_MAX)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        raise NotImplementedError


class Writer(Load):
    """Quorum puts of fresh values through every live node."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = ports
        self.acked: dict[bytes, bytes] = {}
        self.failed = 0

    def _run(self) -> None:
        for number in range(WRITES_MAX):
            if self._stop.is_set():
                return
            key, value = b"key%d" % (number % 400), b"value%d" % number
            port = self.ports[number % len(self.ports)]
            try:
                code, _ = call(port, "PUT", kv_path(key, "consistency=quorum"), value)
            except OSError:
                code = 0
            if code == 204:
                self.acked[key] = value
            else:
                self.failed += 1
                self.acked.pop(key, None)  # its last write's outcome is unknown
            time.sleep(0.01)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, str]:
    """(status, body, ETag header or "")."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("ETag") or ""
    finally:
        connection.close()


class StrongCounters(Load):
    """Compare-and-set increments of a few counters through every live node: a strong
    read, then a PUT with If-Match on its ETag. Checks as it goes that no strong read
    shows less than an increment already acknowledged."""

    KEYS = (b"counter0", b"counter1", b"counter2")

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = ports
        self.acked = dict.fromkeys(self.KEYS, 0)  # the highest increment acknowledged
        self.unknown = dict.fromkeys(self.KEYS, 0)  # increments of unknown outcome
        self.problems: list[str] = []

    def read(self, port: int, key: bytes) -> tuple[int, str] | None:
        code, body, etag = request(port, "GET", kv_path(key, "consistency=strong"))
        if code == 404:
            return 0, ""
        return (int(body), etag) if code == 200 else None

    def _run(self) -> None:
        for number in range(WRITES_MAX):
            if self._stop.is_set():
                return
            key = self.KEYS[number % len(self.KEYS)]
            port = self.ports[number % len(self.ports)]
            floor = self.acked[key]
            try:
                current = self.read(port, key)
            except OSError:
                continue
            if current is None:
                continue
            value, etag = current
            if value < floor:
                self.problems.append(f"{key!r} read {value} after {floor} was acknowledged")
            headers = {"If-Match": etag} if etag else {"If-None-Match": "*"}
            path = kv_path(key, "consistency=strong")
            try:
                code, _, _ = request(port, "PUT", path, b"%d" % (value + 1), headers)
            except OSError:
                code = 504  # sent; its outcome is unknown
            if code == 204:
                self.acked[key] = max(self.acked[key], value + 1)
            elif code == 504:
                self.unknown[key] += 1
            time.sleep(0.01)


def read_back(ports: list[int], acked: dict[bytes, bytes]) -> list[str]:
    problems = []
    for index, (key, value) in enumerate(sorted(acked.items())):
        code, body = call(ports[index % len(ports)], "GET", kv_path(key, "consistency=quorum"))
        if code != 200 or body != value:
            problems.append(f"{key!r}: {code} {body[:40]!r}, acked {value!r}")
    return problems


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def five(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, nodes=NODES)


def test_a_sixth_node_joins_under_writes_then_a_member_leaves(five: Cluster) -> None:
    spec = five.spec
    first = five.port(0)
    wait_for(lambda: all_up(first, NODES), "five members up", 60)
    base = free_port_block(2)
    config = spec.write_joiner_config("n6", base, base + 1, "z3")
    writer = Writer([five.port(i) for i in range(NODES)])
    writer.start()
    counters = StrongCounters([five.port(i) for i in range(NODES)])
    counters.start()
    joiner = start_node(config, config.parent / "node.log")
    try:
        wait_for(
            lambda: status(first)["ring"]["epoch"] == 2,
            "the join committed",
            CHANGE_DEADLINE_S,
        )
        ring = status(first)["ring"]
        primaries = ring["nodes"]["n6"]["primary_partitions"]
        assert abs(primaries - 1024 / 6) <= 12, ring["nodes"]
        committed = status(first)["ring_change"]["committed"]
        assert committed and committed[-1]["kind"] == "join", committed
        assert committed[-1]["moved_fraction"] < 0.25, committed
        writer.stop()
        ports = [five.port(i) for i in range(NODES)] + [base]
        wait_for(lambda: all(status(p)["ring"]["epoch"] == 2 for p in ports), "every node on 2")
        assert len(writer.acked) > 50
        assert read_back(ports, writer.acked) == []

        # Decommission n2: it hands its partitions off, then stops by itself.
        code, body = call(five.port(1), "POST", "/v1/admin/leave")
        assert code == 202, body
        writer = Writer([five.port(i) for i in (0, 2, 3, 4)] + [base])
        writer.start()
        wait_for(lambda: five.processes[1].poll() is not None, "n2 stopped", CHANGE_DEADLINE_S)
        writer.stop()
        remaining = [five.port(i) for i in (0, 2, 3, 4)] + [base]
        wait_for(lambda: all(status(p)["ring"]["epoch"] == 3 for p in remaining), "ring 3")
        assert "n2" not in status(first)["ring"]["nodes"]
        assert read_back(remaining, writer.acked) == []
        # Strong compare-and-set through both changes: no increment lost, none read
        # going back, and each counter now holds every acknowledged increment.
        counters.stop()
        assert counters.problems == []
        assert sum(counters.acked.values()) > 30, counters.acked
        for key in counters.KEYS:
            final = counters.read(base, key)
            assert final is not None, key
            acked, unknown = counters.acked[key], counters.unknown[key]
            assert acked <= final[0] <= acked + unknown, (key, final, acked, unknown)
    finally:
        writer.stop()
        counters.stop()
        stop(joiner)


def test_a_process_without_the_secret_cannot_join(five: Cluster, tmp_path: Path) -> None:
    spec = five.spec
    wait_for(lambda: all_up(five.port(0), NODES), "five members up", 60)
    base = free_port_block(2)
    config = spec.write_joiner_config("n9", base, base + 1, "z1")
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("x" * 64 + "\n")
    wrong.chmod(0o600)
    text = config.read_text().replace(str(spec.secret_path.resolve()), str(wrong))
    config.write_text(text + "\n[timing]\nring_fetch_attempts_max = 2\n")
    process = start_node(config, config.parent / "node.log")
    try:
        process.wait(timeout=60)
        assert process.returncode != 0
        log = (config.parent / "node.log").read_text()
        assert "handshake" in log, log[-2000:]
        assert all(m["node_id"] != "n9" for m in status(five.port(0))["members"])
        assert status(five.port(0))["ring"]["epoch"] == 1
    finally:
        stop(process)


def local_copies(ports: list[int], key: bytes) -> int:
    from urllib.parse import quote

    count = 0
    for port in ports:
        code, body = call(port, "GET", "/v1/admin/local/" + quote(key, safe=""))
        assert code == 200, body
        count += json.loads(body)["record"] is not None
    return count


def test_removing_a_dead_node_re_replicates_its_keys_from_the_survivors(five: Cluster) -> None:
    first = five.port(0)
    wait_for(lambda: all_up(first, NODES), "five members up", 60)
    acked = {}
    for number in range(150):
        key, value = b"rk%d" % number, b"rv%d" % number
        code, _ = call(five.port(number % NODES), "PUT", kv_path(key, "consistency=all"), value)
        assert code == 204
        acked[key] = value
    five.kill(2)
    wait_for(
        lambda: any(
            m["node_id"] == "n3" and m["state"] == "down" for m in status(first)["members"]
        ),
        "n3 down",
        60,
    )
    answers: list[tuple[int, bytes]] = []

    def accepted() -> bool:
        # The leader may not hold n3 down quite yet (its detector's own timing).
        answers.append(call(first, "POST", "/v1/admin/remove?node=n3"))
        return answers[-1][0] == 202

    wait_for(accepted, "the remove accepted", 60)
    survivors = [five.port(i) for i in (0, 1, 3, 4)]
    wait_for(
        lambda: all(status(p)["ring"]["epoch"] == 2 for p in survivors),
        "the remove committed everywhere",
        CHANGE_DEADLINE_S,
    )
    assert "n3" not in status(first)["ring"]["nodes"]
    assert read_back(survivors, acked) == []
    short = [key for key in sorted(acked) if local_copies(survivors, key) < 3]
    assert short == [], f"{len(short)} keys on fewer than 3 survivors: {short[:5]}"
    code, body = call(first, "POST", "/v1/admin/remove?node=n3")
    assert code == 202 and b"committed" in body, body  # a retry: the same change, done
