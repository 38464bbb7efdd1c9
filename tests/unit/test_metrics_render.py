"""node.metrics: the request counters and histograms against a dumb reference model,
and the text page against the Prometheus exposition format's rules."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynakv.net.rpc import RpcCounters
from dynakv.node.metrics import (
    BUCKETS_S,
    MEMBER_STATES,
    SERIES_MAX,
    AntiEntropySnapshot,
    HintsSnapshot,
    NodeSnapshot,
    PeerRpc,
    ProcessSnapshot,
    RequestMetrics,
    StorageSnapshot,
    mark_not_native,
    process_snapshot,
    recording_from_env,
    render,
    run_not_native,
    series_names,
)
from dynakv.storage.group_commit import (
    SYNC_SECONDS_BUCKETS,
    WRITES_PER_SYNC_BUCKETS,
    GroupCommitStats,
)

SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*)\})?'
    r" (?P<value>\S+)$"
)
LABEL = re.compile(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """(type by family, value by (name, labels)); asserts the format's rules on the way."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helps, f"two HELP lines for {name}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps and name not in types, f"TYPE {name} without one HELP before it"
            types[name] = kind
            current = name
            continue
        match = SAMPLE.match(line)
        assert match is not None, f"not a sample: {line!r}"
        name = match["name"]
        assert current is not None and name in (
            current,
            f"{current}_bucket",
            f"{current}_sum",
            f"{current}_count",
        ), f"{name} outside its family ({current})"
        labels = frozenset(LABEL.findall(match["labels"] or ""))
        key = (name, labels)
        assert key not in samples, f"series twice: {line!r}"
        samples[key] = float(match["value"])
    for name, kind in types.items():
        assert kind in ("counter", "gauge", "histogram"), kind
        if kind == "counter":
            assert name.endswith("_total"), name
    return types, samples


def empty_snapshot(**changes: object) -> NodeSnapshot:
    fields: dict[str, object] = {
        "group_commit": GroupCommitStats(0, 0, 0, 0, 0, 0.0, 0),
        "rpc": {},
        "read_repairs_total": 0,
        "records_swept_total": 0,
        "storage": StorageSnapshot(0, {}, 0, 0),
        "hints": HintsSnapshot({}, 0, 0, 0, 0),
        "anti_entropy": AntiEntropySnapshot(0, 0, {"pulled": 0, "pushed": 0}, {}),
        "members": (),
        "rebuilding": False,
        "process": ProcessSnapshot(0.0, 0),
    }
    fields.update(changes)
    return NodeSnapshot(**fields)  # type: ignore[arg-type]


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


apis = st.sampled_from(["native", "dynamodb"])
operations = st.sampled_from(["get", "put", "delete", "GetItem", "PutItem", "Query", "other"])
levels = st.sampled_from(["one", "quorum", "all", "strong", "default"])
statuses = st.sampled_from([200, 204, 400, 404, 412, 503, 504])
latencies = st.floats(min_value=0.0, max_value=30.0, allow_nan=False)


@given(st.lists(st.tuples(apis, operations, levels, statuses, latencies), max_size=200))
def test_counts_and_buckets_match_a_reference_model(
    requests: list[tuple[str, str, str, int, float]],
) -> None:
    metrics = RequestMetrics(recording=True)
    for api, operation, level, status, seconds in requests:
        metrics.observe(operation, level, status, seconds, api)
    _, samples = parse(render(metrics, empty_snapshot()).decode())
    expected = Counter((api, op, level, status) for api, op, level, status, _ in requests)
    for (api, op, level, status), count in expected.items():
        labels = {"api": api, "operation": op, "consistency": level, "status": str(status)}
        assert value(samples, "dynakv_requests_total", **labels) == count
    assert sum(v for (n, _), v in samples.items() if n == "dynakv_requests_total") == len(requests)
    for api, op, level in {(api, op, level) for api, op, level, _, _ in requests}:
        mine = [s for a, o, lv, _, s in requests if (a, o, lv) == (api, op, level)]
        labels = {"api": api, "operation": op, "consistency": level}
        name = "dynakv_request_duration_seconds"
        for bound in BUCKETS_S:
            in_bucket = value(samples, f"{name}_bucket", **labels, le=repr(bound))
            assert in_bucket == sum(1 for s in mine if s <= bound), bound
        assert value(samples, f"{name}_bucket", **labels, le="+Inf") == len(mine)
        assert value(samples, f"{name}_count", **labels) == len(mine)
        assert math.isclose(value(samples, f"{name}_sum", **labels), sum(mine), abs_tol=1e-9)


def test_a_task_marked_not_native_counts_no_native_requests() -> None:
    metrics = RequestMetrics(recording=True)

    async def background() -> None:
        mark_not_native()
        metrics.observe("get", "strong", 200, 0.001)  # dropped: not a client request
        metrics.observe("GetItem", "default", 200, 0.001, "dynamodb")  # other APIs count

    async def dynamodb_request() -> None:
        metrics.observe("put", "quorum", 204, 0.001)  # dropped: the DynamoDB request counts

    async def main() -> None:
        metrics.observe("get", "one", 200, 0.001)
        await asyncio.ensure_future(background())
        await run_not_native(dynamodb_request())
        metrics.observe("get", "one", 200, 0.001)  # this task was never marked

    asyncio.run(main())
    assert metrics.requests() == {
        ("native", "get", "one", 200): 2,
        ("dynamodb", "GetItem", "default", 200): 1,
    }


def test_request_series_stop_growing_at_the_bound() -> None:
    metrics = RequestMetrics(recording=True)
    for status in range(SERIES_MAX + 50):
        metrics.observe("get", "one", status, 0.001)
    metrics.observe("get", "one", 0, 0.001)  # an existing series still counts past the bound
    assert len(metrics.rows) == SERIES_MAX
    assert metrics.requests()[("native", "get", "one", 0)] == 2
    _, samples = parse(render(metrics, empty_snapshot()).decode())
    assert sum(1 for name, _ in samples if name == "dynakv_requests_total") == SERIES_MAX


def test_a_full_snapshot_renders_every_family_with_its_values() -> None:
    stats = GroupCommitStats(
        syncs_total=3,
        sync_failures_total=1,
        writes_total=7,
        batch_size_max=4,
        last_batch_size=1,
        sync_seconds_total=0.006,
        waiters_pending=2,
        sync_seconds_counts=(0, 0, 0, 2, 1) + (0,) * (len(SYNC_SECONDS_BUCKETS) - 4),
        writes_per_sync_counts=(1, 1, 1) + (0,) * (len(WRITES_PER_SYNC_BUCKETS) - 2),
    )
    node = empty_snapshot(
        group_commit=stats,
        rpc={
            'n"2': PeerRpc(RpcCounters(10, 1, 2, 3, 4), connected=True, inflight=5),
            "n3": PeerRpc(RpcCounters(0, 0, 0, 0, 0), connected=False, inflight=0),
        },
        hints=HintsSnapshot({"n3": 9}, 900, 1, 2, 3),
        members=(("n1", "up"), ("n3", "suspect")),
        storage=StorageSnapshot(42, {"sst_files": 100, "memtables": 20}, 5, 50),
    )
    types, samples = parse(render(RequestMetrics(recording=True), node).decode())
    assert value(samples, "dynakv_rpc_calls_total", peer='n\\"2') == 10
    for reason, expected in (("timeout", 1), ("unreachable", 2), ("remote", 3), ("overloaded", 4)):
        labels = {"peer": 'n\\"2', "reason": reason}
        assert value(samples, "dynakv_rpc_failures_total", **labels) == expected
    assert value(samples, "dynakv_rpc_peer_connected", peer="n3") == 0
    assert value(samples, "dynakv_rpc_inflight_calls", peer='n\\"2') == 5
    sync = "dynakv_group_commit_sync_duration_seconds"
    assert value(samples, f"{sync}_bucket", le="0.001") == 2
    assert value(samples, f"{sync}_bucket", le="+Inf") == value(samples, f"{sync}_count") == 3
    per_sync = "dynakv_group_commit_writes_per_sync"
    assert value(samples, f"{per_sync}_bucket", le="2") == 2
    assert value(samples, f"{per_sync}_sum") == value(samples, "dynakv_group_commit_writes_total")
    assert value(samples, "dynakv_group_commit_waiters") == 2
    assert value(samples, "dynakv_hints_pending", owner="n3") == 9
    assert value(samples, "dynakv_hints_pending", owner='n"2'.replace('"', '\\"')) == 0
    assert value(samples, "dynakv_storage_bytes", kind="sst_files") == 100
    for state in MEMBER_STATES:
        assert value(samples, "dynakv_member_state", member="n3", state=state) == (
            state == "suspect"
        )
    assert value(samples, "dynakv_members", state="up") == 1
    assert types["dynakv_request_duration_seconds"] == "histogram"
    # Every family is announced on a fresh node too, so a dashboard can be checked against it.
    fresh = series_names(render(RequestMetrics(recording=True), empty_snapshot()).decode())
    assert series_names(render(RequestMetrics(), node).decode()) == fresh
    assert {"dynakv_request_duration_seconds_bucket", "dynakv_hints_pending"} <= fresh


def test_recording_turns_off_only_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNAKV_METRICS_RECORDING", raising=False)
    assert recording_from_env() and RequestMetrics().recording
    monkeypatch.setenv("DYNAKV_METRICS_RECORDING", "off")
    assert not recording_from_env() and not RequestMetrics().recording
    assert RequestMetrics(recording=True).recording


def test_the_process_snapshot_reads_this_process() -> None:
    process = process_snapshot()
    assert process.cpu_seconds_total > 0
    assert process.resident_memory_bytes > 1_000_000
