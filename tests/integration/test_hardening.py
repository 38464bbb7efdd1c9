"""Issue 5 against real node processes: crafted numbers from clients, and a
member whose clock runs fast. After each, every node
answers normal requests and every acknowledged write is still readable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynakv.core.record import Context, encode_context
from dynakv.core.versions import LOGICAL_BITS
from dynakv.node.dev import DevCluster
from tests.integration.conftest import Cluster, free_port_block

pytestmark = pytest.mark.integration

U64_MAX = 2**64 - 1
SKEW_MS = 120_000


def crafted_contexts() -> dict[str, str]:
    now_ms = time.time_ns() // 1_000_000
    far = (now_ms + 10 * 60_000) << LOGICAL_BITS
    return {
        "the hostile test's token": "AZKTkqJuMc___________5KibjLP__________6Som4zz___________AA",
        "counter 2^64-1": encode_context(Context(clock=(("n1", U64_MAX),))),
        "counter 2^63": encode_context(Context(clock=(("n1", 2**63),))),
        "timestamp ten minutes ahead": encode_context(Context(max_timestamp=far)),
        "counter ten minutes ahead": encode_context(Context(clock=(("n2", far),))),
        "too many clock entries": encode_context(
            Context(clock=tuple((f"n{i:04d}", 1) for i in range(300)))
        ),
        "a node id of 300 characters": encode_context(Context(clock=(("n" * 300, 1),))),
        "a negative counter": encode_context(Context(clock=(("n1", -1),))),
        "a zero counter": encode_context(Context(clock=(("n1", 0),))),
    }


def assert_serves_and_keeps(cluster: Cluster, acknowledged: dict[bytes, bytes]) -> None:
    """Every node answers a normal write and read, and every acknowledged value is there."""
    for index in range(3):
        key = f"after-{index}-{time.monotonic_ns()}".encode()
        put = cluster.put(index, key, b"fine")
        assert put.status == 204, put
        got = cluster.get((index + 1) % 3, key)
        assert (got.status, got.body) == (200, b"fine"), got
    for key, value in acknowledged.items():
        got = cluster.get(0, key, query="consistency=quorum")
        assert (got.status, got.body) == (200, value), (key, got)


def test_crafted_contexts_get_a_400_and_leave_the_key_writable(cluster: Cluster) -> None:
    acknowledged = {}
    for name, token in crafted_contexts().items():
        key = f"brick-{len(acknowledged)}".encode()
        first = cluster.put(0, key, b"before")
        assert first.status == 204, first
        acknowledged[key] = b"before"
        for index in range(3):
            refused = cluster.put(index, key, b"x", query="consistency=all", context=token)
            assert refused.status == 400, (name, refused)
            error = refused.json()["error"]
            assert error["field"] == "X-Dynakv-Context", (name, error)
            deleted = cluster.request(
                index, "DELETE", f"/v1/kv/{key.decode()}", headers={"X-Dynakv-Context": token}
            )
            assert deleted.status == 400, (name, deleted)
        # Nothing was stored: the key still reads as before, and stays writable.
        got = cluster.get(1, key, query="consistency=all")
        assert (got.status, got.body) == (200, b"before"), (name, got)
        for index in range(3):
            again = cluster.put(index, key, b"after", context=got.context)
            assert again.status == 204, (name, again)
            got = cluster.get(index, key, query="consistency=all")
        acknowledged[key] = b"after"
    assert_serves_and_keeps(cluster, acknowledged)


@pytest.fixture
def skewed_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes; n3's wall clock runs SKEW_MS ahead of the others'."""
    base = free_port_block(6)
    spec = DevCluster(
        data_dir=tmp_path / "cluster", nodes=3, http_base_port=base, rpc_base_port=base + 3
    )
    spec.data_dir.mkdir(parents=True)
    spec.write_configs()
    config = spec.data_dir / "n3" / "node.toml"
    config.write_text(f"clock_skew_ms = {SKEW_MS}\n" + config.read_text())
    cluster = Cluster(spec)
    try:
        for index in range(3):
            cluster.start(index)
        for index in range(3):
            cluster.wait_healthy(index)
        yield cluster
    finally:
        cluster.stop_all()


def test_a_member_whose_clock_runs_fast_cannot_drag_the_others(skewed_cluster: Cluster) -> None:
    cluster = skewed_cluster
    # The fast node writes some keys itself (at `one`: only it holds them).
    for i in range(10):
        put = cluster.put(2, f"fast-{i}".encode(), b"from-the-future", query="consistency=one")
        assert put.status == 204, put
    # The others go on with read-then-write updates, on those keys too, and
    # none of their contexts is refused.
    acknowledged = {}
    for round_number in range(3):
        for i in range(20):
            key = (f"fast-{i}" if i < 10 else f"plain-{i}").encode()
            index = i % 2  # n1 or n2, never the fast node
            got = cluster.get(index, key, query="consistency=quorum")
            assert got.status in (200, 404), got
            value = f"round-{round_number}".encode()
            put = cluster.put(index, key, value, context=got.context)
            assert put.status == 204, (key, put)
            acknowledged[key] = value
    for key, value in acknowledged.items():
        got = cluster.get(0, key, query="consistency=quorum")
        assert (got.status, got.body) == (200, value), (key, got)
    # Neither normal node adopted the fast clock, and both name the fast node.
    for index in (0, 1):
        status = cluster.request(index, "GET", "/v1/status").json()
        clock = status["clock"]
        assert clock["hlc_ms"] - clock["wall_ms"] < 5_000, clock
        refused = clock["refused_from_peers"]["peers"]
        assert "n3" in refused, refused
        assert "clock_offset_ms_max" in refused["n3"]["last_reason"]
