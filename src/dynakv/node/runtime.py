"""One dynakv node process: the real I/O around ``node.assembly.NodeParts``.

The protocol components (replica, trees, coordinator, membership, ring
changes, hinted handoff, anti-entropy, acceptor, strong path, sweeper) are
wired by ``node.assembly``, the same wiring the simulator runs. This module
adds what is real: RocksDB and the disk guard, the group committer, the RPC
and HTTP servers, the gossip transport, signals, the open-file limit, and
the rebuild after an absence longer than the tombstone grace.

Start order: storage and the group committer, then the RPC server (so peers
can replicate to us), then the components' loops, then the HTTP API (so
clients reach us last). Stop order is the reverse, and the final group
commit completes before storage closes, so a clean stop loses nothing, and a
crash loses nothing that was acknowledged (acks wait for the WAL fsync).

This module owns the node's lifecycle and the backend the HTTP API calls; it
holds no protocol logic of its own and wires no protocol component.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import random
import signal
from collections.abc import Awaitable
from typing import Any, TypeVar

from dynakv.api.admin import RingAdminRouter
from dynakv.api.backend import GetResult, RangePage, RangeQuery, WriteResult
from dynakv.api.http import HttpServer
from dynakv.api.routes import Router
from dynakv.api.wire import Dispatcher
from dynakv.config import ConfigError, NodeConfig
from dynakv.core.claim import ChangeKind
from dynakv.core.claimant import Outcome
from dynakv.core.consistency import Consistency
from dynakv.core.etag import Condition
from dynakv.core.record import Context, Record
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.core.session import SessionToken
from dynakv.core.versions import hlc_physical_ms
from dynakv.dynamo.purge import TablePurger, catalog_reader
from dynakv.dynamo.router import dynamo_router
from dynakv.errors import DynakvError
from dynakv.net.messages import Message, Ping
from dynakv.net.rpc import HandlerResult, PeerPool, RpcServer
from dynakv.node import metrics as node_metrics
from dynakv.node.absence import (
    Rebuilding,
    away_ms,
    drop_records_keeping_paxos,
    mark_alive,
)
from dynakv.node.assembly import Injectables, NodeParts
from dynakv.node.clock import Clock, SystemClock
from dynakv.node.gossip import GossipTransport, members_status
from dynakv.node.merkle_trees import META_CLEAN
from dynakv.node.metrics import RequestMetrics
from dynakv.node.metrics import render as render_metrics
from dynakv.node.ranges import RangeReader
from dynakv.node.resources import fit_connection_caps, raise_open_file_limit
from dynakv.node.ring_changes import fetch_ring, load_ring
from dynakv.storage import DiskGuard, open_storage
from dynakv.storage.group_commit import GroupCommitter

log = logging.getLogger(__name__)
_T = TypeVar("_T")

GC_GEN0_THRESHOLD = 50_000
REBUILD_ATTEMPTS_MAX = 120
REBUILD_WAIT_S = 1.0


class Node:
    """A running node; also the ``KvBackend`` its HTTP API serves. Its protocol
    components are ``node.assembly.NodeParts``; this class adds the real I/O."""

    def __init__(
        self, config: NodeConfig, clock: Clock | None = None, *, fetched_ring: Ring | None = None
    ) -> None:
        """``fetched_ring``: a seed's ring, for a node that is not among ``[[nodes]]``."""
        self.config = config
        self.cluster = config.cluster
        self.me = config.me
        self.clock: Clock = clock or SystemClock(config.clock_skew_ms)
        limits, timing = self.cluster.limits, self.cluster.timing
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.disk = DiskGuard(
            config.data_dir, node_id=config.node_id, reserve_bytes=limits.disk_reserve_bytes
        )
        self.storage = open_storage(config.engine, config.data_dir / "db", disk=self.disk)
        # The ballast is made now that the open has had what it needed, not only at the
        # disk watcher's first tick: a disk filled within that interval left none.
        self.disk.refresh()
        ring = choose_ring(config, load_ring(self.storage), fetched_ring)
        self.away_s = self._drop_data_after_a_long_absence()
        self.rebuilding = self.away_s is not None
        self.committer = GroupCommitter(self.storage, durable=config.durable)
        self.peers = PeerPool(
            {n.node_id: n.rpc_address for n in self.cluster.nodes if n.node_id != self.me.node_id},
            connect_timeout_ms=timing.connect_timeout_ms,
            reconnect_backoff_ms_max=timing.reconnect_backoff_ms_max,
            inflight_max=limits.rpc_inflight_max,
            frame_bytes_max=limits.rpc_frame_bytes_max,
            secret=config.cluster_secret,
            node_id=config.node_id,
            handshake_timeout_ms=timing.rpc_handshake_timeout_ms,
        )
        self.gossip_transport = GossipTransport(
            secret=config.cluster_secret,
            node_id=config.node_id,
            connect_timeout_ms=timing.connect_timeout_ms,
            handshake_timeout_ms=timing.rpc_handshake_timeout_ms,
        )
        self.retired = asyncio.Event()
        self.parts = NodeParts(
            Injectables(
                cluster=self.cluster,
                me=self.me,
                storage=self.storage,
                committer=self.committer,
                clock=self.clock,
                peers=self.peers,
                send_gossip=self.gossip_transport.send,
                rng=random.Random(),
                ring=ring,
                seeds=list(config.seed_addresses()),
                on_retire=self.retired.set,
                disk_guard=self.disk,
            )
        )
        log.info("merkle trees trusted from the last clean stop: %d", self.parts.trees_trusted)
        parts = self.parts
        self.replica, self.coordinator, self.strong = parts.replica, parts.coordinator, parts.strong
        self.ranges = RangeReader(self.coordinator)
        self.membership, self.changes, self.handoff = parts.membership, parts.changes, parts.handoff
        self.anti_entropy, self.trees = parts.anti_entropy, parts.trees
        self.rpc = self._rpc_server()
        self.request_metrics = RequestMetrics()  # before the HTTP server: its routers count
        self.http = self._http_server()
        self.table_purger = self._table_purger()
        self._tasks: list[asyncio.Task[Any]] = []

    def _rpc_server(self) -> RpcServer:
        limits, timing = self.cluster.limits, self.cluster.timing
        return RpcServer(
            self.handle_rpc,
            host=self.me.rpc_host,
            port=self.me.rpc_port,
            secret=self.config.cluster_secret,
            secrets_accepted=self.config.cluster_secrets_accepted,
            node_id=self.config.node_id,
            inflight_max=limits.rpc_inflight_max,
            frame_bytes_max=limits.rpc_frame_bytes_max,
            connections_max=limits.rpc_connections_max,
            handshake_frame_bytes_max=limits.rpc_handshake_frame_bytes_max,
            handshake_timeout_ms=timing.rpc_handshake_timeout_ms,
            frame_timeout_ms=timing.rpc_frame_timeout_ms,
            buffered_bytes_total_max=limits.rpc_buffered_bytes_total_max,
        )

    def _http_server(self) -> HttpServer:
        limits, timing = self.cluster.limits, self.cluster.timing
        return HttpServer(
            Dispatcher(
                Router(self, limits),
                [
                    RingAdminRouter(self),
                    dynamo_router(
                        self, limits, self.clock, os.environ, metrics=self.request_metrics
                    ),
                ],
            ),
            limits,
            host=self.me.http_host,
            port=self.me.http_port,
            read_timeout_s=timing.http_read_timeout_ms / 1000,
            idle_timeout_s=timing.http_idle_timeout_ms / 1000,
        )

    def _table_purger(self) -> TablePurger:
        """Removes this node's records of deleted DynamoDB tables (``dynamo.purge``)."""

        def removed(partition: int, key: bytes, old: bytes) -> None:
            self.trees.on_write_raw(partition, key, old, None)
            self.replica.quarantine.release(partition, key)

        return TablePurger(
            self.storage,
            partition_count=self.cluster.partitions,
            key_bytes_max=self.cluster.limits.key_bytes_max,
            read_catalog=catalog_reader(self),
            sleep_ms=lambda ms: asyncio.sleep(ms / 1000),
            now_ms=self.clock.now_ms,
            monotonic_ms=self.clock.monotonic_ms,
            on_remove=removed,
        )

    @property
    def ring(self) -> Ring:
        return self.parts.ring

    @property
    def swept_total(self) -> int:
        return self.parts.swept_total

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.committer.start()
        await self.rpc.start()
        self.parts.start()
        await self.http.start()
        self._tasks.append(asyncio.create_task(self._watch_disk_forever()))
        self._tasks.append(asyncio.create_task(self.table_purger.run_forever()))
        if self.rebuilding:
            self._tasks.append(asyncio.create_task(self._rebuild()))
        if self.config.join and not self.ring.has_node(self.me.node_id):
            self._tasks.append(asyncio.create_task(self.parts.join_until_accepted()))
        log.info(
            "node started node=%s http=%s rpc=%s",
            self.me.node_id,
            self.me.http_address,
            self.me.rpc_address,
        )

    async def stop(self) -> None:
        """Stop everything in reverse start order. A step that fails (a full disk
        at the final sync, say) is logged and the rest still run: a graceful stop
        never ends in a traceback, and nothing acknowledged is lost, because
        every acknowledgement waited for its fsync."""
        log.info("node stopping node=%s", self.me.node_id)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        steps = (
            ("http", self.http.close),
            ("background", self.parts.stop_background),
            ("gossip", self.gossip_transport.close),
            ("rpc", self.rpc.close),
            ("components", self.parts.close),
            ("peers", self.peers.close),
            ("group commit", self.committer.close),
        )
        for name, close in steps:
            try:
                await close()
            except Exception:
                log.exception("stopping %s failed node=%s", name, self.me.node_id)
        try:
            saved = self.trees.save(stamp=self.clock.now_ms())
            log.info("merkle trees saved for the next start: %d", saved)
        except Exception:
            log.exception("saving the merkle trees failed node=%s", self.me.node_id)
        try:
            self.storage.close()
        except Exception:
            log.exception("closing storage failed node=%s", self.me.node_id)
        log.info("node stopped node=%s", self.me.node_id)

    async def _watch_disk_forever(self) -> None:
        interval_s = self.cluster.timing.disk_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.disk.refresh()
                if not self.rebuilding:
                    mark_alive(self.storage, self.clock.now_ms())
            except Exception:
                log.exception("disk check failed node=%s", self.me.node_id)

    # -- RPC ------------------------------------------------------------------

    def handle_rpc(self, message: Message, sender: str) -> HandlerResult:
        return self.parts.handle_rpc(message, sender)

    # -- ring changes -----------------------------------------------------------

    async def request_ring_change(self, kind: ChangeKind, node_id: str | None) -> Outcome:
        """``POST /v1/admin/{join,leave,remove}`` (``api.admin``): join and leave are
        this node's own; remove names a dead node."""
        return await self.parts.request_ring_change(kind, node_id)

    # -- KvBackend --------------------------------------------------------------

    def _drop_data_after_a_long_absence(self) -> int | None:
        """Before anything reads the store: if this node was away longer than the
        tombstone grace, drop its records (``node.absence``); the seconds away."""
        grace_ms = self.cluster.timing.tombstone_grace_s * 1000
        away = away_ms(self.storage, self.clock.now_ms())
        if away is None or away <= grace_ms:
            mark_alive(self.storage, self.clock.now_ms())
            return None
        log.warning(
            "away %d s, longer than the tombstone grace (%d s): dropping local records "
            "to rebuild them from peers node=%s",
            away // 1000,
            grace_ms // 1000,
            self.me.node_id,
        )
        self.storage.delete_meta(META_CLEAN)
        dropped = drop_records_keeping_paxos(self.storage, self.cluster.partitions)
        log.warning("dropped %d records; rebuilding before serving reads", dropped)
        return away // 1000

    async def _rebuild(self) -> None:
        """Pull everything back through anti-entropy; serve reads once a pass met
        every replica of every partition this node holds (bounded attempts)."""
        for attempt in range(REBUILD_ATTEMPTS_MAX):
            await asyncio.sleep(REBUILD_WAIT_S)
            try:
                report = await self.anti_entropy.repair(None)
            except Exception:
                log.exception("rebuild pass failed node=%s", self.me.node_id)
                continue
            log.info(
                "rebuild pass %d: keys=%d bytes=%d failed=%d peers_skipped=%d",
                attempt,
                report.keys_moved,
                report.bytes_moved,
                report.rounds_failed,
                report.peers_skipped,
            )
            if report.rounds_failed == 0 and report.peers_skipped == 0:
                self.rebuilding = False
                mark_alive(self.storage, self.clock.now_ms())
                log.info("rebuilt after a long absence; serving reads node=%s", self.me.node_id)
                return
        log.error("rebuild did not complete; reads stay refused node=%s", self.me.node_id)

    async def get(
        self, key: bytes, consistency: Consistency, *, session: SessionToken | None = None
    ) -> GetResult:
        level = consistency.value if session is None else "session"
        return await self._measured("get", level, self._read(key, consistency, session))

    async def _read(
        self, key: bytes, consistency: Consistency, session: SessionToken | None = None
    ) -> GetResult:
        if self.rebuilding:
            raise Rebuilding(node=self.me.node_id, away_s=self.away_s or 0)
        if session is not None:
            return await self.coordinator.read_session(key, session)
        if consistency is Consistency.STRONG:
            return await self.strong.read(key)
        return await self.coordinator.read(key, consistency)

    async def write_strong(
        self, key: bytes, value: bytes | None, *, condition: Condition | None, ttl_s: int
    ) -> WriteResult:
        operation = "put" if value is not None else "delete"
        level = "strong" if condition is None else "conditional"
        write = self.strong.write(key, value, condition=condition, ttl_s=ttl_s)
        return await self._measured(operation, level, write)

    async def read_range(self, query: RangeQuery) -> RangePage:
        """A page of one partition's records in key order (the DynamoDB Query/Scan)."""
        return await self.ranges.read(query)

    async def put(
        self,
        key: bytes,
        value: bytes,
        consistency: Consistency,
        ttl_s: int,
        context: Context,
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context:
        return await self._write(key, value, consistency, ttl_s, context, idempotency_hash, session)

    async def delete(
        self,
        key: bytes,
        consistency: Consistency,
        context: Context,
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context:
        return await self._write(key, None, consistency, 0, context, idempotency_hash, session)

    async def _write(
        self,
        key: bytes,
        value: bytes | None,
        consistency: Consistency,
        ttl_s: int,
        context: Context,
        idempotency_hash: int,
        session: SessionToken | None,
    ) -> Context:
        """A put (``value``) or delete (None) through the coordinator, measured."""
        write = self.coordinator.write(
            key,
            value,
            consistency,
            ttl_s,
            context,
            idempotency_hash=idempotency_hash,
            session=session,
        )
        operation = "put" if value is not None else "delete"
        level = consistency.value if session is None else "session"
        return await self._measured(operation, level, write)

    async def _measured(
        self, operation: str, level: str, call: Awaitable[_T], api: str = "native"
    ) -> _T:
        """Await ``call``, counting it in the request metrics by the status it earns:
        an error's own, 404 for a read that found nothing, else 200 or 204."""
        if not self.request_metrics.recording:
            return await call
        started_ms = self.clock.monotonic_ms()
        try:
            result = await call
        except DynakvError as exc:
            self._observe(operation, level, exc.http_status, started_ms, api)
            raise
        status = (200 if result.values else 404) if isinstance(result, GetResult) else 204
        self._observe(operation, level, status, started_ms, api)
        return result

    def _observe(
        self, operation: str, level: str, status: int, started_ms: float, api: str = "native"
    ) -> None:
        seconds = (self.clock.monotonic_ms() - started_ms) / 1000
        self.request_metrics.observe(operation, level, status, seconds, api)

    async def metrics(self) -> bytes:
        """``GET /metrics``: the Prometheus text format (``node.metrics``). Reads
        counters in place: no peer is called, nothing is scanned."""
        return render_metrics(self.request_metrics, self.metrics_snapshot())

    def metrics_snapshot(self) -> node_metrics.NodeSnapshot:
        """Everything ``GET /metrics`` reports besides requests, read without I/O."""
        return node_metrics.NodeSnapshot(
            group_commit=self.committer.stats(),
            rpc=node_metrics.rpc_snapshot(self.peers),
            read_repairs_total=self.coordinator.repairs_sent,
            records_swept_total=self.swept_total,
            storage=node_metrics.storage_snapshot(self.storage, self.disk),
            hints=node_metrics.hints_snapshot(self.handoff, self.storage),
            anti_entropy=node_metrics.anti_entropy_snapshot(self.anti_entropy),
            members=node_metrics.members_snapshot(self.membership.membership),
            rebuilding=self.rebuilding,
            process=node_metrics.process_snapshot(),
        )

    async def repair(self, partitions: list[int] | None) -> dict[str, Any]:
        report = await self.anti_entropy.repair(partitions)
        return report.to_dict()

    def local_record(self, key: bytes) -> Record | None:
        return self.storage.get(partition_of(key, self.ring.partition_count), key)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "node_id": self.me.node_id, "pid": os.getpid()}

    async def status(self) -> dict[str, Any]:
        return {
            "node_id": self.me.node_id,
            "zone": self.me.zone,
            "pid": os.getpid(),
            "cluster": self.cluster.name,
            "http": self.me.http_address,
            "rpc": self.me.rpc_address,
            "conflict_policy": self.cluster.conflict_policy.value,
            "ring": self.ring.summary(),
            "ring_change": self.changes.status(),
            "members": self._members_status(),
            "hints": self.handoff.status(),
            "anti_entropy": self.anti_entropy.status(),
            "rebuilding": self.rebuilding,
            "strong": self.strong.status(),
            "peers": await self._peer_status(),
            "storage": {
                "engine": self.config.engine,
                "records": self.storage.count_records(),
                "durable": self.config.durable,
            },
            "group_commit": self._group_commit_status(),
            "disk": self.disk.status(),
            "rpc_server": self.rpc.status(),
            "clock": self._clock_status(),
            "quarantine": self.replica.quarantine.status(),
            "dynamodb_purge": self.table_purger.status(),
            "counters": {
                "read_repairs_sent": self.coordinator.repairs_sent,
                "records_swept": self.swept_total,
            },
        }

    def _members_status(self) -> list[dict[str, Any]]:
        primaries = {
            node_id: node["primary_partitions"]
            for node_id, node in self.ring.summary()["nodes"].items()
        }
        return members_status(self.membership.membership, primaries, self.handoff.held_for)

    def _clock_status(self) -> dict[str, Any]:
        """This node's clocks, and the peers whose messages it refused (a clock
        too far ahead, or numbers out of bounds)."""
        return {
            "wall_ms": self.clock.now_ms(),
            "hlc_ms": hlc_physical_ms(self.replica.hlc.last),
            "offset_ms_max": self.cluster.timing.clock_offset_ms_max,
            "refused_from_peers": self.replica.offenses.status(),
        }

    def _group_commit_status(self) -> dict[str, Any]:
        stats = self.committer.stats()
        return {
            "syncs": stats.syncs_total,
            "writes": stats.writes_total,
            "writes_per_sync": round(stats.writes_per_sync, 2),
            "sync_ms_avg": round(1000 * stats.sync_seconds_total / max(1, stats.syncs_total), 3),
            "batch_max": stats.batch_size_max,
            "waiters": stats.waiters_pending,
            "sync_failures": stats.sync_failures_total,
        }

    async def _peer_status(self) -> dict[str, Any]:
        """Ping every peer (bounded by the RPC timeout) and report whether it answers."""
        timeout_ms = min(500, self.cluster.timing.rpc_timeout_ms)
        node_ids = sorted(n for n in self.peers.node_ids() if n != self.me.node_id)

        async def ping(node_id: str) -> dict[str, Any]:
            started_ms = self.clock.monotonic_ms()
            try:
                await self.peers.call(node_id, Ping(sender=self.me.node_id), timeout_ms)
            except Exception as exc:
                return {"answers": False, "error": str(exc)}
            return {"answers": True, "rtt_ms": round(self.clock.monotonic_ms() - started_ms, 3)}

        results = await asyncio.gather(*(ping(n) for n in node_ids))
        members = {m.node_id: m for m in self.membership.membership.members()}
        return {
            node_id: {
                "zone": members[node_id].zone if node_id in members else "",
                "http": members[node_id].http if node_id in members else "",
                "rpc": members[node_id].rpc if node_id in members else "",
                **result,
            }
            for node_id, result in zip(node_ids, results, strict=True)
        }


def choose_ring(config: NodeConfig, stored: Ring | None, fetched: Ring | None) -> Ring:
    """The newest of: the ring this node stored, a seed's, and (for a first member)
    the ring of epoch 1 that ``[[nodes]]`` describe."""
    candidates = [ring for ring in (stored, fetched) if ring is not None]
    if config.is_first_member:
        cluster = config.cluster
        nodes = [RingNode(n.node_id, n.zone) for n in cluster.nodes]
        candidates.append(Ring.build(nodes, cluster.partitions, cluster.replicas))
    if not candidates:
        raise ConfigError(
            f"node {config.node_id!r} is not among [[nodes]] and no seed gave it the ring: "
            "check seeds and the cluster secret"
        )
    return max(candidates, key=lambda ring: ring.epoch)


async def serve(config: NodeConfig) -> None:
    """Run a node until SIGTERM or SIGINT (or until it left the ring), then stop it."""
    fetched = None
    if not config.is_first_member:
        fetched = await fetch_ring(config)
    node = Node(config, fetched_ring=fetched)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    _tune_gc()
    retired = asyncio.ensure_future(node.retired.wait())
    try:
        await asyncio.wait(
            [asyncio.ensure_future(stop.wait()), retired], return_when="FIRST_COMPLETED"
        )
    finally:
        await node.stop()


def _tune_gc() -> None:
    """Move start-up objects out of the collector's sight and collect young
    objects less often: a request allocates few reference cycles, and the
    default threshold (700) ran a collection every few requests."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def fit_to_open_files(config: NodeConfig) -> NodeConfig:
    """Raise the open-file limit to its hard limit, then lower the connection caps
    so that connections can never exhaust the descriptors RocksDB and the rest
    need (``node.resources``): running short answers 503, never a reset."""
    before, open_files = raise_open_file_limit()
    limits = fit_connection_caps(config.cluster.limits, open_files)
    log.info(
        "open files limit before=%d after=%d http_connections_max=%d rpc_connections_max=%d",
        before,
        open_files,
        limits.http_connections_max,
        limits.rpc_connections_max,
    )
    return dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, limits=limits))


def run(config: NodeConfig) -> None:
    import uvloop

    uvloop.run(serve(fit_to_open_files(config)))
