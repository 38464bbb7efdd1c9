"""The node's Prometheus metrics: request counts and latency histograms kept on
the request path, everything else read from the node's status at scrape time.

``RequestMetrics.observe(operation, consistency, status, seconds)`` costs a
dict lookup and a bisect per request; ``render`` writes the Prometheus text
exposition format (version 0.0.4) from those counters and from the status
document (``node.runtime.Node.status``), so no counter is kept twice.

Bounded: the label sets are fixed (operations, levels, HTTP status codes the
node answers), so the series count is bounded. Never: block, or keep one
entry per key or per client.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any, Final

# Seconds; from a cached one-replica read to a write that waited out a timeout.
BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SERIES_MAX: Final = 512


class _Histogram:
    __slots__ = ("counts", "sum_s", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0
        self.total = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.sum_s += seconds
        self.total += 1


class RequestMetrics:
    """Requests by (operation, consistency, status) and latency by (operation, consistency)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], _Histogram] = {}

    def observe(self, operation: str, consistency: str, status: int, seconds: float) -> None:
        series = (operation, consistency, status)
        if series in self.requests or len(self.requests) < SERIES_MAX:
            self.requests[series] = self.requests.get(series, 0) + 1
        histogram = self.latency.get((operation, consistency))
        if histogram is None:
            if len(self.latency) >= SERIES_MAX:
                return
            histogram = self.latency[(operation, consistency)] = _Histogram()
        histogram.observe(seconds)

    def lines(self) -> Iterable[str]:
        yield "# HELP dynakv_requests_total Client requests by operation, level and status."
        yield "# TYPE dynakv_requests_total counter"
        for (operation, consistency, status), count in sorted(self.requests.items()):
            labels = f'api="native",operation="{operation}",consistency="{consistency}"'
            yield f'dynakv_requests_total{{{labels},status="{status}"}} {count}'
        yield "# HELP dynakv_request_seconds Client request latency by operation and level."
        yield "# TYPE dynakv_request_seconds histogram"
        for (operation, consistency), histogram in sorted(self.latency.items()):
            labels = f'operation="{operation}",consistency="{consistency}"'
            cumulative = 0
            for bound, count in zip(BUCKETS_S, histogram.counts, strict=False):
                cumulative += count
                yield f'dynakv_request_seconds_bucket{{{labels},le="{bound}"}} {cumulative}'
            yield f'dynakv_request_seconds_bucket{{{labels},le="+Inf"}} {histogram.total}'
            yield f"dynakv_request_seconds_sum{{{labels}}} {histogram.sum_s:.6f}"
            yield f"dynakv_request_seconds_count{{{labels}}} {histogram.total}"


def _gauge(name: str, help_text: str, value: float, kind: str = "gauge") -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]


def status_lines(status: Mapping[str, Any]) -> list[str]:
    """Metrics read from the node's status document at scrape time."""
    group = status["group_commit"]
    lines = [
        *_gauge(
            "dynakv_group_commit_syncs_total", "Group-commit fsyncs.", group["syncs"], "counter"
        ),
        *_gauge(
            "dynakv_group_commit_writes_total", "Writes made durable.", group["writes"], "counter"
        ),
        *_gauge(
            "dynakv_group_commit_writes_per_sync", "Writes per fsync.", group["writes_per_sync"]
        ),
        *_gauge("dynakv_group_commit_sync_seconds_avg", "Mean fsync.", group["sync_ms_avg"] / 1000),
        *_gauge("dynakv_storage_records", "Records (estimate).", status["storage"]["records"]),
        *_gauge(
            "dynakv_disk_free_bytes", "Free bytes on the data disk.", status["disk"]["free_bytes"]
        ),
        *_gauge(
            "dynakv_read_repairs_total",
            "Read repairs sent.",
            status["counters"]["read_repairs_sent"],
            "counter",
        ),
        *_gauge("dynakv_hints_bytes", "Bytes of hints held.", status["hints"]["bytes"]),
    ]
    lines += ["# HELP dynakv_hints_held Hints held, by owner.", "# TYPE dynakv_hints_held gauge"]
    for owner, count in sorted(status["hints"]["held"].items()):
        lines.append(f'dynakv_hints_held{{owner="{owner}"}} {count}')
    anti_entropy = status["anti_entropy"]
    lines += _gauge(
        "dynakv_anti_entropy_rounds_total", "Rounds run.", anti_entropy["rounds_total"], "counter"
    )
    lines += [
        "# HELP dynakv_anti_entropy_keys_total Keys moved.",
        "# TYPE dynakv_anti_entropy_keys_total counter",
    ]
    for direction in ("pulled", "pushed"):
        lines.append(
            f'dynakv_anti_entropy_keys_total{{direction="{direction}"}} '
            f"{anti_entropy.get('keys_' + direction, 0)}"
        )
    lines += ["# HELP dynakv_member_up Members by state.", "# TYPE dynakv_member_up gauge"]
    for member in status["members"]:
        up = 1 if member["state"] == "up" else 0
        lines.append(
            f'dynakv_member_up{{node="{member["node_id"]}",state="{member["state"]}"}} {up}'
        )
    lines += [
        "# HELP dynakv_rpc_peer_up Peers answering a ping.",
        "# TYPE dynakv_rpc_peer_up gauge",
    ]
    for peer, info in sorted(status["peers"].items()):
        lines.append(f'dynakv_rpc_peer_up{{peer="{peer}"}} {1 if info.get("answers") else 0}')
    return lines


def render(requests: RequestMetrics, status: Mapping[str, Any]) -> bytes:
    """The whole scrape, in the Prometheus text format."""
    return ("\n".join([*requests.lines(), *status_lines(status)]) + "\n").encode()
