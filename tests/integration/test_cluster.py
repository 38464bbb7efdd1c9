"""End to end: three real node processes on loopback, over real sockets."""

from __future__ import annotations

import base64
import socket
import time

import pytest

from tests.integration.conftest import Cluster, wait_for

pytestmark = pytest.mark.integration

LEVELS = ("one", "quorum", "all")


def test_put_at_one_node_is_read_at_every_node_at_every_level(cluster: Cluster) -> None:
    for writer in range(3):
        key = f"greeting-from-{writer}".encode()
        value = f"hello {writer}".encode()
        put = cluster.put(writer, key, value, query="consistency=all")
        assert put.status == 204, put
        assert put.context
        for reader in range(3):
            for level in LEVELS:
                got = cluster.get(reader, key, query=f"consistency={level}")
                assert got.status == 200, (reader, level, got)
                assert got.body == value
                assert got.context


def test_quorum_write_is_visible_to_quorum_read_anywhere(cluster: Cluster) -> None:
    for i in range(30):
        key = f"qk{i}".encode()
        assert cluster.put(i % 3, key, b"v%d" % i).status == 204
        got = cluster.get((i + 1) % 3, key)
        assert (got.status, got.body) == (200, b"v%d" % i)


def test_binary_keys_round_trip(cluster: Cluster) -> None:
    for key in (b"\x00\xff/ key?&=%", bytes(range(256)), b"k" * 2048):
        assert cluster.put(0, key, b"binary").status == 204
        got = cluster.get(2, key)
        assert (got.status, got.body) == (200, b"binary")


def test_delete_then_get_is_404_everywhere(cluster: Cluster) -> None:
    key = b"to-delete"
    assert cluster.put(0, key, b"doomed", query="consistency=all").status == 204
    deleted = cluster.delete(1, key, query="consistency=all")
    assert deleted.status == 204, deleted
    for reader in range(3):
        for level in LEVELS:
            got = cluster.get(reader, key, query=f"consistency={level}")
            assert got.status == 404, (reader, level, got)
            assert got.json()["error"]["code"] == "KeyNotFound"
        record = cluster.local(reader, key)
        assert record is not None and all(s["tombstone"] for s in record["siblings"])


def test_overwrite_wins_and_old_value_never_returns(cluster: Cluster) -> None:
    # consistency=all: each next coordinator has stored (and so observed the HLC
    # timestamp of) the previous write, so blind writes are ordered causally
    # whatever the wall clock does. (With quorum, a blind write whose
    # coordinator missed the previous one is ordered by its own clock.)
    key = b"overwritten"
    for round_number in range(5):
        put = cluster.put(round_number % 3, key, b"r%d" % round_number, query="consistency=all")
        assert put.status == 204
    for reader in range(3):
        assert cluster.get(reader, key, query="consistency=all").body == b"r4"


def test_ttl_expires_and_record_is_swept(cluster: Cluster) -> None:
    key = b"short-lived"
    assert cluster.put(0, key, b"soon gone", query="ttl=1&consistency=all").status == 204
    assert cluster.get(1, key).status == 200
    started = time.monotonic()
    wait_for(
        lambda: cluster.get(2, key, query="consistency=one").status == 404,
        "the key to expire",
        timeout_s=2.0,
    )
    assert time.monotonic() - started <= 2.0
    for index in range(3):
        wait_for(
            lambda index=index: cluster.local(index, key) is None,
            f"n{index + 1} to sweep the record",
            timeout_s=5.0,
        )


def test_siblings_survive_and_merged_context_supersedes(siblings_cluster: Cluster) -> None:
    cluster = siblings_cluster
    key = b"cart"
    assert cluster.put(0, key, b"base", query="consistency=all").status == 204
    base = cluster.get(0, key, query="consistency=all")
    assert base.status == 200
    # Two writers both saw "base" and write concurrently with the same context.
    assert (
        cluster.put(1, key, b"apple", context=base.context, query="consistency=all").status == 204
    )
    assert cluster.put(2, key, b"pear", context=base.context, query="consistency=all").status == 204
    for reader in range(3):
        got = cluster.get(reader, key, query="consistency=all")
        assert got.status == 300, got
        body = got.json()
        values = sorted(base64.b64decode(v) for v in body["siblings"])
        assert values == [b"apple", b"pear"]
        assert body["context"] == got.context
    # A third write carrying the merged context resolves the conflict.
    merged_context = cluster.get(0, key, query="consistency=all").context
    assert (
        cluster.put(0, key, b"apple+pear", context=merged_context, query="consistency=all").status
        == 204
    )
    for reader in range(3):
        got = cluster.get(reader, key, query="consistency=all")
        assert (got.status, got.body) == (200, b"apple+pear")
        assert len(cluster.local(reader, key)["siblings"]) == 1


def test_blind_writes_under_siblings_are_kept(siblings_cluster: Cluster) -> None:
    key = b"blind"
    assert siblings_cluster.put(0, key, b"one", query="consistency=all").status == 204
    assert siblings_cluster.put(1, key, b"two", query="consistency=all").status == 204
    got = siblings_cluster.get(2, key, query="consistency=all")
    assert got.status == 300
    assert len(got.json()["siblings"]) == 2


def test_bad_requests_get_clear_4xx_and_node_keeps_serving(cluster: Cluster) -> None:
    too_long = cluster.put(0, b"k" * 2049, b"v")
    assert too_long.status == 413
    assert too_long.json()["error"]["code"] == "KeyTooLarge"
    assert too_long.json()["error"]["max"] == 2048

    too_big = cluster.put(0, b"big", b"x" * (400 * 1024 + 1))
    assert too_big.status == 413
    error = too_big.json()["error"]
    assert error["code"] == "ValueTooLarge" and error["max"] == 400 * 1024
    assert cluster.get(0, b"big").status == 404  # nothing stored

    bad_level = cluster.get(0, b"x", query="consistency=sometimes")
    assert bad_level.status == 400
    assert bad_level.json()["error"]["field"] == "consistency"

    assert _raw_exchange(cluster.port(0), b"NONSENSE\x00 / HTTP/9\r\n\r\n").startswith(
        b"HTTP/1.1 400"
    )

    truncated = (
        b"PUT /v1/kv/truncated HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"y" * 10
    )
    reply = _raw_exchange(cluster.port(0), truncated, half_close=True)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400"), reply
    assert cluster.get(0, b"truncated", query="consistency=all").status == 404

    # Still serving, on every node.
    for index in range(3):
        assert cluster.put(index, b"after-bad-input", b"fine").status == 204
        assert cluster.get(index, b"after-bad-input").body == b"fine"


def _raw_exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and not half_close:
                break
        return b"".join(chunks)


def test_status_and_health(cluster: Cluster) -> None:
    health = cluster.request(0, "GET", "/health")
    assert health.status == 200 and health.json()["status"] == "ok"
    status = cluster.request(1, "GET", "/v1/status").json()
    assert status["node_id"] == "n2"
    assert {peer["answers"] for peer in status["peers"].values()} == {True}
    assert status["ring"]["partition_count"] == 1024


def test_a_node_outside_the_preference_list_forwards_writes(two_replica_cluster: Cluster) -> None:
    cluster = two_replica_cluster
    forwarded = 0
    for i in range(60):
        key = f"fwd-{i}".encode()
        writer = i % 3
        put = cluster.put(writer, key, b"v%d" % i, query="consistency=all")
        assert put.status == 204, put
        holders = [index for index in range(3) if cluster.local(index, key) is not None]
        assert len(holders) == 2, (key, holders)  # exactly N replicas hold it
        if writer not in holders:
            forwarded += 1
        for reader in range(3):
            got = cluster.get(reader, key, query="consistency=quorum")
            assert (got.status, got.body) == (200, b"v%d" % i)
    assert forwarded > 0  # a third of the writes, in expectation
