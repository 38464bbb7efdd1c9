"""Idempotent retries and session consistency on real node processes (3 nodes).

- A write whose answer was a 504 at one node, retried with the same
  ``Idempotency-Key`` at another node that never received it, is applied
  once: readers see one value (siblings policy), where the same retry
  without a key leaves two siblings.
- A session client writes at one node and reads at another that missed the
  write, and always sees it, while a ``one`` read there shows the old value.

A node that must *miss* a write is killed with SIGKILL, not paused: a paused
node still holds the write's frame in its socket buffer and applies it the
moment it resumes. Anti-entropy and hinted handoff are slowed to minutes so
nothing else repairs the lagging node during the test.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynakv.client import Client
from dynakv.node.dev import DevCluster
from tests.integration.conftest import Cluster, make_cluster

pytestmark = pytest.mark.integration

SLOW_REPAIR = "\n[timing]\nanti_entropy_interval_ms = 600000\nhandoff_interval_ms = 600000\n"


def _slow_repair(spec: DevCluster) -> None:
    for node_id in spec.node_ids():
        config = spec.data_dir / node_id / "node.toml"
        config.write_text(config.read_text() + SLOW_REPAIR)


@pytest.fixture
def siblings(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, "siblings", before_start=_slow_repair)


@pytest.fixture
def lww(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, "lww", before_start=_slow_repair)


def siblings_at(cluster: Cluster, index: int, key: bytes) -> int:
    record = cluster.local(index, key)
    return 0 if record is None else len(record["siblings"])


def test_a_write_retried_at_another_node_after_a_504_is_applied_once(siblings: Cluster) -> None:
    cluster = siblings
    keyed, control = b"idempotent", b"control"
    retry = {"Idempotency-Key": "order-4711"}
    # Connections to both peers exist before the pause, so the frames are sent.
    assert cluster.put(0, b"warm-up", b"w", query="consistency=all").status == 204
    for index in (1, 2):
        cluster.processes[index].send_signal(signal.SIGSTOP)
    try:
        path = "/v1/kv/{}?consistency=quorum"
        first = cluster.request(0, "PUT", path.format("idempotent"), b"v", retry)
        assert first.status == 504, first
        assert cluster.request(0, "PUT", path.format("control"), b"v").status == 504
    finally:
        cluster.processes[2].send_signal(signal.SIGCONT)
        # n2 dies with the frames still unread: it never learns of either write.
        cluster.kill(1)
    cluster.start(1)
    cluster.wait_healthy(1)
    assert cluster.local(1, keyed) is None and cluster.local(1, control) is None

    # The client retries both at n2; only one carries the key.
    assert cluster.request(1, "PUT", path.format("idempotent"), b"v", retry).status == 204
    assert cluster.request(1, "PUT", path.format("control"), b"v").status == 204

    got = cluster.get(2, keyed, query="consistency=all")  # merges n1..n3 and repairs
    assert (got.status, got.body) == (200, b"v"), "applied once: one value, not two"
    twice = cluster.get(2, control, query="consistency=all")
    assert twice.status == 300 and len(twice.json()["siblings"]) == 2, "no key: a duplicate"

    # Every replica now knows the key: a further attempt anywhere mints nothing.
    held = [siblings_at(cluster, index, keyed) for index in range(3)]
    with Client([f"127.0.0.1:{cluster.port(0)}"]) as client:
        client.put(keyed, b"v", idempotency_key="order-4711")
    assert [siblings_at(cluster, index, keyed) for index in range(3)] == held
    assert cluster.get(0, keyed, query="consistency=all").status == 200


def test_a_session_reads_its_write_at_a_node_that_missed_it(lww: Cluster) -> None:
    cluster = lww
    key = b"session-key"
    assert cluster.put(0, key, b"old", query="consistency=all").status == 204
    cluster.kill(2)  # n3 misses the session's write
    writer = Client([f"127.0.0.1:{cluster.port(0)}"])
    try:
        session = writer.session()
        session.put(key, b"new")  # quorum: n1 and n2
    finally:
        writer.close()
    cluster.start(2)
    cluster.wait_healthy(2)

    # The difference is real: a `one` read at n3 still answers the old value.
    stale = cluster.get(2, key, query="consistency=one")
    assert (stale.status, stale.body) == (200, b"old")

    for index in (2, 1, 2, 0, 2):
        with Client([f"127.0.0.1:{cluster.port(index)}"]) as reader:
            resumed = reader.session(session.token)
            assert resumed.get(key).value == b"new", f"session read at n{index + 1}"
            assert resumed.token  # every answer carries the token

    # The session read caught n3 up on its way: `one` there now sees it too.
    assert cluster.get(2, key, query="consistency=one").body == b"new"
    # A session token is checked like a context: garbage is a 400 naming the header.
    bad = cluster.request(2, "GET", "/v1/kv/x?consistency=session", None, {"X-Dynakv-Session": "%"})
    assert bad.status == 400 and bad.json()["error"]["field"] == "X-Dynakv-Session"
