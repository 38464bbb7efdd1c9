"""GET /metrics on a real node: the Prometheus text format, with the requests it
served counted by operation, level and status, and their latency histogram."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import Cluster, wait_for

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+]+)$")


def scrape(cluster: Cluster, index: int) -> dict[str, float]:
    response = cluster.request(index, "GET", "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.body.decode().splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        match = SAMPLE.match(line)
        assert match is not None, f"not a Prometheus sample: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics_count_the_requests_a_node_served(cluster: Cluster) -> None:
    before = scrape(cluster, 0)
    for i in range(20):
        assert cluster.put(0, f"m-{i}".encode(), b"v", query="consistency=quorum").status == 204
    assert cluster.get(0, b"m-0", query="consistency=one").status == 200
    assert cluster.get(0, b"m-absent", query="consistency=one").status == 404
    after = scrape(cluster, 0)
    put = 'dynakv_requests_total{api="native",operation="put",consistency="quorum",status="204"}'
    assert after[put] - before.get(put, 0) == 20
    count = 'dynakv_request_seconds_count{operation="put",consistency="quorum"}'
    assert after[count] - before.get(count, 0) == 20
    inf = 'dynakv_request_seconds_bucket{operation="put",consistency="quorum",le="+Inf"}'
    assert after[inf] == after[count]
    miss = 'dynakv_requests_total{api="native",operation="get",consistency="one",status="404"}'
    assert after[miss] - before.get(miss, 0) == 1
    assert after["dynakv_group_commit_syncs_total"] >= 1
    # Members by state: once gossip has shown n1 its peers, n2 is up.
    wait_for(
        lambda: scrape(cluster, 0).get('dynakv_member_up{node="n2",state="up"}') == 1,
        "n1's metrics to show n2 up",
    )
