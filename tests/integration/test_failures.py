"""Crashes, pauses and restarts of real node processes (SIGKILL, SIGSTOP, SIGTERM)."""

from __future__ import annotations

import signal

import pytest

from tests.integration.conftest import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_restarted_node_keeps_every_acknowledged_write(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    # Healthy is per node: wait until every node also reaches the others over RPC.
    wait_for(
        lambda: cluster.put(0, b"warm-up", b"x", query="consistency=all").status == 204,
        "every replica takes writes",
    )
    acknowledged = {}
    for i in range(200):
        key, value = f"durable-{i}".encode(), f"value-{i}".encode()
        # consistency=all: n2 itself acknowledged every one of these writes.
        response = cluster.put(i % 3, key, value, query="consistency=all")
        assert response.status == 204, response
        acknowledged[key] = value
    cluster.kill(1)
    cluster.start(1)
    cluster.wait_healthy(1)
    for key, value in acknowledged.items():
        record = cluster.local(1, key)
        assert record is not None, key
        values = [s["value"] for s in record["siblings"] if not s["tombstone"]]
        assert len(values) == 1
        got = cluster.get(1, key, query="consistency=one")
        assert (got.status, got.body) == (200, value)


def test_one_node_down_quorum_still_works(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    cluster.kill(2)
    for i in range(20):
        key = f"down-one-{i}".encode()
        put = cluster.put(i % 2, key, b"v", query="consistency=quorum")
        assert put.status == 204, put
        got = cluster.get((i + 1) % 2, key, query="consistency=quorum")
        assert (got.status, got.body) == (200, b"v"), got
    # `all` cannot be met with a replica down, and says so.
    refused = cluster.put(0, b"needs-all", b"v", query="consistency=all")
    assert refused.status == 503
    assert refused.json()["error"]["required"] == 3


def test_two_nodes_down_quorum_put_is_refused_but_one_succeeds(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    cluster.kill(1)
    cluster.kill(2)
    refused = cluster.put(0, b"lonely", b"v", query="consistency=quorum")
    assert refused.status == 503, refused
    error = refused.json()["error"]
    assert error["code"] == "QuorumNotReached"
    assert (error["required"], error["acked"]) == (2, 1)
    assert "retry-after" in refused.headers
    accepted = cluster.put(0, b"lonely-one", b"v", query="consistency=one")
    assert accepted.status == 204, accepted
    got = cluster.get(0, b"lonely-one", query="consistency=one")
    assert (got.status, got.body) == (200, b"v")
    unreadable = cluster.get(0, b"lonely-one", query="consistency=quorum")
    assert unreadable.status == 503


def test_killed_node_catches_up_through_read_repair(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    cluster.kill(2)
    assert cluster.put(0, b"missed", b"while-away", query="consistency=quorum").status == 204
    cluster.start(2)
    cluster.wait_healthy(2)
    assert cluster.local(2, b"missed") is None
    got = cluster.get(0, b"missed", query="consistency=all")
    assert (got.status, got.body) == (200, b"while-away")
    wait_for(lambda: cluster.local(2, b"missed") is not None, "read repair to reach n3")
    assert cluster.get(2, b"missed", query="consistency=one").body == b"while-away"


def test_sigterm_stops_a_node_cleanly(fresh_cluster: Cluster) -> None:
    assert fresh_cluster.put(0, b"before-stop", b"v", query="consistency=all").status == 204
    assert fresh_cluster.stop(0) == 0
    fresh_cluster.start(0)
    fresh_cluster.wait_healthy(0)
    assert fresh_cluster.get(0, b"before-stop", query="consistency=one").body == b"v"


def test_paused_replicas_make_a_quorum_write_outcome_unknown(fresh_cluster: Cluster) -> None:
    """SIGSTOP: the replicas accept the connection but never answer, so the
    coordinator cannot know whether they applied the write: 504, never 503."""
    cluster = fresh_cluster
    # Connections to both peers exist before the pause, so the frames are sent.
    assert cluster.put(0, b"warm-up", b"v", query="consistency=all").status == 204
    for index in (1, 2):
        cluster.processes[index].send_signal(signal.SIGSTOP)
    try:
        unknown = cluster.put(0, b"in-doubt", b"v", query="consistency=quorum")
        assert unknown.status == 504, unknown
        error = unknown.json()["error"]
        assert error["code"] == "OutcomeUnknown"
        assert (error["required"], error["acked"]) == (2, 1)
        assert error["timeout_ms"] == 1500  # the RPC timeout that expired
        # The coordinator's own copy is there: the write may surface, as documented.
        assert cluster.local(0, b"in-doubt") is not None
    finally:
        for index in (1, 2):
            cluster.processes[index].send_signal(signal.SIGCONT)
    # Once they resume, the write they received is applied and quorum reads see it.
    got = cluster.get(1, b"in-doubt", query="consistency=quorum")
    assert (got.status, got.body) == (200, b"v")
