"""One dynakv node process: wires storage, ring, replica, coordinator, RPC and HTTP.

Start order: storage and the group committer, then the RPC server (so peers
can replicate to us), then the HTTP API (so clients reach us last), then the
sweeper. Stop order is the reverse, and the final group commit completes
before storage closes, so a clean stop loses nothing, and a crash loses
nothing that was acknowledged (acks wait for the WAL fsync).

This module owns the node's lifecycle and the backend the HTTP API calls; it
holds no protocol logic of its own.
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
from dynakv.api.backend import GetResult, WriteResult
from dynakv.api.http import HttpServer
from dynakv.api.routes import Router
from dynakv.api.wire import Dispatcher
from dynakv.config import ConfigError, NodeConfig
from dynakv.core.antientropy import ExchangeLimits
from dynakv.core.claim import ChangeKind
from dynakv.core.claimant import Accepted, Outcome
from dynakv.core.consistency import Consistency
from dynakv.core.etag import Condition
from dynakv.core.gossip_messages import Lifecycle, RingLearned
from dynakv.core.merkle import TreeShape
from dynakv.core.record import Context, Record
from dynakv.core.ring import Ring, RingNode, decode_ring, encode_ring, partition_of
from dynakv.core.session import SessionToken
from dynakv.core.versions import hlc_physical_ms
from dynakv.dynamo.router import dynamo_router
from dynakv.errors import DynakvError
from dynakv.net.messages import Message, Ping, RingFetch, RingFetchReply
from dynakv.net.rpc import HandlerResult, PeerPool, RpcServer
from dynakv.node import metrics as node_metrics
from dynakv.node.absence import (
    Rebuilding,
    away_ms,
    drop_records_keeping_paxos,
    mark_alive,
)
from dynakv.node.acceptor import Acceptor
from dynakv.node.antientropy import AntiEntropy, AntiEntropySettings
from dynakv.node.clock import Clock, SystemClock
from dynakv.node.coordinator import Coordinator, dispatch_rpc
from dynakv.node.gossip import GossipTransport, MembershipShell, members_status, new_membership
from dynakv.node.handoff import HandoffSettings, HintedHandoff
from dynakv.node.merkle_trees import META_CLEAN, TreeKeeper
from dynakv.node.metrics import RequestMetrics
from dynakv.node.metrics import render as render_metrics
from dynakv.node.replica import LocalReplica
from dynakv.node.resources import fit_connection_caps, raise_open_file_limit
from dynakv.node.ring_changes import META_RING, RingChanges, fetch_ring, load_ring
from dynakv.node.strong import StrongPath
from dynakv.storage import DiskGuard, open_storage
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.sweeper import Sweeper

log = logging.getLogger(__name__)
_T = TypeVar("_T")

GC_GEN0_THRESHOLD = 50_000
REBUILD_ATTEMPTS_MAX = 120
REBUILD_WAIT_S = 1.0
JOIN_ATTEMPTS_MAX = 300
JOIN_RETRY_S = 1.0


class Node:
    """A running node; also the ``KvBackend`` its HTTP API serves."""

    def __init__(
        self, config: NodeConfig, clock: Clock | None = None, *, fetched_ring: Ring | None = None
    ) -> None:
        """``fetched_ring``: a seed's ring, for a node that is not among ``[[nodes]]``."""
        self.config = config
        self.cluster = config.cluster
        self.me = config.me
        self.clock: Clock = clock or SystemClock(config.clock_skew_ms)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.disk = DiskGuard(
            config.data_dir,
            node_id=config.node_id,
            reserve_bytes=self.cluster.limits.disk_reserve_bytes,
        )
        self.storage = open_storage(config.engine, config.data_dir / "db", disk=self.disk)
        self.ring = choose_ring(config, load_ring(self.storage), fetched_ring)
        limits = self.cluster.limits
        self.away_s = self._drop_data_after_a_long_absence()
        self.rebuilding = self.away_s is not None
        self.trees = TreeKeeper(
            self.storage,
            shape=TreeShape(limits.anti_entropy_tree_fanout, limits.anti_entropy_tree_depth),
        )
        trusted = self.trees.load()
        log.info("merkle trees trusted from the last clean stop: %d", trusted)
        self.committer = GroupCommitter(self.storage, durable=config.durable)
        self.replica = LocalReplica(
            node_id=config.node_id,
            storage=self.storage,
            committer=self.committer,
            clock=self.clock,
            policy=self.cluster.conflict_policy,
            tombstone_grace_s=self.cluster.timing.tombstone_grace_s,
            partition_count=self.cluster.partitions,
            key_bytes_max=self.cluster.limits.key_bytes_max,
            bounds=self.cluster.record_bounds(),
            disk_guard=self.disk,
            hints_bytes_max=self.cluster.limits.hints_bytes_max,
            trees=self.trees,
        )
        limits, timing = self.cluster.limits, self.cluster.timing
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
        self.coordinator = Coordinator(
            cluster=self.cluster, ring=self.ring, replica=self.replica, peers=self.peers
        )
        self.rpc = RpcServer(
            self.handle_rpc,
            host=self.me.rpc_host,
            port=self.me.rpc_port,
            secret=config.cluster_secret,
            secrets_accepted=config.cluster_secrets_accepted,
            node_id=config.node_id,
            inflight_max=limits.rpc_inflight_max,
            frame_bytes_max=limits.rpc_frame_bytes_max,
            connections_max=limits.rpc_connections_max,
            handshake_frame_bytes_max=limits.rpc_handshake_frame_bytes_max,
            handshake_timeout_ms=timing.rpc_handshake_timeout_ms,
            frame_timeout_ms=timing.rpc_frame_timeout_ms,
            buffered_bytes_total_max=limits.rpc_buffered_bytes_total_max,
        )
        self.http = HttpServer(
            Dispatcher(
                Router(self, limits),
                [RingAdminRouter(self), dynamo_router(self, limits, self.clock, os.environ)],
            ),
            limits,
            host=self.me.http_host,
            port=self.me.http_port,
            read_timeout_s=timing.http_read_timeout_ms / 1000,
            idle_timeout_s=timing.http_idle_timeout_ms / 1000,
        )
        self.gossip_transport = GossipTransport(
            secret=config.cluster_secret,
            node_id=config.node_id,
            connect_timeout_ms=timing.connect_timeout_ms,
            handshake_timeout_ms=timing.rpc_handshake_timeout_ms,
        )
        in_ring = self.ring.has_node(self.me.node_id)
        self.membership = MembershipShell(
            new_membership(
                self.cluster,
                self.me,
                list(config.seed_addresses()),
                random.Random(),
                now_ms=MembershipShell.now_ms(),
                ring=(self.ring.epoch, encode_ring(self.ring)),
                lifecycle=Lifecycle.MEMBER if in_ring else Lifecycle.JOINING,
            ),
            self.gossip_transport.send,
            tick_ms=timing.membership_tick_ms,
            on_ring=self._on_ring_learned,
        )
        self.changes = RingChanges(
            node_id=self.me.node_id,
            storage=self.storage,
            replica=self.replica,
            trees=self.trees,
            hooks=self,
            ring=self.ring,
            timing=timing.claimant(),
            rng=random.Random(),
            live=lambda: frozenset(self.membership.membership.live_nodes()),
            tick_ms=timing.claimant_tick_ms,
            now_ms=MembershipShell.now_ms(),
        )
        self.coordinator.routing = self.changes.claimant.routing
        self.coordinator.on_epoch = lambda node_id, epoch: self.membership.observe_ring_epoch(
            epoch, node_id
        )
        self.replica.ring_epoch = lambda: self.ring.epoch
        self.retired = asyncio.Event()
        self._join_task: asyncio.Task[None] | None = None
        self.coordinator.is_down = self._is_down
        self.handoff = HintedHandoff(
            storage=self.storage,
            replica=self.replica,
            peers=self.peers,
            is_up=lambda node_id: self.membership.membership.state_of(node_id) == "up",
            clock=self.clock,
            settings=HandoffSettings(
                interval_ms=timing.handoff_interval_ms,
                batch_max=limits.handoff_batch_max,
                hint_ttl_ms=timing.hint_ttl_ms,
                rpc_timeout_ms=timing.rpc_timeout_ms,
            ),
        )
        self._handoff_task: asyncio.Task[None] | None = None
        self.anti_entropy = AntiEntropy(
            replica=self.replica,
            trees=self.trees,
            peers=self.peers,
            ring=lambda: self.ring,
            is_live=lambda node_id: self.membership.membership.state_of(node_id) == "up",
            now_ms=self.clock.now_ms,
            settings=AntiEntropySettings(
                exchange=ExchangeLimits(keys_per_round_max=limits.anti_entropy_keys_per_round_max),
                rate_bytes_per_s=limits.anti_entropy_rate_bytes_per_s,
                burst_bytes=limits.anti_entropy_burst_bytes,
                call_timeout_ms=timing.anti_entropy_rpc_timeout_ms,
                key_bytes_max=limits.key_bytes_max,
            ),
        )
        self._anti_entropy_task: asyncio.Task[None] | None = None
        self._rebuild_task: asyncio.Task[None] | None = None
        self.acceptor = Acceptor(self.replica)
        self.strong = StrongPath(
            cluster=self.cluster,
            ring=self.ring,
            replica=self.replica,
            acceptor=self.acceptor,
            peers=self.peers,
            rng=random.Random(),
            is_down=self._is_down,
        )
        self.sweeper = Sweeper(
            self.storage,
            batch_max=timing.sweep_batch_max,
            on_purge=lambda partition, key, old: self.trees.on_write(partition, key, old, None),
        )
        self._sweep_task: asyncio.Task[None] | None = None
        self._disk_task: asyncio.Task[None] | None = None
        self.swept_total = 0
        self.request_metrics = RequestMetrics()

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.committer.start()
        await self.rpc.start()
        self.membership.start()
        self.changes.start()
        await self.http.start()
        self._sweep_task = asyncio.create_task(self._sweep_forever())
        self._disk_task = asyncio.create_task(self._watch_disk_forever())
        self._handoff_task = asyncio.create_task(self.handoff.run_forever())
        self._anti_entropy_task = asyncio.create_task(
            self.anti_entropy.run_forever(self.cluster.timing.anti_entropy_interval_ms)
        )
        if self.rebuilding:
            self._rebuild_task = asyncio.create_task(self._rebuild())
        if self.config.join and not self.ring.has_node(self.me.node_id):
            self._join_task = asyncio.create_task(self._join())
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
        tasks = (
            self._sweep_task,
            self._disk_task,
            self._handoff_task,
            self._anti_entropy_task,
            self._rebuild_task,
            self._join_task,
        )
        for task in tasks:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        steps = (
            ("http", self.http.close),
            ("ring changes", self.changes.stop),
            ("membership", self.membership.stop),
            ("gossip", self.gossip_transport.close),
            ("rpc", self.rpc.close),
            ("coordinator", self.coordinator.close),
            ("strong", self.strong.close),
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

    async def _sweep_forever(self) -> None:
        interval_s = self.cluster.timing.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.swept_total += self.sweeper.sweep_once(self.clock.now_ms())
            except Exception:
                log.exception("sweep failed node=%s", self.me.node_id)

    # -- RPC ------------------------------------------------------------------

    def handle_rpc(self, message: Message, sender: str) -> HandlerResult:
        if getattr(message, "epoch", 0) > self.ring.epoch:
            self.membership.observe_ring_epoch(message.epoch, sender)  # type: ignore[union-attr]
        if isinstance(message, RingFetch):
            return RingFetchReply(epoch=self.ring.epoch, ring_bytes=encode_ring(self.ring))
        return dispatch_rpc(
            message,
            sender=sender,
            node_id=self.me.node_id,
            replica=self.replica,
            coordinator=self.coordinator,
            gossip=self.membership.on_message,
            anti_entropy=self.anti_entropy.handle,
            paxos=self.acceptor.handle,
            claimant=self.changes.on_message,
        )

    # -- ring changes -----------------------------------------------------------

    def install_ring(self, ring: Ring) -> None:
        """A newer ring (committed here, or learned): route by it from now on."""
        if ring.epoch <= self.ring.epoch:
            return
        self.ring = ring
        self.coordinator.ring = ring
        self.strong.ring = ring
        self.membership.install_ring(ring.epoch, encode_ring(ring))
        for node in ring.nodes:
            self.sender(node.node_id)

    def _on_ring_learned(self, learned: RingLearned) -> None:
        """Membership fetched a newer ring from a peer: persist it, route by it."""
        ring = decode_ring(learned.ring_bytes)
        if ring.epoch <= self.ring.epoch:
            return
        self.storage.put_meta(META_RING, learned.ring_bytes)
        self.install_ring(ring)
        self.changes.on_ring(ring)
        log.info("ring epoch %d learned by gossip", ring.epoch)

    def set_lifecycle(self, node_id: str, lifecycle: Lifecycle) -> None:
        self.membership.set_lifecycle(node_id, lifecycle)

    def retire(self) -> None:
        """This node left the ring: tell the others, then stop (``serve`` waits on it)."""
        self.membership.leave()
        self.retired.set()

    def sender(self, node_id: str) -> PeerPool | None:
        """The pool, once it knows ``node_id``'s address (from membership)."""
        if node_id == self.me.node_id:
            return None
        if node_id not in self.peers.node_ids():
            member = self.membership.membership.member(node_id)
            if member is None or not member.rpc:
                return None
            self.peers.add(node_id, member.rpc)
        return self.peers

    async def request_ring_change(self, kind: ChangeKind, node_id: str | None) -> Outcome:
        """``POST /v1/admin/{join,leave,remove}`` (``api.admin``): join and leave are
        this node's own; remove names a dead node."""
        target = node_id if kind == "remove" and node_id else self.me.node_id
        return await self.changes.request(
            kind, target, zone=self.me.zone if kind == "join" else "", host=self.me.rpc_host
        )

    async def _join(self) -> None:
        """Started with ``join``: ask until the change is accepted (bounded)."""
        for _ in range(JOIN_ATTEMPTS_MAX):
            await asyncio.sleep(JOIN_RETRY_S)
            if self.ring.has_node(self.me.node_id):
                return
            if not self.changes.claimant.ready():
                continue
            outcome = await self.request_ring_change("join", None)
            log.info("join requested: %s", outcome)
            if isinstance(outcome, Accepted):
                return
        log.error("join not accepted after %d attempts node=%s", JOIN_ATTEMPTS_MAX, self.me.node_id)

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
        write = self.coordinator.write(
            key,
            value,
            consistency,
            ttl_s,
            context,
            idempotency_hash=idempotency_hash,
            session=session,
        )
        level = consistency.value if session is None else "session"
        return await self._measured("put", level, write)

    async def delete(
        self,
        key: bytes,
        consistency: Consistency,
        context: Context,
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context:
        write = self.coordinator.write(
            key,
            None,
            consistency,
            0,
            context,
            idempotency_hash=idempotency_hash,
            session=session,
        )
        level = consistency.value if session is None else "session"
        return await self._measured("delete", level, write)

    async def _measured(
        self, operation: str, level: str, call: Awaitable[_T], api: str = "native"
    ) -> _T:
        """Await ``call``, counting it in the request metrics by the status it earns:
        an error's own, 404 for a read that found nothing, else 200 or 204."""
        metrics = self.request_metrics
        if not metrics.recording:
            return await call
        clock = self.clock
        started_ms = clock.monotonic_ms()
        try:
            result = await call
        except DynakvError as exc:
            self._observe(operation, level, exc.http_status, started_ms, api)
            raise
        status = (200 if result.values else 404) if isinstance(result, GetResult) else 204
        metrics.observe(operation, level, status, (clock.monotonic_ms() - started_ms) / 1000, api)
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

    def _is_down(self, node_id: str) -> bool:
        return self.membership.membership.state_of(node_id) == "down"

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
