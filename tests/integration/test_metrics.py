"""GET /metrics on real nodes: the Prometheus text format, with the requests a node
served counted by api, operation, level and status, their latency histogram, the
RPC calls it made per peer, and the rest read in place without calling a peer.
Also: the Grafana dashboard names only metrics a real node exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dynakv.node.metrics import series_names
from tests.integration.conftest import Cluster, wait_for

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+-]+|\+Inf|NaN)$")
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dynakv.json"
# A metric name inside a PromQL expression: ours, and the process_* ones a node exports.
PROMQL_METRIC = re.compile(r"\b((?:dynakv|process)_[a-z_]+)\b")


def page(cluster: Cluster, index: int) -> str:
    response = cluster.request(index, "GET", "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.body.decode()


def scrape(cluster: Cluster, index: int) -> dict[str, float]:
    samples = {}
    for line in page(cluster, index).splitlines():
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
    labels = 'api="native",operation="put",consistency="quorum"'
    count = f"dynakv_request_duration_seconds_count{{{labels}}}"
    assert after[count] - before.get(count, 0) == 20
    assert after[f'dynakv_request_duration_seconds_bucket{{{labels},le="+Inf"}}'] == after[count]
    miss = 'dynakv_requests_total{api="native",operation="get",consistency="one",status="404"}'
    assert after[miss] - before.get(miss, 0) == 1
    # Each quorum put went to both other replicas (N=3), counted per peer.
    for peer in ("n2", "n3"):
        calls = f'dynakv_rpc_calls_total{{peer="{peer}"}}'
        assert after[calls] - before.get(calls, 0) >= 20
        timeouts = f'dynakv_rpc_failures_total{{peer="{peer}",reason="timeout"}}'
        assert after[timeouts] == 0
    assert after["dynakv_group_commit_syncs_total"] >= 1
    syncs = after["dynakv_group_commit_sync_duration_seconds_count"]
    assert syncs == after["dynakv_group_commit_syncs_total"]
    assert (
        after["dynakv_group_commit_writes_per_sync_sum"]
        == after["dynakv_group_commit_writes_total"]
    )
    assert after["dynakv_storage_records"] >= 1
    assert after["process_cpu_seconds_total"] > 0
    # Members by state: once gossip has shown n1 both its peers, all three are up.
    wait_for(
        lambda: scrape(cluster, 0).get('dynakv_members{state="up"}') == 3,
        "n1's metrics to show three members up",
    )
    assert scrape(cluster, 0)['dynakv_member_state{member="n2",state="up"}'] == 1


def test_a_scrape_calls_no_peer(cluster: Cluster) -> None:
    """Scrapes with no client load change no RPC call count (the status page pings
    every peer; a scrape must not). The node's own background work calls peers now
    and then (an anti-entropy round, which may start in one window and end in the
    next; the DynamoDB purger's catalog read at quorum), so a window with calls is
    tried again: if scrapes called a peer, no window of twelve would ever be quiet."""
    calls = [f'dynakv_rpc_calls_total{{peer="{peer}"}}' for peer in ("n2", "n3")]

    def quiet_window() -> bool:
        first = scrape(cluster, 0)
        for _ in range(10):
            scrape(cluster, 0)
        last = scrape(cluster, 0)
        return [last[name] for name in calls] == [first[name] for name in calls]

    wait_for(quiet_window, "twelve scrapes with no RPC call between them")


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 8, "the dashboard lost its queries"
    exprs += [variable.get("definition", "") for variable in dashboard["templating"]["list"]]
    return {name for expr in exprs for name in PROMQL_METRIC.findall(expr)}


def test_the_grafana_dashboard_names_only_exported_metrics(cluster: Cluster) -> None:
    assert cluster.put(0, b"dash", b"v", query="consistency=quorum").status == 204
    exported = series_names(page(cluster, 0))
    named = dashboard_metric_names()
    assert named, "no metric names found in the dashboard"
    assert named <= exported, f"the dashboard names metrics no node exports: {named - exported}"
