"""A real Prometheus (Debian's ``prometheus``) scrapes a real 3-node cluster every
second; a request rate and a latency quantile come back through its HTTP query
API, and every query of the Grafana dashboard runs there and finds its series.

``make test`` installs the package as root (the Makefile's ``metrics-deps``);
without it this module skips, saying so. Prometheus listens on a free port
below the ephemeral range, keeps its data in the test's tmp dir, and is stopped
by PID."""

from __future__ import annotations

import http.client
import json
import math
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cluster, free_port_block, kv_path, wait_for

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dynakv.json"
LOAD_S_MAX = 60.0
WINDOW = "5s"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the `prometheus` binary is missing: `make test` installs Debian's package "
        "as root (make metrics-deps); without root apt cannot install it",
    ),
]


@dataclass
class Prometheus:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises if Prometheus refuses the query."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", (promql, answer)
        assert answer["data"]["resultType"] == "vector", (promql, answer)
        return list(answer["data"]["result"])

    def scalar(self, promql: str) -> float | None:
        """The single value of a one-series query, or None while it has none."""
        result = self.query(promql)
        assert len(result) <= 1, (promql, result)
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    work = tmp_path_factory.mktemp("prometheus")
    targets = ", ".join(f"'127.0.0.1:{cluster.port(index)}'" for index in range(3))
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: dynakv\n    scrape_timeout: 900ms\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )
    port = free_port_block(1)
    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work,
        )
    server = Prometheus(port, process, log_path)
    try:
        wait_for(server.ready, "prometheus ready")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@dataclass
class Load:
    """Quorum puts and `one` gets spread over the three nodes, from one thread."""

    cluster: Cluster
    stop: threading.Event = field(default_factory=threading.Event)
    puts: int = 0
    failures: list[str] = field(default_factory=list)
    started_s: float = 0.0

    def run(self) -> None:
        self.started_s = time.monotonic()
        connections = [
            http.client.HTTPConnection("127.0.0.1", self.cluster.port(i), timeout=10)
            for i in range(3)
        ]
        try:
            index = 0
            while not self.stop.is_set() and time.monotonic() - self.started_s < LOAD_S_MAX:
                connection = connections[index % 3]
                path = kv_path(f"prom-{index % 500}".encode(), "consistency=quorum")
                connection.request("PUT", path, body=b"v" * 100)
                response = connection.getresponse()
                response.read()
                if response.status != 204:
                    self.failures.append(f"PUT {path}: {response.status}")
                    return
                self.puts += 1
                connection.request("GET", path.replace("quorum", "one"))
                connection.getresponse().read()
                index += 1
        finally:
            for connection in connections:
                connection.close()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_s if self.started_s else 0.0

    @property
    def put_rate(self) -> float:
        return self.puts / max(1e-3, self.elapsed_s)


def test_prometheus_reads_a_request_rate_and_a_latency_quantile(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    wait_for(
        lambda: prometheus.scalar('sum(up{job="dynakv"})') == 3,
        "prometheus to scrape all three nodes",
    )
    load = Load(cluster)
    thread = threading.Thread(target=load.run, name="load", daemon=True)
    thread.start()
    put = 'job="dynakv",operation="put",consistency="quorum"'
    rate_query = f'sum(rate(dynakv_requests_total{{{put},status="204"}}[{WINDOW}]))'

    def quantile(q: float) -> str:
        buckets = f"rate(dynakv_request_duration_seconds_bucket{{{put}}}[{WINDOW}])"
        return f"histogram_quantile({q}, sum by (le) ({buckets}))"

    try:
        # A rate over a window that saw only the load: it has run for two windows.
        wait_for(
            lambda: load.elapsed_s >= 10 and (prometheus.scalar(rate_query) or 0) > 0,
            "ten seconds of load and a put rate in prometheus",
            45,
        )
        wait_for(lambda: prometheus.scalar(quantile(0.99)) is not None, "a p99", 30)
        rate = prometheus.scalar(rate_query)
        client_rate = load.put_rate
        p50 = prometheus.scalar(quantile(0.5))
        p99 = prometheus.scalar(quantile(0.99))
    finally:
        load.stop.set()
        thread.join(timeout=20)
    assert not load.failures, load.failures
    assert rate is not None and p50 is not None and p99 is not None
    # What Prometheus saw is what the client did (rate() extrapolates: a loose band).
    assert 0.25 * client_rate <= rate <= 4 * client_rate, (rate, client_rate)
    assert math.isfinite(p99) and 0 < p50 <= p99 <= 10, (p50, p99)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_every_dashboard_query_runs_and_finds_series(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    for index in range(3):  # something to show in every request panel
        assert cluster.put(index, b"dashboard", b"v", query="consistency=quorum").status == 204
    queries = dashboard_queries()
    assert len(queries) >= 10

    def all_found() -> bool:
        for title, expr in queries:
            promql = expr.replace("$__rate_interval", "30s").replace("$instance", ".*")
            result = prometheus.query(promql)  # a PromQL error fails here, at once
            if not result and "not up" not in title:
                return False
        return True

    wait_for(all_found, "every dashboard panel to find its series", 30)
