"""A node away longer than the tombstone grace does not bring deleted keys back
(issue 6, item 6): it drops its records, rebuilds from its peers, and refuses
reads until it has."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynakv.node.dev import DevCluster
from tests.integration.conftest import Cluster, make_cluster, wait_for

pytestmark = pytest.mark.integration

GRACE_S = 2


def _short_grace(spec: DevCluster) -> None:
    for node_id in spec.node_ids():
        config = spec.data_dir / node_id / "node.toml"
        config.write_text(
            config.read_text()
            + f"\n[timing]\ntombstone_grace_s = {GRACE_S}\nanti_entropy_interval_ms = 5\n"
        )


@pytest.fixture
def short_grace(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, before_start=_short_grace)


def test_a_node_back_after_the_grace_does_not_resurrect_deleted_keys(short_grace: Cluster) -> None:
    cluster = short_grace
    deleted = [f"gone-{i}".encode() for i in range(20)]
    kept = {f"kept-{i}".encode(): b"still here" for i in range(20)}
    for key in [*deleted, *kept]:
        assert cluster.put(0, key, kept.get(key, b"doomed"), query="consistency=all").status == 204
    assert cluster.stop(2) == 0  # n3 leaves holding every value
    for key in deleted:
        assert cluster.delete(0, key, query="consistency=quorum").status == 204
    # The tombstones pass their grace and are purged on n1 and n2.
    wait_for(
        lambda: all(cluster.local(i, key) is None for i in (0, 1) for key in deleted),
        "the tombstones to be purged on n1 and n2",
    )
    time.sleep(GRACE_S + 1)  # n3 has now been away longer than the grace
    cluster.start(2)
    cluster.wait_healthy(2)
    wait_for(
        lambda: not cluster.request(2, "GET", "/v1/status").json()["rebuilding"],
        "n3 to rebuild from its peers",
        timeout_s=60,
    )
    for key, value in kept.items():
        got = cluster.get(2, key, query="consistency=one")
        assert (got.status, got.body) == (200, value), key
    # Watch for a while: anti-entropy and reads would carry a resurrected value.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for key in deleted:
            for index in range(3):
                got = cluster.get(index, key, query="consistency=quorum")
                assert got.status == 404, (key, index, got)
            assert cluster.local(2, key) is None, key
        time.sleep(0.5)
