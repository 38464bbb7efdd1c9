"""The node's Prometheus metrics (``GET /metrics``; every name is in docs/metrics.md).

Two sources. ``RequestMetrics`` is kept on the request path: a count per
(api, operation, consistency, status) and a latency histogram per (api,
operation, consistency); ``observe`` costs two dict lookups and a bisect.
``api`` is ``native`` for the node's key-value backend calls (``Node._measured``)
and ``dynamodb`` for each DynamoDB request (``dynamo.router``, labelled by its
operation). A DynamoDB request runs in a task of its own (``run_not_native``),
and a background task that calls the backend marks itself
(``mark_not_native``): the backend calls they make are then not counted
again as native requests (one ``ContextVar`` read per native observation).
Everything else is read at scrape time from counters the other parts of the
node already keep (``NodeSnapshot``: the RPC clients' call counters, the group
committer's stats, the hint summary, anti-entropy's lifetime totals, the
member table, storage properties), so no counter is kept twice and a scrape
does no network I/O: it never calls a peer (``Node.status`` pings each one).

``render`` writes the Prometheus text exposition format, version 0.0.4. We
render it ourselves rather than through ``prometheus_client``: its labelled
counters take a lock per increment and cost several times our observe
(bench/metrics_cost.py measures both).

Invariants: every family has one ``# HELP`` and one ``# TYPE`` line, even with
no samples yet (so a dashboard can be checked against a fresh node); counter
names end in ``_total``, units are base units named last (``_seconds``,
``_bytes``); histogram buckets are cumulative and end in ``le="+Inf"`` equal
to ``_count``. Bounded: request label values come from fixed sets, and the
request series stop growing at ``SERIES_MAX`` (a new series past it is
dropped, never an old one changed); members, peers and hint owners are the
cluster's nodes, rendered at most ``MEMBERS_MAX`` each.

Never: block, call a peer, walk the data, or keep anything per key or per client.
``DYNAKV_METRICS_RECORDING=off`` in the environment turns the request
recording off; it exists to measure the recording's cost, nothing else.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import resource
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, get_args

from dynakv.core.gossip_messages import StateName, state_name
from dynakv.net.rpc import PeerPool, RpcCounters
from dynakv.storage.group_commit import (
    SYNC_SECONDS_BUCKETS,
    WRITES_PER_SYNC_BUCKETS,
    GroupCommitStats,
)

if TYPE_CHECKING:
    from dynakv.core.membership import Membership
    from dynakv.node.antientropy import AntiEntropy
    from dynakv.node.handoff import HintedHandoff
    from dynakv.storage.base import Storage
    from dynakv.storage.diskspace import DiskGuard

# Seconds; from a cached one-replica read to a write that waited out a timeout.
BUCKETS_S: Final = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SERIES_MAX: Final = 512
MEMBERS_MAX: Final = 256
MEMBER_STATES: Final[tuple[StateName, ...]] = get_args(StateName)
RECORDING_ENV: Final = "DYNAKV_METRICS_RECORDING"
# RocksDB properties summed into dynakv_storage_bytes, by its ``kind`` label.
_ROCKS_SIZE_PROPERTIES: Final = (
    ("sst_files", "rocksdb.total-sst-files-size"),
    ("memtables", "rocksdb.cur-size-all-mem-tables"),
)


_T = TypeVar("_T")
# True in a task marked ``mark_not_native``: its backend calls are not native client requests.
_NOT_NATIVE: Final[ContextVar[bool]] = ContextVar("dynakv_not_native", default=False)


def recording_from_env() -> bool:
    return os.environ.get(RECORDING_ENV, "on") != "off"


def mark_not_native() -> None:
    """From now on in the current task (and the tasks it starts), ``observe`` drops
    ``api="native"`` observations: for a background task that calls the backend.
    Call it only in a task's own coroutine: the mark is never taken back."""
    _NOT_NATIVE.set(True)


async def run_not_native(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Await ``coroutine`` in a task of its own, marked ``mark_not_native``: the backend
    calls of a request of another API. A task, because the HTTP connection steps a
    request's coroutine eagerly in one context and may finish it in another, where a
    ``ContextVar`` set and reset around an ``await`` would leak or fail."""
    context = copy_context()
    context.run(mark_not_native)
    return await asyncio.get_running_loop().create_task(coroutine, context=context)


class RequestMetrics:
    """Requests by (api, operation, consistency, status), each with its latency histogram.

    One row per series: a count per bucket of ``BUCKETS_S`` (one more past the
    last) and, last, the seconds summed; ``observe`` is one dict lookup, one
    bisect and two list updates. The page's request counter is a row's count;
    its latency histogram sums the rows of every status. ``recording`` False
    (``DYNAKV_METRICS_RECORDING=off``, for measuring) tells the caller not to
    time or observe requests at all."""

    __slots__ = ("recording", "rows")

    def __init__(self, recording: bool | None = None) -> None:
        self.recording = recording_from_env() if recording is None else recording
        self.rows: dict[tuple[str, str, str, int], list[float]] = {}

    def observe(
        self, operation: str, consistency: str, status: int, seconds: float, api: str = "native"
    ) -> None:
        if _NOT_NATIVE.get() and api == "native":
            return  # counted by the API that made the backend call, or not a client request
        row = self.rows.get((api, operation, consistency, status))
        if row is None:
            if len(self.rows) >= SERIES_MAX:
                return
            row = self.rows[(api, operation, consistency, status)] = [0] * (len(BUCKETS_S) + 2)
            row[-1] = 0.0
        row[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        row[-1] += seconds

    def requests(self) -> dict[tuple[str, str, str, int], int]:
        """Requests by (api, operation, consistency, status)."""
        return {series: int(sum(row[:-1])) for series, row in self.rows.items()}

    def latency(self) -> dict[tuple[str, str, str], tuple[list[int], float]]:
        """(count per bucket, seconds summed) by (api, operation, consistency)."""
        merged: dict[tuple[str, str, str], tuple[list[int], float]] = {}
        for (api, operation, consistency, _), row in sorted(self.rows.items()):
            counts, total_s = merged.get((api, operation, consistency), ([0] * len(row[:-1]), 0.0))
            merged[(api, operation, consistency)] = (
                [int(a + b) for a, b in zip(counts, row[:-1], strict=True)],
                total_s + row[-1],
            )
        return merged


@dataclass(frozen=True, slots=True)
class PeerRpc:
    counters: RpcCounters
    connected: bool
    inflight: int


@dataclass(frozen=True, slots=True)
class StorageSnapshot:
    records: int  # an estimate for RocksDB
    size_bytes: Mapping[str, int]  # by kind; empty for the memory engine
    disk_free_bytes: int
    disk_total_bytes: int


@dataclass(frozen=True, slots=True)
class HintsSnapshot:
    pending: Mapping[str, int]  # hints held, by the owner they wait for
    pending_bytes: int
    delivered_total: int
    failed_total: int
    expired_total: int


@dataclass(frozen=True, slots=True)
class AntiEntropySnapshot:
    rounds_total: int
    rounds_failed_total: int
    keys_total: Mapping[str, int]  # by direction: pulled, pushed
    bytes_total: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    cpu_seconds_total: float
    resident_memory_bytes: int


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """What a scrape reports besides the requests, read in place (``Node.metrics_snapshot``)."""

    group_commit: GroupCommitStats
    rpc: Mapping[str, PeerRpc]
    read_repairs_total: int
    records_swept_total: int
    storage: StorageSnapshot
    hints: HintsSnapshot
    anti_entropy: AntiEntropySnapshot
    members: Sequence[tuple[str, StateName]]  # (node id, state), by node id
    rebuilding: bool
    process: ProcessSnapshot


# --- reading the snapshot (no network, no scan) ---------------------------------------------


def rpc_snapshot(peers: PeerPool) -> dict[str, PeerRpc]:
    return {
        node_id: PeerRpc(client.counters(), client.is_connected, client.inflight)
        for node_id in peers.node_ids()
        for client in (peers.get(node_id),)
    }


def storage_snapshot(storage: Storage, disk: DiskGuard) -> StorageSnapshot:
    sizes: dict[str, int] = {}
    property_int: Callable[[str], int | None] | None = getattr(storage, "property_int", None)
    if property_int is not None:  # RocksDB: cheap in-memory properties
        for kind, name in _ROCKS_SIZE_PROPERTIES:
            sizes[kind] = property_int(name) or 0
    status = disk.status()
    free, total = status["free_bytes"], status["total_bytes"]
    assert isinstance(free, int) and isinstance(total, int), (free, total)
    return StorageSnapshot(storage.count_records(), sizes, free, total)


def hints_snapshot(handoff: HintedHandoff, storage: Storage) -> HintsSnapshot:
    return HintsSnapshot(
        pending={owner: stats.count for owner, stats in storage.hint_summary().items()},
        pending_bytes=storage.hints_bytes_total,
        delivered_total=handoff.delivered_total,
        failed_total=handoff.failed_total,
        expired_total=handoff.expired_total,
    )


def anti_entropy_snapshot(anti_entropy: AntiEntropy) -> AntiEntropySnapshot:
    lifetime = anti_entropy.lifetime
    totals = lifetime.totals
    return AntiEntropySnapshot(
        rounds_total=lifetime.rounds_total,
        rounds_failed_total=lifetime.rounds_failed,
        keys_total={"pulled": totals["keys_pulled"], "pushed": totals["keys_pushed"]},
        bytes_total={"pulled": totals["bytes_pulled"], "pushed": totals["bytes_pushed"]},
    )


def members_snapshot(membership: Membership) -> list[tuple[str, StateName]]:
    return sorted((member.node_id, state_name(member)) for member in membership.members())


def process_snapshot() -> ProcessSnapshot:
    times = os.times()
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        resident_pages = 0
    return ProcessSnapshot(times.user + times.system, resident_pages * resource.getpagesize())


# --- rendering ------------------------------------------------------------------------------

_Read = Callable[[NodeSnapshot], float]
# Families with one unlabelled sample: (name, type, help, how to read it).
_SCALARS: Final[tuple[tuple[str, str, str, _Read], ...]] = (
    ("dynakv_group_commit_syncs_total", "counter", "Group-commit fsyncs.",
     lambda n: n.group_commit.syncs_total),
    ("dynakv_group_commit_sync_failures_total", "counter", "Failed group-commit fsyncs.",
     lambda n: n.group_commit.sync_failures_total),
    ("dynakv_group_commit_writes_total", "counter", "Writes made durable by an fsync.",
     lambda n: n.group_commit.writes_total),
    ("dynakv_group_commit_waiters", "gauge", "Writes waiting for their fsync.",
     lambda n: n.group_commit.waiters_pending),
    ("dynakv_read_repairs_total", "counter", "Read repairs sent.", lambda n: n.read_repairs_total),
    ("dynakv_records_swept_total", "counter", "Expired records purged.",
     lambda n: n.records_swept_total),
    ("dynakv_storage_records", "gauge", "Records stored (RocksDB: an estimate).",
     lambda n: n.storage.records),
    ("dynakv_disk_free_bytes", "gauge", "Free bytes on the data disk.",
     lambda n: n.storage.disk_free_bytes),
    ("dynakv_disk_total_bytes", "gauge", "Size of the data disk.",
     lambda n: n.storage.disk_total_bytes),
    ("dynakv_hints_pending_bytes", "gauge", "Bytes of hints held.",
     lambda n: n.hints.pending_bytes),
    ("dynakv_hints_delivered_total", "counter", "Hints handed over to their owner.",
     lambda n: n.hints.delivered_total),
    ("dynakv_hints_delivery_failures_total", "counter", "Hint hand-overs that failed.",
     lambda n: n.hints.failed_total),
    ("dynakv_hints_expired_total", "counter", "Hints dropped past their TTL.",
     lambda n: n.hints.expired_total),
    ("dynakv_anti_entropy_rounds_total", "counter", "Anti-entropy rounds run.",
     lambda n: n.anti_entropy.rounds_total),
    ("dynakv_anti_entropy_rounds_failed_total", "counter", "Anti-entropy rounds that failed.",
     lambda n: n.anti_entropy.rounds_failed_total),
    ("dynakv_rebuilding", "gauge", "1 while the node rebuilds after a long absence.",
     lambda n: int(n.rebuilding)),
    ("process_cpu_seconds_total", "counter", "User and system CPU time of the node process.",
     lambda n: n.process.cpu_seconds_total),
    ("process_resident_memory_bytes", "gauge", "Resident memory of the node process.",
     lambda n: n.process.resident_memory_bytes),
)  # fmt: skip
_RPC_FAILURES: Final = (
    ("timeout", "timeouts_total"),
    ("unreachable", "unreachable_total"),
    ("remote", "remote_errors_total"),
    ("overloaded", "overloaded_total"),
)
_RPC_FAILURES_HELP: Final = (
    "RPC calls that failed, by peer and reason (timeout: sent, outcome unknown; unreachable: "
    "certainly not applied; remote: the peer answered an error; overloaded: refused here)."
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class _Page:
    """The text of one scrape: each family announced once, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += (f"# HELP {name} {help_text}", f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: str = "") -> None:
        series = f"{name}{{{labels}}}" if labels else name
        self.lines.append(f"{series} {_number(value)}")

    def histogram(
        self, name: str, labels: str, bounds: Sequence[float], counts: Sequence[int], total: float
    ) -> None:
        """One histogram series; ``counts`` per bucket, one more past the last bound."""
        assert len(counts) == len(bounds) + 1, (len(counts), len(bounds))
        prefix = f"{labels}," if labels else ""
        cumulative = 0
        for bound, count in zip(bounds, counts, strict=False):
            cumulative += count
            self.sample(f"{name}_bucket", cumulative, f'{prefix}le="{_number(bound)}"')
        cumulative += counts[-1]
        self.sample(f"{name}_bucket", cumulative, f'{prefix}le="+Inf"')
        self.sample(f"{name}_sum", total, labels)
        self.sample(f"{name}_count", cumulative, labels)


def _request_lines(page: _Page, requests: RequestMetrics) -> None:
    name = "dynakv_requests_total"
    page.family(name, "counter", "Client requests by api, operation, level and status.")
    for (api, operation, level, status), count in sorted(requests.requests().items()):
        labels = f'api="{api}",operation="{operation}",consistency="{level}",status="{status}"'
        page.sample(name, count, labels)
    name = "dynakv_request_duration_seconds"
    page.family(name, "histogram", "Client request latency at the coordinator, by api, op, level.")
    for (api, operation, level), (counts, total_s) in sorted(requests.latency().items()):
        labels = f'api="{api}",operation="{operation}",consistency="{level}"'
        page.histogram(name, labels, BUCKETS_S, counts, total_s)


def _rpc_lines(page: _Page, rpc: Mapping[str, PeerRpc]) -> None:
    peers = [(f'peer="{_escape(peer)}"', state) for peer, state in sorted(rpc.items())]
    peers = peers[:MEMBERS_MAX]
    page.family("dynakv_rpc_calls_total", "counter", "RPC calls this node made, by peer.")
    for labels, state in peers:
        page.sample("dynakv_rpc_calls_total", state.counters.calls_total, labels)
    page.family("dynakv_rpc_failures_total", "counter", _RPC_FAILURES_HELP)
    for labels, state in peers:
        for reason, field_name in _RPC_FAILURES:
            value = getattr(state.counters, field_name)
            page.sample("dynakv_rpc_failures_total", value, f'{labels},reason="{reason}"')
    page.family("dynakv_rpc_peer_connected", "gauge", "1 while the RPC connection is open.")
    for labels, state in peers:
        page.sample("dynakv_rpc_peer_connected", int(state.connected), labels)
    page.family("dynakv_rpc_inflight_calls", "gauge", "RPC calls awaiting a reply, by peer.")
    for labels, state in peers:
        page.sample("dynakv_rpc_inflight_calls", state.inflight, labels)


def _labelled_lines(page: _Page, node: NodeSnapshot) -> None:
    stats = node.group_commit
    name = "dynakv_group_commit_sync_duration_seconds"
    page.family(name, "histogram", "Time in one group-commit fsync.")
    if stats.sync_seconds_counts:
        counts, total = stats.sync_seconds_counts, stats.sync_seconds_total
        page.histogram(name, "", SYNC_SECONDS_BUCKETS, counts, total)
    name = "dynakv_group_commit_writes_per_sync"
    page.family(name, "histogram", "Writes one group-commit fsync made durable.")
    if stats.writes_per_sync_counts:
        counts = stats.writes_per_sync_counts
        page.histogram(name, "", WRITES_PER_SYNC_BUCKETS, counts, stats.writes_total)
    page.family("dynakv_storage_bytes", "gauge", "Bytes the storage engine holds, by kind.")
    for kind, size in sorted(node.storage.size_bytes.items()):
        page.sample("dynakv_storage_bytes", size, f'kind="{kind}"')
    page.family("dynakv_hints_pending", "gauge", "Hints held, by the replica they wait for.")
    owners = sorted({*node.rpc, *node.hints.pending})[:MEMBERS_MAX]  # every peer, 0 or more
    for owner in owners:
        count = node.hints.pending.get(owner, 0)
        page.sample("dynakv_hints_pending", count, f'owner="{_escape(owner)}"')
    for name, moved, what in (
        ("dynakv_anti_entropy_keys_moved_total", node.anti_entropy.keys_total, "Keys"),
        ("dynakv_anti_entropy_bytes_moved_total", node.anti_entropy.bytes_total, "Bytes"),
    ):
        page.family(name, "counter", f"{what} anti-entropy moved (pulled: here; pushed: to peers).")
        for direction, count in sorted(moved.items()):
            page.sample(name, count, f'direction="{direction}"')


def _member_lines(page: _Page, members: Sequence[tuple[str, StateName]]) -> None:
    members = list(members)[:MEMBERS_MAX]
    page.family("dynakv_member_state", "gauge", "1 for each member's state as this node sees it.")
    for member, state in members:
        for candidate in MEMBER_STATES:
            labels = f'member="{_escape(member)}",state="{candidate}"'
            page.sample("dynakv_member_state", int(state == candidate), labels)
    page.family("dynakv_members", "gauge", "Members by state, as this node sees them.")
    for candidate in MEMBER_STATES:
        count = sum(1 for _, state in members if state == candidate)
        page.sample("dynakv_members", count, f'state="{candidate}"')


def render(requests: RequestMetrics, node: NodeSnapshot) -> bytes:
    """The whole scrape, in the Prometheus text format 0.0.4."""
    page = _Page()
    _request_lines(page, requests)
    _rpc_lines(page, node.rpc)
    for name, kind, help_text, read in _SCALARS:
        page.family(name, kind, help_text)
        page.sample(name, read(node))
    _labelled_lines(page, node)
    _member_lines(page, node.members)
    return ("\n".join(page.lines) + "\n").encode()


def families(text: str) -> Iterator[tuple[str, str]]:
    """(name, type) of every family a page announces."""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ", 1)
            yield name, kind


def series_names(text: str) -> set[str]:
    """Every sample name a page's families can carry (a histogram: _bucket, _sum, _count)."""
    names: set[str] = set()
    for name, kind in families(text):
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        names.update(name + suffix for suffix in suffixes)
    return names
